"""One runner per sweep: an exclusive ``flock`` on a per-sweep file next to the results database.

The file is ``<db>.locks/sweep-<id>.lock``: keyed by the database that holds the sweep, so two data
directories sharing one ``--db`` still exclude each other. The kernel drops the lock with the process (any
kill, even SIGKILL), so a dead runner never blocks a resume; the file also names the holder (pid, host, run
token, start) for the one-line "busy" error and for ``sweep status``. Lock files are never deleted: removing
a lock file while another process waits on it would let two runners in.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import platform
import re
import time
from pathlib import Path
from typing import Any

from ..errors import DlasError


class SweepBusy(DlasError, RuntimeError):
    """Another live runner holds the sweep."""


def lock_path(db_path: Path | str, sweep_id: str) -> Path:
    db_path = Path(db_path)
    return db_path.parent / f"{db_path.name}.locks" / f"sweep-{re.sub(r'[^A-Za-z0-9_.-]', '_', sweep_id)}.lock"


def _read(fd: int) -> dict[str, Any]:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        data = json.loads(os.read(fd, 4096).decode(errors="replace") or "{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def describe(holder: dict[str, Any]) -> str:
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder["start"])) if holder.get("start") else "?"
    return f"pid {holder.get('pid', '?')} on {holder.get('host', '?')} (since {since})"


class RunnerLock:
    """Held by the process that runs the sweep's jobs, from before its first job until its last worker is gone."""

    def __init__(self, db_path: Path | str, sweep_id: str) -> None:
        self.sweep_id = sweep_id
        self.path = lock_path(db_path, sweep_id)
        self.fd: int | None = None

    def acquire(self, token: str) -> None:
        """Take the lock or raise ``SweepBusy`` naming the live runner; never waits."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            for attempt in range(20):  # a `sweep status` probe holds a shared lock for a moment: not a runner
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if attempt == 19:
                        raise
                    time.sleep(0.05)
        except BlockingIOError:
            holder = _read(fd)
            os.close(fd)
            pid = holder.get("pid", "?")
            raise SweepBusy(f"sweep {self.sweep_id} is being run by {describe(holder)}: wait for it to end, or "
                            f"stop it (kill {pid}) and resume") from None
        except OSError:
            os.close(fd)
            raise
        self.fd = fd
        holder = {"pid": os.getpid(), "host": platform.node(), "token": token, "start": time.time()}
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps(holder).encode())

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self.fd, 0)  # no stale holder in the file
        with contextlib.suppress(OSError):
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = None


def live_holder(db_path: Path | str, sweep_id: str) -> dict[str, Any] | None:
    """The live runner of the sweep (pid, host, token, start), ``{}`` when none holds the lock, or ``None``
    when the sweep has no lock file (never run by a runner that locks: decide by pid instead).

    Probes with a shared lock on a read-only descriptor: nothing is written.
    """
    path = lock_path(db_path, sweep_id)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    except OSError:
        return {}
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read(fd) or {"pid": "?", "host": "?"}
        except OSError:
            return {}
        fcntl.flock(fd, fcntl.LOCK_UN)
        return {}
    finally:
        os.close(fd)
