from pathlib import Path

import pytest

from dlas_host.devices import DeviceConfigError, load

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "devices.yaml"
    path.write_text(text)
    return path


def test_shipped_registry_has_local_device():
    reg = load(ROOT / "devices.yaml")
    dev = reg.get("local")
    assert dev.connection.type == "local"
    assert dev.arch == "x86_64"
    assert str(dev.tvm_target()).startswith('{"kind":"llvm"')
    assert dev.threads == 2


def test_commented_examples_are_valid(tmp_path):
    """The examples in devices.yaml, uncommented, must load: users copy them."""
    lines = (ROOT / "devices.yaml").read_text().splitlines()
    start = next(i for i, ln in enumerate(lines) if "--- Examples" in ln)
    body = ["version: 1", "devices:"]
    for ln in lines[start + 1:]:
        if ln.startswith("  # ") and not ln.startswith("  # ---"):
            body.append("  " + ln[4:])
        elif ln.strip() == "#":
            body.append("")
    reg = load(write(tmp_path, "\n".join(body) + "\n"))
    assert {"xeon", "rpi4", "rpi5", "jetson", "h100", "pooled-pi"} <= set(reg.devices)
    assert reg.get("jetson").is_cuda and reg.get("jetson").arch == "aarch64"
    assert reg.get("h100").target["arch"] == "sm_90"
    assert reg.get("pooled-pi").connection.type == "tracker"
    assert [d.name for d in reg.select(tags=["arm", "cpu"])] == ["rpi4", "rpi5", "pooled-pi"]


@pytest.mark.parametrize("text, expected", [
    ("devices:\n  pi: {arch: aarch64, target: {kind: llvm}, colour: red}\n", "device 'pi': field colour: unknown key"),
    ("devices:\n  pi: {arch: aarch64}\n", "device 'pi': field target: missing required field"),
    ("devices:\n  pi: {arch: aarch64, target: {kind: tpu}}\n", "device 'pi': field target: TVM rejects this target"),
    ("devices:\n  pi: {arch: riscv, target: {kind: llvm}}\n", "device 'pi': field arch:"),
    ("devices:\n  pi: {arch: x86_64, target: {kind: llvm}, connection: {type: ssh, host: h}}\n",
     "device 'pi': field connection.user: missing required field"),
    ("devices:\n  pi: {arch: x86_64, target: {kind: llvm}, connection: {type: telnet}}\n", "device 'pi': field connection"),
    ("devices: [1, 2\n", "not valid YAML"),
    ("machines: {}\n", "expected a top-level 'devices:' mapping"),
])
def test_bad_registry_gives_one_line_naming_file_device_field(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(DeviceConfigError) as info:
        load(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(str(path))
    assert expected in message


def test_missing_file_and_unknown_device(tmp_path):
    with pytest.raises(DeviceConfigError, match="devices file not found"):
        load(tmp_path / "nope.yaml")
    reg = load(ROOT / "devices.yaml")
    with pytest.raises(DeviceConfigError, match="no device named 'jetsn'; known: local"):
        reg.get("jetsn")
