"""Tuning over RPC against real agents on loopback: records, resume, faults, tracker pooling, baselines.

Every test tunes resnet18 @ CIFAR-10 with a handful of trials (the seeding of its 18 tasks' default
schedules is measured once per records directory) into a records directory of its own.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from dlas_host.bench import RunOptions, bench_engine, bench_tvm
from dlas_host.compile import BuildSpec
from dlas_host.devices import Device, TrackerConnection
from dlas_host.tune import tuning_target
from dlas_host.tune.measure import MeasureConfig
from dlas_host.tune.records import RecordsError, TuningRecords, export_all, import_archive, summaries
from dlas_host.tune.tuner import Tuner, TuneOptions

FAST = RunOptions(number=1, repeat=3)
SPEC = BuildSpec("resnet18", "cifar10", tuning="tuned")


def _records(device: Device, root: Path) -> TuningRecords:
    return TuningRecords(tuning_target(device.tvm_target(), device.threads), root)


def _record_lines(records: TuningRecords) -> list[str]:
    return records.record_file.read_text().splitlines() if records.record_file.exists() else []


@pytest.fixture(scope="module")
def tuned_dir(tmp_path_factory, local_device):
    """One short real tuning run shared by the tests that only read its records."""
    root = tmp_path_factory.mktemp("tuning")
    events = []
    report = Tuner(SPEC, [local_device], TuneOptions(trials=8, batch=4), records=_records(local_device, root),
                   progress=events.append).run()
    return root, report, events


def test_short_tuning_run_measures_on_the_agent_and_persists(tuned_dir, local_device):
    root, report, events = tuned_dir
    assert not report.stopped
    assert len(report.tasks) >= 10
    assert all(t.default_s and t.default_s > 0 for t in report.tasks), "every task's default schedule measured"
    tuned = [t for t in report.tasks if t.alloc]
    assert sum(t.alloc for t in tuned) == 8 and report.trials_run >= 4
    assert all(t.best_s <= t.default_s for t in report.tasks)  # the seed record keeps tuned <= untuned
    assert report.tuned_ms <= report.untuned_ms
    kinds = {e["event"] for e in events}
    assert {"seeding", "planned", "task", "batch", "finished"} <= kinds
    (summary,) = summaries(root)
    assert summary.records >= len(report.tasks) + report.trials_run  # seeds + trials, on disk


def test_same_command_resumes_from_records_instead_of_starting_over(tuned_dir, local_device):
    root, first, _ = tuned_dir
    records = _records(local_device, root)
    before = _record_lines(records)
    again = Tuner(SPEC, [local_device], TuneOptions(trials=8, batch=4), records=records).run()
    assert again.trials_run == 0, "budget already spent: nothing is re-measured"
    assert _record_lines(records) == before


def test_tuned_build_applies_records_and_matches_torch(tuned_dir, local_device, store, monkeypatch):
    root, _, _ = tuned_dir
    monkeypatch.setenv("DLAS_TUNING_DIR", str(root))
    row = bench_tvm(SPEC, local_device, store, FAST)
    assert row.status == "ok", row.error
    assert row.tuning == "tuned"
    assert row.max_abs_err < 1e-4


def test_tuned_without_records_is_a_skipped_row_naming_the_fix(local_device, store, tmp_path, monkeypatch):
    monkeypatch.setenv("DLAS_TUNING_DIR", str(tmp_path / "empty"))
    row = bench_tvm(SPEC, local_device, store, FAST)
    assert row.status == "skipped"
    assert "dlas-host tune" in row.error


def test_records_export_import_roundtrip(tuned_dir, tmp_path):
    root, _, _ = tuned_dir
    archive = export_all(tmp_path / "records.tar.gz", root)
    fresh = tmp_path / "fresh"
    added = import_archive(archive, fresh)
    (tid, n), = added.items()
    (orig,) = summaries(root)
    assert tid == orig.target_id
    assert n == len({line for line in (root / tid / "database_tuning_record.json").read_text().splitlines()})
    assert import_archive(archive, fresh) == {tid: 0}, "importing twice adds nothing"
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(b"not an archive")
    with pytest.raises(RecordsError, match="not a tuning-records archive"):
        import_archive(bad, fresh)


def test_half_written_record_line_is_dropped_not_fatal(tuned_dir, tmp_path, local_device):
    root, _, _ = tuned_dir
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    records = _records(local_device, copy)
    good = _record_lines(records)
    with open(records.record_file, "a") as fh:
        fh.write('[0, [[["SampleCategorical"')  # a run killed mid-write
    reopened = _records(local_device, copy)
    assert _record_lines(reopened) == good
    assert len(reopened.database().get_all_tuning_records()) == len(good)


def _agent_pids() -> list[psutil.Process]:
    me = psutil.Process()
    out = []
    for p in me.children(recursive=True):
        try:
            if "dlas_agent" in " ".join(p.cmdline()) and "serve" in p.cmdline() and p.ppid() == me.pid:
                out.append(p)
        except psutil.Error:  # exited meanwhile
            continue
    return out


def test_killed_agent_mid_tuning_reconnects_and_keeps_every_record(local_device, tmp_path):
    records = _records(local_device, tmp_path)
    killed: dict = {}

    def on_progress(event: dict) -> None:
        if event["event"] == "batch" and event["trials_done"] >= 4 and not killed:
            killed["lines"] = _record_lines(records)
            procs = _agent_pids()
            for proc in procs:  # the device dies mid-tuning: the server and its forked session workers
                os.killpg(proc.pid, 9)
            killed["at"] = event["trials_done"] if procs else None

    report = Tuner(SPEC, [local_device], TuneOptions(trials=12, batch=4), records=records,
                   progress=on_progress).run()
    assert killed and killed["at"], "the agent was killed during tuning"
    assert any("session lost" in e for e in report.events), report.events
    assert not report.stopped
    final = _record_lines(records)
    assert final[: len(killed["lines"])] == killed["lines"], "records made before the kill are intact"
    assert sum(t.done for t in report.tasks) >= 12 - 4  # tuning went on after the reconnect


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_agent(tracker_port: int, key: str, log: Path, device_name: str = "pool") -> subprocess.Popen:
    from dlas_agent import auth
    from dlas_host.transport import secret_path

    secret = secret_path(device_name)  # what the host reads for this tracker device
    if not secret.is_file():
        auth.write_secret(secret)
    env = dict(os.environ, TVM_USE_RUNTIME_LIB="1", PYTHONUNBUFFERED="1")
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "dlas_agent", "serve", "--host", "127.0.0.1", "--port", str(port),
                             "--port-end", str(port + 1), "--tracker", f"127.0.0.1:{tracker_port}", "--key", key, "--threads", "1",
                             "--secret-file", str(secret)],
                            stdout=subprocess.PIPE, stderr=open(log, "w"), text=True, env=env, start_new_session=True)
    json.loads(proc.stdout.readline())  # {"event": "listening"}
    return proc


def _wait_free(port: int, key: str, n: int) -> None:
    from tvm import rpc

    deadline = time.time() + 30
    while time.time() < deadline:
        info = rpc.connect_tracker("127.0.0.1", port).summary()["queue_info"].get(key, {})
        if int(info.get("free", 0)) >= n:
            return
        time.sleep(0.5)
    raise AssertionError(f"{n} agents never registered at the tracker")


def _kill(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, 9)
    proc.wait()


def test_tracker_pool_shares_work_and_a_lost_device_resumes_from_records(tracker, tmp_path, local_device):
    key = "pool-x86"
    device = Device(name="pool", arch=local_device.arch, target=local_device.target, threads=1,
                    connection=TrackerConnection(type="tracker", host="127.0.0.1", port=tracker, key=key))
    logs = [tmp_path / "agent0.log", tmp_path / "agent1.log"]
    agents = [_start_agent(tracker, key, logs[0]), _start_agent(tracker, key, logs[1])]
    _wait_free(tracker, key, 2)
    records = TuningRecords(tuning_target(device.tvm_target(), device.threads), tmp_path / "rec")
    fast_loss = MeasureConfig(queue_s=8, reconnect_s=10, connect_s=5)
    try:
        state: dict = {}

        def kill_all(event: dict) -> None:  # the whole pool goes away after the first tuning batch
            if event["event"] == "batch" and not state:
                state["lines"] = _record_lines(records)
                for a in agents:
                    _kill(a)
                state["killed"] = True

        first = Tuner(SPEC, [device], TuneOptions(trials=12, batch=4, measure=fast_loss), records=records,
                      progress=kill_all).run()
        served = [log.read_text().count("timed a tuning candidate") for log in logs]
        assert all(n > 0 for n in served), f"both pooled agents measured candidates: {served}"
        assert first.stopped and "lost" in first.stopped, first.stopped
        done_before = sum(t.done for t in first.tasks)
        assert _record_lines(records)[: len(state["lines"])] == state["lines"]

        agents = [_start_agent(tracker, key, logs[0])]  # the device is back
        _wait_free(tracker, key, 1)
        second = Tuner(SPEC, [device], TuneOptions(trials=12, batch=4, measure=fast_loss), records=records).run()
        assert not second.stopped, second.stopped
        assert sum(t.done for t in second.tasks) >= 12 - 4
        assert second.trials_run <= 12 - done_before + 4, "resumed: earlier trials were not measured again"
    finally:
        for a in agents:
            if a.poll() is None:
                _kill(a)


@pytest.mark.parametrize("engine", ["onnxruntime", "torch_compile"])
def test_framework_baselines_run_in_a_fresh_process_or_are_skipped(engine, local_device, store):
    row = bench_engine(engine, BuildSpec("resnet18", "cifar10"), local_device, store, FAST)
    assert row.status in ("ok", "skipped"), row.error
    if row.status == "ok":
        assert row.median_ms > 0 and row.max_abs_err < 1e-3
    else:
        assert row.error


def test_baseline_on_a_remote_device_is_skipped_not_a_crash(store):
    remote = Device(name="far", arch="x86_64", target={"kind": "llvm"},
                    connection=TrackerConnection(type="tracker", host="127.0.0.1", port=9, key="far"))
    row = bench_engine("onnxruntime", BuildSpec("resnet18", "cifar10"), remote, store, FAST)
    assert row.status == "skipped" and "local device only" in row.error
