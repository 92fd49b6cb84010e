"""Per-function profile on the device: how long each compiled function of an artifact takes inside a run.

TVM 0.27's Relax VM has no built-in profiler, but it calls an *instrument* before and after every Call
instruction (``VirtualMachine.set_instrument``). The instrument here takes a timestamp on both sides
(synchronising the device first where it is not the CPU), so each call's time is measured in place, with
the buffers, caches and threads of a real run. Compiled functions (PrimFuncs: names without a dot) are
reported per call site in execution order; runtime builtins (``vm.builtin.*``: allocation, tuples, shape
checks) are summed per name. Times are medians (and means) over ``repeat`` instrumented runs; the same number
of plain runs (no instrument) gives the overhead. A median leaves out the stalls a competing process causes
(a parallel kernel waits a scheduler tick for a preempted worker, a few ms, on a different call each run);
the mean keeps them, so per-call means add up to the mean run.
Only the TVM runtime, numpy and psutil: the agent stays torch-free.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import devinfo
from .load import LoadMeter
from .protocol import LOAD_ENV_KEY, ProfileRequest, ProfileResult
from .runner import checked_library, resolve
from .stats import load_warnings, summarize

Event = tuple[str, float]  # (function symbol, seconds)


def is_kernel(symbol: str) -> bool:
    """A compiled function of the artifact (a PrimFunc), not a runtime builtin such as ``vm.builtin.alloc_tensor``."""
    return "." not in symbol


def _arg_info(args: tuple[Any, ...]) -> list[dict[str, Any]]:
    return [{"shape": [int(d) for d in a.shape], "dtype": str(a.dtype)} for a in args if hasattr(a, "shape")]


class CallTimer:
    """The VM instrument: per run, the (symbol, seconds) of every call; argument shapes of the first run."""

    def __init__(self, sync: Callable[[], None] | None) -> None:
        self.sync = sync
        self.runs: list[list[Event]] = []
        self.args: list[list[dict[str, Any]]] = []  # per kernel call of the first run
        self._starts: list[float] = []

    def new_run(self) -> None:
        self.runs.append([])
        self._starts.clear()

    def __call__(self, _func: Any, symbol: str, before: bool, _ret: Any, *args: Any) -> int:
        if before:
            if self.sync is not None:
                self.sync()
            self._starts.append(time.perf_counter())
            return 0  # VMInstrumentReturnKind.kNoOp: run the call
        if self.sync is not None:
            self.sync()
        seconds = time.perf_counter() - self._starts.pop()
        self.runs[-1].append((str(symbol), seconds))
        if len(self.runs) == 1 and is_kernel(str(symbol)):
            self.args.append(_arg_info(args))
        return 0


def summarize_calls(runs: list[list[Event]], args: list[list[dict[str, Any]]]
                    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(kernel call sites in order, builtins per name) with median milliseconds over the runs."""
    if not runs or not runs[0]:
        raise ValueError("the instrumented runs recorded no calls")
    order = [symbol for symbol, _ in runs[0]]
    if any([symbol for symbol, _ in run] != order for run in runs[1:]):
        raise ValueError("the VM called different functions from run to run; cannot align call sites")
    times = np.array([[seconds for _, seconds in run] for run in runs]) * 1e3  # (runs, calls) in ms
    calls: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    builtins: dict[str, list[int]] = {}
    for index, symbol in enumerate(order):
        if not is_kernel(symbol):
            builtins.setdefault(symbol, []).append(index)
            continue
        column = times[:, index]
        calls.append({"function": symbol, "occurrence": seen.get(symbol, 0), "median_ms": float(np.median(column)),
                      "mean_ms": float(column.mean()), "min_ms": float(column.min()),
                      "args": args[len(calls)] if len(calls) < len(args) else []})
        seen[symbol] = seen.get(symbol, 0) + 1
    per_builtin = [{"function": name, "calls": len(cols), "median_ms": float(np.median(times[:, cols].sum(axis=1))),
                    "mean_ms": float(times[:, cols].sum(axis=1).mean())} for name, cols in builtins.items()]
    per_builtin.sort(key=lambda item: -item["median_ms"])
    return calls, per_builtin


def _run_ms(fn: Callable[[], Any], sync: Callable[[], None]) -> float:
    t0 = time.perf_counter()
    fn()
    sync()
    return 1e3 * (time.perf_counter() - t0)


def run_profile(request: ProfileRequest, work_dir: Path) -> ProfileResult:
    """Load the checked library, run ``entry`` plain and instrumented ``repeat`` times each, time every call."""
    import tvm  # noqa: PLC0415 - the runtime import costs seconds
    from tvm.runtime.vm import VirtualMachine  # noqa: PLC0415

    if request.repeat < 1 or request.warmup < 0:
        raise ValueError(f"repeat must be >= 1 and warmup >= 0 (got {request.repeat}, {request.warmup})")
    lib_path = checked_library(work_dir, request.artifact, request.sha256)
    if request.num_threads > 0:
        tvm.get_global_func("runtime.config_threadpool")(1, request.num_threads)
    t0 = time.perf_counter()
    dev = tvm.device(request.device, request.device_id)
    vm = VirtualMachine(tvm.runtime.load_module(str(lib_path)), dev)
    load_s = time.perf_counter() - t0
    with np.load(resolve(work_dir, request.inputs)) as npz:
        args = [tvm.runtime.tensor(npz[f"arg{i}"], dev) for i in range(len(npz.files))]
    run = lambda: vm[request.entry](*args)  # noqa: E731
    for _ in range(request.warmup + 1):
        run()
    dev.sync()
    plain_ms = [_run_ms(run, dev.sync) for _ in range(request.repeat)]
    timer = CallTimer(None if request.device == "cpu" else dev.sync)
    vm.set_instrument(timer)
    total_ms = []
    with LoadMeter() as meter:
        for _ in range(request.repeat):
            timer.new_run()
            total_ms.append(_run_ms(run, dev.sync))
    calls, builtins = summarize_calls(timer.runs, timer.args)
    total = summarize(total_ms)
    warnings = list(total.warnings) + load_warnings(meter.result)
    env = devinfo.snapshot()
    if meter.result is not None:
        env[LOAD_ENV_KEY] = json.loads(meter.result.to_json())
    return ProfileResult(ok=True, calls=calls, builtins=builtins, total=total, plain=summarize(plain_ms),
                         repeat=request.repeat, load_s=load_s, warnings=warnings, env=env)
