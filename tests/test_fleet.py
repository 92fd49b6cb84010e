"""The fleet on a simulated lab: network namespaces with one sshd each, an x86 device sharing this machine's
filesystem and an arm64 device running under qemu-user in a chroot.

    sudo PYTHONPATH=host:agent python -m pytest -m fleet tests/test_fleet.py            # x86 + faults
    sudo PYTHONPATH=host:agent python -m pytest -m "fleet and slow" tests/test_fleet.py # + arm64 (qemu)
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fleet import lab as labmod  # noqa: E402

pytestmark = pytest.mark.fleet
_REASON = labmod.unavailable_reason()
if _REASON:
    pytestmark = [pytest.mark.fleet, pytest.mark.skip(reason=_REASON)]

X86_TARGET = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "num-cores": 2}
ARM_TARGET = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"], "num-cores": 2}
ARM_INSTALL = "/opt/dlas-agent"
FAST = dict(connect_s=5.0, info_s=10.0, upload_s=120.0, run_s=120.0, queue_s=5.0)


def _devices_yaml(lab: labmod.Lab, x86_install: Path, arm_ip: str | None) -> str:
    common = (f"user: root, key_file: {lab.user_key}, known_hosts: {lab.known_hosts}, netns: {lab.lab_ns}")
    text = f"""version: 1
devices:
  sim-x86:
    connection: {{type: ssh, host: {labmod.SUBNET}.11, {common}}}
    arch: x86_64
    target: {{kind: llvm, mtriple: x86_64-linux-gnu, num-cores: 2}}
    threads: 2
    tags: [x86, sim]
    agent: {{rpc_port: 9190, python: /usr/bin/python3, install_dir: {x86_install}, session_timeout_s: 120}}
  sim-x86-container:
    connection: {{type: ssh, host: {labmod.SUBNET}.11, {common}}}
    arch: x86_64
    target: {{kind: llvm}}
    agent: {{rpc_port: 9191, mode: container, image: "localhost/dlas-agent:fleet-test-absent", install_dir: {x86_install}-c}}
  sim-gone:
    connection: {{type: ssh, host: {labmod.SUBNET}.99, {common}}}
    arch: x86_64
    target: {{kind: llvm}}
    agent: {{install_dir: /nonexistent}}
"""
    if arm_ip:
        text += f"""  sim-arm:
    connection: {{type: ssh, host: {arm_ip}, {common}}}
    arch: aarch64
    target: {{kind: llvm, mtriple: aarch64-linux-gnu, mattr: ["+neon"], num-cores: 2}}
    threads: 2
    tags: [arm, sim]
    agent: {{rpc_port: 9190, python: /usr/bin/python3, install_dir: {ARM_INSTALL}, session_timeout_s: 600}}
