"""What the device is and what state it is in: recorded next to every timing."""

from __future__ import annotations

import os
import platform
import re
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from . import __version__
from .protocol import DeviceInfo


def _read(path: str) -> str:
    try:
        return Path(path).read_text(errors="replace").strip()
    except OSError:
        return ""


def _cpuinfo() -> tuple[str, list[str]]:
    fields: dict[str, str] = {}
    for line in _read("/proc/cpuinfo").splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip().lower(), value.strip())
    # x86 has a numeric "model" beside "model name"; Arm boards put the name in "hardware" or "model".
    model = fields.get("model name") or fields.get("hardware") or fields.get("model", "")
    flags = (fields.get("flags") or fields.get("features", "")).split()
    if not model:
        model = platform.processor() or platform.machine()
    dt_model = _read("/proc/device-tree/model").rstrip("\x00")
    if dt_model:  # Raspberry Pi, Jetson: the board name says more than "ARMv8 Processor"
        model = f"{dt_model} ({model})" if model and model != dt_model else dt_model
    return model, flags


_X86_VENDORS = ("GenuineIntel", "AuthenticAMD", "HygonGenuine", "CentaurHauls")


def emulation(machine: str, cpuinfo: str) -> str:
    """Why this process is emulated, or "". Under user-mode emulation (qemu-user, binfmt_misc) the kernel
    reports the host's CPU in /proc/cpuinfo, and that CPU is not of the process's own architecture.
    ``DLAS_EMULATED`` marks what cannot be seen from inside (a full-system emulator)."""
    m = machine.lower()
    x86_cpu = any(v in cpuinfo for v in _X86_VENDORS) or bool(re.search(r"^flags\s*:.*\bsse2\b", cpuinfo, re.M))
    arm_cpu = "CPU implementer" in cpuinfo or bool(re.search(r"^Features\s*:.*\b(asimd|neon)\b", cpuinfo, re.M))
    if (m in ("aarch64", "arm64") or m.startswith("arm")) and x86_cpu:
        return f"{m} process on an x86 host CPU (user-mode emulation, e.g. qemu-user)"
    if m in ("x86_64", "amd64", "i386", "i686") and arm_cpu and not x86_cpu:
        return f"{m} process on an Arm host CPU (user-mode emulation)"
    return os.environ.get("DLAS_EMULATED", "").strip()


def _temperatures() -> dict[str, float]:
    temps: dict[str, float] = {}
    try:
        sensors = psutil.sensors_temperatures()  # type: ignore[attr-defined]
    except (AttributeError, OSError):
        return temps
    for chip, entries in sensors.items():
        for i, entry in enumerate(entries):
            temps[f"{chip}/{entry.label or i}"] = float(entry.current)
    return temps


def _gpus() -> list[dict[str, Any]]:
    gpus: list[dict[str, Any]] = []
    smi = shutil.which("nvidia-smi")
    if smi:
        query = "name,memory.total,clocks.sm,clocks.mem,temperature.gpu,driver_version,compute_cap"
        try:
            out = subprocess.run([smi, f"--query-gpu={query}", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True, timeout=10, check=True).stdout
        except (subprocess.SubprocessError, OSError):
            out = ""
        for line in out.strip().splitlines():
            parts = [p.strip() for p in line.split(",")]
            if len(parts) == 7:
                gpus.append(dict(zip(("name", "memory_mb", "sm_clock_mhz", "mem_clock_mhz", "temperature_c",
                                      "driver", "compute_capability"), parts)))
    if not gpus and Path("/etc/nv_tegra_release").exists():  # Jetson: integrated GPU, no nvidia-smi
        gpus.append({"name": "tegra", "l4t": _read("/etc/nv_tegra_release").splitlines()[0]})
    return gpus


def _tvm() -> tuple[str, bool]:
    try:
        import tvm  # noqa: PLC0415 - importing TVM is slow; only when asked
        from tvm.base import _RUNTIME_ONLY
    except Exception:  # noqa: BLE001 - a broken TVM install is reported, not raised
        return "", True
    return tvm.__version__, bool(_RUNTIME_ONLY)


def collect() -> DeviceInfo:
    model, flags = _cpuinfo()
    emulated = emulation(platform.machine(), _read("/proc/cpuinfo"))
    if emulated:  # the host CPU's model and flags are not this process's ISA: no native-support claims
        model, flags = f"emulated on {model}", []
    mem = psutil.virtual_memory()
    freq = psutil.cpu_freq() if hasattr(psutil, "cpu_freq") else None
    tvm_version, runtime_only = _tvm()
    try:
        load = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        load = []
    return DeviceInfo(
        hostname=socket.gethostname(),
        arch=platform.machine(),
        os=f"{platform.system()} {platform.release()}",
        python=platform.python_version(),
        cpu_model=model,
        cpu_flags=flags,
        cores_physical=psutil.cpu_count(logical=False) or 0,
        cores_logical=psutil.cpu_count(logical=True) or 0,
        memory_total_mb=mem.total // 2**20,
        memory_available_mb=mem.available // 2**20,
        load_avg=load,
        governor=_read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
        cpu_freq_mhz=float(freq.current) if freq else 0.0,
        temperatures_c=_temperatures(),
        gpus=_gpus(),
        tvm_version=tvm_version,
        tvm_runtime_only=runtime_only,
        agent_version=__version__,
        numpy_version=np.__version__,
        in_container=Path("/.dockerenv").exists() or Path("/run/.containerenv").exists(),
        emulation=emulated,
    )


def snapshot() -> dict[str, Any]:
    """The volatile part of the device state, cheap enough to take after every benchmark."""
    freq = psutil.cpu_freq() if hasattr(psutil, "cpu_freq") else None
    try:
        load = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        load = []
    return {
        "load_avg": load,
        "cpu_freq_mhz": float(freq.current) if freq else 0.0,
        "governor": _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
        "temperatures_c": _temperatures(),
        "memory_available_mb": psutil.virtual_memory().available // 2**20,
    }
