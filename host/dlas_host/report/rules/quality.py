"""Notes on the data itself: timings flagged unstable, and jobs that produced no timing."""

from __future__ import annotations

from collections import defaultdict

from ..findings import FAILURES, UNSTABLE, Finding
from ..rows import Meas


def unstable_timings(meas: list[Meas]) -> list[Finding]:
    noisy = [m for m in meas if m.ok and m.unstable]
    if not noisy:
        return []
    return [Finding(UNSTABLE, (
        f"{len(noisy)} timing(s) are flagged unstable (a spread above the agent's threshold, or other processes "
        "competing for the cores): every finding that uses one is marked; re-run them on a quiet device."),
        sorted(m.id for m in noisy))]


def failures(meas: list[Meas]) -> list[Finding]:
    bad = [m for m in meas if not m.ok and not m.superseded]  # a replaced attempt is history, not a failure
    if not bad:
        return []
    reasons: dict[str, list[int]] = defaultdict(list)
    for m in bad:
        why = " ".join(m.error.split())[:120] or ("ok but no timing" if m.status == "ok" else "no reason given")
        reasons[f"{m.status}: {why}"].append(m.id)
    top = sorted(reasons.items(), key=lambda kv: (-len(kv[1]), kv[0]))[:3]
    return [Finding(FAILURES, f"{len(bad)} job(s) did not produce a timing; most common: "
                    + "; ".join(f"{len(ids)}x {why}" for why, ids in top) + ".", sorted(m.id for m in bad))]
