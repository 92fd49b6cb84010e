"""Device locks: exclusive across processes, free when the holder crashes, stale records of other hosts expire;
machine-wide (keyed by what the device is, not its name or data dir), shared for CPU work that must not
overlap a timing on this machine, with waiting timings served first."""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("DLAS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("DLAS_LOCK_DIR", str(tmp_path / "locks"))  # this test's "machine": no other run's locks
    return tmp_path


def _holder(name: str, seconds: float = 60) -> subprocess.Popen:
    code = ("import sys, time; from dlas_host.fleet.locks import device_lock\n"
            f"with device_lock({name!r}, purpose='test holder'):\n    print('held', flush=True); time.sleep({seconds})\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_lock_is_exclusive_and_freed_when_holder_crashes():
    from dlas_host.fleet.locks import DeviceBusy, describe_locks, device_lock

    proc = _holder("rpi4")
    try:
        state = describe_locks()["rpi4"]
        assert "test holder" in state and f"pid {proc.pid}" in state
        t0 = time.monotonic()
        with pytest.raises(DeviceBusy, match=f"pid {proc.pid}"):
            with device_lock("rpi4", wait_s=1.5):
                pass
        assert 1.0 <= time.monotonic() - t0 < 10
        proc.kill()  # crash: the kernel drops the flock
        proc.wait(10)
        assert "rpi4" not in describe_locks()
        with device_lock("rpi4", wait_s=0) as me:
            assert me.pid == os.getpid()
            assert "this process" in describe_locks()["rpi4"]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_waiting_run_gets_the_device_when_it_is_released():
    from dlas_host.fleet.locks import device_lock

    proc = _holder("jetson", seconds=2)
    try:
        t0 = time.monotonic()
        with device_lock("jetson", wait_s=30):
            assert time.monotonic() - t0 < 25
    finally:
        proc.wait(30)


def test_lock_is_reentrant_in_one_process():
    from dlas_host.fleet.locks import describe_locks, device_lock

    with device_lock("xeon"):
        with device_lock("xeon"):  # e.g. a sweep holding the device calls bench_tvm, which locks too
            pass
        assert "xeon" in describe_locks()
    assert "xeon" not in describe_locks()


def test_record_of_another_host_blocks_until_stale():
    from dlas_host.fleet.locks import DeviceBusy, describe_locks, device_lock, lock_path

    now = time.time()
    lock_path("orin").write_text(json.dumps({"host": "other-host", "pid": 1, "start": now - 50,
                                             "heartbeat": now - 5, "purpose": "sweep"}))
    with pytest.raises(DeviceBusy, match="other-host"):
        with device_lock("orin", wait_s=0, stale_after_s=60):
            pass
    assert "other-host" in describe_locks(stale_after_s=60)["orin"]
    lock_path("orin").write_text(json.dumps({"host": "other-host", "pid": 1, "start": now - 500,
                                             "heartbeat": now - 400, "purpose": "sweep"}))
    assert describe_locks(stale_after_s=60)["orin"].startswith("stale")
    with device_lock("orin", wait_s=0, stale_after_s=60) as me:  # expired: taken over
        assert me.host != "other-host"


def test_heartbeat_refreshes_the_record():
    from dlas_host.fleet.locks import device_lock, lock_path

    with device_lock("pi5", heartbeat_s=0.2) as me:
        first = me.heartbeat
        time.sleep(0.7)
        record = json.loads(lock_path("pi5").read_text())
        assert record["heartbeat"] > first
    assert lock_path("pi5").read_text() == ""


# ------------------------------------------------------------------------------------------------ machine-wide
HOLD = """
import os, sys, time
from pathlib import Path
from dlas_host.fleet.locks import cpu_use, device_lock, machine_key
mode, target, go = sys.argv[1], sys.argv[2], Path(sys.argv[3])
target = machine_key() if target == "this machine" else target  # what any local device locks (no TVM import)
with (cpu_use("test compile") if mode == "shared" else device_lock(target, purpose="test timing")):
    print("held", flush=True)
    while not go.exists():
        time.sleep(0.05)
    go.with_name(go.name + ".released").write_text(str(time.time()))
"""


class Holder:
    """A lock held by another process until ``release()``; ``released`` exists just before it lets go."""

    def __init__(self, mode: str, target: str, tmp: Path, env: dict[str, str] | None = None) -> None:
        self.go = tmp / f"go-{mode}-{os.urandom(4).hex()}"
        self.released = self.go.with_name(self.go.name + ".released")
        self.proc = subprocess.Popen([sys.executable, "-c", HOLD, mode, target, str(self.go)], stdout=subprocess.PIPE,
                                     text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path),
                                                     **(env or {})})
        assert self.proc.stdout.readline().strip() == "held"

    def release(self) -> None:
        self.go.write_text("go")
        self.proc.wait(60)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture()
