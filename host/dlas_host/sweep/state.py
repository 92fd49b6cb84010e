"""Sweep records next to the results, in the same SQLite file: id, name, the spec as run, status, job keys;
and the claims workers make when they start a job (who started what: a claim with no row after it whose
runner is gone is a job that run left unfinished)."""

from __future__ import annotations

import json
import os
import platform
import sqlite3
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DlasError
from ..store import ResultStore, connect
from .runlock import live_holder

class SweepNotFound(DlasError, LookupError):
    pass


class SweepStateError(DlasError, RuntimeError):
    """A sweep record that cannot be read (the database file itself is checked by ``store.connect``)."""


@dataclass
class SweepSummary:
    """What ``sweep status`` reports, from the final row of each job."""

    total: int
    counts: dict[str, int] = field(default_factory=dict)  # final rows by status; jobs without one: last attempt
    finished: int = 0  # jobs with a final row
    retried: int = 0  # jobs run again after a retryable skip
    duplicates: int = 0  # jobs with more than one final row (databases written before rows were exactly-once)
    orphan_rows: int = 0  # rows carrying the sweep id whose job is not one of the sweep's jobs
    orphan_jobs: int = 0  # jobs started by a runner that is gone and left without a final row
    # jobs without a final row, by why: error / retryable (last attempt), running (the live runner has it),
    # interrupted (started by a runner that is gone, no row at all), not run
    pending_by: dict[str, int] = field(default_factory=dict)
    duplicate_keys: list[str] = field(default_factory=list)
    orphan_keys: list[str] = field(default_factory=list)

    @property
    def orphans(self) -> int:
        return self.orphan_rows + self.orphan_jobs

    @property
    def pending(self) -> int:
        return max(0, self.total - self.finished)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "orphans": self.orphans, "pending": self.pending}


