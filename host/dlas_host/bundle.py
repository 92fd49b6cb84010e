"""Agent bundles: the dlas-agent wheel plus every dependency wheel for one device platform.

Devices often have no package index (air-gapped labs, the simulated fleet, offline image builds), so the
host downloads what a device needs once per (arch, Python) and ships it. Installation on the device is
``pip install --no-index --find-links BUNDLE dlas-agent`` followed by removing ``libtvm_compiler.so``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from . import arches
from .paths import PROJECT_ROOT, sub_dir
from .errors import DlasError

AGENT_REQUIREMENTS = ["apache-tvm==0.27.0.post1", "apache-tvm-ffi==0.1.14.post1", "numpy", "psutil", "cloudpickle",
                      "typing_extensions>=4.13", "ml_dtypes"]
# What a runtime-only agent can drop from the TVM wheel (relative to the installed tvm package).
RUNTIME_ONLY_REMOVE = ["lib/libtvm_compiler.so"]
CPU_ONLY_REMOVE = ["lib/libtvm_runtime_cuda.so"]


class BundleError(DlasError, RuntimeError):
    """The bundle could not be built (no index reachable and nothing cached, or a build failure)."""


def build_agent_wheel(out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("dlas_agent-*.whl"):
        old.unlink()
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                           str(out_dir), str(PROJECT_ROOT / "agent")], capture_output=True, text=True)
    wheels = sorted(out_dir.glob("dlas_agent-*.whl"))
    if proc.returncode != 0 or not wheels:
        raise BundleError(f"building the dlas-agent wheel failed: {proc.stderr.strip().splitlines()[-1:]}")
    return wheels[-1]


def wheel_platforms(arch: str) -> list[str]:
    """pip ``--platform`` tags of ``arch`` (from the arch table)."""
    row = arches.ARCHES.get(arch)
    if row is None:
        raise BundleError(f"no agent bundle for arch {arch!r}; supported: {', '.join(arches.names())}")
    return list(row.wheel_platforms)


def bundle_dir(arch: str, python: str = "3.11") -> Path:
    return sub_dir("bundles") / f"{arch}-cp{python.replace('.', '')}"


def build_bundle(arch: str, python: str = "3.11", refresh: bool = False) -> Path:
    """Directory with dlas-agent and all its dependency wheels for ``arch``/``python`` (cached)."""
    platforms = wheel_platforms(arch)
    target = bundle_dir(arch, python)
    target.mkdir(parents=True, exist_ok=True)
    have_tvm = any(target.glob("apache_tvm-*.whl"))
    if refresh or not have_tvm:
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", "--python-version", python,
               "--implementation", "cp", "-d", str(target)]
        for plat in platforms:
            cmd += ["--platform", plat]
        proc = subprocess.run(cmd + AGENT_REQUIREMENTS, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = proc.stderr.strip().splitlines()[-1:] or ["no output"]
            raise BundleError(f"downloading agent dependencies for {arch}/py{python} failed: {tail[0]}")
    build_agent_wheel(target)
    return target
