"""How busy the machine was while something was timed: the CPU other processes used during the window.

Around a timed loop, the machine's busy CPU time (``/proc/stat`` through psutil, all cores) minus the CPU
time of the timing process itself (its threads, plus children it has waited for) is what other processes
and the kernel used meanwhile: ``competing_cores`` is that divided by the wall time. A competitor on a
core the timing uses steals time slices, and a parallel loop waits for its slowest thread, so even a
fraction of a core shows in the median. Per-process deltas name the main competitors.

Both sides use it: the agent around ``time_evaluator``, the host around an engine baseline's subprocess.
Counters tick at ``1/CLK_TCK`` (10 ms) per core, so a short window has a resolution of a few ticks; see
``stats.load_warnings``.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

import psutil

from .protocol import TimingLoad

TOP_N = 3
TOP_MIN_CORES = 0.05  # processes below this share of a core are not named


def _machine_busy_s() -> tuple[float, float]:
    """(busy, steal) CPU seconds of the whole machine since boot, summed over cores."""
    t = psutil.cpu_times()
    busy = t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)
    return busy, getattr(t, "steal", 0.0)


def _own_s(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system + t.children_user + t.children_system


def _processes(own_pid: int) -> dict[tuple[int, str], float]:
    """(pid, name) -> CPU seconds, for every process we may read (others are skipped)."""
    out: dict[tuple[int, str], float] = {}
    for p in psutil.process_iter(["name", "cpu_times"]):
        info = p.info
        times = info.get("cpu_times")
        if p.pid == own_pid or times is None:
            continue
        out[(p.pid, info.get("name") or "?")] = times.user + times.system
    return out


@dataclass
class _Mark:
    wall: float
    busy_s: float
    steal_s: float
    own_s: float
    procs: dict[tuple[int, str], float] = field(default_factory=dict)


class LoadMeter:
    """``with LoadMeter() as meter: <timed loop>``, then ``meter.result`` (a ``TimingLoad``).

    Never raises: a machine where psutil cannot read the counters gives ``result = None``.
    """

    def __init__(self, name_processes: bool = True) -> None:
        self.name_processes = name_processes
        self.result: TimingLoad | None = None
        self._start: _Mark | None = None
        self._proc = psutil.Process()

    def __enter__(self) -> "LoadMeter":
        try:
            procs = _processes(self._proc.pid) if self.name_processes else {}
            busy, steal = _machine_busy_s()  # read last: the process scan stays outside the window
            self._start = _Mark(time.perf_counter(), busy, steal, _own_s(self._proc), procs)
        except (psutil.Error, OSError):
            self._start = None
        return self

    def __exit__(self, *_exc: Any) -> None:
        start = self._start
        if start is None:
            return
        try:
            wall = time.perf_counter()
            busy, steal = _machine_busy_s()  # read first, for the same reason
            own = _own_s(self._proc)
            procs = _processes(self._proc.pid) if self.name_processes else {}
        except (psutil.Error, OSError):
            return
        seconds = max(wall - start.wall, 1e-9)
        busy_cores = max(0.0, busy - start.busy_s) / seconds
        own_cores = max(0.0, own - start.own_s) / seconds
        top = []
        for key, cpu_s in procs.items():
            used = cpu_s - start.procs.get(key, 0.0)  # a process born in the window counts whole
            if used / seconds >= TOP_MIN_CORES:
                top.append({"pid": key[0], "name": key[1], "cores": round(used / seconds, 3)})
        top.sort(key=lambda item: -item["cores"])
        try:
            load_1m = float(os.getloadavg()[0])
        except OSError:
            load_1m = 0.0
        self.result = TimingLoad(
            wall_s=round(seconds, 6), cores=psutil.cpu_count() or 1, busy_cores=round(busy_cores, 3),
            own_cores=round(own_cores, 3), competing_cores=round(max(0.0, busy_cores - own_cores), 3),
            steal_cores=round(max(0.0, steal - start.steal_s) / seconds, 3), top=top[:TOP_N],
            load_avg_1m=round(load_1m, 2))
