"""Exporting built executables as shared libraries for the device's architecture, and checking them.

Every artifact is checked before it is cached or shipped: its ELF machine must match the device's arch.
"""

from __future__ import annotations

import platform
import shutil
import struct
from pathlib import Path
from typing import Any

from .devices import Device

ELF_MACHINES = {62: "x86_64", 183: "aarch64"}
CROSS_CXX = {"aarch64": "aarch64-linux-gnu-g++", "x86_64": "x86_64-linux-gnu-g++"}
INSTALL_HINT = {"aarch64": "apt-get install g++-aarch64-linux-gnu", "x86_64": "apt-get install g++-x86-64-linux-gnu"}


class ToolchainError(RuntimeError):
    """A compiler the target needs is missing, or an artifact is not what the device can load."""


def host_arch() -> str:
    machine = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)


def elf_arch(path: Path) -> str:
    with open(path, "rb") as fh:
        header = fh.read(20)
    if len(header) < 20 or header[:4] != b"\x7fELF":
        raise ToolchainError(f"{path.name} is not an ELF shared library")
    little = header[5] == 1
    (machine,) = struct.unpack("<H" if little else ">H", header[18:20])
    return ELF_MACHINES.get(machine, f"machine-{machine}")


def fcompile_for(device: Device) -> Any | None:
    """The compiler function for export_library, or None for the host's own compiler."""
    if device.arch == host_arch():
        return None
    from tvm.support import cc  # noqa: PLC0415

    cxx = CROSS_CXX.get(device.arch)
    if cxx is None or shutil.which(cxx) is None:
        raise ToolchainError(
            f"device {device.name} is {device.arch} but the cross compiler {cxx} is missing; "
            f"fix: {INSTALL_HINT.get(device.arch, 'install a cross toolchain')}"
        )
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
