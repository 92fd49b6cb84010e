"""Exclusive device locks: one run per device at a time.

One lock file per device under ``<data dir>/locks``. Holding it means holding an ``fcntl.flock`` on it, so
a crashed holder's lock is free at once (the kernel drops it with the process). The file also records the
holder (host, pid, start, heartbeat), refreshed by a heartbeat thread: when the data dir is shared between
hosts (where flock may not reach across), a record from another host counts as held until its heartbeat is
older than ``stale_after_s``, after which the lock is taken over as stale.

Locks are re-entrant within a process (a sweep holding a device can call ``bench_tvm``, which locks too).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ..paths import sub_dir
from ..transport import AgentError

HEARTBEAT_S = 10.0
STALE_AFTER_S = 120.0


class DeviceBusy(AgentError):
    """Another run holds the device."""


def lock_dir() -> Path:
    return sub_dir("locks")


def lock_path(name: str) -> Path:
    return lock_dir() / (re.sub(r"[^A-Za-z0-9_.-]", "_", name) + ".lock")


@dataclass
class Holder:
    host: str
    pid: int
    start: float
    heartbeat: float
    purpose: str = ""

    def describe(self, now: float | None = None) -> str:
        now = now or time.time()
        what = f" ({self.purpose})" if self.purpose else ""
        return (f"held by {self.host} pid {self.pid}{what} for {now - self.start:.0f} s, "
                f"heartbeat {now - self.heartbeat:.0f} s ago")


def _read_holder(fd: int) -> Holder | None:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        raw = os.read(fd, 4096).decode(errors="replace").strip()
        return Holder(**json.loads(raw)) if raw else None
    except (OSError, ValueError, TypeError):
        return None


def _write_holder(fd: int, holder: Holder | None) -> None:
    data = json.dumps(holder.__dict__).encode() if holder else b""
    os.lseek(fd, 0, os.SEEK_SET)
    os.ftruncate(fd, 0)
    os.write(fd, data)
    os.fsync(fd)


class _Held:
    def __init__(self, name: str, fd: int, holder: Holder, heartbeat_s: float) -> None:
        self.name, self.fd, self.holder, self.count = name, fd, holder, 1
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, args=(heartbeat_s,), daemon=True,
                                        name=f"lock-heartbeat:{name}")
        self._thread.start()

    def _beat(self, every: float) -> None:
        while not self._stop.wait(every):
            self.holder.heartbeat = time.time()
            with contextlib.suppress(OSError):
                _write_holder(self.fd, self.holder)

    def release(self) -> None:
        self._stop.set()
        self._thread.join(5)
        with contextlib.suppress(OSError):
            _write_holder(self.fd, None)
        with contextlib.suppress(OSError):
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


_held: dict[str, _Held] = {}
_held_guard = threading.Lock()


def _try_acquire(name: str, stale_after_s: float, purpose: str, heartbeat_s: float) -> tuple[_Held | None, str]:
    path = lock_path(name)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read_holder(fd)
        os.close(fd)
        return None, holder.describe() if holder else "held (no holder record yet)"
    now = time.time()
    previous = _read_holder(fd)
    if previous and previous.host != socket.gethostname() and now - previous.heartbeat < stale_after_s:
        # another host's run (shared data dir where flock does not reach): respect it until it goes stale
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
        return None, previous.describe(now)
    holder = Holder(host=socket.gethostname(), pid=os.getpid(), start=now, heartbeat=now, purpose=purpose)
    _write_holder(fd, holder)
    return _Held(name, fd, holder, heartbeat_s), ""


@contextlib.contextmanager
def device_lock(name: str, wait_s: float = 0.0, *, stale_after_s: float = STALE_AFTER_S, purpose: str = "",
                heartbeat_s: float = HEARTBEAT_S, poll_s: float = 0.5) -> Iterator[Holder]:
    """Hold device ``name`` exclusively; wait up to ``wait_s`` for a busy device, then raise DeviceBusy."""
    with _held_guard:
        mine = _held.get(name)
        if mine is not None:
            mine.count += 1
    if mine is not None:
        try:
            yield mine.holder
        finally:
            with _held_guard:
                mine.count -= 1
        return
    deadline = time.monotonic() + max(wait_s, 1.0)  # 1 s grace: describe_locks() probes briefly
    why = ""
    held = None
    for _ in range(100000):
        held, why = _try_acquire(name, stale_after_s, purpose, heartbeat_s)
        if held is not None or time.monotonic() >= deadline:
            break
        time.sleep(poll_s)
    if held is None:
        raise DeviceBusy(f"device {name} is busy: {why} (waited {max(wait_s, 1.0):g} s; lock file {lock_path(name)})")
    with _held_guard:
        _held[name] = held
    try:
        yield held.holder
    finally:
        with _held_guard:
            held.count -= 1
            if held.count <= 0:
                _held.pop(name, None)
        if held.count <= 0:
            held.release()


def describe_locks(stale_after_s: float = STALE_AFTER_S) -> dict[str, str]:
    """device name -> lock state, for every device with a lock record ("free" devices are left out)."""
    states: dict[str, str] = {}
    now = time.time()
    for path in sorted(lock_dir().glob("*.lock")):
        name = path.stem
        with _held_guard:
            mine = _held.get(name)
        if mine is not None:
            states[name] = mine.holder.describe(now) + " (this process)"
            continue
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            holder = _read_holder(fd)
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                locked = False
                fcntl.flock(fd, fcntl.LOCK_UN)
            except BlockingIOError:
                locked = True
        finally:
            os.close(fd)
        if locked:
            states[name] = holder.describe(now) if holder else "held"
        elif holder and holder.host != socket.gethostname():
            age = now - holder.heartbeat
            states[name] = holder.describe(now) if age < stale_after_s else f"stale ({holder.describe(now)})"
        # a record of a dead local holder: the kernel freed its lock, the device is free
    return states
