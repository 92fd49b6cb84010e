"""The CPU architecture table (dlas_host.arches) and the claim that a new architecture is one row in it."""

from __future__ import annotations

import dataclasses
import struct
from pathlib import Path

import pytest

from dlas_host import arches, bundle, doctor, images, toolchain
from dlas_host.devices import DeviceConfigError, load
from dlas_host.fleet.deploy import DeployError, Probe, check_device

RISCV = arches.Arch(
    "riscv64", ("riscv",), "RISC-V", "riscv64", 243, "riscv64-linux-gnu-g++", "apt-get install g++-riscv64-linux-gnu",
    "qemu-riscv64", ("manylinux_2_39_riscv64",), "-riscv64", "cpu-riscv64", "RISC-V boards, CPU only")


def _devices(tmp_path: Path, arch: str) -> Path:
    path = tmp_path / "devices.yaml"
    path.write_text(f"devices:\n  board:\n    arch: {arch}\n    target: {{kind: llvm}}\n")
    return path


def test_table_helpers():
    assert arches.names() == ["x86_64", "aarch64"]
    arm = arches.get("aarch64")
    assert (arm.deb_arch, arm.docker_platform, arm.elf_machine) == ("arm64", "linux/arm64", 183)
    assert arm.base_tag_suffix == "-arm64"
    assert (arm.qemu_static, arm.binfmt_path) == ("qemu-aarch64-static", "/proc/sys/fs/binfmt_misc/qemu-aarch64")
    assert arches.get("x86_64").wheel_platforms[0] == "manylinux_2_28_x86_64"
    assert [arches.normalise(m) for m in ("arm64", "amd64", "aarch64", "x86_64", "z80")] == \
        ["aarch64", "x86_64", "aarch64", "x86_64", "z80"]
    assert arches.by_elf_machine(62).name == "x86_64" and arches.by_elf_machine(8) is None
    assert arches.host() == toolchain.host_arch()


def test_unknown_arch_is_one_line_naming_the_known_ones():
    with pytest.raises(arches.UnknownArchError, match=r"^unknown arch 'z80'; known: x86_64, aarch64$"):
        arches.get("z80")


def test_devices_yaml_unknown_arch_names_the_known_ones(tmp_path):
    path = _devices(tmp_path, "riscv64")
    with pytest.raises(DeviceConfigError) as info:
        load(path)
    assert str(info.value) == f"{path}: device 'board': field arch: unknown arch 'riscv64'; known: x86_64, aarch64"


def test_devices_yaml_arch_must_be_a_string(tmp_path):
    with pytest.raises(DeviceConfigError, match="field arch: ") as info:
        load(_devices(tmp_path, "5"))
    assert "\n" not in str(info.value)


def test_existing_behaviour_is_read_from_the_table():
    assert images.base_tag("x86_64") == "dlas-base:bookworm"
    assert images.base_tag("aarch64") == "dlas-base:bookworm-arm64"
    assert images.flavor("cpu-arm64").platform == "linux/arm64" and images.flavor("cuda-x86_64").oci_arch == "amd64"
    assert list(images.FLAVORS)[:2] == ["cpu-x86_64", "cpu-arm64"]
    assert bundle.wheel_platforms("aarch64") == ["manylinux_2_28_aarch64", "manylinux_2_17_aarch64",
                                                 "manylinux2014_aarch64"]
    with pytest.raises(bundle.BundleError, match="supported: x86_64, aarch64"):
        bundle.wheel_platforms("z80")
    assert toolchain.cross_compiler("aarch64") == ("aarch64-linux-gnu-g++", "apt-get install g++-aarch64-linux-gnu")
    if arches.host() == "x86_64":
        assert doctor.tools()["qemu-aarch64-static"][0] == "running the arm64 test device"


def test_a_new_architecture_is_one_row(monkeypatch, tmp_path):
    monkeypatch.setitem(arches.ARCHES, "riscv64", RISCV)
    # devices.yaml accepts it
    device = load(_devices(tmp_path, "riscv64")).get("board")
    assert device.arch == "riscv64"
    # toolchain: cross compiler, its install hint, and the ELF machine of an artifact
    assert toolchain.cross_compiler("riscv64") == ("riscv64-linux-gnu-g++", "apt-get install g++-riscv64-linux-gnu")
    monkeypatch.setattr(toolchain.shutil, "which", lambda _name: None)
    with pytest.raises(toolchain.ToolchainError, match="riscv64-linux-gnu-g\\+\\+ is missing; fix: apt-get install "
                                                       "g\\+\\+-riscv64-linux-gnu"):
        toolchain.fcompile_for(device)
    elf = tmp_path / "lib.so"
    elf.write_bytes(b"\x7fELF\x02\x01" + bytes(12) + struct.pack("<H", 243))
    assert toolchain.elf_arch(elf) == "riscv64"
    # bundle: wheel platform tags
    assert bundle.wheel_platforms("riscv64") == ["manylinux_2_39_riscv64"]
    # images: platform, deb arch and base tag
    assert images.docker_platform("riscv64") == "linux/riscv64" and images.deb_arch("riscv64") == "riscv64"
    assert images.base_tag("riscv64") == "dlas-base:bookworm-riscv64"
    assert dataclasses.replace(images.flavor("cpu-x86_64"), arch="riscv64").platform == "linux/riscv64"
    # deploy: `uname -m` spellings of the new arch match the device
    check_device(device, Probe(arch="riscv", python="3.11.2"))
    with pytest.raises(DeployError, match="devices.yaml says arch riscv64"):
        check_device(device, Probe(arch="aarch64", python="3.11.2"))
    # doctor: its cross compiler and qemu are checked
    assert {"riscv64-linux-gnu-g++", "qemu-riscv64-static"} <= set(doctor.tools())
