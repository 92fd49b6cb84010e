"""Timing statistics in the spirit of pyperf: robust centre and spread, percentiles, and warnings."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .protocol import TimingLoad, TimingStats

MIN_SAMPLES = 5
UNSTABLE_RELATIVE_SPREAD = 0.10  # IQR / median above this makes a result unstable
OUTLIER_FACTOR = 3.0  # samples beyond median +- 3 * IQR are outliers
# Cores that other processes may use during timing before the row is flagged. The background of an idle
# machine (daemons, kernel threads) is a few hundredths of a core; one busy competing thread shows as ~1 and
# doubled the median (issue #20: 25 ms stored against 13 ms; 17.9 -> 35.4 ms for resnet18@32 here). A
# quarter of a core is well above the background, and already a quarter of the time slices of a core taken
# from a parallel loop that waits for its slowest thread.
COMPETING_CORES_WARN = 0.25
TICK_S = 0.01  # CPU time counters advance in 1/CLK_TCK steps (100 Hz on Linux) per core


def summarize(samples_ms: Sequence[float]) -> TimingStats:
    if len(samples_ms) == 0:
        raise ValueError("no timing samples")
    arr = np.asarray(samples_ms, dtype=np.float64)
    median = float(np.median(arr))
    q1, q3, p90, p99 = (float(v) for v in np.percentile(arr, [25, 75, 90, 99]))
    iqr = q3 - q1
    mad = float(np.median(np.abs(arr - median)))
    return TimingStats(
        n=int(arr.size),
        median_ms=median,
        mean_ms=float(arr.mean()),
        stdev_ms=float(arr.std(ddof=1)) if arr.size > 1 else 0.0,
        mad_ms=mad,
        iqr_ms=iqr,
        p90_ms=p90,
        p99_ms=p99,
        min_ms=float(arr.min()),
        max_ms=float(arr.max()),
        samples_ms=[float(v) for v in arr],
        warnings=stability_warnings(arr, median, iqr),
    )


def stability_warnings(arr: np.ndarray, median: float, iqr: float) -> list[str]:
    warnings: list[str] = []
    if arr.size < MIN_SAMPLES:
        warnings.append(f"only {arr.size} samples; use at least {MIN_SAMPLES} for a stable median")
    if median > 0 and iqr / median > UNSTABLE_RELATIVE_SPREAD:
        warnings.append(
            f"unstable: IQR is {100 * iqr / median:.0f}% of the median (> {100 * UNSTABLE_RELATIVE_SPREAD:.0f}%); "
            "the device may be loaded, throttling or changing frequency"
        )
    if iqr > 0:
        outliers = int(np.sum(np.abs(arr - median) > OUTLIER_FACTOR * iqr))
        if outliers:
            warnings.append(f"{outliers} outlier sample(s) beyond median +- {OUTLIER_FACTOR:g} IQR")
    if median > 0 and float(arr.min()) < 0.001:
        warnings.append("a sample below 1 us: the timer resolution dominates; raise `number`")
    return warnings


def load_warnings(load: TimingLoad | None) -> list[str]:
    """A warning when other processes (or the hypervisor) took CPU time while the timed loop ran.

    Counters tick per core, so a window shorter than a few ticks per core cannot tell: the competing CPU
    time must also exceed that resolution, ``TICK_S * (cores + 2)``.
    """
    if load is None or load.wall_s <= 0:
        return []
    warnings: list[str] = []
    resolution_cores = TICK_S * (max(load.cores, 1) + 2) / load.wall_s
    if load.competing_cores >= max(COMPETING_CORES_WARN, resolution_cores):
        who = ", ".join(f"{p.get('name', '?')} pid {p.get('pid', '?')} {float(p.get('cores', 0)):.2f}"
                        for p in load.top) or "no single process stood out"
        warnings.append(f"another process used {load.competing_cores:.2f} cores during timing ({who}): "
                        "timings may be inflated")
    if load.steal_cores >= max(COMPETING_CORES_WARN, resolution_cores):
        warnings.append(f"the hypervisor took {load.steal_cores:.2f} cores (steal) during timing: "
                        "timings may be inflated")
    return warnings
