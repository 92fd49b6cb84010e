"""Quantized types run no faster on hardware without native support: float32 against each quantized type,
same build otherwise, per device, read against the CPU (or GPU) features the agent recorded."""

from __future__ import annotations

from collections import defaultdict

from ..findings import QUANTIZATION, Finding, Pair
from ..native import describe, native
from ..pairs import config_label, groups, pair
from ..rows import Meas
from ..stats import fmt_ratio, statement


def quantization_native(meas: list[Meas]) -> list[Finding]:
    by_dtype: dict[tuple[str, str], list[tuple[Pair, Meas]]] = defaultdict(list)
    for members in groups(meas, ("quantization",)).values():
        base = [m for m in members if m["quantization"] == "float32"]
        if not base:
            continue
        for m in members:
            if m["quantization"] != "float32":
                what = config_label(m, ("quantization",))
                p = pair(base[0], m, "float32", m["quantization"], what)
                by_dtype[(m["device"], m["quantization"])].append((p, m))
    found = []
    for (dev, dtype), items in sorted(by_dtype.items()):
        pairs = [p for p, _ in items]
        env = next((m.device_env for _, m in items if m.device_env), {})
        state, evidence = native(env, dtype, items[0][1].is_accelerator)
        hw = describe(state, evidence, dtype)
        verdicts = [p.comparison.verdict for p in pairs]
        n = len(pairs)
        if all(v == "faster" for v in verdicts):
            head = f"On {dev}, {dtype} runs faster than float32 in all {n} comparable build(s)"
        elif "faster" not in verdicts:
            counts = ", ".join(f"{verdicts.count(v)} {w}" for v, w in (
                ("slower", "slower"), ("same", "no significant difference"), ("untested", "untested"))
                if v in verdicts)
            head = f"On {dev}, {dtype} runs no faster than float32 in any of {n} comparable build(s) ({counts})"
            if state:
                hw += ", which the kernels do not exploit"
        else:
            head = (f"On {dev}, {dtype} is faster than float32 in only {verdicts.count('faster')} of {n} "
                    "comparable build(s)")
        if n <= 3:
            detail = "; ".join(f"{p.note}: {statement(p.comparison, p.cand_label, p.base_label)}" for p in pairs)
        else:
            s = sorted(p.comparison.speedup for p in pairs)
            detail = f"speedups from {fmt_ratio(s[0])} to {fmt_ratio(s[-1])}"
        text = f"{head} ({hw}): {detail}."
        rows = sorted({i for p in pairs for i in (p.base, p.cand)})
        found.append(Finding(QUANTIZATION, text, rows, pairs, dev, any(p.comparison.significant for p in pairs)))
    return found

