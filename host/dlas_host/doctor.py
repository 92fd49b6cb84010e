"""``dlas-host doctor``: versions, pins and toolchains, each with the fix when it is wrong."""

from __future__ import annotations

import importlib.metadata as md
import shutil
from dataclasses import dataclass
from pathlib import Path

from . import arches


@dataclass
class Check:
    name: str
    status: str  # ok | warn | fail
    detail: str


PINS = {
    "apache-tvm": ("0.27.0.post1", "fail", "pip install apache-tvm==0.27.0.post1"),
    "apache-tvm-ffi": ("0.1.14.post1", "fail",
                       "pip install apache-tvm-ffi==0.1.14.post1 (0.1.15.x segfaults in tvm.ir.save_json: tuning breaks)"),
    "torch": ("2.14.1", "warn", "pip install torch==2.14.1 torchvision==0.29.1"),
    "torchvision": ("0.29.1", "warn", "pip install torch==2.14.1 torchvision==0.29.1"),
}
OPTIONAL = {
    "onnxruntime": "pip install onnxruntime (baseline engine)",
    "xgboost-cpu": "pip install xgboost-cpu (MetaSchedule cost model; not `xgboost`, whose NCCL clashes with torch)",
    "paramiko": "pip install paramiko (SSH fleet)",
}
_TOOLS = {
    "nvcc": ("building CUDA device code", "install the CUDA toolkit (/usr/local/cuda/bin on PATH)"),
    "podman": ("building agent images", "apt-get install podman buildah"),
    "sshd": ("the simulated SSH fleet in tests", "apt-get install openssh-server"),
}


def tools() -> dict[str, tuple[str, str]]:
    """Tool -> (why, fix): the fixed ones plus, per arch foreign to this host, its cross compiler and qemu."""
    found = dict(_TOOLS)
    for arch in arches.ARCHES.values():
        if arch.name != arches.host():
            found[arch.cross_cxx] = (f"cross-compiling for {arch.label} devices", arch.cross_cxx_install)
            found[arch.qemu_static] = (f"running the {arch.deb_arch} test device",
                                       "apt-get install qemu-user-static binfmt-support")
    return dict(sorted(found.items()))


def _version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def run_checks() -> list[Check]:
    checks: list[Check] = []
    for dist, (want, severity, fix) in PINS.items():
        have = _version(dist)
        if have == want:
            checks.append(Check(dist, "ok", have))
        else:
            checks.append(Check(dist, severity, f"have {have or 'nothing'}, pinned {want}; fix: {fix}"))
    for dist, fix in OPTIONAL.items():
        have = _version(dist)
        checks.append(Check(dist, "ok" if have else "warn", have or f"missing; fix: {fix}"))
    if _version("xgboost") and not _version("xgboost-cpu"):
        checks.append(Check("xgboost", "warn", "the NCCL build clashes with torch; fix: pip uninstall xgboost && "
                                               "pip install xgboost-cpu"))
    for tool, (why, fix) in tools().items():
        path = shutil.which(tool) or (shutil.which(tool, path="/usr/local/cuda/bin:/usr/local/cuda-13.0/bin:/usr/sbin")
                                      if tool in ("nvcc", "sshd") else None)
        checks.append(Check(tool, "ok" if path else "warn", path or f"missing ({why}); fix: {fix}"))
    try:
        from .devices import load

        reg = load()
        checks.append(Check("devices.yaml", "ok", f"{reg.path}: {len(reg.devices)} device(s)"))
    except Exception as exc:  # noqa: BLE001 - doctor reports every problem instead of stopping
        checks.append(Check("devices.yaml", "fail", str(exc)))
    try:
        from .paths import data_dir

        probe = data_dir() / ".write-test"
        probe.write_text("ok")
        probe.unlink()
        checks.append(Check("data dir", "ok", str(data_dir())))
    except OSError as exc:
        checks.append(Check("data dir", "fail", f"{exc}; fix: set DLAS_DATA_DIR to a writable directory"))
    lib = Path(__import__("tvm").__file__).parent / "lib"
    has_compiler = (lib / "libtvm_compiler.so").exists()
    checks.append(Check("tvm compiler", "ok" if has_compiler else "fail",
                        str(lib) if has_compiler else "libtvm_compiler.so missing: this is a runtime-only install; "
                                                      "the host needs the full apache-tvm wheel"))
    return checks
