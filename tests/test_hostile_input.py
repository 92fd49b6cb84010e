"""Hostile or impossible values in devices.yaml and on the command line: refused in one line, never run.

A device field reaches shell commands on the device (probe, venv install, supervisor, container run) and a
systemd unit. devices.yaml refuses values that can never be legitimate; the commands quote every value
anyway, which the tests check by running the real generated scripts in a real shell.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dlas_host.devices import AgentSettings, Device, DeviceConfigError, load
from dlas_host.fleet.deploy import _probe_script, install_command, systemd_unit

sys.path.insert(0, str(Path(__file__).resolve().parent))

ROOT = Path(__file__).resolve().parents[1]
SSH = "connection: {type: ssh, host: pi.lab, user: pi}"


def _hostile(marker: Path) -> list[str]:
    """Values that, pasted into a shell command, create ``marker``."""
    return [f"python3; touch {marker} #", f"$(touch {marker})", f"`touch {marker}`", f"python3\ntouch {marker}\n#",
            f"python3 && touch {marker} #", f"python3 | touch {marker} #"]


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "devices.yaml"
    path.write_text(text)
    return path


def _yaml_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


# ------------------------------------------------------------------------------------------------ devices.yaml
@pytest.mark.parametrize("field, line", [
    ("agent.python", "agent: {{python: {v}}}"),
    ("agent.install_dir", "agent: {{install_dir: {v}}}"),
    ("agent.image", "agent: {{mode: container, image: {v}}}"),
    ("connection.user", "connection: {{type: ssh, host: pi.lab, user: {v}}}"),
    ("connection.host", "connection: {{type: ssh, host: {v}, user: pi}}"),
])
def test_shell_metacharacters_in_device_fields_are_one_line_errors(tmp_path, field, line):
    marker = tmp_path / "pwned"
    for value in _hostile(marker):
        path = _write(tmp_path, "devices:\n  pi:\n    arch: aarch64\n    target: {kind: llvm}\n"
                                f"    {line.format(v=_yaml_str(value))}\n")
        with pytest.raises(DeviceConfigError) as info:
            load(path)
        message = str(info.value)
        assert "\n" not in message
        assert message.startswith(f"{path}: device 'pi': field {field}: "), message
        assert "is not a valid" in message
    assert not marker.exists()


@pytest.mark.parametrize("line, field", [
    ("agent: {python: --version}", "agent.python"),  # an option, not an interpreter
    ("agent: {install_dir: -rf}", "agent.install_dir"),
    ('connection: {type: ssh, host: pi.lab, user: pi, key_file: "k\\nProxyCommand touch x"}', "connection.key_file"),
    ('connection: {type: tracker, host: "127.0.0.1 -x", key: pi}', "connection.host"),
])
def test_options_and_control_characters_are_refused(tmp_path, line, field):
    path = _write(tmp_path, f"devices:\n  pi:\n    arch: aarch64\n    target: {{kind: llvm}}\n    {line}\n")
    with pytest.raises(DeviceConfigError, match=f"device 'pi': field {field}: ") as info:
        load(path)
    assert "\n" not in str(info.value)


def test_ordinary_values_still_load(tmp_path):
    path = _write(tmp_path, "devices:\n  pi:\n    arch: aarch64\n    target: {kind: llvm}\n"
                            "    connection: {type: ssh, host: 10.0.0.7, port: 2222, user: pi.user-1, "
                            "key_file: ~/.ssh/id ed25519}\n"
                            "    agent: {python: ~/miniforge3/envs/py3.11/bin/python3.11, "
                            "install_dir: /opt/dlas-agent, image: registry.lab:5000/dlas/agent@sha256:abc}\n")
    dev = load(path).get("pi")
    assert dev.agent.python == "~/miniforge3/envs/py3.11/bin/python3.11"
    assert dev.connection.key_file == "~/.ssh/id ed25519"


def test_device_name_with_a_newline_is_one_line(tmp_path):
    path = _write(tmp_path, 'devices:\n  "pi\\nrm -rf ~": {arch: aarch64, target: {kind: llvm}}\n')
    with pytest.raises(DeviceConfigError, match="field name: ") as info:
        load(path)
    assert "\n" not in str(info.value)


def test_cli_deploy_dry_run_with_a_hostile_python_runs_nothing(tmp_path):
    """The reported bug: `deploy --dry-run` ran agent.python in the device's shell."""
    from dlas_host.cli import app

    marker = tmp_path / "pwned"
    path = _write(tmp_path, f"devices:\n  pi:\n    arch: x86_64\n    target: {{kind: llvm}}\n    {SSH}\n"
                            f"    agent: {{python: {_yaml_str(f'python3; touch {marker} #')}}}\n")
    t0 = time.monotonic()
    result = CliRunner().invoke(app, ["deploy", "--device", "pi", "--dry-run", "--devices", str(path)])
    assert result.exit_code == 1
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "field agent.python" in lines[0] and "Traceback" not in result.output
    assert time.monotonic() - t0 < 10  # refused before any connection
    assert not marker.exists()


