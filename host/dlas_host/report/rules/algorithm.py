"""Algorithms: TVM builds that differ only in the convolution algorithm, ranked by their samples."""

from __future__ import annotations

from ..findings import ALGORITHM, Finding
from ..pairs import config_label, groups, ranked_pairs, row_ids
from ..rows import Meas
from ..stats import statement


def algorithms(meas: list[Meas]) -> list[Finding]:
    found = []
    for members in groups(meas, ("algorithm",), where=lambda m: m["system"] == "tvm").values():
        if len({m["algorithm"] for m in members}) < 2:
            continue
        pairs = ranked_pairs(members, lambda m: m["algorithm"])
        best = pairs[0].cand_label
        against_best = [p for p in pairs if p.cand_label == best]
        dev, what = members[0]["device"], config_label(members[0], ("algorithm",))
        clauses = "; ".join(statement(p.comparison, p.cand_label, p.base_label) for p in pairs)
        if all(p.comparison.verdict == "faster" for p in against_best):
            head = f"On {dev}, {best} is the fastest algorithm for {what}"
            outcome = f"{best} is the fastest"
        else:
            head = f"On {dev}, no algorithm is significantly fastest for {what}"
            outcome = "no algorithm is significantly fastest"
        found.append(Finding(ALGORITHM, f"{head}: {clauses}.", row_ids(members), pairs, dev,
                             any(p.comparison.significant for p in pairs), outcome, dev))
    return found
