"""Compression speedups depend on the hardware: the same compression of the same build, measured on several
devices, each against that device's uncompressed build."""

from __future__ import annotations

from collections import defaultdict

from ..findings import COMPRESSION, Finding, Pair
from ..pairs import ASKED_ALGORITHM, config_label, groups, pair
from ..rows import Meas
from ..stats import effect

VARY = ("pruning", "quantization", "sparse_format", "sparse_block", "sparsity", "algorithm", "device", "target")
BASELINE = ("none", "float32", "dense", "")


def _compression(m: Meas) -> tuple[str, str, str, str]:
    return m["pruning"], m["quantization"], m["sparse_format"], m["sparse_block"]


def compression_label(m: Meas) -> str:
    parts = []
    if m["pruning"] != "none":
        parts.append(f"pruning ({m['pruning']}, {100 * m.sparsity:.0f} % zeros stored)")
    if m["quantization"] != "float32":
        parts.append(m["quantization"])
    if m["sparse_format"] != "dense":
        parts.append(m["sparse_format"].upper() + (f" {m['sparse_block']}" if m["sparse_block"] else ""))
    return " + ".join(parts)


def _disjoint(a: Pair, b: Pair) -> bool:
    ca, cb = a.comparison, b.comparison
    return ca.tested and cb.tested and (ca.low > cb.high or cb.low > ca.high)


def compression_by_device(meas: list[Meas]) -> list[Finding]:
    found = []
    for members in groups(meas, VARY, extra=(ASKED_ALGORITHM,)).values():
        base = {m["device"]: m for m in members if _compression(m) == BASELINE}
        by_comp: dict[tuple, dict[str, Meas]] = defaultdict(dict)
        for m in members:
            if _compression(m) != BASELINE and m["device"] in base:
                by_comp[_compression(m)].setdefault(m["device"], m)
        for devs in by_comp.values():
            if len(devs) < 2:
                continue
            sample = next(iter(devs.values()))
            label = compression_label(sample)
            what = config_label(sample, VARY, asked=True)
            pairs = [pair(base[d], m, f"{d} uncompressed", f"{d} {label}") for d, m in sorted(devs.items())]
            per_dev = "; ".join(f"{p.cand_label.split(' ', 1)[0]} {effect(p.comparison)}" for p in pairs)
            differs = any(_disjoint(a, b) for i, a in enumerate(pairs) for b in pairs[i + 1:])
            if differs:
                text = f"The speedup of {label} for {what} depends on the device: {per_dev}."
                outcome = "depends on the device"
            elif all(p.comparison.tested for p in pairs):
                text = (f"The speedup of {label} for {what}: no significant difference between devices "
                        f"(overlapping 95 % intervals): {per_dev}.")
                outcome = "no significant difference between devices"
            else:
                text = (f"The speedup of {label} for {what}: no significant difference between devices can be "
                        f"stated (raw samples missing): {per_dev}.")
                outcome = "not testable (raw samples missing)"
            rows = sorted({i for p in pairs for i in (p.base, p.cand)})
            found.append(Finding(COMPRESSION, text, rows, pairs, "", differs, outcome, label))
    return found
