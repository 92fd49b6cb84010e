"""Report figures, drawn as SVG (``svg.py``). Each figure says which finding kinds it is evidence for, so a
finding links to its plot; every axis has a label with its unit, and wide spans get a log scale."""

from __future__ import annotations

import math
import textwrap
from collections import defaultdict
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np

from . import findings as fk
from . import svg
from .findings import Finding
from .pairs import system_label
from .rows import Meas, latest_ok
from .rules.correlation import points
from .rules.sparse import sparse_pairs

MAX_ITEMS = 30  # bars, lines or pairs per figure: beyond this a figure is no longer read at a glance
MAX_DEVICES = 8
COLOURS = {"faster": "#1a7f37", "slower": "#b42318", "same": "#667085", "untested": "#b0b0b0"}


@dataclass(frozen=True)
class Figure:
    slug: str  # the HTML anchor and the Markdown file name
    title: str
    svg: str
    kinds: tuple[str, ...]  # finding kinds it is evidence for
    caption: str = ""


def _short(text: str, width: int = 48) -> str:
    return textwrap.shorten(text, width=width, placeholder="...") or text[:width]


def _devices(meas: list[Meas]) -> list[str]:
    return sorted({m["device"] for m in meas})[:MAX_DEVICES]


def _slug(*parts: str) -> str:
    """An anchor and file name: ASCII letters, digits and dashes, short enough for any file system."""
    text = "-".join(parts).lower()
    body = "".join(c if c.isascii() and c.isalnum() else "-" for c in text)
    return ("fig-" + "-".join(filter(None, body.split("-"))))[:60].rstrip("-")

# ------------------------------------------------------------------------------------------ heatmaps
def _matrix(cells: dict[tuple[str, str], float]) -> tuple[list[str], list[str], dict[tuple[int, int], float]]:
    rn = sorted({c[0] for c in cells})[:MAX_ITEMS]
    cn = sorted({c[1] for c in cells})[:MAX_ITEMS]
    ri, ci = {r: i for i, r in enumerate(rn)}, {c: j for j, c in enumerate(cn)}
    return rn, cn, {(ri[r], ci[c]): v for (r, c), v in cells.items() if r in ri and c in ci}


def speedup_heatmaps(meas: list[Meas], _findings: list[Finding]) -> list[Figure]:
    """Per device: speedup of each system/configuration over torch eager (unpruned float32)."""
    out = []
    plain = [m for m in latest_ok(meas) if m["pruning"] == "none" and m["quantization"] == "float32"]
    for dev in _devices(plain):
        grp = [m for m in plain if m["device"] == dev]
        torch_ms: dict[tuple, float] = {}
        for m in grp:
            if m["system"] == "torch":
                key = (m.sweep_id, m["model"], m["dataset"], m["batch"])
                torch_ms[key] = min(torch_ms.get(key, math.inf), m.median)
        cells: dict[tuple[str, str], float] = {}
        for m in grp:
            key = (m.sweep_id, m["model"], m["dataset"], m["batch"])
            if key in torch_ms and m["system"] != "torch":
                cell = (_short(f"{m['model']}/{m['dataset']}", 40), _short(system_label(m), 40))
                cells[cell] = max(cells.get(cell, 0.0), torch_ms[key] / m.median)
        if cells:
            rn, cn, mat = _matrix(cells)
            out.append(Figure(_slug("speedup", dev), f"Speedup over torch eager on {dev}",
                              svg.heatmap(f"{dev}: speedup over torch eager (float32, unpruned)", rn, cn, mat,
                                          "x torch eager"),
                              (fk.BEST_SYSTEM, fk.ALGORITHM),
                              "Median latency of torch eager divided by each configuration's (the best of each)."))
    return out


def quantization_heatmap(meas: list[Meas], _findings: list[Finding]) -> list[Figure]:
    best: dict[tuple, float] = {}
    for m in latest_ok(meas):
        if m["system"] == "tvm" and m["pruning"] == "none" and m["sparse_format"] == "dense":
            key = (m["device"], m["model"], m["dataset"], m["quantization"])
            best[key] = min(best.get(key, math.inf), m.median)
    cells = {}
    for (dev, model, ds, q), ms in best.items():
        base = best.get((dev, model, ds, "float32"))
        if base and q != "float32":
            cells[(_short(f"{dev}: {model}/{ds}", 48), _short(q, 30))] = base / ms
    if not cells:
        return []
    rn, cn, mat = _matrix(cells)
    return [Figure("fig-quantization", "Quantized types against float32",
                   svg.heatmap("speedup of each type over float32 (TVM, best configuration of each)", rn, cn, mat,
                               "x float32"),
                   (fk.QUANTIZATION, fk.COMPRESSION),
                   "Best float32 latency divided by the best latency in each type, per device and model "
                   "(unpruned, dense).")]


