"""Auto-tuning can change the best algorithm: the same builds untuned and tuned, ranked before and after."""

from __future__ import annotations

from ..findings import TUNING, Finding
from ..pairs import config_label, fastest, groups, pair, row_ids
from ..rows import Meas
from ..stats import statement

VARY = ("algorithm", "tuning")


def tuning_changes_best(meas: list[Meas]) -> list[Finding]:
    found = []
    for members in groups(meas, VARY, where=lambda m: m["system"] == "tvm").values():
        before = {m["algorithm"]: m for m in members if m["tuning"] == "untuned"}
        after = {m["algorithm"]: m for m in members if m["tuning"] == "tuned"}
        common = sorted(set(before) & set(after))
        if len(common) < 2:
            continue
        bu = fastest(before[a] for a in common)
        bt = fastest(after[a] for a in common)
        u, t = bu["algorithm"], bt["algorithm"]
        dev, what = bu["device"], config_label(bu, VARY)
        if u != t:
            pairs = [pair(before[t], bu, f"{t} untuned", f"{u} untuned"),
                     pair(after[u], bt, f"{u} tuned", f"{t} tuned")]
            changed = all(p.comparison.verdict == "faster" for p in pairs)
            head = (f"On {dev}, tuning changes the best algorithm for {what} from {u} to {t}" if changed else
                    f"On {dev}, tuning does not significantly change the best algorithm for {what}")
            outcome = "tuning changes the best algorithm" if changed else "no significant order"
        else:
            second_u = fastest(before[a] for a in common if a != u)
            second_t = fastest(after[a] for a in common if a != u)
            pairs = [pair(second_u, bu, f"{second_u['algorithm']} untuned", f"{u} untuned"),
                     pair(second_t, bt, f"{second_t['algorithm']} tuned", f"{u} tuned")]
            kept = all(p.comparison.verdict == "faster" for p in pairs)
            head = (f"On {dev}, tuning keeps {u} as the best algorithm for {what}" if kept else
                    f"On {dev}, no algorithm is significantly best for {what} both before and after tuning")
            outcome = "tuning keeps the best algorithm" if kept else "no significant order"
            changed = False
        clauses = "; ".join(statement(p.comparison, p.cand_label, p.base_label) for p in pairs)
        used = [before[a] for a in common] + [after[a] for a in common]
        found.append(Finding(TUNING, f"{head}: {clauses}.", row_ids(used), pairs, dev,
                             changed or all(p.comparison.significant for p in pairs), outcome, dev))
    return found
