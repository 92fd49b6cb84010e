"""Device locks, machine-wide: one timing per device at a time, and nothing else on a CPU being timed.

A lock is keyed by what the device physically is, not by its name or the data dir:
- the local device, and any device whose agent runs on this machine (SSH to this host), share one key,
  this machine (``machine-<hostname>``), whatever their names and whichever data dir a run uses;
- an SSH device is its ``host:port`` (and network namespace); a tracker pool its ``host:port/key``.

The lock files live in one machine-wide directory, ``$DLAS_LOCK_DIR`` or ``/tmp/dlas-locks`` (mode 1777;
the files are 0666, so runs of different users exclude each other too).

Holding a lock means holding an ``fcntl.flock`` on its file, so a crashed holder's lock is free at once (the
kernel drops it with the process). A timing holds it exclusively. Work that only burns this machine's CPU
(TVM compiles, the torch reference run) holds this machine's key shared (``cpu_use``): it waits for a local
timing to end, and a timing waits for it. A waiting exclusive holder goes first (it holds the key's gate
file, which shared holders must pass), so a stream of compiles cannot starve timings.

The file also records the exclusive holder (host, pid, device, start, heartbeat), refreshed by a heartbeat
thread: when the lock dir is shared between hosts (where flock may not reach across), a record from another
host counts as held until its heartbeat is older than ``stale_after_s``, after which it is taken over.

Locks are re-entrant within a process: a sweep holding a device can call ``bench_tvm``, which locks too,
and a process holding a key exclusively passes its own ``cpu_use`` (compile, then time, then check).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import ipaddress
import json
import logging
import os
import re
import socket
import stat
import sys
import threading
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Iterator, Union

from ..agent_client import AgentError
from ..devices import Device
from ..errors import DlasError

HEARTBEAT_S = 10.0
STALE_AFTER_S = 120.0
DEFAULT_LOCK_DIR = "/tmp/dlas-locks"
LOCK_DIR_ENV = "DLAS_LOCK_DIR"

log = logging.getLogger("dlas_host.locks")


class DeviceBusy(AgentError):
    """Another run holds the device."""


class LockDirError(DlasError, OSError):
    """The machine-wide lock directory cannot be used."""


class LockOrderError(RuntimeError):
    """A process holding a key shared asked for it exclusively: a programming error (it could deadlock)."""


# ------------------------------------------------------------------------------------------------ where
def lock_dir() -> Path:
    """The machine-wide lock directory (created world-writable and sticky, as /tmp, when it is the default)."""
    configured = os.environ.get(LOCK_DIR_ENV)
    path = Path(configured).expanduser() if configured else Path(DEFAULT_LOCK_DIR)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        try:
            path.mkdir(parents=bool(configured), exist_ok=True)
            if not configured:
                os.chmod(path, 0o1777)  # every user's runs share the one lock per device
        except OSError as exc:
            raise LockDirError(f"cannot create the lock directory {path}: {exc.strerror} "
                               f"(set {LOCK_DIR_ENV} to a writable directory)") from None
        st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise LockDirError(f"lock directory {path} is not a directory (a symlink or file there is refused; "
                           f"set {LOCK_DIR_ENV})")
    if not os.access(path, os.W_OK | os.X_OK):
        raise LockDirError(f"lock directory {path} is not writable by this user (owner uid {st.st_uid}, mode "
                           f"{stat.S_IMODE(st.st_mode):o}): make it mode 1777 or set {LOCK_DIR_ENV}")
    return path


def machine_key() -> str:
    """The key of this machine: every device that times on this machine's CPU."""
    return "machine-" + socket.gethostname()


def _this_machine_addresses() -> set[str]:
    names = {"localhost", socket.gethostname()}  # no getfqdn(): a DNS lookup could hang a lock
    try:
        import psutil  # noqa: PLC0415

        for addrs in psutil.net_if_addrs().values():
            names.update(a.address.split("%")[0] for a in addrs if a.family in (socket.AF_INET, socket.AF_INET6))
    except (ImportError, OSError):
        pass
    return {n.lower() for n in names if n}


def _is_this_machine(host: str) -> bool:
    try:
        if ipaddress.ip_address(host).is_loopback:
            return True
    except ValueError:
        pass
    return host.lower() in _this_machine_addresses()


