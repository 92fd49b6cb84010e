"""The best system per device: each system's fastest build of the same model and compression, compared."""

from __future__ import annotations

from ..findings import BEST_SYSTEM, Finding
from ..pairs import TVM_ONLY, config_label, fastest, groups, pair, row_ids, system_label
from ..rows import Meas
from ..stats import fmt_ms, statement

VARY = ("system", *TVM_ONLY)


def best_system(meas: list[Meas]) -> list[Finding]:
    found = []
    for members in groups(meas, VARY).values():
        by_system: dict[str, list[Meas]] = {}
        for m in members:
            by_system.setdefault(m["system"], []).append(m)
        if len(by_system) < 2:
            continue
        best = sorted((fastest(g) for g in by_system.values()), key=lambda m: (m.median, m.id))
        first, others = best[0], best[1:]
        pairs = [pair(o, first, system_label(o), system_label(first)) for o in others]
        dev, what = first["device"], config_label(first, VARY)
        clauses = "; ".join(statement(p.comparison, p.cand_label, p.base_label) for p in pairs)
        if all(p.comparison.verdict == "faster" for p in pairs):
            text = (f"On {dev}, {what} runs fastest with {system_label(first)} at {fmt_ms(first.median)}: "
                    f"{clauses}.")
            significant, outcome = True, f"{first['system']} is the fastest"
        else:
            text = f"On {dev}, {what}: no system is significantly fastest: {clauses}."
            significant, outcome = any(p.comparison.significant for p in pairs), "no system is significantly fastest"
        found.append(Finding(BEST_SYSTEM, text, row_ids(best), pairs, dev, significant, outcome, dev))
    return found
