"""Device locks: exclusive across processes, free when the holder crashes, stale records of other hosts expire."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest


@pytest.fixture(autouse=True)
def data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("DLAS_DATA_DIR", str(tmp_path))
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
