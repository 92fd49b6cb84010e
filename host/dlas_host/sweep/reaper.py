"""Nothing outlives a sweep run: its processes carry a token, and whatever kills the runner kills them too.

- Every process a run starts (device workers, compile workers, engine baselines, local agents and the
  processes they fork, SSH tunnels, compilers) inherits ``DLAS_SWEEP_RUN=<sweep id>/<runner pid>/<nonce>``
  in its environment, which ``/proc/<pid>/environ`` shows even after its parent is gone.
- Device workers die with the runner (``PR_SET_PDEATHSIG`` on Linux, a parent-pid watchdog elsewhere).
- A guard process (``python -m dlas_host.sweep.reaper TOKEN``, in its own session) waits on a pipe from the
  runner. When the runner dies without saying "done" (SIGKILL, a crash), the pipe closes and the guard kills
  every process carrying the token, then exits.
- A runner that ends normally or on SIGTERM/SIGINT kills what is left itself; ``resume`` first kills anything
  still carrying a token of the same sweep (a guard that was killed too), so no old worker can store a row
  next to the new run's.

multiprocessing's resource trackers carry the token too; they are killed last, after a grace period in
which they unlink the run's semaphores themselves.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Callable, Iterable

import psutil

TOKEN_ENV = "DLAS_SWEEP_RUN"
PR_SET_PDEATHSIG = 1
TRACKER_GRACE_S = 5.0


def new_token(sweep_id: str) -> str:
    return f"{sweep_id}/{os.getpid()}/{uuid.uuid4().hex[:8]}"


def sweep_of(token: str) -> str:
    return token.split("/", 1)[0]


def _is_tracker(proc: psutil.Process) -> bool:
    try:
        return any("resource_tracker" in part for part in proc.cmdline())
    except psutil.Error:
        return False


def carriers(match: Callable[[str], bool], exclude: Iterable[int] = ()) -> list[psutil.Process]:
    """Live (not zombie) processes whose environment holds a token ``match`` accepts."""
    skip = set(exclude)
    out = []
    for proc in psutil.process_iter():
        if proc.pid in skip:
            continue
        try:
            token = proc.environ().get(TOKEN_ENV)
            if token and match(token) and proc.status() != psutil.STATUS_ZOMBIE:
                out.append(proc)
        except psutil.Error:  # gone, a zombie, or another user's
            continue
    return out


def kill_carriers(match: Callable[[str], bool], exclude: Iterable[int] = (), spare_trackers_of: int | None = None,
                  timeout_s: float = 30.0) -> int:
    """SIGSTOP, then SIGKILL, every process carrying a matching token until none is left; returns how many.

    Repeats because a process may start another while it is being killed. Resource trackers go last
    (after ``TRACKER_GRACE_S``); those whose parent is ``spare_trackers_of`` are left alone (the caller's own,
    which exits with it).
    """
    exclude = {os.getpid(), *exclude}
    killed: set[int] = set()
    deadline = time.monotonic() + timeout_s
    trackers_alone_since: float | None = None
    while time.monotonic() < deadline:
        procs = carriers(match, exclude)
        if spare_trackers_of is not None:
            procs = [p for p in procs if not (_is_tracker(p) and _ppid(p) == spare_trackers_of)]
        if not procs:
            break
        targets = [p for p in procs if not _is_tracker(p)]
        if not targets:
            trackers_alone_since = trackers_alone_since or time.monotonic()
            if time.monotonic() - trackers_alone_since < TRACKER_GRACE_S:
                time.sleep(0.1)
                continue
            targets = procs
        for proc in targets:  # freeze all first: a worker must not see its engine die and store an error row
            with contextlib.suppress(psutil.Error):
                proc.suspend()
        for proc in targets:
            with contextlib.suppress(psutil.Error):
                proc.kill()
                killed.add(proc.pid)
        _wait_dead(targets, 1.0)
    return len(killed)


def _wait_dead(procs: list[psutil.Process], timeout_s: float) -> None:
    """Wait until each is gone or a zombie. Never reaps: a child's exit status stays its owner's to collect
    (``psutil.wait_procs`` would reap it, and multiprocessing might later signal a reused pid)."""
    deadline = time.monotonic() + timeout_s
    alive = list(procs)
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if _alive(p)]
        if alive:
            time.sleep(0.02)


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _ppid(proc: psutil.Process) -> int | None:
    try:
        return proc.ppid()
    except psutil.Error:
        return None


# ------------------------------------------------------------------------------------------------ in a worker
def die_with_parent(parent_pid: int) -> None:
    """In a child process: be killed when ``parent_pid`` (its parent) dies, however it dies."""
    try:
        import ctypes  # noqa: PLC0415

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the watchdog below does it within a second
        pass
    if os.getppid() != parent_pid:  # the parent died before the line above
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent_pid,), name="parent-watchdog", daemon=True).start()


def _watch_parent(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(1.0)
    if os.getpgid(0) == os.getpid():  # a group of its own: take the engine processes it started along
        with contextlib.suppress(OSError):
            os.killpg(os.getpid(), signal.SIGKILL)
    os._exit(1)


# ------------------------------------------------------------------------------------------------ in the runner
class Containment:
    """The runner's side: the token in the environment its children inherit, and the guard process."""

    def __init__(self, sweep_id: str) -> None:
        self.token = new_token(sweep_id)
        self.guard: subprocess.Popen[bytes] | None = None
        self._saved: str | None = None
        self._started = False

    def start(self) -> None:
        self._saved = os.environ.get(TOKEN_ENV)
        os.environ[TOKEN_ENV] = self.token
        self._started = True
        pkg_root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([pkg_root, *filter(None, [os.environ.get("PYTHONPATH")])]))
        self.guard = subprocess.Popen([sys.executable, "-m", "dlas_host.sweep.reaper", self.token],
                                      stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                      env=env, start_new_session=True)

    def kill_rest(self) -> int:
        """Kill every process of this run except this one, its guard and its own resource tracker."""
        guard = [self.guard.pid] if self.guard is not None else []
        return kill_carriers(lambda t: t == self.token, exclude=guard, spare_trackers_of=os.getpid())

    def stop(self) -> int:
        """Kill what is left of the run, dismiss the guard, restore the environment; idempotent."""
        if not self._started:
            return 0
        killed = self.kill_rest()
        if self.guard is not None:
            with contextlib.suppress(OSError, ValueError):
                self.guard.stdin.write(b"done\n")  # type: ignore[union-attr]
                self.guard.stdin.close()  # type: ignore[union-attr]
            try:
                self.guard.wait(10)
            except subprocess.TimeoutExpired:
                self.guard.kill()
                self.guard.wait(5)
            self.guard = None
        if self._saved is None:
            os.environ.pop(TOKEN_ENV, None)
        else:
            os.environ[TOKEN_ENV] = self._saved
        self._started = False
        return killed


def kill_earlier_runs(sweep_id: str, own_token: str) -> int:
    """Kill processes left by earlier runs of the sweep (their runner and guard both dead): call it holding
    the sweep's lock, so none of them belongs to a live runner."""
    return kill_carriers(lambda t: sweep_of(t) == sweep_id and t != own_token)


def guard_main(token: str) -> None:
    """The guard: wait until the runner says "done" or dies, and in the second case kill its processes."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    try:
        said = sys.stdin.buffer.read()  # returns when the runner closes the pipe, or its process is gone
    except OSError:
        said = b""
    if said.strip() == b"done":
        return
    kill_carriers(lambda t: t == token)


if __name__ == "__main__":
    guard_main(sys.argv[1])