def test_cli_deploy_dry_run_connects_to_nothing(tmp_path):
    """`--dry-run` plans from devices.yaml alone: the device's SSH port never sees a connection."""
    import socket

    from dlas_host.cli import app

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    listener.settimeout(0.5)
    port = listener.getsockname()[1]
    path = _write(tmp_path, f"devices:\n  pi:\n    arch: aarch64\n    target: {{kind: llvm, mtriple: aarch64-linux-gnu}}\n"
                            f"    connection: {{type: ssh, host: 127.0.0.1, port: {port}, user: pi}}\n")
    try:
        result = CliRunner().invoke(app, ["deploy", "--device", "pi", "--dry-run", "--devices", str(path)])
        assert result.exit_code == 0, result.output
        assert "plan: connect to pi@127.0.0.1" in result.output and "--probe" in result.output
        with pytest.raises(socket.timeout):
            listener.accept()[0].close()
    finally:
        listener.close()


# ------------------------------------------------------------------------------------------------ quoting
def _unchecked_device(python: str = "python3", install_dir: str = "~/.dlas-agent") -> Device:
    """A device whose values skipped devices.yaml's checks (built in code): the commands must still quote."""
    agent = AgentSettings.model_construct(**{**AgentSettings().model_dump(), "python": python,
                                             "install_dir": install_dir})
    return Device.model_construct(name="pi", description="", arch="x86_64", target={"kind": "llvm"}, threads=0,
                                  tags=(), agent=agent)


def _sh(script: str, home: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=60,
                          env={"HOME": str(home), "PATH": "/usr/bin:/bin"})


