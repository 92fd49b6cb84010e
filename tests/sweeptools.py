"""Drive a real sweep in a subprocess, kill it mid-way, resume it: shared by the local and fleet tests."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
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
