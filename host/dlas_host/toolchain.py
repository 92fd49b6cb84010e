"""Exporting built executables as shared libraries for the device's architecture, and checking them.

Every artifact is checked before it is cached or shipped: its ELF machine must match the device's arch.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import struct
import subprocess
from pathlib import Path
from typing import Any, Iterator

from . import arches
from .devices import Device
from .errors import DlasError


class ToolchainError(DlasError, RuntimeError):
    """A compiler the target needs is missing, or an artifact is not what the device can load."""


def host_arch() -> str:
    return arches.host()


def elf_arch(path: Path) -> str:
    with open(path, "rb") as fh:
        header = fh.read(20)
    if len(header) < 20 or header[:4] != b"\x7fELF":
        raise ToolchainError(f"{path.name} is not an ELF shared library")
    little = header[5] == 1
    (machine,) = struct.unpack("<H" if little else ">H", header[18:20])
    arch = arches.by_elf_machine(machine)
    return arch.name if arch else f"machine-{machine}"


def cross_compiler(arch: str) -> tuple[str | None, str]:
    """The cross C++ compiler for ``arch`` and how to install it (None when the table has no such arch)."""
    row = arches.ARCHES.get(arch)
    return (row.cross_cxx, row.cross_cxx_install) if row else (None, "install a cross toolchain")


def fcompile_for(device: Device) -> Any | None:
    """The compiler function for export_library, or None for the host's own compiler."""
    if device.arch == host_arch():
        return None
    from tvm.support import cc  # noqa: PLC0415

    cxx, install = cross_compiler(device.arch)
    if cxx is None or shutil.which(cxx) is None:
        raise ToolchainError(f"device {device.name} is {device.arch} but the cross compiler {cxx} is missing; "
                             f"fix: {install}")
    return cc.cross_compiler(cxx)


def export_library(executable: Any, path: Path, device: Device) -> None:
    fcompile = fcompile_for(device)
    if fcompile is None:
        executable.export_library(str(path))
    else:
        executable.export_library(str(path), fcompile=fcompile)
    check_artifact(path, device)


def check_artifact(path: Path, device: Device) -> None:
    arch = elf_arch(path)
    if arch != device.arch:
        raise ToolchainError(f"artifact {path.name} is built for {arch}, but device {device.name} is {device.arch}")
    if device.is_cuda:
        check_cuda_artifact(path, device)


# ---------------------------------------------------------------------------------------------- CUDA
# TVM builds CUDA device code through ``tvm_callback_cuda_compile``. Unless nvcc is used and TVM's CUDA runtime
# library is loaded, it silently ships CUDA *source* for runtime compilation; on a machine without a GPU that
# library does not load (no libcuda.so.1), so a stub libcuda is generated and preloaded. Every CUDA artifact
# is then checked to hold device code (cubin, or PTX it can JIT) for the requested sm_XX.
FATBIN_MAGIC = 0xBA55ED50
CUDA_DIRS = ("/usr/local/cuda-13.0", "/usr/local/cuda")


def cuda_arch(device: Device) -> str:
    arch = str(device.target.get("arch", ""))
    if not re.fullmatch(r"sm_\d+[a-z]?", arch):
        raise ToolchainError(f"device {device.name}: a CUDA target needs arch: sm_XX (e.g. sm_87 for Orin), "
                             f"got {arch or 'nothing'}")
    return arch