def holders():
    made: list[Holder] = []
    yield made
    for h in made:
        h.kill()


def _renamed(device, name: str, **connection):
    from dlas_host.devices import SSHConnection, TrackerConnection

    conn = device.connection
    if connection.get("type") == "ssh":
        conn = SSHConnection(**connection)
    elif connection.get("type") == "tracker":
        conn = TrackerConnection(**connection)
    return device.model_copy(update={"name": name, "connection": conn})


def test_keys_are_what_the_device_physically_is(local_device):
    from dlas_host.fleet.locks import device_key, machine_key

    assert device_key(local_device) == machine_key() == device_key(_renamed(local_device, "another-name"))
    ssh_here = _renamed(local_device, "via-ssh", type="ssh", host="127.0.0.1", user="me")
    assert device_key(ssh_here) == machine_key()  # an agent on this machine times this machine's CPU
    board = _renamed(local_device, "rpi4", type="ssh", host="10.9.8.7", port=2222, user="pi")
    same_board = _renamed(local_device, "rpi4-int8", type="ssh", host="10.9.8.7", port=2222, user="bench")
    other_board = _renamed(local_device, "rpi5", type="ssh", host="10.9.8.7", port=2223, user="pi")
    assert device_key(board) == device_key(same_board) == "ssh-10.9.8.7-2222"
    assert device_key(other_board) != device_key(board)  # one gateway, one port per board
    in_netns = _renamed(local_device, "sim", type="ssh", host="10.77.0.2", user="root", netns="dev1")
    assert device_key(in_netns) == "ssh-10.77.0.2-22-netns-dev1"
    pool = _renamed(local_device, "pool", type="tracker", host="10.0.0.1", port=9190, key="rpi")
    assert device_key(pool) == "tracker-10.0.0.1-9190-rpi"


def test_two_data_dirs_and_two_names_of_this_machine_exclude_each_other(local_device, holders, tmp_path,
                                                                        monkeypatch):
    """The bug of issue #20: locks under each data dir let two benches time this machine at once."""
    from dlas_host.fleet.locks import DeviceBusy, describe_locks, device_lock, lock_path

    holders.append(Holder("exclusive", "this machine", tmp_path, env={"DLAS_DATA_DIR": str(tmp_path / "data-a")}))
    monkeypatch.setenv("DLAS_DATA_DIR", str(tmp_path / "data-b"))
    for device in (local_device, _renamed(local_device, "bench-box")):
        with pytest.raises(DeviceBusy, match=f"pid {holders[0].proc.pid}"):
            with device_lock(device, wait_s=1):
                pass
    assert lock_path(local_device).parent == tmp_path / "locks"  # not under either data dir
    states = describe_locks(devices=[local_device, _renamed(local_device, "bench-box")])
    assert set(states) == {"local", "bench-box"} and all("test timing" in v for v in states.values())
    # `devices list` shows it against every name of this machine, not only the name the holder asked for
    from typer.testing import CliRunner

    from dlas_host.cli import app

    two = tmp_path / "two.yaml"
    two.write_text("devices:\n  local:\n    arch: x86_64\n    target: {kind: llvm}\n    connection: {type: local}\n"
                   "  bench-box:\n    arch: x86_64\n    target: {kind: llvm}\n    connection: {type: local}\n")
    listed = CliRunner().invoke(app, ["devices", "list", "--devices", str(two), "--json"])
    assert listed.exit_code == 0, listed.output
    assert {d["name"]: "test timing" in d["lock"] for d in json.loads(listed.output)} == {"local": True,
                                                                                         "bench-box": True}
    holders[0].release()
    with device_lock(_renamed(local_device, "bench-box"), wait_s=10):
        pass


