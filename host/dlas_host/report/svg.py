"""A small SVG chart writer: axes with labelled ticks (linear or log), bars, points with error bars, lines,
heatmaps and box plots.

The report draws its own SVG rather than going through matplotlib: a figure costs about a millisecond
instead of a few hundred, so the report can be rendered for hundreds of generated result sets in a test,
and the text in a figure (titles, axis labels, units) stays text that a test can read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from html import escape
from typing import Sequence

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf")
FONT = 11
CHAR = 0.58  # average glyph width / font size, to size margins for labels


def text_width(text: str, size: float = FONT) -> float:
    return len(text) * size * CHAR


def _num(v: float) -> str:
    return f"{v:.1f}"


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 1e4 or a < 1e-3:
        return f"{v:.0e}"
    if a >= 100:
        return f"{v:.0f}"
    return f"{v:.3g}"


def clean(values: Sequence[float], positive: bool = False) -> list[float]:
    return [v for v in values if isinstance(v, (int, float)) and math.isfinite(v) and (v > 0 or not positive)]


@dataclass
class Scale:
    """Maps a data interval onto pixels; ``log`` for wide positive spans."""

    lo: float
    hi: float
    p0: float
    p1: float
    log: bool = False

    @classmethod
    def fit(cls, values: Sequence[float], p0: float, p1: float, log: bool | None = None, span: float = 20.0,
            include: Sequence[float] = (), pad: float = 0.05) -> "Scale":
        """A scale covering ``values`` (and ``include``); log when asked, or (None) when they span > ``span``x."""
        vals = clean([*values, *include])
        pos = [v for v in vals if v > 0]
        if log is None:
            log = bool(pos) and len(pos) == len(vals) and max(pos) / min(pos) > span
        if log:
            lo, hi = (min(pos), max(pos)) if pos else (1.0, 10.0)
            lo, hi = lo / (1 + 3 * pad), hi * (1 + 3 * pad)
            return cls(lo, hi, p0, p1, True)
        lo, hi = (min(vals), max(vals)) if vals else (0.0, 1.0)
        if lo == hi:
            lo, hi = lo - (abs(lo) * 0.1 or 1.0), hi + (abs(hi) * 0.1 or 1.0)
        width = hi - lo
        return cls(lo - pad * width, hi + pad * width, p0, p1, False)

    def __call__(self, v: float) -> float:
        if not math.isfinite(v):
            v = self.lo
        if self.log:
            v = max(v, self.lo * 1e-3)
            t = (math.log10(v) - math.log10(self.lo)) / (math.log10(self.hi) - math.log10(self.lo))
        else:
            t = (v - self.lo) / (self.hi - self.lo)
        t = min(max(t, -0.02), 1.02)  # off-scale values sit on the edge instead of escaping the plot
        return self.p0 + t * (self.p1 - self.p0)

    def ticks(self) -> list[float]:
        if self.log:
            a, b = math.floor(math.log10(self.lo)), math.ceil(math.log10(self.hi))
            mults = (1, 2, 5) if b - a <= 3 else (1,)
            out = [m * 10.0**e for e in range(a, b + 1) for m in mults]
            out = [t for t in out if self.lo <= t <= self.hi]
            if len(out) < 2:
                out = [self.lo, self.hi]
            return out
        raw = (self.hi - self.lo) / 5
        mag = 10 ** math.floor(math.log10(raw))
        step = next(s * mag for s in (1, 2, 2.5, 5, 10) if s * mag >= raw)
        start = math.ceil(self.lo / step) * step
        return [start + i * step for i in range(int((self.hi - start) / step) + 1)]


@dataclass
class Chart:
    width: float
    height: float
    title: str
    left: float = 60
    right: float = 20
    top: float = 30
    bottom: float = 50
    parts: list[str] = field(default_factory=list)

    @property
    def x0(self) -> float:
        return self.left

    @property
    def x1(self) -> float:
        return self.width - self.right

    @property
    def y0(self) -> float:  # bottom of the plot area (pixels grow downwards)
        return self.height - self.bottom

    @property
    def y1(self) -> float:
        return self.top

    def add(self, element: str) -> None:
        self.parts.append(element)

    def text(self, x: float, y: float, text: str, size: float = FONT, anchor: str = "start", rotate: float = 0,
             weight: str = "normal", fill: str = "#1d2939", cls: str = "") -> None:
        rot = f" transform='rotate({rotate:g} {_num(x)} {_num(y)})'" if rotate else ""
        c = f" class='{cls}'" if cls else ""
        self.add(f"<text x='{_num(x)}' y='{_num(y)}' font-size='{size:g}' text-anchor='{anchor}' "
                 f"font-weight='{weight}' fill='{fill}'{rot}{c}>{escape(text)}</text>")

    def line(self, x1: float, y1: float, x2: float, y2: float, stroke: str = "#1d2939", width: float = 1,
             dash: str = "") -> None:
        d = f" stroke-dasharray='{dash}'" if dash else ""
        self.add(f"<line x1='{_num(x1)}' y1='{_num(y1)}' x2='{_num(x2)}' y2='{_num(y2)}' stroke='{stroke}' "
                 f"stroke-width='{width:g}'{d}/>")

    def rect(self, x: float, y: float, w: float, h: float, fill: str, title: str = "") -> None:
        tip = f"<title>{escape(title)}</title>" if title else ""
        self.add(f"<rect x='{_num(x)}' y='{_num(y)}' width='{_num(max(w, 0))}' height='{_num(max(h, 0))}' "
                 f"fill='{fill}'>{tip}</rect>")

    def circle(self, x: float, y: float, r: float, fill: str, stroke: str = "", title: str = "") -> None:
        tip = f"<title>{escape(title)}</title>" if title else ""
        s = f" stroke='{stroke}' stroke-width='1.5'" if stroke else ""
        self.add(f"<circle cx='{_num(x)}' cy='{_num(y)}' r='{r:g}' fill='{fill}'{s}>{tip}</circle>")

    def polyline(self, points: list[tuple[float, float]], stroke: str, width: float = 1.5, dash: str = "") -> None:
        if len(points) < 2:
            return
        d = f" stroke-dasharray='{dash}'" if dash else ""
        pts = " ".join(f"{_num(x)},{_num(y)}" for x, y in points)
        self.add(f"<polyline points='{pts}' fill='none' stroke='{stroke}' stroke-width='{width:g}'{d}/>")

    # ---- axes
    def x_axis(self, scale: Scale, label: str) -> None:
        self.line(self.x0, self.y0, self.x1, self.y0)
        for t in scale.ticks():
            x = scale(t)
            self.line(x, self.y0, x, self.y0 + 4)
            self.line(x, self.y0, x, self.y1, stroke="#eaecf0")
            self.text(x, self.y0 + 16, _fmt(t), 10, "middle")
        self.text((self.x0 + self.x1) / 2, self.height - 8, label + (" (log scale)" if scale.log else ""), FONT,
                  "middle", cls="xlabel")

    def y_axis(self, scale: Scale, label: str) -> None:
        self.line(self.x0, self.y0, self.x0, self.y1)
        for t in scale.ticks():
            y = scale(t)
            self.line(self.x0 - 4, y, self.x0, y)
            self.line(self.x0, y, self.x1, y, stroke="#eaecf0")
            self.text(self.x0 - 6, y + 3.5, _fmt(t), 10, "end")
        self.text(max(14.0, self.x0 - 48), (self.y0 + self.y1) / 2, label + (" (log scale)" if scale.log else ""),
                  FONT, "middle", rotate=-90, cls="ylabel")

    def x_bands(self, names: Sequence[str]) -> list[float]:
        """Category centres along x, labels rotated below the axis."""
        self.line(self.x0, self.y0, self.x1, self.y0)
        step = (self.x1 - self.x0) / max(len(names), 1)
        centres = [self.x0 + step * (i + 0.5) for i in range(len(names))]
        for x, name in zip(centres, names):
            self.text(x, self.y0 + 12, name, 10, "end", rotate=-30)
        return centres

    def y_bands(self, names: Sequence[str]) -> list[float]:
        step = (self.y0 - self.y1) / max(len(names), 1)
        centres = [self.y1 + step * (i + 0.5) for i in range(len(names))]
        for y, name in zip(centres, names):
            self.text(self.x0 - 6, y + 3.5, name, 10, "end")
        return centres

    def legend(self, items: Sequence[tuple[str, str]], x: float | None = None, y: float | None = None) -> None:
        x = self.x1 - max((text_width(n, 10) for n, _ in items), default=0) - 24 if x is None else x
        y = self.y1 + 8 if y is None else y
        for i, (name, colour) in enumerate(items):
            self.rect(x, y + 14 * i - 8, 10, 10, colour)
            self.text(x + 14, y + 14 * i + 1, name, 10)

    def svg(self) -> str:
        head = (f"<svg xmlns='http://www.w3.org/2000/svg' width='{_num(self.width)}' height='{_num(self.height)}' "
                f"viewBox='0 0 {_num(self.width)} {_num(self.height)}' font-family='DejaVu Sans, Arial, sans-serif'>"
                f"<rect width='100%' height='100%' fill='white'/>")
        title = (f"<text x='{_num(self.width / 2)}' y='18' font-size='13' text-anchor='middle' font-weight='bold' "
                 f"class='title'>{escape(self.title)}</text>")
        return head + title + "".join(self.parts) + "</svg>"


def margin_for(labels: Sequence[str], size: float = 10, least: float = 60, most: float = 380) -> float:
    return min(max(least, max((text_width(s, size) for s in labels), default=0) + 14), most)


def diverging(value: float, span: float) -> str:
    """Red (slower) - pale yellow (1x) - green (faster) for log2(value) in [-span, span]."""
    t = 0.5 if not math.isfinite(value) or value <= 0 else 0.5 + 0.5 * max(-1, min(1, math.log2(value) / span))
    stops = ((0.0, (215, 48, 39)), (0.5, (255, 255, 191)), (1.0, (26, 152, 80)))
    for (a, ca), (b, cb) in zip(stops, stops[1:]):
        if t <= b:
            u = (t - a) / (b - a)
            r, g, bl = (round(ca[i] + u * (cb[i] - ca[i])) for i in range(3))
            return f"#{r:02x}{g:02x}{bl:02x}"
    return "#1a9850"


# ------------------------------------------------------------------------------------------ charts
def _bottom_for(labels: Sequence[str]) -> float:
    return min(max((text_width(s, 10) for s in labels), default=0) * 0.5 + 40, 220)


def _left_for(labels: Sequence[str], least: float = 70, centre: float = 20) -> float:
    """Room on the left for the first category label, rotated -30 degrees and ending under its centre."""
    return max(least, 0.87 * text_width(labels[0], 10) - centre + 8) if labels else least


def heatmap(title: str, rows: Sequence[str], cols: Sequence[str], cells: dict[tuple[int, int], float],
            legend: str) -> str:
    """Cells coloured by log2 of the value (1x neutral), each annotated with its value."""
    cw, ch = max(56.0, max((text_width(c, 10) * 0.55 for c in cols), default=0)), 22.0
    left = max(margin_for(rows), _left_for(cols, centre=cw / 2))
    bottom = _bottom_for(cols) + 30
    width = left + cw * len(cols) + 130
    chart = Chart(max(width, text_width(title, 13) + 40), 40 + ch * len(rows) + bottom, title, left, 130, 34, bottom)
    finite = clean(list(cells.values()), positive=True)
    span = max(max((abs(math.log2(v)) for v in finite), default=1.0), 1.0)
    for (i, j), v in cells.items():
        x, y = left + cw * j, chart.top + ch * i
        chart.rect(x + 1, y + 1, cw - 2, ch - 2, diverging(v, span), f"{rows[i]} / {cols[j]}: {v:.3g}x")
        chart.text(x + cw / 2, y + ch / 2 + 4, f"{v:.2f}x", 10, "middle")
    for i, r in enumerate(rows):
        chart.text(left - 6, chart.top + ch * i + ch / 2 + 4, r, 10, "end")
    for j, c in enumerate(cols):
        chart.text(left + cw * j + cw / 2, chart.top + ch * len(rows) + 12, c, 10, "end", rotate=-30)
    lx = left + cw * len(cols) + 20
    chart.text(lx, chart.top + 2, legend, 10, weight="bold")
    for k, e in enumerate((1, 0.5, 0, -0.5, -1)):
        v = 2 ** (e * span)
        chart.rect(lx, chart.top + 10 + 16 * k, 14, 14, diverging(v, span))
        chart.text(lx + 20, chart.top + 21 + 16 * k, f"{v:.2f}x" + (" faster" if e > 0 else " slower" if e < 0 else ""),
                   10)
    return chart.svg()


@dataclass(frozen=True)
class Interval:
    label: str
    value: float
    low: float
    high: float
    colour: str
    hollow: bool = False
    tip: str = ""


def forest(title: str, items: Sequence[Interval], xlabel: str) -> str:
    """Estimates with intervals on a log axis, one line each, a reference line at 1."""
    labels = [i.label for i in items]
    left = margin_for(labels, least=120, most=420)
    chart = Chart(max(760.0, left + 420), 60 + 20 * len(items) + 40, title, left, 30, 34, 46)
    vals = clean([v for i in items for v in (i.value, i.low, i.high)], positive=True)
    x = Scale.fit(vals, chart.x0, chart.x1, log=True, include=(0.8, 1.25))
    chart.x_axis(x, xlabel)
    chart.line(x(1.0), chart.y0, x(1.0), chart.y1, "#475467", 1.2)
    for y, item in zip(chart.y_bands(labels), items):
        lo, hi = (item.low, item.high) if math.isfinite(item.low) and math.isfinite(item.high) else (item.value,) * 2
        chart.line(x(lo), y, x(hi), y, item.colour, 2)
        chart.circle(x(item.value), y, 4, "white" if item.hollow else item.colour, item.colour, item.tip)
    return chart.svg()


def bars(title: str, groups: dict[str, dict[str, float]], ylabel: str) -> str:
    names = list(groups)
    series = sorted({s for g in groups.values() for s in g})
    bottom = _bottom_for(names)
    legend_w = max((text_width(s, 10) for s in series), default=0) + 40
    left = _left_for(names)
    chart = Chart(max(520.0, left + 20 + 26 * len(names) * max(len(series), 1) + legend_w), 340 + bottom - 50, title,
                  left, legend_w, 34, bottom)
    values = clean([v for g in groups.values() for v in g.values()], positive=True)
    y = Scale.fit(values, chart.y0, chart.y1, include=(0,) if values and max(values) / min(values) <= 20 else ())
    chart.y_axis(y, ylabel)
    centres = chart.x_bands(names)
    band = (chart.x1 - chart.x0) / max(len(names), 1) * 0.8
    w = band / max(len(series), 1)
    base = y(y.lo) if y.log else y(max(y.lo, 0.0))
    for name, cx in zip(names, centres):
        for k, s in enumerate(series):
            v = groups[name].get(s)
            if v is None or not math.isfinite(v) or v <= 0:
                continue
            top = y(v)
            chart.rect(cx - band / 2 + k * w, min(top, base), w - 1, abs(base - top), PALETTE[k % len(PALETTE)],
                       f"{name} / {s}: {v:.3g}")
    chart.legend([(s, PALETTE[k % len(PALETTE)]) for k, s in enumerate(series)], x=chart.x1 + 10)
    return chart.svg()


@dataclass(frozen=True)
class Point:
    x: float
    y: float
    label: str = ""


def scatter(title: str, points: Sequence[Point], xlabel: str, ylabel: str, log_x: bool | None = None,
            front: Sequence[Point] = ()) -> str:
    chart = Chart(720, 420, title, 70, 30, 34, 46)
    x = Scale.fit([p.x for p in points], chart.x0, chart.x1, log=log_x)
    y = Scale.fit([p.y for p in points], chart.y0, chart.y1)
    chart.x_axis(x, xlabel)
    chart.y_axis(y, ylabel)
    if front:
        chart.polyline([(x(p.x), y(p.y)) for p in front], "#1d2939", 1.2, "5 3")
        chart.legend([("Pareto front (dashed)", "#1d2939")])
    for p in points:
        chart.circle(x(p.x), y(p.y), 4, PALETTE[0], title=f"{p.label}: {p.x:.3g}, {p.y:.3g}")
        if p.label:
            right = x(p.x) + 6 + text_width(p.label, 9) > chart.width - 4
            chart.text(x(p.x) - 6 if right else x(p.x) + 6, y(p.y) - 5, p.label, 9, "end" if right else "start")
    return chart.svg()


@dataclass(frozen=True)
class Series:
    label: str
    xs: tuple[float, ...]
    ys: tuple[float, ...]
    lows: tuple[float, ...]
    highs: tuple[float, ...]


def lines(title: str, series: Sequence[Series], xlabel: str, ylabel: str, reference: float | None = None) -> str:
    legend_w = min(max((text_width(s.label, 10) for s in series), default=0) + 40, 420)
    chart = Chart(560 + legend_w, 400, title, 70, legend_w, 34, 46)
    xs = [v for s in series for v in s.xs]
    ys = [v for s in series for v in (*s.ys, *s.lows, *s.highs)]
    x = Scale.fit(xs, chart.x0, chart.x1, log=False)
    y = Scale.fit(ys, chart.y0, chart.y1, include=(reference,) if reference else ())
    chart.x_axis(x, xlabel)
    chart.y_axis(y, ylabel)
    if reference is not None:
        chart.line(chart.x0, y(reference), chart.x1, y(reference), "#475467", 1.2, "4 3")
    for k, s in enumerate(series):
        colour = PALETTE[k % len(PALETTE)]
        chart.polyline([(x(a), y(b)) for a, b in zip(s.xs, s.ys)], colour)
        for a, b, lo, hi in zip(s.xs, s.ys, s.lows, s.highs):
            if math.isfinite(lo) and math.isfinite(hi):
                chart.line(x(a), y(lo), x(a), y(hi), colour, 1.5)
            chart.circle(x(a), y(b), 3.5, colour, title=f"{s.label}: {a:.3g}, {b:.3g}")
    chart.legend([(s.label, PALETTE[k % len(PALETTE)]) for k, s in enumerate(series)], x=chart.x1 + 10)
    return chart.svg()


def stacked(title: str, names: Sequence[str], stacks: Sequence[tuple[str, Sequence[float]]], ylabel: str) -> str:
    bottom = _bottom_for(names)
    left = _left_for(names)
    chart = Chart(max(460.0, left + 50 + 60 * len(names) + 170), 300 + bottom, title, left, 170, 34, bottom)
    totals = [sum(v[i] for _, v in stacks) for i in range(len(names))]
    y = Scale.fit(totals, chart.y0, chart.y1, log=False, include=(0,))
    chart.y_axis(y, ylabel)
    centres = chart.x_bands(names)
    w = (chart.x1 - chart.x0) / max(len(names), 1) * 0.6
    for i, cx in enumerate(centres):
        acc = 0.0
        for k, (label, values) in enumerate(stacks):
            v = values[i]
            chart.rect(cx - w / 2, y(acc + v), w, y(acc) - y(acc + v), PALETTE[k], f"{names[i]} {label}: {v:.3g}")
            acc += v
    chart.legend([(label, PALETTE[k]) for k, (label, _) in enumerate(stacks)], x=chart.x1 + 10)
    return chart.svg()


def boxes(title: str, names: Sequence[str], five: Sequence[tuple[float, float, float, float, float]], ylabel: str,
          flagged: Sequence[bool]) -> str:
    bottom = _bottom_for(names)
    left = _left_for(names, centre=10)
    chart = Chart(max(520.0, left + 30 + 34 * len(names)), 300 + bottom, title, left, 20, 34, bottom)
    y = Scale.fit([v for f in five for v in f], chart.y0, chart.y1, log=False, include=(1.0,))
    chart.y_axis(y, ylabel)
    chart.line(chart.x0, y(1.0), chart.x1, y(1.0), "#98a2b3", 1, "4 3")
    centres = chart.x_bands(names)
    w = min(24.0, (chart.x1 - chart.x0) / max(len(names), 1) * 0.6)
    for cx, (lo, q1, med, q3, hi), bad in zip(centres, five, flagged):
        colour = "#b54708" if bad else PALETTE[0]
        chart.line(cx, y(lo), cx, y(hi), colour)
        chart.rect(cx - w / 2, y(q3), w, y(q1) - y(q3), "#fef0c7" if bad else "#d1e9ff")
        chart.line(cx - w / 2, y(med), cx + w / 2, y(med), colour, 2)
    return chart.svg()
