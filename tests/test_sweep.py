"""Sweeps: spec validation and expansion, and a real sweep on `local` that is killed and resumed."""

from __future__ import annotations

import sys
import time
from collections import Counter
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sweeptools import (cli, final_count, final_rows, isolated_sweep, job_rows_by_key,  # noqa: E402
                        run_interrupted, start_sweep_process, sweep_processes, wait_no_sweep_processes)

from dlas_host.sweep.spec import SweepSpecError, expand, load_spec, parse_spec  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def test_presets_expand(registry):
    quick = expand(load_spec("quick"), registry)
    assert len(quick) == 15 and {j.system for j in quick} == {"tvm", "torch", "onnxruntime"}
    assert sum(j.system == "tvm" for j in quick) == 9 and {j.dataset for j in quick} == {"digits"}
    paper_spec = load_spec("dlas-paper")
    paper = expand(paper_spec, registry)
    assert len(paper) == 1008
    # the paper grid runs from trained (CIFAR-10) and imported (ImageNet) bases, with accuracy on every row
    assert paper_spec.train is not None and paper_spec.run.eval_images and paper_spec.run.finetune_epochs
    assert set(paper_spec.bases) == {f"{j.model}/imagenet" for j in paper}
    # Baselines do not vary the TVM-only dimensions, and sparse formats appear only with unstructured pruning.
    assert all(j.algorithm == "n/a" and j.tuning == "n/a" for j in paper if j.system != "tvm")
    assert {j.pruning for j in paper if j.sparse_format == "csr"} == {"unstructured:global:l1:0.8"}
    assert len({j.key for j in paper}) == len(paper)
    assert {j.model for j in paper} == {"resnet18", "resnet50", "mobilenet_v2", "mobilenet_v3_large",
                                        "efficientnet_b0", "vgg16", "densenet121"}


@pytest.mark.parametrize("text, message", [
    ("name: x\ngrid: {models: [resnet18], colour: [red]}\n", "field grid.colour: unknown key"),
    ("name: x\n", "give a 'grid' or a list of 'jobs'"),
    ("name: x\ngrid: {models: [resnet19]}\n", "unknown model 'resnet19'"),
    ("name: x\ngrid: {algorithms: [winograd]}\n", "unknown algorithm 'winograd'"),
    ("name: x\ngrid: {devices: [jetsn]}\n", "no device named 'jetsn'"),
    ("name: x\ngrid: {}\nexclude: [{flavour: x}]\n", "exclude: unknown dimension(s) ['flavour']"),
    ("grid: {}\n", "field name: Field required"),
])
def test_bad_specs_give_one_line(registry, text, message):
    with pytest.raises(SweepSpecError) as info:
        expand(parse_spec(text, "spec.yaml"), registry)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_exclusions_and_explicit_jobs(registry):
    spec = parse_spec("""
name: t
grid: {algorithms: [direct, gemm, spatial_pack], systems: [tvm, torch]}
exclude: [{algorithm: gemm}]
jobs: [{model: mobilenet_v2, system: onnxruntime, algorithm: direct}]
""")
    jobs = expand(spec, registry)
    labels = sorted(j.label() for j in jobs)
    assert labels == ["mobilenet_v2 cifar10 onnxruntime", "resnet18 cifar10 torch",
                      "resnet18 cifar10 tvm direct/NCHW/dense untuned",
                      "resnet18 cifar10 tvm spatial_pack/NCHW/dense untuned"]


SPEC = """name: test-local
grid:
  devices: [local]
  models: [resnet18]
  datasets: [cifar10]
  algorithms: [direct, gemm, spatial_pack]
  systems: [tvm, torch]
run: {number: 1, repeat: 6, warmup: 0}  # the report states a difference from 4 raw samples each
"""


