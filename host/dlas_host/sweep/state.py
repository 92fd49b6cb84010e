"""Sweep records next to the results, in the same SQLite file: id, name, the spec as run, status."""

from __future__ import annotations

import json
import os
import platform
import time
import uuid
from pathlib import Path
from typing import Any

from ..errors import DlasError
from ..store import connect


class SweepNotFound(DlasError, LookupError):
    pass


class SweepStateError(DlasError, RuntimeError):
    """A sweep record that cannot be read (the database file itself is checked by ``store.connect``)."""


class SweepState:
    def __init__(self, db_path: Path) -> None:
        self.path = Path(db_path)
        with self._db() as db:
            db.execute("CREATE TABLE IF NOT EXISTS sweeps (id TEXT PRIMARY KEY, name TEXT, spec TEXT, devices TEXT,"
                       " total INTEGER, status TEXT, created_at TEXT, updated_at TEXT, host TEXT, pid INTEGER)")

    def _db(self):
        return connect(self.path)

    def create(self, name: str, spec: dict[str, Any], devices: list[str] | None, total: int) -> str:
        sweep_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        now = time.strftime("%Y-%m-%dT%H:%M:%S")
        with self._db() as db:
            db.execute("INSERT INTO sweeps VALUES (?, ?, ?, ?, ?, 'running', ?, ?, ?, ?)",
                       (sweep_id, name, json.dumps(spec), json.dumps(devices), total, now, now,
                        platform.node(), os.getpid()))
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
        except (TypeError, ValueError) as exc:
            raise SweepStateError(f"{self.path}: sweep {row['id']!r} has an unreadable record ({exc})") from None
        return row

    def set_status(self, sweep_id: str, status: str) -> None:
        with self._db() as db:
            db.execute("UPDATE sweeps SET status = ?, updated_at = ?, pid = ? WHERE id = ?",
                       (status, time.strftime("%Y-%m-%dT%H:%M:%S"), os.getpid(), sweep_id))

    def list(self) -> list[dict[str, Any]]:
        with self._db() as db:
            return [dict(r) for r in db.execute(
                "SELECT id, name, total, status, created_at, updated_at FROM sweeps ORDER BY created_at DESC")]

    def counts(self, sweep_id: str) -> dict[str, int]:
        """Final state per job key (the newest row of each job wins), counted by status."""
        with self._db() as db:
            rows = db.execute("SELECT job_key, status FROM results WHERE sweep_id = ? ORDER BY id", (sweep_id,))
            latest = {r["job_key"]: r["status"] for r in rows}
        out: dict[str, int] = {}
        for status in latest.values():
            out[status] = out.get(status, 0) + 1
        return out
