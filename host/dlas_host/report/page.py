"""Everything one report page shows, computed once for both the HTML and the Markdown writer."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from ..dimensions import RESULT_AXES
from . import context
from .findings import DLAS_KINDS, QUALITY_KINDS, Finding
from .plots import Figure, make_figures
from .rows import Meas, prepare
from .rules import RULES
from .rules.accuracy import Drop, base_name, drops
from .summary import summarise
from .stats import ALPHA, BOOTSTRAP, CONFIDENCE, MIN_EFFECT, MIN_POINTS, MIN_SAMPLES

# Result table columns: the dimensions (from their owner; the target is in the devices table, the sparsity the
# manifest stored follows the outcome), then the outcome.
AXIS_COLUMNS = ("device", *(a for a in RESULT_AXES if a not in ("device", "target", "sparsity")))
METHOD = (
    f"A difference between two timings is stated only when their raw samples support it: a two-sided "
    f"Mann-Whitney U test with p < {ALPHA:g}, a {100 * CONFIDENCE:.0f} % percentile-bootstrap interval of the "
    f"ratio of medians ({BOOTSTRAP} resamples) that excludes 1, and an effect of at least {100 * MIN_EFFECT:.0f} %; "
    f"otherwise the report says 'no significant difference'. Rows with fewer than {MIN_SAMPLES} raw samples "
    f"are not tested. Speedups are baseline median / candidate median, given with their interval. Only rows "
    f"of the same sweep that agree on every other dimension (as the build manifest labels them) are compared; "
    f"sparse builds are compared with the same pruned model built dense, at the sparsity the manifest stored. "
    f"Timings flagged unstable are used but marked. Correlations are Spearman's rank correlation over at least "
    f"{MIN_POINTS} builds (exact permutation p-value up to 7 builds). Accuracy drops compare a compressed "
    f"build's top-1 with its base's (the uncompressed float32 dense build of the model it was derived from) on "
    f"the same device, system and evaluation images (same fingerprint), with Newcombe's 95 % interval for a "
    f"difference of proportions; a drop is stated only when that interval excludes 0.")


@dataclass
class Page:
    title: str
    rows: list[Mapping[str, Any]]
    meas: list[Meas]
    findings: list[Finding]
    figures: list[Figure]
    sweeps: list[dict[str, Any]]
    devices: list[dict[str, str]]
    versions: dict[str, str]
    drops: list[Drop] = field(default_factory=list)
    stamp: str = field(default_factory=lambda: time.strftime("%Y-%m-%d %H:%M:%S"))

    def accuracy_table(self) -> list[dict[str, str]]:
        """Each compression's top-1 against its base's, same device, system and images (one dict per row)."""
        out = []
        for d in self.drops:
            out.append({
                "device": d.cand["device"], "system": d.cand["system"],
                "base": f"#{d.base.id} {base_name(d.base)}", "base top-1": f"{100 * d.base.top1:.2f} %",
                "compressed": f"#{d.cand.id} {d.label}", "top-1": f"{100 * d.cand.top1:.2f} %",
                "drop (points)": f"{100 * d.drop:+.2f}", "95 % CI": f"{100 * d.low:+.1f} to {100 * d.high:+.1f}",
                "images": str(d.cand.eval_images), "verdict": ("lost accuracy" if d.drop > 0 else "gained accuracy")
                if d.significant else "no significant change"})
        return out

    @property
    def statuses(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for m in self.meas:
            out[m.status] = out.get(m.status, 0) + 1
        return dict(sorted(out.items()))

    def by_kind(self, kinds: Iterable[str]) -> list[tuple[str, list[tuple[int, Finding]]]]:
        """Findings of these kinds, numbered as in the page, grouped by kind in the kinds' order."""
        numbered = list(enumerate(self.findings, 1))
        return [(k, [(n, f) for n, f in numbered if f.rule == k]) for k in kinds
                if any(f.rule == k for f in self.findings)]

    def figures_for(self, kind: str) -> list[Figure]:
        return [f for f in self.figures if kind in f.kinds]

    @property
    def dlas(self) -> list[tuple[str, list[tuple[int, Finding]]]]:
        return self.by_kind(DLAS_KINDS)

    @property
    def quality(self) -> list[tuple[str, list[tuple[int, Finding]]]]:
        return self.by_kind(QUALITY_KINDS)


def build(rows: list[Mapping[str, Any]], title: str, sweeps: list[dict[str, Any]] | None) -> Page:
    meas = prepare(rows)
    findings = summarise([f for rule in RULES for f in rule(meas)])
    return Page(title, rows, meas, findings, make_figures(meas, findings), list(sweeps or []),
                context.devices(meas), context.versions(meas), drops(meas))


def cell(value: Any) -> str:
    """A table cell: short floats, no None."""
    if value is None:
        return ""
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.3g}" if abs(value) < 0.01 and value else f"{value:.2f}"
    if isinstance(value, (list, dict)):
        return f"{len(value)} item(s)"
    return str(value)