def device_key(device: Device) -> str:
    """What a device physically is, as a lock key (see the module doc)."""
    conn = device.connection
    if conn.type == "local":
        return machine_key()
    if conn.type == "ssh":
        if conn.netns is None and _is_this_machine(conn.host):
            return machine_key()
        return f"ssh-{conn.host}-{conn.port}" + (f"-netns-{conn.netns}" if conn.netns else "")
    return f"tracker-{conn.host}-{conn.port}-{conn.key}"


Lockable = Union[Device, str]


def _key_and_label(target: Lockable) -> tuple[str, str]:
    """A Device locks its physical key; a plain string is a lock key of its own (a named resource)."""
    if isinstance(target, Device):
        return device_key(target), target.name
    return target, target


def _file_name(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", key) + ".lock"


def lock_path(target: Lockable) -> Path:
    return lock_dir() / _file_name(_key_and_label(target)[0])


def _open(path: Path) -> tuple[int, bool]:
    """(fd, writable). Never creates through a symlink; a file another user made read-only is still lockable
    (flock needs no write access) but gets no holder record."""
    flags = os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    for _ in range(3):
        try:
            return os.open(path, os.O_RDWR | flags), True
        except FileNotFoundError:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | flags, 0o666)
            except FileExistsError:
                continue  # created meanwhile by another run
            with contextlib.suppress(OSError):
                os.fchmod(fd, 0o666)  # the umask would keep other users out
            return fd, True
        except PermissionError:
            return os.open(path, os.O_RDONLY | flags), False
    return os.open(path, os.O_RDWR | flags), True


# ------------------------------------------------------------------------------------------------ records
@dataclass
class Holder:
    host: str
    pid: int
    start: float
    heartbeat: float
    purpose: str = ""
    device: str = ""  # the device name the holder asked for (several may share one key)

    def describe(self, now: float | None = None) -> str:
        now = now or time.time()
        what = f" ({self.purpose})" if self.purpose else ""
        dev = f" for device {self.device}" if self.device else ""
        return (f"held by {self.host} pid {self.pid}{what}{dev} for {now - self.start:.0f} s, "
                f"heartbeat {now - self.heartbeat:.0f} s ago")


_HOLDER_FIELDS = {f.name for f in fields(Holder)}


def _read_holder(fd: int) -> Holder | None:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        raw = os.read(fd, 4096).decode(errors="replace").strip()
        data = json.loads(raw) if raw else None
        return Holder(**{k: v for k, v in data.items() if k in _HOLDER_FIELDS}) if isinstance(data, dict) else None
    except (OSError, ValueError, TypeError):
        return None


def _write_holder(fd: int, holder: Holder | None) -> None:
    data = json.dumps(asdict(holder)).encode() if holder else b""
    os.lseek(fd, 0, os.SEEK_SET)
    os.ftruncate(fd, 0)
    os.write(fd, data)
    os.fsync(fd)


def _foreign_record(holder: Holder | None, now: float, stale_after_s: float) -> bool:
    """A fresh record of another host: held there, where our flock may not reach."""
    return bool(holder and holder.host != socket.gethostname() and now - holder.heartbeat < stale_after_s)


# ------------------------------------------------------------------------------------------------ holding
class _Held:
    def __init__(self, key: str, fd: int, writable: bool, holder: Holder, shared: bool, heartbeat_s: float) -> None:
        self.key, self.fd, self.writable, self.holder, self.shared, self.count = key, fd, writable, holder, shared, 1
        self._stop = threading.Event()
        self._thread = None
        if not shared and writable:
            self._thread = threading.Thread(target=self._beat, args=(heartbeat_s,), daemon=True,
                                            name=f"lock-heartbeat:{key}")
            self._thread.start()

    def _beat(self, every: float) -> None:
        while not self._stop.wait(every):
            self.holder.heartbeat = time.time()
            with contextlib.suppress(OSError):
                _write_holder(self.fd, self.holder)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            with contextlib.suppress(OSError):
                _write_holder(self.fd, None)
        with contextlib.suppress(OSError):
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


_held: dict[str, _Held] = {}
_held_guard = threading.Lock()