"""
    return text


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """The lab (x86 device up, its host key NOT yet trusted), a data dir and a devices file."""
    from dlas_host import paths

    original_data = paths.data_dir()
    work = tmp_path_factory.mktemp("fleet")
    data = work / "data"
    data.mkdir()
    for sub in ("bundles", "cache"):  # reuse downloaded agent bundles and compiled artifacts
        (original_data / sub).mkdir(exist_ok=True)
        (data / sub).symlink_to(original_data / sub)
    saved = {k: os.environ.get(k) for k in ("DLAS_DATA_DIR", "DLAS_LOCK_WAIT_S")}
    os.environ["DLAS_DATA_DIR"] = str(data)
    os.environ["DLAS_LOCK_WAIT_S"] = "5"
    lab = labmod.Lab(work / "lab").start()
    x86_install = work / "x86-agent"
    try:
        x86 = lab.add_device("x86")
        devfile = work / "devices.yaml"
        devfile.write_text(_devices_yaml(lab, x86_install, None))
        yield {"lab": lab, "x86": x86, "devfile": devfile, "work": work, "x86_install": str(x86_install)}
    finally:
        for dev in lab.devices.values():
            lab.stop_agents(dev, str(x86_install) if dev.chroot is None else ARM_INSTALL)
        lab.close()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _registry(env):
    from dlas_host.devices import load

    return load(env["devfile"])


def _timeouts():
    from dlas_host.transport import Timeouts

    return Timeouts(**FAST)


def _store(env):
    from dlas_host.store import ResultStore

    return ResultStore(env["work"] / "results.sqlite")


def _spec():
    from dlas_host.compile import BuildSpec

    return BuildSpec(model="resnet18", dataset="cifar10")


# ------------------------------------------------------------------------------------------------ host keys
def test_unknown_host_key_is_refused_and_opt_in_records_it(env):
    from dlas_host.fleet.deploy import deploy
    from dlas_host.fleet.ssh import SSH, HostKeyUnknown

    dev = _registry(env).get("sim-x86")
    t0 = time.monotonic()
    with pytest.raises(HostKeyUnknown, match="accept-new-host-key"):
        SSH.open(dev.connection, timeout_s=5).close()
    assert time.monotonic() - t0 < 15
    assert env["lab"].known_hosts.read_text().strip() == ""
    report = deploy(dev, dry_run=True, probe_device=True, accept_new_host_key=True, log=lambda _m: None)
    assert report.dry_run and report.plan and not report.actions
    recorded = env["lab"].known_hosts.read_text()
    assert labmod.key_pub(env["x86"]).split()[1] in recorded
    with SSH.open(dev.connection, timeout_s=5) as ssh:  # now trusted without the opt-in
        assert ssh.run("uname -m")[1].strip() == "x86_64"


# ------------------------------------------------------------------------------------------------ deploy
def test_deploy_x86_installs_runtime_only_agent_and_is_idempotent(env):
    from dlas_host.fleet.deploy import deploy

    dev = _registry(env).get("sim-x86")
    first = deploy(dev, log=print)
    print("deploy timings (first):", {k: round(v, 1) for k, v in first.timings_s.items()})
    assert first.changed
    assert first.versions["tvm"].startswith("0.27") and first.versions["tvm_runtime_only"] is True
    assert first.versions["arch"] == "x86_64"
    tvm_dir = next(Path(env["x86_install"]).glob("current/lib/python3*/site-packages/tvm"))
    assert not (tvm_dir / "lib" / "libtvm_compiler.so").exists()
    assert not (tvm_dir / "lib" / "libtvm_runtime_cuda.so").exists()
    assert (tvm_dir / "lib" / "libtvm_runtime.so").exists()
    # the agent binds the device's loopback only
    listening = labmod.sh("ip", "netns", "exec", env["x86"].netns, "ss", "-Hltn", "sport = :9190").stdout
    assert "127.0.0.1:9190" in listening and f"{env['x86'].ip}:9190" not in listening

    second = deploy(dev, log=print)
    print("deploy timings (second):", {k: round(v, 1) for k, v in second.timings_s.items()})
    assert not second.changed
    assert second.actions == ["nothing to install (fingerprint matches)"]
    assert second.timings_s["total"] < first.timings_s["total"]
    plan = deploy(dev, dry_run=True, probe_device=True, log=print).plan
    assert "up to date" in plan[0]


def test_container_mode_dry_run_plans_the_configured_image(env):
    from dlas_host.fleet.deploy import deploy

    if not shutil.which("podman") and not shutil.which("docker"):
        pytest.skip("neither podman nor docker installed")
    report = deploy(_registry(env).get("sim-x86-container"), dry_run=True, probe_device=True, log=print)
    assert any("localhost/dlas-agent:fleet-test-absent" in step and "--network host" in step for step in report.plan)
    assert not report.actions


def test_cli_deploy_dry_run_and_devices_list(env):
    from typer.testing import CliRunner

    from dlas_host.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["deploy", "--device", "sim-x86", "--dry-run", "--probe", "--devices", str(env["devfile"])])
    assert result.exit_code == 0, result.output
    assert "plan:" in result.output
    result = runner.invoke(app, ["deploy", "--device", "sim-gone", "--devices", str(env["devfile"])])
    assert result.exit_code == 1 and "error" in result.output
    result = runner.invoke(app, ["devices", "list", "--devices", str(env["devfile"])])
    assert result.exit_code == 0 and "sim-x86" in result.output


# ------------------------------------------------------------------------------------------------ bench
def test_bench_x86_through_tunnel(env):
    from dlas_host.bench import RunOptions, bench_tvm

    dev = _registry(env).get("sim-x86")
    store = _store(env)
    t0 = time.monotonic()
    row = bench_tvm(_spec(), dev, store, RunOptions(number=2, repeat=5, warmup=1), timeouts=_timeouts())
    print(f"bench sim-x86: {time.monotonic() - t0:.1f} s wall, median {row.median_ms} ms, err {row.max_abs_err}")
    assert row.status == "ok", row.error
    assert row.median_ms and row.median_ms > 0 and row.n == 5
    assert row.max_abs_err is not None and row.max_abs_err < 1e-3
    assert row.device_env["arch"] == "x86_64" and row.device_env["tvm_runtime_only"] is True
    assert store.count({"device": "sim-x86", "status": "ok"}) == 1


def test_fleet_sweep_killed_and_resumed(env):
    """A sweep over the simulated device (SSH tunnel) and the local agent, crashed mid-way and resumed."""
    from collections import Counter

    from sweeptools import cli, final_rows, run_interrupted

    devfile = env["work"] / "devices-sweep.yaml"
    local = "  local: {arch: x86_64, target: {kind: llvm, mcpu: native}, threads: 2, connection: {type: local}}\n"
    devfile.write_text(env["devfile"].read_text() + local)
    spec = env["work"] / "fleet-sweep.yaml"
    spec.write_text("name: fleet\ngrid: {devices: [sim-x86, local], algorithms: [direct, spatial_pack]}\n"
                    "run: {number: 1, repeat: 3, warmup: 0}\n")
    db = env["work"] / "sweep.sqlite"
    sweep_id = run_interrupted(spec, db, devfile, kill_after_rows=1)
    before = final_rows(db)
    assert 1 <= len(before) < 4
    resumed = cli("sweep", "resume", sweep_id, "--db", str(db), "--devices", str(devfile))
    assert resumed.returncode == 0, resumed.stderr
    after = final_rows(db)
    assert after[: len(before)] == before
    ok = Counter(key for sid, key, st in after if sid == sweep_id and st == "ok")
    assert len(ok) == 4 and set(ok.values()) == {1}, after


# ------------------------------------------------------------------------------------------------ faults
def _health(env, timeout_s=5.0):
    from dlas_host.fleet.health import health_check

    return health_check(_registry(env).get("sim-x86"), timeout_s=timeout_s)


def _wait_healthy(env, seconds=60.0):
    deadline = time.monotonic() + seconds
    health = _health(env)
    while not health.ok and time.monotonic() < deadline:
        time.sleep(1)
        health = _health(env)
    return health


def _bench_fails_cleanly(env, pattern: str, limit_s: float = 60.0):
    """A job on the faulty device stores one error row quickly; rows already recorded stay."""
    from dlas_host.bench import RunOptions, bench_tvm

    store = _store(env)
    before = store.count()
    ok_before = store.count({"status": "ok"})
    t0 = time.monotonic()
    row = bench_tvm(_spec(), _registry(env).get("sim-x86"), store, RunOptions(number=1, repeat=1, warmup=0),
                    timeouts=_timeouts())
    took = time.monotonic() - t0
    assert row.status == "error", "the job should fail on a faulty device"
    assert pattern.lower() in row.error.lower(), row.error
    assert took < limit_s, f"failure took {took:.0f} s"
    assert store.count() == before + 1 and store.count({"status": "ok"}) == ok_before
    return row


def test_killed_agent_is_restarted_by_the_supervisor(env):
    lab, dev = env["lab"], env["x86"]
    assert _health(env).ok
    old = lab.agent_pid(dev, env["x86_install"])
    os.kill(old, signal.SIGKILL)
    health = _wait_healthy(env, 60)
    assert health.ok, health.detail
    assert lab.agent_pid(dev, env["x86_install"]) != old


def test_hung_agent_gives_bounded_clear_error_then_recovers(env):
    lab, dev = env["lab"], env["x86"]
    pid = lab.agent_pid(dev, env["x86_install"])
    os.kill(pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        health = _health(env, timeout_s=5)
        assert not health.ok and time.monotonic() - t0 < 20
        assert "hung" in health.detail or "no answer" in health.detail, health.detail
        _bench_fails_cleanly(env, "health check failed")
    finally:
        os.kill(pid, signal.SIGCONT)
    assert _wait_healthy(env, 30).ok


def test_link_down_gives_bounded_clear_error_then_recovers(env):
    lab, dev = env["lab"], env["x86"]
    lab.link(dev, up=False)
    try:
        t0 = time.monotonic()
        health = _health(env)
        assert not health.ok and time.monotonic() - t0 < 20
        assert "unreachable" in health.detail or "no TCP connection" in health.detail, health.detail
        _bench_fails_cleanly(env, "health check failed")
    finally:
        lab.link(dev, up=True)
    assert _wait_healthy(env, 30).ok


def test_dropped_packets_give_bounded_clear_error(env):
    lab, dev = env["lab"], env["x86"]
    lab.drop(dev, on=True)
    try:
        t0 = time.monotonic()
        health = _health(env)
        assert not health.ok and time.monotonic() - t0 < 20, health.detail
    finally:
        lab.drop(dev, on=False)
    assert _wait_healthy(env, 30).ok


def test_killed_sshd_gives_clear_error_then_recovers(env):
    lab, dev = env["lab"], env["x86"]
    lab.stop_sshd(dev)
    try:
        health = _health(env)
        assert not health.ok and "refused" in health.detail.lower(), health.detail
    finally:
        lab.start_sshd(dev)
    assert _wait_healthy(env, 30).ok


def test_changed_host_key_is_refused_even_with_opt_in(env):
    from dlas_host.fleet.deploy import deploy
    from dlas_host.fleet.ssh import HostKeyChanged

    lab, dev = env["lab"], env["x86"]
    known = lab.known_hosts.read_text()
    lab.stop_sshd(dev)
    lab.new_host_key(dev)
    lab.start_sshd(dev)
    try:
        health = _health(env)
        assert not health.ok and "HOST KEY CHANGED" in health.detail
        with pytest.raises(HostKeyChanged):
            deploy(_registry(env).get("sim-x86"), accept_new_host_key=True, log=lambda _m: None)
        assert lab.known_hosts.read_text() == known  # never auto-accepted
        _bench_fails_cleanly(env, "HOST KEY CHANGED")
    finally:
        lab.trust_host_key(dev)  # the operator verified the new key
    assert _wait_healthy(env, 30).ok


def test_unreachable_host_gives_bounded_clear_error(env):
    from dlas_host.fleet.health import health_check

    t0 = time.monotonic()
    health = health_check(_registry(env).get("sim-gone"), timeout_s=4)
    assert not health.ok and time.monotonic() - t0 < 20
    assert "10.77.0.99" in health.detail and ("unreachable" in health.detail.lower()
                                              or "no TCP connection" in health.detail), health.detail


def test_busy_device_is_refused_while_locked_by_another_process(env):
    import subprocess

    from dlas_host.fleet.locks import DeviceBusy, describe_locks, device_lock

    code = ("import sys, time; from dlas_host.fleet.locks import device_lock\n"
            "with device_lock('sim-x86', purpose='other run'):\n    print('held', flush=True); time.sleep(60)\n")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                              env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    try:
        assert holder.stdout.readline().strip() == "held"
        assert "other run" in describe_locks()["sim-x86"]
        with pytest.raises(DeviceBusy, match="busy"):
            with device_lock("sim-x86", wait_s=1):
                pass
        _bench_fails_cleanly(env, "busy")
        holder.kill()  # a crashed holder frees the device at once
        holder.wait(10)
        with device_lock("sim-x86", wait_s=1):
            pass
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(10)


# ------------------------------------------------------------------------------------------------ arm64
@pytest.mark.slow
def test_arm64_device_under_qemu_deploy_and_bench(env):
    from fleet.rootfs import binfmt_ready, ensure_rootfs

    from dlas_host.bench import RunOptions, bench_tvm
    from dlas_host.devices import load
    from dlas_host.fleet.deploy import deploy
    from dlas_host.transport import Timeouts

    if shutil.which("debootstrap") is None:
        pytest.skip("debootstrap missing (apt-get install debootstrap)")
    reason = binfmt_ready()
    if reason:
        pytest.skip(reason)
    lab = env["lab"]
    rootfs = ensure_rootfs(log=print)
    merged = lab.overlay(rootfs)
    arm = lab.add_device("arm", chroot=merged)
    lab.trust_host_key(arm)
    devfile = env["work"] / "devices-arm.yaml"
    devfile.write_text(_devices_yaml(lab, Path(env["x86_install"]), arm.ip))
    dev = load(devfile).get("sim-arm")

    t0 = time.monotonic()
    report = deploy(dev, log=print, start_timeout_s=300, install_timeout_s=1200)
    print("deploy timings (arm64, qemu):", {k: round(v, 1) for k, v in report.timings_s.items()},
          f"wall {time.monotonic() - t0:.0f} s")
    assert report.versions["arch"] == "aarch64" and report.versions["tvm_runtime_only"] is True

    store = _store(env)
    before = store.count()
    t0 = time.monotonic()
    row = bench_tvm(_spec(), dev, store, RunOptions(number=1, repeat=1, warmup=0),
                    timeouts=Timeouts(connect_s=60, info_s=120, upload_s=300, run_s=600))
    print(f"bench sim-arm: {time.monotonic() - t0:.1f} s wall, median {row.median_ms} ms (emulated), "
          f"err {row.max_abs_err}")
    assert row.status == "ok", row.error
    assert row.device_env["arch"] == "aarch64"
    # qemu-user shows the x86 host's /proc/cpuinfo: the agent says it is emulated, claims no CPU flags, and
    # the row's timing is flagged so no report reads it as a board's number (issue #19, item 7)
    assert "x86 host CPU" in row.device_env["emulation"] and row.device_env["cpu_flags"] == []
    assert any(w.startswith("emulated:") for w in row.warnings)
    assert row.max_abs_err is not None and row.max_abs_err < 1e-3
    assert store.count() == before + 1