def test_probe_script_runs_a_hostile_python_as_one_word(tmp_path):
    marker = tmp_path / "pwned"
    for value in _hostile(marker):
        dev = _unchecked_device(python=value, install_dir=f"~/agent $(touch {marker})")
        proc = _sh(_probe_script(dev.agent.install_dir, dev.agent.python), tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert "python=\n" in proc.stdout + "\n"  # no such interpreter: nothing ran
        assert not marker.exists(), value
    proc = _sh(_probe_script("~/.dlas-agent", sys.executable), tmp_path)
    assert f"python={sys.version_info[0]}.{sys.version_info[1]}." in proc.stdout


def test_install_command_runs_a_hostile_python_as_one_word(tmp_path):
    marker = tmp_path / "pwned"
    for value in _hostile(marker):
        proc = _sh(install_command(f"~/agent `touch {marker}`", value, "0123456789ab", ["lib/x.so"]), tmp_path)
        assert proc.returncode != 0  # the "interpreter" does not exist: the chain stops there
        assert not marker.exists(), value


def test_systemd_unit_keeps_a_hostile_home_in_one_quoted_word():
    plain = systemd_unit("/home/pi/.dlas-agent", 9190, 2).splitlines()
    hostile = systemd_unit('/home/p i\n[Service]\nExecStartPre=/bin/touch /tmp/x %h $HOME "', 9190, 2).splitlines()
    assert len(hostile) == len(plain)
    exec_start = next(ln for ln in hostile if ln.startswith("ExecStart="))
    assert exec_start.startswith('ExecStart="/home/p i\\n[Service]\\nExecStartPre=/bin/touch /tmp/x %%h $$HOME \\"')
    assert not any(ln.startswith("ExecStartPre") for ln in hostile)


# ------------------------------------------------------------------------------------------------ small bad input
def test_duplicate_device_names_are_refused(tmp_path):
    path = _write(tmp_path, "devices:\n  pi: {arch: aarch64, target: {kind: llvm}}\n"
                            "  x86: {arch: x86_64, target: {kind: llvm}}\n"
                            "  pi: {arch: x86_64, target: {kind: llvm}}\n")
    with pytest.raises(DeviceConfigError) as info:
        load(path)
    assert str(info.value) == (f"{path}: device 'pi' is defined twice (lines 2 and 4); device names must be unique")


def test_duplicate_key_inside_a_device_is_refused(tmp_path):
    path = _write(tmp_path, "devices:\n  pi:\n    arch: aarch64\n    target: {kind: llvm}\n    arch: x86_64\n")
    with pytest.raises(DeviceConfigError, match=r"device 'pi': key 'arch' is given twice \(lines 3 and 5\)"):
        load(path)


@pytest.mark.parametrize("target, expected", [
    ("{kind: llvm, mcpu: znver9}", "LLVM does not know mcpu 'znver9' for "),
    ("{kind: llvm, mtriple: aarch64-linux-gnu, mcpu: cortex-a7x}", "LLVM does not know mcpu 'cortex-a7x' for "
                                                                    "aarch64-linux-gnu (closest: cortex-a7"),
    ("{kind: cuda, arch: sm_90, host: {kind: llvm, mcpu: sapphirerapid}}", "closest: sapphirerapids"),
    ("{kind: llvm, mtriple: aarch64-linux-gnu, mcpu: znver4}", "LLVM does not know mcpu 'znver4'"),
    ("{kind: llvm, mtriple: bogus-x}", "LLVM does not know the target triple"),
])
def test_unknown_mcpu_is_a_one_line_error(tmp_path, target, expected):
    path = _write(tmp_path, f"devices:\n  box:\n    arch: x86_64\n    target: {target}\n")
    with pytest.raises(DeviceConfigError) as info:
        load(path)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{path}: device 'box': field target: ")
    assert expected in message


def test_known_mcpus_still_load(tmp_path):
    path = _write(tmp_path, "devices:\n  a: {arch: x86_64, target: {kind: llvm, mcpu: znver4}}\n"
                            "  b: {arch: aarch64, target: {kind: llvm, mtriple: aarch64-linux-gnu, mcpu: cortex-a72}}\n"
                            "  c: {arch: x86_64, target: {kind: llvm, mcpu: native}}\n")
    assert set(load(path).devices) == {"a", "b", "c"}


def test_tune_with_zero_trials_is_refused_at_once(tmp_path, local_device):
    import typer

    from dlas_host.cli_tune import tune
    from dlas_host.compile import BuildSpec
    from dlas_host.tune.tuner import Tuner, TuneError, TuneOptions

    app = typer.Typer()
    app.command()(tune)  # `dlas-host tune` (main() registers it on the real app)
    t0 = time.monotonic()
    result = CliRunner().invoke(app, ["--trials", "0", "--records-dir", str(tmp_path),
                                      "--devices", str(ROOT / "devices.yaml")])
    assert result.exit_code == 1
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "--trials must be at least 1 (got 0)" in lines[0]
    assert time.monotonic() - t0 < 10
    with pytest.raises(TuneError, match="trials must be >= 1"):
        Tuner(BuildSpec(model="resnet18", dataset="cifar10", tuning="tuned"), [local_device], TuneOptions(trials=0))


# ------------------------------------------------------------------------------------------------ over real SSH
@pytest.mark.fleet
def test_deploy_dry_run_over_ssh_runs_no_hostile_python(tmp_path):
    """End to end against a real sshd: a value that skipped the checks is still no command on the device."""
    from fleet import lab as labmod

    from dlas_host.devices import SSHConnection
    from dlas_host.fleet.deploy import DeployError, deploy

    reason = labmod.unavailable_reason()
    if reason:
        pytest.skip(reason)
    lab = labmod.Lab(tmp_path / "lab").start()
    try:
        sim = lab.add_device("x86")  # shares this machine's filesystem: the marker would show here
        conn = SSHConnection(type="ssh", host=sim.ip, user="root", key_file=str(lab.user_key),
                             known_hosts=str(lab.known_hosts), netns=lab.lab_ns)
        marker = tmp_path / "pwned"
        for value in _hostile(marker):
            dev = _unchecked_device(python=value, install_dir=str(tmp_path / "agent"))
            dev = Device.model_construct(**{**dict(dev), "connection": conn})
            with pytest.raises(DeployError, match="no working"):
                deploy(dev, dry_run=True, probe_device=True, accept_new_host_key=True, log=lambda _m: None)
            assert not marker.exists(), value
        assert not (tmp_path / "agent").exists()
    finally:
        lab.close()