def _try_flock(fd: int, mode: int) -> bool:
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError as exc:  # e.g. ENOLCK on a network filesystem
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return False
        raise


class _Attempt:
    """One acquisition in progress: the gate (exclusive requests keep it while they wait) and the lock file."""

    def __init__(self, key: str, shared: bool) -> None:
        self.key, self.shared = key, shared
        directory = lock_dir()
        self.path = directory / _file_name(key)
        self.fd, self.writable = _open(self.path)
        self.gate_fd, _ = _open(directory / (_file_name(key)[:-5] + ".gate"))
        self.gated = False

    def step(self, stale_after_s: float) -> tuple[bool, str]:
        """Try once; (acquired, why not)."""
        if not self.gated:
            if not _try_flock(self.gate_fd, fcntl.LOCK_EX):
                return False, self._why("an exclusive run is waiting for it")
            self.gated = True
        if not _try_flock(self.fd, fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX):
            if self.shared:  # step aside: a waiting exclusive request takes the gate
                self._ungate()
            return False, self._why("held")
        previous = _read_holder(self.fd)
        if _foreign_record(previous, time.time(), stale_after_s):
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            self._ungate()
            return False, previous.describe()  # type: ignore[union-attr]
        self._ungate()
        return True, ""

    def _why(self, default: str) -> str:
        holder = _read_holder(self.fd)
        if holder:
            return holder.describe()
        return "in shared use (compiles or reference runs on this machine)" if default == "held" else default

    def _ungate(self) -> None:
        if self.gated:
            with contextlib.suppress(OSError):
                fcntl.flock(self.gate_fd, fcntl.LOCK_UN)
            self.gated = False

    def close(self, keep_fd: bool) -> None:
        self._ungate()
        os.close(self.gate_fd)
        if not keep_fd:
            os.close(self.fd)


def _reenter(key: str, shared: bool) -> _Held | None:
    with _held_guard:
        mine = _held.get(key)
        if mine is None:
            return None
        if mine.shared and not shared:
            raise LockOrderError(f"lock {key}: this process holds it shared and asked for it exclusively "
                                 "(release the shared hold first; upgrading could deadlock)")
        mine.count += 1
        return mine


@contextlib.contextmanager
def _hold(key: str, label: str, *, shared: bool, wait_s: float, stale_after_s: float, purpose: str,
          heartbeat_s: float, poll_s: float, on_wait: str = "raise") -> Iterator[Holder | None]:
    mine = _reenter(key, shared)
    if mine is not None:
        try:
            yield mine.holder
        finally:
            _leave(mine)
        return
    waited = max(wait_s, 1.0)  # 1 s grace: describe_locks() probes briefly
    deadline = time.monotonic() + waited
    attempt = _Attempt(key, shared)
    acquired, why, told = False, "", False
    try:
        while True:
            acquired, why = attempt.step(stale_after_s)
            if acquired or time.monotonic() >= deadline:
                break
            if not told:
                log.info("waiting for %s (%s): %s", label, key, why)
                told = True
            time.sleep(poll_s)
    finally:
        attempt.close(keep_fd=acquired)
    if not acquired:
        message = f"device {label} is busy: {why} (waited {waited:g} s; lock file {attempt.path})"
        if on_wait == "raise":
            raise DeviceBusy(message)
        print(f"warning: {message}; going ahead without it", file=sys.stderr, flush=True)
        yield None
        return
    now = time.time()
    holder = Holder(host=socket.gethostname(), pid=os.getpid(), start=now, heartbeat=now, purpose=purpose,
                    device=label)
    if not shared and attempt.writable:
        with contextlib.suppress(OSError):
            _write_holder(attempt.fd, holder)
    held = _Held(key, attempt.fd, attempt.writable, holder, shared, heartbeat_s)
    with _held_guard:
        _held[key] = held
    try:
        yield holder
    finally:
        _leave(held)


def _leave(held: _Held) -> None:
    """One holder less; the last one (the first or a re-entrant one, in threads) releases the lock."""
    with _held_guard:
        held.count -= 1
        last = held.count <= 0
        if last and _held.get(held.key) is held:
            _held.pop(held.key)
    if last:
        held.release()