def test_local_sweep_killed_and_resumed_loses_nothing(tmp_path):
    spec = tmp_path / "sweep.yaml"
    spec.write_text(SPEC)
    db = tmp_path / "results.sqlite"
    sweep_id = run_interrupted(spec, db, None, kill_after_rows=1)
    before = final_rows(db)
    assert 1 <= len(before) < 4, before
    status = cli("sweep", "status", sweep_id, "--db", str(db))
    assert status.returncode == 0 and sweep_id in status.stdout

    resumed = cli("sweep", "resume", sweep_id, "--db", str(db))
    assert resumed.returncode == 0, resumed.stderr
    after = final_rows(db)
    assert after[: len(before)] == before  # nothing recorded before the crash was lost or rewritten
    ok_keys = Counter(key for sid, key, st in after if sid == sweep_id and st == "ok")
    assert len(ok_keys) == 4 and set(ok_keys.values()) == {1}  # every job once, none twice
    again = cli("sweep", "resume", sweep_id, "--db", str(db))
    assert "0 to run" in again.stderr and len(final_rows(db)) == len(after)

    report_dir = tmp_path / "report"
    rep = cli("report", "--sweep", sweep_id, "--db", str(db), "--out", str(report_dir))
    assert rep.returncode == 0, rep.stderr
    html = (report_dir / "report.html").read_text()
    # the systems compared, whatever the samples say (6 per row: a 1.5x lead can still fall short of p < 0.05;
    # the statistics themselves are tested on planted rows in test_report_rules.py)
    assert html.count("<img") >= 2 and "data-rule='best-system'" in html, html[-3000:]
    assert "vs torch" in html or "than torch" in html  # the finding compares TVM with torch either way


def test_dead_device_is_retried_then_quarantined(tmp_path):
    devices = tmp_path / "devices.yaml"
    devices.write_text("devices:\n  ghost:\n    arch: x86_64\n    target: {kind: llvm}\n"
                       "    connection: {type: tracker, host: 127.0.0.1, port: 9, key: ghost}\n")
    spec = tmp_path / "sweep.yaml"
    spec.write_text("name: ghost\ngrid: {devices: [ghost], algorithms: [direct, gemm, spatial_pack]}\n"
                    "run: {number: 1, repeat: 2, warmup: 0, retries: 1, quarantine_after: 2}\n")
    db = tmp_path / "r.sqlite"
    proc = cli("sweep", "run", str(spec), "--db", str(db), "--devices", str(devices))
    assert proc.returncode == 0, proc.stderr
    statuses = [st for _, _, st in final_rows(db)]
    assert statuses == ["error", "error", "skipped"]
    assert "quarantined after 2 failed jobs" in proc.stderr.replace("\n", " ")
    # the quarantined job may run once the device is back: a retryable skip, so the sweep is not done
    (sweep_id, _, _), = final_rows(db)[-1:]
    rows = job_rows_by_key(db, sweep_id)
    assert sorted(r[0][1] for r in rows.values()) == [False, False, True]
    status = cli("sweep", "status", sweep_id, "--db", str(db))
    assert "incomplete" in status.stdout and "pending 3 (error 2, retryable 1)" in status.stdout, status.stdout


def test_only_runs_the_named_devices_jobs(tmp_path):
    """`sweep run --only NAME` keeps that device's jobs (repeatable, comma-separated); --devices stays the file."""
    import sqlite3

    from typer.testing import CliRunner

    from dlas_host.cli_sweep import sweep_app

    devices = tmp_path / "devices.yaml"
    devices.write_text("devices:\n  local:\n    arch: x86_64\n    target: {kind: llvm}\n    threads: 2\n"
                       "  ghost:\n    arch: x86_64\n    target: {kind: llvm}\n"
                       "    connection: {type: tracker, host: 127.0.0.1, port: 9, key: ghost}\n")
    spec = tmp_path / "sweep.yaml"
    spec.write_text("name: only\ngrid: {devices: [local, ghost], systems: [torch]}\n"
                    "run: {number: 1, repeat: 2, warmup: 0, retries: 0}\n")
    db = tmp_path / "r.sqlite"
    common = [str(spec), "--db", str(db), "--devices", str(devices)]
    runner = CliRunner()
    for only, jobs in ((["--only", "local"], 1), (["--only", "ghost,local"], 2),
                       (["--only", "local", "--only", "ghost"], 2), ([], 2)):
        res = runner.invoke(sweep_app, ["run", *common, *only, "--dry-run"])
        assert res.exit_code == 0 and f"only: {jobs} jobs" in res.stdout, (only, res.output)
    res = runner.invoke(sweep_app, ["run", *common, "--only", "nosuch", "--dry-run"])
    assert res.exit_code == 1 and "no device named 'nosuch'" in res.stderr

    proc = cli("sweep", "run", *common, "--only", "local")
    assert proc.returncode == 0, proc.stderr
    con = sqlite3.connect(db)
    rows = con.execute("SELECT device, system, status FROM results").fetchall()
    (total,) = con.execute("SELECT total FROM sweeps").fetchone()
    con.close()
    assert rows == [("local", "torch", "ok")] and total == 1