class SweepState:
    """Status a runner records: pending (created), running, interrupted (SIGINT/SIGTERM), incomplete (ended
    with jobs left), done (every job has a final row). A "running" sweep whose runner is gone (SIGKILL, power
    loss) shows as "interrupted" (``live_status``)."""

    def __init__(self, db_path: Path) -> None:
        self.path = Path(db_path)
        with self._db() as db:
            db.execute("CREATE TABLE IF NOT EXISTS sweeps (id TEXT PRIMARY KEY, name TEXT, spec TEXT, devices TEXT,"
                       " total INTEGER, status TEXT, created_at TEXT, updated_at TEXT, host TEXT, pid INTEGER,"
                       " jobs TEXT, token TEXT)")
            have = {row["name"] for row in db.execute("PRAGMA table_info(sweeps)")}
            for name in ("jobs", "token"):  # databases from before runs were locked and jobs recorded
                if name not in have:
                    db.execute(f"ALTER TABLE sweeps ADD COLUMN {name} TEXT")
            db.execute("CREATE TABLE IF NOT EXISTS sweep_claims (sweep_id TEXT, job_key TEXT, token TEXT,"
                       " pid INTEGER, host TEXT, started_at TEXT, row_id INTEGER)")
            db.execute("CREATE INDEX IF NOT EXISTS idx_sweep_claims_sweep_id ON sweep_claims(sweep_id)")

    def _db(self):
        return connect(self.path)

    def create(self, name: str, spec: dict[str, Any], devices: list[str] | None, total: int,
               job_keys: list[str] | None = None) -> str:
        sweep_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        now = time.strftime("%Y-%m-%dT%H:%M:%S")
        with self._db() as db:
            db.execute("INSERT INTO sweeps (id, name, spec, devices, total, status, created_at, updated_at, host, "
                       "pid, jobs) VALUES (?, ?, ?, ?, ?, 'pending', ?, ?, ?, ?, ?)",
                       (sweep_id, name, json.dumps(spec), json.dumps(devices), total, now, now, platform.node(),
                        os.getpid(), json.dumps(job_keys) if job_keys is not None else None))
        return sweep_id

    def get(self, sweep_id: str) -> dict[str, Any]:
        with self._db() as db:
            rows = [dict(r) for r in db.execute("SELECT * FROM sweeps WHERE id LIKE ?", (sweep_id + "%",))]
        if len(rows) != 1:
            raise SweepNotFound(f"no sweep {sweep_id!r}" if not rows else f"sweep id {sweep_id!r} is ambiguous")
        row = rows[0]
        try:
            row["spec"] = json.loads(row["spec"])
            row["devices"] = json.loads(row["devices"]) if row["devices"] else None
            row["jobs"] = json.loads(row["jobs"]) if row.get("jobs") else None
        except (TypeError, ValueError) as exc:
            raise SweepStateError(f"{self.path}: sweep {row['id']!r} has an unreadable record ({exc})") from None
        return row

    def start_run(self, sweep_id: str, token: str, job_keys: list[str]) -> None:
        """Record the run that now holds the sweep: status running, its pid and token, the jobs it expanded."""
        with self._db() as db:
            db.execute("UPDATE sweeps SET status = 'running', updated_at = ?, pid = ?, host = ?, token = ?, "
                       "jobs = ?, total = ? WHERE id = ?",
                       (time.strftime("%Y-%m-%dT%H:%M:%S"), os.getpid(), platform.node(), token,
                        json.dumps(job_keys), len(job_keys), sweep_id))

    def set_status(self, sweep_id: str, status: str) -> None:
        with self._db() as db:
            db.execute("UPDATE sweeps SET status = ?, updated_at = ?, pid = ? WHERE id = ?",
                       (status, time.strftime("%Y-%m-%dT%H:%M:%S"), os.getpid(), sweep_id))

    def list(self) -> list[dict[str, Any]]:
        """All sweeps, newest first; ``status`` is what the sweep is now (a dead runner's "running" reads
        "interrupted"), ``recorded_status`` what its last runner wrote."""
        with self._db() as db:
            rows = [dict(r) for r in db.execute(
                "SELECT id, name, total, status, created_at, updated_at, host, pid FROM sweeps "
                "ORDER BY created_at DESC")]
        for row in rows:
            row["recorded_status"] = row["status"]
            row["status"] = self.live_status(row)
            del row["host"], row["pid"]
        return rows

    # ------------------------------------------------------------------------------------------- liveness
    def runner(self, record: dict[str, Any]) -> dict[str, Any] | None:
        """The live runner of a sweep record (pid, host, token), or ``None``."""
        holder = live_holder(self.path, record["id"])
        if holder is not None:
            return holder or None
        # No lock file: a record written by a runner from before runs were locked; judge by its pid.
        same_host = record.get("host") == platform.node()
        if record.get("status") == "running" and same_host and _pid_alive(record.get("pid")):
            return {"pid": record["pid"], "host": record["host"], "token": None}
        return None

    def live_status(self, record: dict[str, Any]) -> str:
        status = record.get("status") or "pending"
        if status == "running" and self.runner(record) is None:
            return "interrupted"
        return status

    # ------------------------------------------------------------------------------------------- claims
    def claim(self, sweep_id: str, job_key: str, token: str) -> None:
        """A worker starts a job (its row, when stored, closes the claim: ``close_claim``)."""
        with self._db() as db:
            db.execute("INSERT INTO sweep_claims (sweep_id, job_key, token, pid, host, started_at) "
                       "VALUES (?, ?, ?, ?, ?, ?)",
                       (sweep_id, job_key, token, os.getpid(), platform.node(), time.strftime("%Y-%m-%dT%H:%M:%S")))

    @staticmethod
    def close_claim(db: sqlite3.Connection, sweep_id: str, job_key: str, token: str, row_id: int) -> None:
        """In the transaction that stores the job's row (``ResultStore.add_job_row``'s ``on_stored``)."""
        db.execute("UPDATE sweep_claims SET row_id = ? WHERE sweep_id = ? AND job_key = ? AND token = ? "
                   "AND row_id IS NULL", (row_id, sweep_id, job_key, token))

    def open_claims(self, sweep_id: str) -> list[dict[str, Any]]:
        with self._db() as db:
            return [dict(r) for r in db.execute(
                "SELECT job_key, token, pid, host, started_at FROM sweep_claims WHERE sweep_id = ? AND row_id IS NULL "
                "ORDER BY rowid", (sweep_id,))]

    # ------------------------------------------------------------------------------------------- summary
    def summary(self, sweep_id: str, record: dict[str, Any] | None = None) -> SweepSummary:
        """Per-job state from the final row of each job (the first one, if a legacy database has several)."""
        record = record or self.get(sweep_id)
        rows = ResultStore(self.path).job_rows(record["id"])
        listed = record.get("jobs")
        keys = set(listed) if listed is not None else {r["job_key"] for r in rows}  # unknown list: all are jobs
        by_job: dict[str, list[dict[str, Any]]] = {}
        orphan_rows = 0
        for row in rows:
            if row["job_key"] in keys:
                by_job.setdefault(row["job_key"], []).append(row)
            else:
                orphan_rows += 1
        out = SweepSummary(total=len(listed) if listed is not None else int(record.get("total") or 0),
                           orphan_rows=orphan_rows)
        for key, job_rows in by_job.items():
            finals = [r for r in job_rows if r["final"]]
            if finals:
                status = finals[0]["status"]
                out.finished += 1
                if len(finals) > 1:
                    out.duplicates += 1
                    out.duplicate_keys.append(key)
            else:
                status = out_status(job_rows)
            out.counts[status] = out.counts.get(status, 0) + 1
            if any(r["retryable"] and r["superseded_by"] is not None for r in job_rows):
                out.retried += 1  # skipped for a reason that passes, then run again
        live = self.runner(record)
        live_token = (live or {}).get("token")
        finished = {k for k, rs in by_job.items() if any(r["final"] for r in rs)}
        claims = [c for c in self.open_claims(record["id"]) if c["job_key"] in keys and c["job_key"] not in finished]
        running = {c["job_key"] for c in claims if live_token and c["token"] == live_token}
        gone = {c["job_key"] for c in claims if c["token"] != live_token} - running
        out.orphan_jobs = len(gone)
        out.orphan_keys = sorted(gone)
        out.duplicate_keys.sort()
        for key in keys - finished:
            if key in running:
                why = "running"
            elif key in by_job:
                why = out_status(by_job[key])
            elif key in gone:
                why = "interrupted"
            else:
                why = "not run"
            out.pending_by[why] = out.pending_by.get(why, 0) + 1
        return out

    def counts(self, sweep_id: str) -> dict[str, int]:
        """Jobs by the status of their final row (or of their last attempt, for jobs without one)."""
        return self.summary(sweep_id).counts


def out_status(job_rows: list[dict[str, Any]]) -> str:
    """A job without a final row: how its last attempt ended (``error``, or ``retryable`` for a skip that may
    pass)."""
    latest = [r for r in job_rows if r["superseded_by"] is None] or job_rows
    return "retryable" if latest[-1]["retryable"] else latest[-1]["status"]


def _pid_alive(pid: Any) -> bool:
    try:
        os.kill(int(pid), 0)
    except (OSError, TypeError, ValueError):
        return False
    return True
