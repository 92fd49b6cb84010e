"""Notes on the data itself: timings flagged unstable, and jobs that produced no timing."""

from __future__ import annotations

from collections import defaultdict

from ..findings import EMULATED, FAILURES, UNSTABLE, Finding
from ..rows import Meas, is_unstable


def unstable_timings(meas: list[Meas]) -> list[Finding]:
    noisy = [m for m in meas if m.ok and m.unstable  # emulation alone has its own note (emulated_timings)
             and is_unstable([w for w in m.warnings if not w.startswith("emulated")], m.samples)]
    if not noisy:
        return []
    return [Finding(UNSTABLE, (
        f"{len(noisy)} timing(s) are flagged unstable (a spread above the agent's threshold, or other processes "
        "competing for the cores): every finding that uses one is marked; re-run them on a quiet device."),
        sorted(m.id for m in noisy))]


def emulated_timings(meas: list[Meas]) -> list[Finding]:
    """Timings taken by an agent under emulation (qemu-user on the host): per device, so nobody reads them as
    the board's numbers."""
    per_device: dict[str, list[Meas]] = defaultdict(list)
    for m in meas:
        if m.ok and m.emulated:
            per_device[m["device"]].append(m)
    return [Finding(EMULATED, f"{len(ms)} timing(s) on {dev} were measured under emulation ({ms[0].emulated}): "
                    "they say nothing about the real device's speed; every finding that uses one is marked.",
                    sorted(m.id for m in ms), device=dev) for dev, ms in sorted(per_device.items())]


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