# ------------------------------------------------------------------------------------------------ exactly once
RACER = r"""
import pathlib, random, sys, time
from dlas_host.store import ResultRow, ResultStore
db, sweep, seed, go = sys.argv[1], sys.argv[2], int(sys.argv[3]), pathlib.Path(sys.argv[4])
store = ResultStore(db)
keys = [f"job-{i:02d}" for i in range(25)]
random.Random(seed).shuffle(keys)
while not go.exists():
    time.sleep(0.005)
stored = 0
for key in keys:
    row = ResultRow(dataset="cifar10", model="resnet18", system="torch", device="local", sweep_id=sweep, job_key=key,
                    status="skipped" if key.endswith("7") else "ok", extra={"racer": seed})
    stored += store.add_job_row(row)[1]
print(stored)
"""


def test_final_rows_are_stored_once_by_racing_processes(tmp_path):
    """Four processes store the same 25 jobs at once: each job gets one final row, earlier attempts point to it."""
    import subprocess

    from dlas_host.store import ResultRow, ResultStore

    db = tmp_path / "r.sqlite"
    store = ResultStore(db)
    for key, status, extra in (("job-00", "skipped", {"retryable": True}), ("job-01", "error", {}),
                               ("job-02", "skipped", {"retryable": True})):
        store.add(ResultRow(dataset="cifar10", model="resnet18", system="torch", device="local", sweep_id="s",
                            job_key=key, status=status, extra=extra))
    assert store.job_keys("s") == set()  # attempts, not final rows
    go = tmp_path / "go"
    racers = [subprocess.Popen([sys.executable, "-c", RACER, str(db), "s", str(seed), str(go)], cwd=ROOT,
                               stdout=subprocess.PIPE, text=True) for seed in range(4)]
    time.sleep(3)  # let every racer open the database before the start
    go.touch()
    stored = [int(p.communicate(timeout=300)[0]) for p in racers]
    assert sum(stored) == 25 and all(p.returncode == 0 for p in racers)
    rows = job_rows_by_key(db, "s")
    assert len(rows) == 25 and all(final_count(r) == 1 for r in rows.values())
    assert store.job_keys("s") == set(rows)
    by_key = {r["job_key"]: r for r in store.job_rows("s") if r["final"]}
    for key in ("job-00", "job-01", "job-02"):
        first, final = store.job_rows("s")[int(key[-1])], by_key[key]
        assert first["job_key"] == key and first["superseded_by"] == final["id"]
    # a second final row for a job is refused, not stored
    again = ResultRow(dataset="cifar10", model="resnet18", system="torch", device="local", sweep_id="s",
                      job_key="job-03")
    assert store.add_job_row(again) == (by_key["job-03"]["id"], False)
    assert len(store.job_rows("s")) == 28


def test_which_failures_may_pass():
    import sqlite3

    from dlas_host.data.info import DatasetError
    from dlas_host.sweep.runner import may_pass

    assert may_pass(FileExistsError("models")) and may_pass(MemoryError()) and may_pass(RuntimeError("oom"))
    assert may_pass(sqlite3.OperationalError("database is locked"))
    assert not may_pass(DatasetError("no directory for dataset 'cifar10'")) and not may_pass(ValueError("bad"))


LEGACY_SPEC = """name: legacy
grid: {devices: [local], systems: [torch], quantization: [float32, int8, float16]}
run: {number: 1, repeat: 2, warmup: 0}
"""