def test_default_lock_dir_is_machine_wide_and_shared_by_users(monkeypatch, tmp_path):
    from dlas_host.fleet.locks import DEFAULT_LOCK_DIR, device_lock, lock_dir

    monkeypatch.delenv("DLAS_LOCK_DIR")
    assert lock_dir() == Path(DEFAULT_LOCK_DIR)
    assert stat.S_IMODE(os.stat(DEFAULT_LOCK_DIR).st_mode) & 0o1777 == 0o1777
    shared = Path(tempfile.mkdtemp(prefix="dlas-locks-test-"))  # under /tmp: reachable by another user
    try:
        shared.chmod(0o1777)
        monkeypatch.setenv("DLAS_LOCK_DIR", str(shared))
        with device_lock("shared-by-users"):
            pass
        path = shared / "shared-by-users.lock"
        assert stat.S_IMODE(path.stat().st_mode) == 0o666
        if os.geteuid() != 0 or not shutil.which("setpriv"):
            return
        code = ("import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR); fcntl.flock(fd, fcntl.LOCK_EX); "
                "print('locked')")
        other = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3",
                                "-I", "-c", code, str(path)], capture_output=True, text=True, timeout=60)
        assert other.stdout.strip() == "locked", other.stderr
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def test_a_symlinked_lock_dir_is_refused(monkeypatch, tmp_path):
    from dlas_host.fleet.locks import LockDirError, device_lock

    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    monkeypatch.setenv("DLAS_LOCK_DIR", str(tmp_path / "link"))
    with pytest.raises(LockDirError, match="not a directory"):
        with device_lock("x"):
            pass


def test_cpu_work_waits_for_a_timing_on_this_machine(local_device, holders, tmp_path, caplog):
    """A compile or reference run (shared) starts only after the timing (exclusive) let go."""
    from dlas_host.fleet.locks import cpu_use

    holders.append(Holder("exclusive", "this machine", tmp_path))
    got: dict[str, bool] = {}

    def compile_like() -> None:
        with cpu_use("test compile", wait_s=120, poll_s=0.05):
            got["released_before"] = holders[0].released.exists()

    caplog.set_level(logging.INFO, logger="dlas_host.locks")
    worker = threading.Thread(target=compile_like)
    worker.start()
    deadline = time.monotonic() + 60
    while "waiting for this machine" not in caplog.text and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "waiting for this machine" in caplog.text and worker.is_alive() and not got
    holders[0].release()
    worker.join(60)
    assert got == {"released_before": True}


def test_a_timing_waits_for_cpu_work_and_goes_before_new_cpu_work(local_device, holders, tmp_path, capfd, caplog):
    """Shared holders delay a timing; once a timing waits, new shared work queues behind it (no starvation)."""
    from dlas_host.fleet.locks import DeviceBusy, cpu_use, describe_locks, device_lock, machine_key

    holders.append(Holder("shared", "-", tmp_path))
    with cpu_use("another compile", wait_s=0):  # shared with shared: no wait
        pass
    assert "shared use" in describe_locks()[machine_key()]
    with pytest.raises(DeviceBusy, match="shared use"):
        with device_lock(local_device, wait_s=1):
            pass
    got: dict[str, bool] = {}

    def timing() -> None:
        with device_lock(local_device, wait_s=120, poll_s=0.05):
            got["compile_released_first"] = holders[0].released.exists()

    caplog.set_level(logging.INFO, logger="dlas_host.locks")
    caplog.clear()  # the refused attempt above logged "waiting for local" too when INFO was already on
    worker = threading.Thread(target=timing)
    worker.start()
    deadline = time.monotonic() + 60
    while "waiting for local" not in caplog.text and time.monotonic() < deadline:
        time.sleep(0.05)  # once it waits, the timing holds the gate
    assert "waiting for local" in caplog.text
    with cpu_use("a new compile", wait_s=1):  # must not overtake the waiting timing: gives up waiting
        pass
    assert "going ahead without it" in capfd.readouterr().err
    holders[0].release()
    worker.join(60)
    assert got == {"compile_released_first": True}


def test_cpu_use_inside_a_timing_is_reentrant_and_the_reverse_is_refused(local_device):
    from dlas_host.fleet.locks import LockOrderError, cpu_use, device_lock

    with device_lock(local_device, purpose="timing"):
        with cpu_use("compile before timing", wait_s=0):  # bench_tvm under a sweep's hold: no self-deadlock
            with device_lock(local_device):
                pass
    with cpu_use("compile"):
        with pytest.raises(LockOrderError):
            with device_lock(local_device):
                pass
