"""Many alike findings become one: where a rule found more than ``LIMIT`` groups in one scope (a device, a
compression), the page states the count of each outcome and lists the group sentences beneath it."""

from __future__ import annotations

from collections import Counter

from .findings import ALGORITHM, BEST_SYSTEM, COMPRESSION, SPARSE, TUNING, Finding

LIMIT = 4
HEADS = {
    BEST_SYSTEM: "On {scope}, over {n} models and compressions",
    ALGORITHM: "On {scope}, over {n} comparable groups of algorithms",
    TUNING: "On {scope}, over {n} configurations measured untuned and tuned",
    SPARSE: "On {scope}, over {n} series of pruned models",
    COMPRESSION: "The speedup of {scope}, over {n} configurations measured on several devices",
}


def summarise(found: list[Finding], limit: int = LIMIT) -> list[Finding]:
    groups: dict[tuple[str, str], list[Finding]] = {}
    for f in found:
        groups.setdefault((f.rule, f.scope), []).append(f)
    out: list[Finding] = []
    for (rule, scope), members in groups.items():
        if len(members) <= limit or rule not in HEADS or not scope:
            out += members
            continue
        counts = Counter(f.outcome for f in members).most_common()
        scope_words = "every device" if scope == "devices" else scope
        text = (HEADS[rule].format(scope=scope_words, n=len(members)) + ": "
                + "; ".join(f"{outcome} in {k}" for outcome, k in counts) + ".")
        out.append(Finding(rule, text, sorted({i for f in members for i in f.rows}),
                           [p for f in members for p in f.pairs], members[0].device,
                           any(f.significant for f in members), "summary", scope, [f.text for f in members]))
    return out