def _legacy_db(path: Path, keys: list[str]) -> str:
    """A database as the code before exactly-once wrote it: no superseded_by column, no job list or token
    in the sweep record, a 'running' sweep whose runner died, and 2 of its 3 jobs stored twice."""
    import json
    import sqlite3
    import subprocess

    from dlas_host.store import COLUMNS

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    con = sqlite3.connect(path)
    old_columns = [(n, k) for n, k in COLUMNS if n != "superseded_by"]
    con.execute(f"CREATE TABLE results (id INTEGER PRIMARY KEY AUTOINCREMENT, "
                f"{', '.join(f'{n} {k}' for n, k in old_columns)})")
    con.execute("CREATE TABLE sweeps (id TEXT PRIMARY KEY, name TEXT, spec TEXT, devices TEXT, total INTEGER, "
                "status TEXT, created_at TEXT, updated_at TEXT, host TEXT, pid INTEGER)")
    spec = {"name": "legacy", "grid": {"devices": ["local"], "systems": ["torch"],
                                       "quantization": ["float32", "int8", "float16"]},
            "run": {"number": 1, "repeat": 2, "warmup": 0}}
    import platform

    con.execute("INSERT INTO sweeps VALUES ('20200101-000000-abcdef', 'legacy', ?, 'null', 3, 'running', "
                "'2020-01-01T00:00:00', '2020-01-01T00:01:00', ?, ?)", (json.dumps(spec), platform.node(), dead.pid))
    for key in (keys[0], keys[1], keys[0], keys[2], keys[1], "not-a-job-of-it"):
        con.execute("INSERT INTO results (dataset, model, system, device, status, sweep_id, job_key, extra) "
                    "VALUES ('cifar10', 'resnet18', 'torch', 'local', 'ok', '20200101-000000-abcdef', ?, '{}')",
                    (key,))
    con.commit()
    con.close()
    return "20200101-000000-abcdef"


def test_legacy_duplicates_and_orphans_show_in_status(registry, tmp_path):
    import json
    import sqlite3

    from typer.testing import CliRunner

    from dlas_host.cli_sweep import sweep_app
    from dlas_host.sweep.spec import parse_spec

    keys = [j.key for j in expand(parse_spec(LEGACY_SPEC), registry)]
    db = tmp_path / "legacy.sqlite"
    sweep_id = _legacy_db(db, keys)
    runner = CliRunner()
    text = runner.invoke(sweep_app, ["status", sweep_id, "--db", str(db)])
    assert text.exit_code == 0, text.output
    assert "interrupted" in text.stdout and "duplicates 2" in text.stdout, text.stdout
    assert "2 job(s) stored more than once" in text.stdout
    status = json.loads(runner.invoke(sweep_app, ["status", sweep_id, "--db", str(db), "--json"]).stdout)
    assert status["status"] == "interrupted" and status["recorded_status"] == "running"
    assert status["duplicates"] == 2 and status["duplicate_keys"] == sorted(keys[:2])

    # a process an earlier run left behind (its runner and guard both killed): resume stops it first
    import os
    import subprocess

    leftover = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"],
                                env=dict(os.environ, DLAS_SWEEP_RUN=f"{sweep_id}/1/0123abcd"))
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"],
                             env=dict(os.environ, DLAS_SWEEP_RUN="20200101-000000-zzzzzz/1/0123abcd"))
    time.sleep(1)  # its environment is readable once the interpreter runs
    try:
        # resume runs nothing (every job has a final row) and records the job list: the stray row is an orphan
        resumed = runner.invoke(sweep_app, ["resume", sweep_id, "--db", str(db)])
        assert resumed.exit_code == 0, resumed.output
        said = " ".join(resumed.stderr.split())
        assert "stopped 1 process(es) left by an earlier run" in said and "3 already done, 0 to run" in said, said
        assert leftover.wait(30) == -9
        assert other.poll() is None  # another sweep's process is not touched
    finally:
        for proc in (leftover, other):
            proc.kill()
            proc.wait()
    status = json.loads(runner.invoke(sweep_app, ["status", sweep_id, "--db", str(db), "--json"]).stdout)
    assert status["status"] == "done" and status["counts"] == {"ok": 3} and status["finished"] == 3
    assert status["duplicates"] == 2 and status["orphan_rows"] == 1 and status["orphans"] == 1
    con = sqlite3.connect(db)
    assert con.execute("SELECT count(*) FROM results").fetchone() == (6,)  # nothing added, nothing rewritten
    assert "superseded_by" in {r[1] for r in con.execute("PRAGMA table_info(results)")}
    con.close()


