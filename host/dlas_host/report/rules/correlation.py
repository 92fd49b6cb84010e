"""Size, accuracy and latency are not guaranteed to correlate: Spearman's rank correlation over the distinct
builds (model x pruning x quantization x format, the fastest of each) measured on one device and dataset."""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from ..findings import CORRELATION, Finding
from ..pairs import fastest
from ..rows import Meas, latest_ok
from ..stats import MIN_POINTS, fmt_p, spearman

BUILD = ("model", "pruning", "quantization", "sparse_format", "sparse_block")
VARIABLES = {
    "size": ("compiled size", lambda m: float(m.artifact_bytes) if m.artifact_bytes else np.nan),
    "latency": ("latency", lambda m: float(m.median) if m.median else np.nan),
    "accuracy": ("top-1 accuracy", lambda m: m.top1 if m.top1 is not None else np.nan),
}
PAIRS = (("size", "latency"), ("accuracy", "latency"), ("size", "accuracy"))


def points(meas: list[Meas]) -> dict[tuple[str, str, str, int], list[Meas]]:
    """(sweep, device, dataset, batch) -> the fastest TVM row of each distinct build."""
    builds: dict[tuple, dict[tuple, list[Meas]]] = defaultdict(lambda: defaultdict(list))
    for m in latest_ok(meas):
        if m["system"] == "tvm":
            builds[(m.sweep_id, m["device"], m["dataset"], m["batch"])][tuple(m[a] for a in BUILD)].append(m)
    return {k: sorted((fastest(g) for g in v.values()), key=lambda m: m.id) for k, v in builds.items()}


def correlations(meas: list[Meas]) -> list[Finding]:
    """One finding per device and dataset: each pair of variables measured on enough builds, tested."""
    found = []
    for (_, dev, dataset, _), pts in sorted(points(meas).items(), key=lambda kv: kv[0]):
        if len(pts) < MIN_POINTS:
            continue
        clauses, used, significant, flagged = [], set(), False, set()
        for xa, ya in PAIRS:
            (xn, fx), (yn, fy) = VARIABLES[xa], VARIABLES[ya]
            x = np.array([fx(m) for m in pts], dtype=float)
            y = np.array([fy(m) for m in pts], dtype=float)
            keep = np.isfinite(x) & np.isfinite(y)
            c = spearman(x[keep], y[keep])
            if c is None:
                continue
            used |= {m.id for m, k in zip(pts, keep) if k}
            flagged |= {m.id for m, k in zip(pts, keep) if k and m.unstable}
            test = f"Spearman rho = {c.rho:+.2f}, {fmt_p(c.p)}{' (exact)' if c.exact else ''}, {c.n} builds"
            if c.significant:
                sense = "rise together" if c.rho > 0 else "move in opposite directions"
                clauses.append(f"{xn} and {yn} are correlated: they {sense} ({test})")
            else:
                clauses.append(f"{xn} and {yn} are not significantly correlated ({test})")
            significant |= c.significant
        if clauses:
            found.append(Finding(CORRELATION, f"On {dev} ({dataset}), {'; '.join(clauses)}.", sorted(used), [], dev,
                                 significant, flagged=sorted(flagged)))
    return found
