"""The CPU architectures DLAS Lab knows: one row each, read by devices, toolchain, bundle, images, deploy, doctor.

Adding an architecture is one row in ``ARCHES`` (plus a Dockerfile when ``docker/Dockerfile.cpu`` does not fit).
LLVM triples and intrinsics are compiler specifics and live in ``lower/``, not here.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass

from .errors import DlasError


class UnknownArchError(DlasError, ValueError):
    """An architecture name that no row of the table has (ValueError so pydantic reports it as a field error)."""


@dataclass(frozen=True)
class Arch:
    name: str  # what devices.yaml and `uname -m` on Linux say: x86_64, aarch64
    aliases: tuple[str, ...]  # other spellings of the same machine (dpkg, docker, macOS `uname -m`)
    label: str  # for prose: "cross-compiling for Arm devices"
    deb_arch: str  # dpkg / debootstrap / OCI image arch: amd64, arm64
    elf_machine: int  # ELF header e_machine
    cross_cxx: str  # the Debian cross C++ compiler for this arch
    cross_cxx_install: str  # how to get it
    qemu: str  # qemu user-mode emulator name (the binfmt handler's name too)
    wheel_platforms: tuple[str, ...]  # pip --platform tags for the agent bundle, newest first
    base_tag_suffix: str  # suffix of the offline base image tag: dlas-base:bookworm<suffix>
    cpu_flavor: str  # name of the CPU-only agent image flavor (docker/Dockerfile.cpu)
    cpu_flavor_description: str

    @property
    def docker_platform(self) -> str:
        return f"linux/{self.deb_arch}"

    @property
    def qemu_static(self) -> str:
        return f"{self.qemu}-static"

    @property
    def binfmt_path(self) -> str:
        return f"/proc/sys/fs/binfmt_misc/{self.qemu}"


ARCHES: dict[str, Arch] = {a.name: a for a in [
    Arch("x86_64", ("amd64",), "x86-64", "amd64", 62, "x86_64-linux-gnu-g++", "apt-get install g++-x86-64-linux-gnu",
         "qemu-x86_64", ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"), "",
         "cpu-x86_64", "x86_64 CPU servers and desktops"),
    Arch("aarch64", ("arm64",), "Arm", "arm64", 183, "aarch64-linux-gnu-g++", "apt-get install g++-aarch64-linux-gnu",
         "qemu-aarch64", ("manylinux_2_28_aarch64", "manylinux_2_17_aarch64", "manylinux2014_aarch64"), "-arm64",
         "cpu-arm64", "arm64 boards (Raspberry Pi 4/5, Arm servers), CPU only"),
]}


def names() -> list[str]:
    return list(ARCHES)


def get(name: str) -> Arch:
    try:
        return ARCHES[name]
    except (KeyError, TypeError):
        raise UnknownArchError(f"unknown arch {name!r}; known: {', '.join(ARCHES)}") from None


def normalise(machine: str) -> str:
    """The table name for ``machine`` when it is an alias (``arm64`` -> ``aarch64``); anything else unchanged."""
    for arch in ARCHES.values():
        if machine in arch.aliases:
            return arch.name
    return machine


def host() -> str:
    """This machine's arch, as a table name when the table knows it."""
    return normalise(platform.machine().lower())


def by_elf_machine(e_machine: int) -> Arch | None:
    return next((a for a in ARCHES.values() if a.elf_machine == e_machine), None)