# ------------------------------------------------------------------------------------------ evidence
def evidence(meas: list[Meas], findings: list[Finding]) -> list[Figure]:
    """Per finding kind: every compared pair's speedup with its 95 % interval (a forest plot)."""
    out = []
    by_kind: dict[str, list[tuple[int, fk.Pair]]] = defaultdict(list)
    for n, f in enumerate(findings, 1):
        for p in f.pairs:
            by_kind[f.rule].append((n, p))
    for kind, items in by_kind.items():
        shown = items[:MAX_ITEMS]
        rows = []
        for n, p in shown:
            c = p.comparison
            s = c.speedup if math.isfinite(c.speedup) and c.speedup > 0 else 1.0
            lo, hi = (c.low, c.high) if c.tested else (s, s)
            note = f" ({p.note})" if p.note and p.note not in p.cand_label else ""
            rows.append(svg.Interval(_short(f"[{n}] #{p.cand} {p.cand_label} vs #{p.base} {p.base_label}{note}", 72),
                                     s, lo, hi,
                                     COLOURS[c.verdict], bool(p.unstable),
                                     f"#{p.cand} {p.cand_label} vs #{p.base} {p.base_label}: {c.verdict}"))
        more = f" (first {MAX_ITEMS} of {len(items)})" if len(items) > MAX_ITEMS else ""
        title = f"{fk.TITLES.get(kind, kind)}: compared pairs{more}"
        out.append(Figure(f"fig-evidence-{kind}", f"Evidence: {fk.TITLES.get(kind, kind)}",
                          svg.forest(title, rows, "speedup of the first row over the second (x; >1 = faster)"),
                          (kind,),
                          "Dots: speedup (ratio of medians); bars: 95 % bootstrap intervals. Green: significantly "
                          "faster; red: significantly slower; grey: no significant difference; light grey: not "
                          "testable; hollow: a timing flagged unstable. [n] is the finding's number."))
    return out


def sparse_curves(meas: list[Meas], _findings: list[Finding]) -> list[Figure]:
    out = []
    series = sparse_pairs(meas)
    for dev in sorted({pts[0][2]["device"] for pts in series.values()})[:MAX_DEVICES]:
        mine = [pts for pts in series.values() if pts[0][2]["device"] == dev][:10]
        lines = []
        for pts in mine:
            s = pts[0][2]
            cs = [p.comparison for _, p, _ in pts]
            label = (f"{pts[0][1].cand_label.rsplit(' at ', 1)[0]} {s['model']}/{s['dataset']} {s['quantization']} "
                     f"{s.asked_algorithm} {s['tuning']}")
            lines.append(svg.Series(_short(label, 60), tuple(100 * x for x, _, _ in pts), tuple(c.speedup for c in cs),
                                    tuple(c.low if c.tested else math.nan for c in cs),
                                    tuple(c.high if c.tested else math.nan for c in cs)))
        out.append(Figure(_slug("sparse", dev), f"Sparse formats on {dev}",
                          svg.lines(f"{dev}: sparse build against the same pruned model built dense", lines,
                                    "stored sparsity (% zero weights, from the build manifest)",
                                    "speedup over dense (x)", reference=1.0),
                          (fk.SPARSE,), "Above the dashed line the sparse build is faster; bars: 95 % intervals."))
    return out


def size_latency(meas: list[Meas], _findings: list[Finding]) -> list[Figure]:
    out = []
    for (_, dev, ds, _), pts in sorted(points(meas).items(), key=lambda kv: kv[0])[:MAX_DEVICES]:
        pts = [m for m in pts if m.artifact_bytes][:MAX_ITEMS * 2]
        if len(pts) < 2:
            continue
        marks = [svg.Point(m.artifact_bytes / 2**20, m.median, _short(f"#{m.id} {m['model']} {m['quantization']}", 30))
                 for m in pts]
        out.append(Figure(_slug("size", dev, ds), f"Size vs latency on {dev} ({ds})",
                          svg.scatter(f"{dev} ({ds}): compiled size vs latency, fastest build of each", marks,
                                      "compiled size (MiB)", "median latency (ms)"),
                          (fk.CORRELATION,)))
    return out


def pareto(meas: list[Meas], _findings: list[Finding]) -> list[Figure]:
    out = []
    acc = [m for m in latest_ok(meas) if m.top1 is not None]
    for dev in _devices(acc):
        grp = [m for m in acc if m["device"] == dev][:MAX_ITEMS * 2]
        front, best = [], -1.0
        for m in sorted(grp, key=lambda m: (m.median, -m.top1)):
            if m.top1 > best:
                front.append(svg.Point(m.median, 100 * m.top1))
                best = m.top1
        marks = [svg.Point(m.median, 100 * m.top1, _short(
            f"#{m.id} {m['model']} {'' if m['pruning'] == 'none' else 'pruned '}{m['quantization']}", 32)) for m in grp]
        out.append(Figure(_slug("pareto", dev), f"Accuracy vs latency on {dev}",
                          svg.scatter(f"{dev}: accuracy vs latency", marks, "median latency (ms)",
                                      "top-1 accuracy (%)", log_x=None, front=front),
                          (fk.CORRELATION,), "Points on the dashed line: no build is both faster and more accurate."))
    return out