def test_one_runner_per_sweep_and_a_dead_runner_reads_interrupted(registry, tmp_path):
    import json
    import subprocess

    from typer.testing import CliRunner

    from dlas_host.cli_sweep import sweep_app
    from dlas_host.store import ResultStore
    from dlas_host.sweep.runner import start_sweep
    from dlas_host.sweep.spec import parse_spec
    from dlas_host.sweep.state import SweepState

    db = tmp_path / "r.sqlite"
    spec = parse_spec(LEGACY_SPEC)
    sweep_id = start_sweep(spec, registry, ResultStore(db))
    state = SweepState(db)
    hold = ("import sys, time\nfrom dlas_host.sweep.runlock import RunnerLock\n"
            "RunnerLock(sys.argv[1], sys.argv[2]).acquire(sys.argv[3])\nprint('held', flush=True)\n"
            "time.sleep(float(sys.argv[4]))\n")
    # a runner that took the sweep, started a job and died (its lock went with it)
    dead = subprocess.run([sys.executable, "-c", hold, str(db), sweep_id, "run-1", "0"], cwd=ROOT, check=True)
    assert dead.returncode == 0
    state.start_run(sweep_id, "run-1", [j.key for j in expand(spec, registry)])
    first = expand(spec, registry)[0].key
    state.claim(sweep_id, first, "run-1")
    runner = CliRunner()
    status = json.loads(runner.invoke(sweep_app, ["status", sweep_id, "--db", str(db), "--json"]).stdout)
    assert status["status"] == "interrupted" and status["runner"] is None
    assert status["orphan_jobs"] == 1 and status["orphan_keys"] == [first]
    assert status["pending_by"] == {"interrupted": 1, "not run": 2}
    listed = json.loads(runner.invoke(sweep_app, ["list", "--db", str(db), "--json"]).stdout)
    assert listed[0]["status"] == "interrupted"

    holder = subprocess.Popen([sys.executable, "-c", hold, str(db), sweep_id, "run-2", "600"], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        text = runner.invoke(sweep_app, ["status", sweep_id, "--db", str(db)]).stdout
        assert f"running (pid {holder.pid} on" in text, text
        busy = runner.invoke(sweep_app, ["resume", sweep_id, "--db", str(db)])
        assert busy.exit_code == 1 and f"is being run by pid {holder.pid}" in busy.stderr
        assert len(busy.stderr.strip().splitlines()) == 1, busy.stderr
    finally:
        holder.kill()
        holder.wait()
    status = json.loads(runner.invoke(sweep_app, ["status", sweep_id, "--db", str(db), "--json"]).stdout)
    assert status["status"] == "interrupted" and status["orphan_jobs"] == 1


# ------------------------------------------------------------------------------------------------ kills (real)
TWO_JOBS = """name: two
grid: {devices: [local], systems: [torch], quantization: [float32, int8]}
run: {number: 1, repeat: 3, warmup: 0, retries: 0}
"""


def _wait_for_engine(data: Path, proc, limit_s: float = 600) -> list:
    """The sweep's processes (psutil, so a reused pid is not mistaken for one) once a torch engine process
    runs: the worker's job is mid-flight."""
    import psutil

    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline and proc.poll() is None:
        procs = sweep_processes(data)
        if any("dlas_host.engines.run" in cmd for _, cmd in procs):
            out = []
            for pid, _ in procs:
                try:
                    out.append(psutil.Process(pid))
                except psutil.NoSuchProcess:
                    continue
            return out
        time.sleep(0.1)
    raise AssertionError(f"no engine process started: {proc.poll()} {proc.stderr.read()[-2000:]}")


@pytest.mark.slow
def test_sigterm_and_sigkill_leave_no_process_and_resume_stores_each_job_once(tmp_path):
    import json
    import signal

    import psutil

    world = isolated_sweep(tmp_path, TWO_JOBS)
    data, env, spec, db, common = world.data, world.env, world.spec, world.db, world.common

    run = start_sweep_process(["run", str(spec), *common], env)
    procs = _wait_for_engine(data, run)
    assert len(procs) >= 4  # runner, guard, device worker, engine (and the resource tracker)
    run.send_signal(signal.SIGTERM)
    _, err = run.communicate(timeout=300)
    assert run.returncode == 143 and "interrupted by SIGTERM" in err, err[-2000:]
    assert not wait_no_sweep_processes(data)
    assert not [p for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    (sweep,) = json.loads(cli("sweep", "list", "--json", "--db", str(db), env=env).stdout)
    sweep_id = sweep["id"]
    status = json.loads(cli("sweep", "status", sweep_id, "--json", "--db", str(db), env=env).stdout)
    assert status["status"] == status["recorded_status"] == "interrupted" and status["finished"] == 0
    assert status["orphan_jobs"] == 1  # the job the worker had started

    resumed = start_sweep_process(["resume", sweep_id, *common], env)
    _wait_for_engine(data, resumed)
    resumed.send_signal(signal.SIGKILL)  # the runner alone: its worker, engine and tracker must follow it
    resumed.communicate(timeout=60)
    assert resumed.returncode == -9
    assert not wait_no_sweep_processes(data)
    status = json.loads(cli("sweep", "status", sweep_id, "--json", "--db", str(db), env=env).stdout)
    assert status["status"] == "interrupted" and status["recorded_status"] == "running"

    done = cli("sweep", "resume", sweep_id, *common, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = job_rows_by_key(db, sweep_id)
    assert len(rows) == 2 and [len(r) for r in rows.values()] == [1, 1]
    assert all(final_count(r) == 1 for r in rows.values())
    status = json.loads(cli("sweep", "status", sweep_id, "--json", "--db", str(db), env=env).stdout)
    assert status["status"] == "done" and status["counts"] == {"ok": 1, "skipped": 1}
    assert status["duplicates"] == 0 and status["orphans"] == 0
    assert not wait_no_sweep_processes(data)


PRUNED = """name: pruned
grid: {devices: [local], systems: [torch],
       pruning: ["unstructured:global:l1:0.5", "unstructured:global:taylor:0.5"]}
run: {number: 1, repeat: 2, warmup: 0, retries: 0}
"""


@pytest.mark.slow
def test_a_skip_that_may_pass_is_retried_on_resume_and_a_permanent_one_is_not(tmp_path):
    """The pruned model cannot be stored (its directory is blocked: an I/O error) -> retryable skip; the Taylor
    pruning needs a dataset that is not there -> permanent skip. Resume retries only the first."""
    import json

    world = isolated_sweep(tmp_path, PRUNED)
    data, env, spec, db, common = world.data, world.env, world.spec, world.db, world.common
    env.pop("DLAS_CIFAR10_DIR", None)
    (data / "models").write_text("not a directory")

    first = cli("sweep", "run", str(spec), *common, env=env)
    assert first.returncode == 0, first.stderr[-2000:]
    ((sweep_id, _, _), *_) = final_rows(db)
    status = json.loads(cli("sweep", "status", sweep_id, "--json", "--db", str(db), env=env).stdout)
    assert status["status"] == "incomplete" and status["counts"] == {"retryable": 1, "skipped": 1}
    assert status["pending_by"] == {"retryable": 1}
    skips = {r["pruning"]: r for r in _rows(db)}
    l1, taylor = skips["unstructured:global:l1:0.5"], skips["unstructured:global:taylor:0.5"]
    assert l1["extra"]["retryable"] and l1["extra"]["skip_kind"] == "pruned_model" and "FileExistsError" in l1["error"]
    assert not taylor["extra"].get("retryable") and "cifar10" in taylor["error"]

    (data / "models").unlink()  # the disk is back
    second = cli("sweep", "resume", sweep_id, *common, env=env)
    assert second.returncode == 0, second.stderr[-2000:]
    said = " ".join(second.stderr.split())
    assert "1 to run" in said and "1 skipped earlier for a reason that may pass" in said, said
    rows = _rows(db)
    assert len(rows) == 3  # the Taylor job was not run again
    retried = [r for r in rows if r["job_key"] == l1["job_key"]]
    assert [r["status"] for r in retried] == ["skipped", "ok"]
    assert retried[0]["superseded_by"] == retried[1]["id"] and retried[1]["extra"]["retry_of"] == retried[0]["id"]
    status = json.loads(cli("sweep", "status", sweep_id, "--json", "--db", str(db), env=env).stdout)
    assert status["status"] == "done" and status["counts"] == {"ok": 1, "skipped": 1} and status["retried"] == 1
    text = cli("sweep", "status", sweep_id, "--db", str(db), env=env).stdout
    assert "retried 1" in text and "2/2 jobs final" in text


def _rows(db: Path) -> list[dict]:
    from dlas_host.store import ResultStore

    return ResultStore(db).query(order="id ASC")