def find_cuda_home() -> Path:
    candidates = [os.environ.get("CUDA_HOME", ""), os.environ.get("CUDA_PATH", "")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(str(Path(nvcc).resolve().parents[1]))
    candidates += list(CUDA_DIRS)
    for cand in candidates:
        if cand and (Path(cand) / "bin" / "nvcc").is_file():
            return Path(cand)
    raise ToolchainError("CUDA targets need nvcc (CUDA toolkit); none found in CUDA_HOME, PATH or "
                         f"{', '.join(CUDA_DIRS)}; fix: install the CUDA toolkit or set CUDA_HOME")


def _cuda_stub(runtime_cuda: Path) -> Path:
    """A libcuda.so.1 defining every driver symbol TVM's CUDA runtime needs, each returning 'no device'."""
    from .paths import sub_dir  # noqa: PLC0415

    out = sub_dir("toolchain") / "libcuda-stub"
    lib = out / "libcuda.so.1"
    if lib.is_file():
        return lib
    if shutil.which("gcc") is None:
        raise ToolchainError("building CUDA code without a GPU needs a stub libcuda.so.1, and gcc to make it "
                             "(apt-get install gcc)")
    nm = subprocess.run(["nm", "-D", "--undefined-only", str(runtime_cuda)], capture_output=True, text=True)
    syms = sorted({ln.split()[-1].split("@")[0] for ln in nm.stdout.splitlines()
                   if re.match(r"cu[A-Z]", ln.split()[-1])})
    out.mkdir(parents=True, exist_ok=True)
    src = out / "stub.c"
    src.write_text("/* generated: no GPU here; every driver call reports CUDA_ERROR_NO_DEVICE */\n" +
                   "".join(f"int {s}(void) {{ return 100; }}\n" for s in syms))
    tmp = out / f"libcuda.so.1.{os.getpid()}"
    proc = subprocess.run(["gcc", "-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o", str(tmp), str(src)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise ToolchainError(f"building the stub libcuda.so.1 failed: {proc.stderr.strip()[-300:]}")
    tmp.rename(lib)
    return lib


def prepare_cuda_build() -> Path:
    """Make TVM compile CUDA to device code with nvcc here; returns the CUDA home. Idempotent."""
    import ctypes  # noqa: PLC0415

    import tvm  # noqa: PLC0415, F401
    import tvm.support.nvcc  # noqa: PLC0415, F401 - registers tvm_callback_cuda_compile
    from tvm.base import _LOADED_LIBS  # noqa: PLC0415

    cuda_home = find_cuda_home()
    os.environ["TVM_CUDA_COMPILE_MODE"] = "nvcc"
    os.environ.setdefault("CUDA_HOME", str(cuda_home))
    if str(cuda_home / "bin") not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = f"{cuda_home / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"
    if "tvm_runtime_cuda" in _LOADED_LIBS:
        return cuda_home
    from tvm_ffi.libinfo import load_lib_ctypes  # noqa: PLC0415

    runtime_dir = Path(_LOADED_LIBS["tvm_runtime"]._name).resolve().parent
    try:
        ctypes.CDLL("libcuda.so.1", mode=ctypes.RTLD_GLOBAL)
    except OSError:
        ctypes.CDLL(str(_cuda_stub(runtime_dir / "libtvm_runtime_cuda.so")), mode=ctypes.RTLD_GLOBAL)
    try:
        ctypes.CDLL("libcudart.so.13", mode=ctypes.RTLD_GLOBAL)
    except OSError:
        found = sorted(cuda_home.glob("lib*/libcudart.so.*")) + sorted(cuda_home.glob("targets/*/lib/libcudart.so.*"))
        if not found:
            raise ToolchainError(f"libcudart not found under {cuda_home}; TVM cannot load its CUDA runtime") from None
        ctypes.CDLL(str(found[0]), mode=ctypes.RTLD_GLOBAL)
    try:
        _LOADED_LIBS["tvm_runtime_cuda"] = load_lib_ctypes(package="tvm", target_name="tvm_runtime_cuda",
                                                           extra_lib_paths=[runtime_dir], mode="RTLD_LOCAL")
    except (OSError, RuntimeError) as exc:
        raise ToolchainError(f"TVM's CUDA runtime library does not load here: {exc}") from None
    return cuda_home


@contextlib.contextmanager
def build_context(device: Device) -> Iterator[None]:
    """Around tvm.compile: for CUDA targets, nvcc device code for the target's sm_XX; a no-op for CPUs."""
    if not device.is_cuda:
        yield
        return
    cuda_arch(device)
    previous_mode = os.environ.get("TVM_CUDA_COMPILE_MODE")
    prepare_cuda_build()
    try:
        with device.tvm_target():  # the nvcc callback reads the arch from the current target
            yield
    finally:  # nvcc mode only for this build: other CUDA builds in the process keep their own choice
        if previous_mode is None:
            os.environ.pop("TVM_CUDA_COMPILE_MODE", None)
        else:
            os.environ["TVM_CUDA_COMPILE_MODE"] = previous_mode


def gpu_default_schedules(mod: Any, target: Any) -> Any:
    """dlight's default GPU schedules (for custom pipelines; TVM's default CUDA pipeline applies them itself)."""
    from tvm.s_tir import dlight as dl  # noqa: PLC0415

    with target:
        return dl.ApplyDefaultSchedule(dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(),
                                       dl.gpu.GeneralReduction(), dl.gpu.Fallback())(mod)


def cuda_device_code(path: Path) -> list[tuple[str, str]]:
    """(kind, arch) of every device-code image in a library: ("elf", "sm_87"), ("ptx", "sm_80")...

    Uses cuobjdump when the toolkit has it, else parses the fatbin headers embedded in the file.
    """
    cuobjdump = shutil.which("cuobjdump") or next(
        (str(Path(d) / "bin" / "cuobjdump") for d in CUDA_DIRS if (Path(d) / "bin" / "cuobjdump").is_file()), None)
    if cuobjdump:
        found: list[tuple[str, str]] = []
        for flag, kind in (("--list-elf", "elf"), ("--list-ptx", "ptx")):
            proc = subprocess.run([cuobjdump, flag, str(path)], capture_output=True, text=True, timeout=120)
            found += [(kind, m) for m in re.findall(r"sm_\d+[a-z]?", proc.stdout)]
        if found:
            return found
    data = path.read_bytes()
    found = []
    magic = struct.pack("<I", FATBIN_MAGIC)
    start = data.find(magic)
    for _ in range(10000):
        if start < 0:
            break
        if start + 16 <= len(data):
            _, _, header_size, fat_size = struct.unpack_from("<IHHQ", data, start)
            off, end = start + header_size, start + header_size + fat_size
            for _ in range(10000):
                if off + 32 > min(end, len(data)):
                    break
                kind, _, entry_header, payload = struct.unpack_from("<HHIQ", data, off)
                (sm,) = struct.unpack_from("<I", data, off + 28)
                if kind in (1, 2) and entry_header >= 32:
                    found.append(("ptx" if kind == 1 else "elf", f"sm_{sm}"))
                if entry_header == 0:
                    break
                off += entry_header + payload
        start = data.find(magic, start + 4)
    return found


def check_cuda_artifact(path: Path, device: Device) -> list[tuple[str, str]]:
    want = cuda_arch(device)
    images = cuda_device_code(path)
    want_num = int(re.sub(r"\D", "", want))
    ok = any(kind == "elf" and arch.rstrip("a") == want.rstrip("a") for kind, arch in images) or any(
        kind == "ptx" and int(re.sub(r"\D", "", arch)) <= want_num for kind, arch in images)
    if not ok:
        source_only = b"__global__" in path.read_bytes()
        have = ", ".join(f"{k}:{a}" for k, a in images) or "no device code"
        hint = (" It carries CUDA source only (TVM compiled without nvcc; see toolchain.prepare_cuda_build)."
                if source_only and not images else "")
        raise ToolchainError(f"artifact {path.name} has no device code for {want} ({have}); device {device.name} "
                             f"cannot run it.{hint}")
    return images
