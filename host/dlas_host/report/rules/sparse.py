"""Sparse formats pay off only above a per-device crossover.

A pruned model's sparse build is compared with the same pruned model's dense build (same pruning, device,
quantization, asked algorithm, tuning...), at the sparsity its manifest stored. Along a series of pruned
models, the crossover is the lowest stored sparsity from which the sparse build is significantly faster at
every measured sparsity above it.
"""

from __future__ import annotations

from collections import defaultdict

from ..findings import SPARSE, Finding, Pair
from ..pairs import ASKED_ALGORITHM, config_label, groups, key_of, pair
from ..rows import Meas
from ..stats import statement

VARY = ("sparse_format", "sparse_block", "algorithm")
SERIES_VARY = ("algorithm", "pruning", "sparsity")


def _pct(x: float) -> str:
    return f"{100 * x:.0f} %"


def _dense_of(members: list[Meas]) -> Meas | None:
    dense = [m for m in members if m["sparse_format"] == "dense"]
    asked_dense = [m for m in dense if m.asked.get("sparse_format", "dense") == "dense"]
    return (asked_dense or dense or [None])[0]


def sparse_pairs(meas: list[Meas]) -> dict[tuple, list[tuple[float, Pair, Meas]]]:
    """Series of (stored sparsity, pair dense -> sparse, sparse row), keyed by everything but the pruning."""
    series: dict[tuple, list[tuple[float, Pair, Meas]]] = defaultdict(list)
    for members in groups(meas, VARY, extra=(ASKED_ALGORITHM,), where=lambda m: m["system"] == "tvm").values():
        dense = _dense_of(members)
        if dense is None:
            continue
        for m in members:
            if m["sparse_format"] == "dense":
                continue
            fmt = m["sparse_format"].upper() + (f" {m['sparse_block']}" if m["sparse_block"] else "")
            p = pair(dense, m, f"dense at {_pct(m.sparsity)}", f"{fmt} at {_pct(m.sparsity)}", _pct(m.sparsity))
            series[key_of(m, SERIES_VARY, (ASKED_ALGORITHM,))].append((m.sparsity, p, m))
    return {k: sorted(v, key=lambda t: (t[0], t[1].cand)) for k, v in series.items()}


def crossover(points: list[tuple[float, Pair, Meas]]) -> float | None:
    """Lowest sparsity from which every measured point is significantly faster; None if the top one is not."""
    cross = None
    for x, p, _ in reversed(points):
        if p.comparison.verdict != "faster":
            break
        cross = x
    return cross


def sparse_crossover(meas: list[Meas]) -> list[Finding]:
    found = []
    per_device: dict[tuple, dict[str, tuple[float | None, float, list[int]]]] = defaultdict(dict)
    for points in sparse_pairs(meas).values():
        sample = points[0][2]
        dev, fmt = sample["device"], points[0][1].cand_label.rsplit(" at ", 1)[0]
        what = config_label(sample, SERIES_VARY + VARY, asked=True)
        pairs = [p for _, p, _ in points]
        xs = [x for x, _, _ in points]
        cross = crossover(points)
        measured = ", ".join(_pct(x) for x in xs)
        if cross is None:
            head = f"On {dev}, {fmt} never beats dense for {what} at the stored sparsities measured ({measured})"
            outcome = f"{fmt} never beats dense"
        elif cross == xs[0]:
            head = f"On {dev}, {fmt} beats dense for {what} at every stored sparsity measured ({measured})"
            outcome = f"{fmt} beats dense at every sparsity measured (from {_pct(cross)})"
        else:
            head = f"On {dev}, {fmt} pays off for {what} only from {_pct(cross)} stored sparsity (measured {measured})"
            outcome = f"{fmt} pays off only from {_pct(cross)}"
        clauses = "; ".join(statement(p.comparison, p.cand_label, p.base_label) for p in pairs)
        rows = sorted({i for p in pairs for i in (p.base, p.cand)})
        found.append(Finding(SPARSE, f"{head}: {clauses}.", rows, pairs, dev,
                             any(p.comparison.significant for p in pairs), outcome, dev))
        others = key_of(sample, (*SERIES_VARY, "device", "target"), (ASKED_ALGORITHM,))
        grid = tuple(round(x, 2) for x in xs)  # devices are compared over the same pruned models only
        per_device[(others, fmt, what, grid)][dev] = (cross, xs[-1], rows)
    for (_, fmt, what, _), devs in per_device.items():
        if len(devs) < 2 or len({c for c, _, _ in devs.values()}) < 2:
            continue
        parts = [f"{d}: from {_pct(c)}" if c is not None else f"{d}: never (up to {_pct(top)})"
                 for d, (c, top, _) in sorted(devs.items())]
        rows = sorted({i for _, _, r in devs.values() for i in r})
        found.append(Finding(SPARSE, f"The {fmt} crossover for {what} depends on the device: {'; '.join(parts)}.",
                             rows, [], "", True, f"the {fmt} crossover depends on the device", "devices"))
    return found