def _limit(groups: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    return {_short(k, 48): v for k, v in sorted(groups.items())[:MAX_ITEMS]}


def tuned_vs_untuned(meas: list[Meas], _findings: list[Finding]) -> list[Figure]:
    groups: dict[str, dict[str, float]] = defaultdict(dict)
    for m in latest_ok(meas):
        if m["system"] == "tvm" and m["tuning"] in ("tuned", "untuned"):
            name = f"{m['device']}: {m['model']}/{m['dataset']} {m['quantization']} {m['algorithm']}"
            groups[name][m["tuning"]] = min(groups[name].get(m["tuning"], math.inf), m.median)
    groups = {k: v for k, v in groups.items() if len(v) == 2}
    if not groups:
        return []
    return [Figure("fig-tuning", "Tuned vs untuned TVM",
                   svg.bars("median latency untuned and tuned, per algorithm (lower is better)", _limit(groups),
                            "median latency (ms)"), (fk.TUNING,))]


def algorithm_comparison(meas: list[Meas], _findings: list[Finding]) -> list[Figure]:
    groups: dict[str, dict[str, float]] = defaultdict(dict)
    for m in latest_ok(meas):
        if m["system"] == "tvm" and m["pruning"] == "none" and m["quantization"] == "float32":
            name = f"{m['device']}: {m['model']}/{m['dataset']} {m['layout']} {m['sparse_format']} {m['tuning']}"
            groups[name][m["algorithm"]] = min(groups[name].get(m["algorithm"], math.inf), m.median)
    groups = {k: v for k, v in groups.items() if len(v) >= 2}
    if not groups:
        return []
    return [Figure("fig-algorithms", "Algorithms",
                   svg.bars("median latency per algorithm, float32 unpruned (lower is better)", _limit(groups),
                            "median latency (ms)"), (fk.ALGORITHM,))]


def transfer_bars(meas: list[Meas], _findings: list[Finding]) -> list[Figure]:
    per: dict[str, list[Meas]] = defaultdict(list)
    for m in latest_ok(meas):
        if m.transfer_ms is not None and m.compute_ms is not None:
            per[m["device"]].append(m)
    if not per:
        return []
    devs = sorted(per)[:MAX_ITEMS]
    compute = [float(np.median([m.compute_ms for m in per[d]])) for d in devs]
    transfer = [float(np.median([m.transfer_ms for m in per[d]])) for d in devs]
    return [Figure("fig-transfer", "Transfer share of end-to-end time",
                   svg.stacked("end-to-end time per inference, split per device (median over builds)", devs,
                               [("compute", compute), ("host-device transfer", transfer)], "time (ms)"),
                   (fk.TRANSFER,))]


def timing_spread(meas: list[Meas], _findings: list[Finding], limit: int = 24) -> list[Figure]:
    rows = [m for m in latest_ok(meas) if m.samples.size]
    rows = sorted(rows, key=lambda m: (not m.unstable, m.id))[:limit]
    if not rows:
        return []
    five = [tuple(float(v) for v in np.percentile(m.samples / m.median, [0, 25, 50, 75, 100])) for m in rows]
    return [Figure("fig-spread", "Timing spread",
                   svg.boxes("timing spread per measurement (unstable ones first, in orange)",
                             [f"#{m.id}" + (" unstable" if m.unstable else "") for m in rows], five,
                             "sample / median (ratio)", [m.unstable for m in rows]),
                   (fk.UNSTABLE,), "Boxes: quartiles; whiskers: min and max; line: median. The dashed line is 1.")]


ALL: list[Callable[[list[Meas], list[Finding]], list[Figure]]] = [
    speedup_heatmaps, quantization_heatmap, sparse_curves, size_latency, pareto, algorithm_comparison,
    tuned_vs_untuned, transfer_bars, evidence, timing_spread,
]


def make_figures(meas: list[Meas], findings: list[Finding]) -> list[Figure]:
    """Every figure the data supports, each with a unique slug (device names may slug alike)."""
    out: list[Figure] = []
    seen: set[str] = set()
    for fn in ALL:
        for fig in fn(meas, findings):
            slug, k = fig.slug, 1
            while slug in seen:
                k += 1
                slug = f"{fig.slug}-{k}"
            seen.add(slug)
            out.append(replace(fig, slug=slug))
    return out
