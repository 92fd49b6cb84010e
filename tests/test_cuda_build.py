"""CUDA artifacts: built with nvcc (no GPU needed) and checked to carry device code for the requested sm_XX.

A GPU run end to end happens only where an Nvidia GPU is present; otherwise it is skipped with the reason.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

from dlas_host.devices import Device
from dlas_host.toolchain import ToolchainError, find_cuda_home


def _cuda_home_or_skip():
    try:
        return find_cuda_home()
    except ToolchainError as exc:
        pytest.skip(str(exc))


def _gpu() -> str | None:
    if shutil.which("nvidia-smi") is None:
        return None
    proc = subprocess.run(["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"], capture_output=True,
                          text=True, timeout=30)
    caps = proc.stdout.split()
    return f"sm_{caps[0].replace('.', '')}" if proc.returncode == 0 and caps else None


def _device(arch: str, name: str = "cuda-sim") -> Device:
    return Device(name=name, arch="x86_64", target={"kind": "cuda", "arch": arch, "host": {"kind": "llvm"}},
                  tags=("gpu",))


@pytest.fixture(scope="module")
def cuda_artifact(tmp_path_factory):
    import os

    _cuda_home_or_skip()
    from dlas_host.cache import ArtifactCache
    from dlas_host.compile import BuildSpec, compile_artifact

    saved = os.environ.get("DLAS_DATA_DIR")
    os.environ["DLAS_DATA_DIR"] = str(tmp_path_factory.mktemp("cuda-data"))
    try:
        device = _device("sm_87", "jetson-like")
        art = compile_artifact(BuildSpec(model="resnet18", dataset="cifar10"), device, ArtifactCache(), force=True)
        yield device, art
    finally:
        if saved is None:
            os.environ.pop("DLAS_DATA_DIR", None)
        else:
            os.environ["DLAS_DATA_DIR"] = saved


def test_cuda_build_holds_device_code_for_requested_arch(cuda_artifact):
    from dlas_host.toolchain import check_artifact, cuda_device_code, elf_arch

    device, art = cuda_artifact
    assert elf_arch(art.path) == "x86_64"
    images = cuda_device_code(art.path)
    assert ("elf", "sm_87") in images, images
    assert b"__global__" not in art.path.read_bytes()  # no CUDA source left for runtime compilation
    check_artifact(art.path, device)  # passes


def test_cuda_artifact_for_other_arch_is_rejected(cuda_artifact):
    from dlas_host.toolchain import check_artifact

    _, art = cuda_artifact
    with pytest.raises(ToolchainError, match="no device code for sm_90"):
        check_artifact(art.path, _device("sm_90", "hopper"))


def test_cuda_target_without_arch_is_a_clear_error():
    from dlas_host.toolchain import cuda_arch

    with pytest.raises(ToolchainError, match="arch: sm_XX"):
        cuda_arch(Device(name="nogpuarch", arch="x86_64", target={"kind": "cuda", "host": {"kind": "llvm"}}))


@pytest.mark.gpu
def test_cuda_bench_end_to_end(tmp_path):
    arch = _gpu()
    if arch is None:
        pytest.skip("no Nvidia GPU here (nvidia-smi absent or reports none): the CUDA build is checked by the "
                    "tests above; the GPU run needs a GPU")
    _cuda_home_or_skip()
    from dlas_host.bench import RunOptions, bench_tvm
    from dlas_host.compile import BuildSpec
    from dlas_host.store import ResultStore

    device = Device(name="local-gpu", arch="x86_64", target={"kind": "cuda", "arch": arch, "host": {"kind": "llvm"}})
    store = ResultStore(tmp_path / "results.sqlite")
    row = bench_tvm(BuildSpec(model="resnet18", dataset="cifar10"), device, store, RunOptions(number=3, repeat=5))
    assert row.status == "ok", row.error
    assert row.max_abs_err is not None and row.max_abs_err < 1e-2
    print(f"CUDA {arch}: median {row.median_ms:.3f} ms, max abs err {row.max_abs_err:.1e}")
