"""Drive a real sweep in a subprocess, kill it mid-way, resume it: shared by the local and fleet tests."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str, env: dict | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dlas_host.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          env=env or dict(os.environ), timeout=timeout)


def final_rows(db: Path) -> list[tuple[str, str, str]]:
    if not db.exists():
        return []
    con = sqlite3.connect(db)
    try:
        return [tuple(r) for r in con.execute("SELECT sweep_id, job_key, status FROM results ORDER BY id")]
    except sqlite3.OperationalError:
        return []
    finally:
        con.close()


def run_interrupted(spec: Path, db: Path, devices_file: Path | None, kill_after_rows: int,
                    limit_s: float = 600) -> str:
    """Start `sweep run`, SIGKILL its whole process group once ``kill_after_rows`` rows exist; return the id."""
    args = [sys.executable, "-m", "dlas_host.cli", "sweep", "run", str(spec), "--db", str(db)]
    if devices_file:
        args += ["--devices", str(devices_file)]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.monotonic() + limit_s
    try:
        while time.monotonic() < deadline:
            if len(final_rows(db)) >= kill_after_rows or proc.poll() is not None:
                break
            time.sleep(0.5)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # a host crash: workers die with the controller
        proc.wait(timeout=30)
    con = sqlite3.connect(db)
    (sweep_id,) = con.execute("SELECT id FROM sweeps ORDER BY created_at DESC LIMIT 1").fetchone()
    con.close()
    return sweep_id


# ------------------------------------------------------------------------------------------------ isolated sweeps
def isolated_env(data_dir: Path) -> dict[str, str]:
    """The environment of a sweep that keeps everything (cache, models, locks) under ``data_dir``."""
    data_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, DLAS_DATA_DIR=str(data_dir), TVM_NUM_THREADS="1", OMP_NUM_THREADS="1")
    env.pop("DLAS_SWEEP_RUN", None)
    return env


LOCAL_ONE_THREAD = ("devices:\n  local:\n    arch: x86_64\n    target: {kind: llvm}\n    threads: 1\n"
                    "    connection: {type: local}\n")


@dataclass
class IsolatedSweep:
    """A sweep's own world: data dir (cache, models), one-thread local device file, spec, database."""

    data: Path
    env: dict[str, str]
    spec: Path
    db: Path

    @property
    def common(self) -> list[str]:
        """The CLI options every `sweep run|resume|status` of this world takes."""
        return ["--db", str(self.db), "--devices", str(self.spec.with_name("devices.yaml"))]


def isolated_sweep(root: Path, spec_text: str, spec_name: str = "spec.yaml", db_name: str = "r.sqlite"
                   ) -> IsolatedSweep:
    """Write ``spec_text`` and a one-thread local device under ``root``; everything else stays under it too."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "devices.yaml").write_text(LOCAL_ONE_THREAD)
    spec = root / spec_name
    spec.write_text(spec_text)
    return IsolatedSweep(root / "data", isolated_env(root / "data"), spec, root / db_name)


def start_sweep_process(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    """`dlas-host sweep ARGS` in its own session (so a group signal reaches it and its compile pool only)."""
    return subprocess.Popen([sys.executable, "-m", "dlas_host.cli", "sweep", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def count(db: Path, sql: str, *params: object) -> int:
    """A scalar from the database, 0 while it (or the table) does not exist yet."""
    if not db.exists():
        return 0
    con = sqlite3.connect(db, timeout=30)
    try:
        return int(con.execute(sql, params).fetchone()[0] or 0)
    except sqlite3.OperationalError:
        return 0
    finally:
        con.close()


def sweep_processes(data_dir: Path) -> list[tuple[int, str]]:
    """Live processes (not zombies) that belong to sweeps on ``data_dir``: its path in their environment."""
    import psutil

    out = []
    for proc in psutil.process_iter():
        if proc.pid == os.getpid():
            continue
        try:
            if proc.environ().get("DLAS_DATA_DIR") == str(data_dir) and proc.status() != psutil.STATUS_ZOMBIE:
                out.append((proc.pid, " ".join(proc.cmdline())[:160]))
        except psutil.Error:
            continue
    return out


def wait_no_sweep_processes(data_dir: Path, limit_s: float = 60) -> list[tuple[int, str]]:
    """Wait (up to ``limit_s``, a hang guard) for the sweep's processes to be gone; returns those left."""
    deadline = time.monotonic() + limit_s
    while True:
        left = sweep_processes(data_dir)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


def job_rows_by_key(db: Path, sweep_id: str) -> dict[str, list[tuple[str, bool, object]]]:
    """(status, retryable, superseded_by) of each row of a sweep, by job key, in the order stored."""
    import json

    con = sqlite3.connect(db)
    try:
        rows = con.execute("SELECT job_key, status, extra, superseded_by FROM results WHERE sweep_id = ? ORDER BY id",
                           (sweep_id,)).fetchall()
    finally:
        con.close()
    out: dict[str, list[tuple[str, bool, object]]] = {}
    for key, status, extra, superseded in rows:
        out.setdefault(key, []).append((status, bool(json.loads(extra or "{}").get("retryable")), superseded))
    return out


def final_count(rows: list[tuple[str, bool, object]]) -> int:
    return sum(1 for status, retryable, _ in rows if status == "ok" or (status == "skipped" and not retryable))