def lock_wait_s() -> float:
    """How long a run waits for a busy device: ``$DLAS_LOCK_WAIT_S``, default 300 s."""
    try:
        return float(os.environ.get("DLAS_LOCK_WAIT_S", "300"))
    except ValueError:
        return 300.0


@contextlib.contextmanager
def device_lock(device: Lockable, wait_s: float = 0.0, *, stale_after_s: float = STALE_AFTER_S, purpose: str = "",
                heartbeat_s: float = HEARTBEAT_S, poll_s: float = 0.5) -> Iterator[Holder]:
    """Hold ``device`` exclusively (a timing); wait up to ``wait_s`` for a busy device, then raise DeviceBusy.

    A ``Device`` locks what it physically is (``device_key``); a plain string is a lock key of its own.
    """
    key, label = _key_and_label(device)
    with _hold(key, label, shared=False, wait_s=wait_s, stale_after_s=stale_after_s, purpose=purpose,
               heartbeat_s=heartbeat_s, poll_s=poll_s) as holder:
        yield holder  # type: ignore[misc]


@contextlib.contextmanager
def cpu_use(purpose: str, wait_s: float | None = None, *, poll_s: float = 0.5) -> Iterator[None]:
    """This machine's CPU, shared: for work that would disturb a local timing (TVM compiles, torch reference
    runs). Waits while a device on this machine is being timed, and a timing waits for it.

    After ``wait_s`` (default ``$DLAS_LOCK_WAIT_S``) it goes ahead with a warning rather than failing the
    build: a timing that then overlaps records the load it saw (``competing_cores``) and warns on its row.
    """
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(_hold(machine_key(), "this machine", shared=True, purpose=purpose,
                                      wait_s=lock_wait_s() if wait_s is None else wait_s, poll_s=poll_s,
                                      stale_after_s=STALE_AFTER_S, heartbeat_s=HEARTBEAT_S, on_wait="proceed"))
        except LockDirError as exc:  # never fail a build over the lock dir: timings record what they saw
            print(f"warning: {exc}; {purpose} runs without the machine lock", file=sys.stderr, flush=True)
        yield


# ------------------------------------------------------------------------------------------------ listing
def _state_of(path: Path, stale_after_s: float, now: float) -> tuple[str, str] | None:
    """(label, state) of one lock file, or None when it is free."""
    key = path.name[:-5]
    with _held_guard:
        mine = next((h for h in _held.values() if _file_name(h.key) == path.name), None)
    if mine is not None:
        if mine.shared:
            return key, "in shared use by this process"
        return mine.holder.device or key, mine.holder.describe(now) + " (this process)"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        holder = _read_holder(fd)
        if _try_flock(fd, fcntl.LOCK_EX):  # a brief probe: waiting runs retry within their 1 s grace
            state = "free"
        elif _try_flock(fd, fcntl.LOCK_SH):
            state = "shared"
        else:
            state = "held"
        if state != "held":
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
    label = holder.device if holder and holder.device else key
    if state == "held":
        return label, holder.describe(now) if holder else "held"
    if holder and holder.host != socket.gethostname():
        age = now - holder.heartbeat
        return label, holder.describe(now) if age < stale_after_s else f"stale ({holder.describe(now)})"
    if state == "shared":
        return key, "in shared use (compiles or reference runs on this machine)"
    return None  # a record of a dead local holder: the kernel freed its lock, the device is free


def describe_locks(stale_after_s: float = STALE_AFTER_S, devices: list[Device] | None = None) -> dict[str, str]:
    """Lock states of busy devices ("free" ones are left out).

    Without ``devices``: keyed by the device name the holder asked for (or the lock key). With ``devices``:
    every given device whose physical key is busy, e.g. all local devices while one of them is timed.
    """
    now = time.time()
    try:
        directory = lock_dir()
    except LockDirError:
        return {}
    by_file: dict[str, tuple[str, str]] = {}
    for path in sorted(directory.glob("*.lock")):
        state = _state_of(path, stale_after_s, now)
        if state is not None:
            by_file[path.name] = state
    if devices is None:
        return dict(by_file.values())
    return {dev.name: by_file[_file_name(device_key(dev))][1] for dev in devices
            if _file_name(device_key(dev)) in by_file}
