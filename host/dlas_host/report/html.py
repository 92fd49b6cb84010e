"""The report as one self-contained HTML page: figures embedded, no external resource."""

from __future__ import annotations

import base64
from html import escape
from typing import Any

from .findings import TITLES, Finding, Pair
from .page import AXIS_COLUMNS, METHOD, Page, cell
from .stats import fmt_p, fmt_ratio
from .context import spec_text

CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em 2em;max-width:1400px;color:#1d2939;line-height:1.4}
h1{margin-bottom:.2em}h2{border-bottom:1px solid #d0d5dd;padding-bottom:.2em;margin-top:1.6em}
nav a{margin-right:1em}table{border-collapse:collapse;font-size:12px;margin:.4em 0}
td,th{border:1px solid #d0d5dd;padding:2px 6px;text-align:left;vertical-align:top}th{background:#f2f4f7}
tr:target,li:target{background:#fff3b0}li.finding{margin:.6em 0}small{color:#475467}
.sig{color:#1a7f37;font-weight:600}.nosig{color:#667085}.warn{color:#b54708}
.err{color:#a00}.skip{color:#888}figure{margin:1em 0}img{max-width:100%;border:1px solid #eaecf0}
figcaption{font-size:12px;color:#475467}pre{background:#f9fafb;padding:.6em;overflow:auto;font-size:12px}
details summary{cursor:pointer;color:#344054;font-size:12px}.wide{overflow-x:auto;max-width:100%}
td.built{font-size:11px;min-width:220px}
"""


def _a(target: str, text: str) -> str:
    return f"<a href='#{escape(target, quote=True)}'>{escape(text)}</a>"


def _row_link(rid: int) -> str:
    return _a(f"row-{rid}", f"#{rid}")


def _pair_table(pairs: list[Pair]) -> str:
    head = ("<tr><th>candidate</th><th>baseline</th><th>speedup</th><th>95 % CI</th><th>Mann-Whitney</th>"
            "<th>samples</th><th>verdict</th><th>note</th></tr>")
    body = []
    for p in pairs:
        c = p.comparison
        ci = f"{fmt_ratio(c.low)} - {fmt_ratio(c.high)}" if c.tested else "-"
        note = "; ".join(filter(None, [p.note, f"unstable: {', '.join(f'#{i}' for i in p.unstable)}"
                                       if p.unstable else "", c.reason]))
        cls = "sig" if c.significant else "nosig"
        body.append(f"<tr><td>{_row_link(p.cand)} {escape(p.cand_label)}</td>"
                    f"<td>{_row_link(p.base)} {escape(p.base_label)}</td><td>{escape(fmt_ratio(c.speedup))}</td>"
                    f"<td>{escape(ci)}</td><td>{escape(fmt_p(c.p) if c.tested else '-')}</td>"
                    f"<td>{c.n_cand} / {c.n_base}</td><td class='{cls}'>{escape(c.verdict)}</td>"
                    f"<td class='warn'>{escape(note)}</td></tr>")
    return f"<table>{head}{''.join(body)}</table>"


def _text(f: Finding) -> str:
    """The finding's sentence, its note on unstable timings set off in the warning colour."""
    text = escape(f.text)
    cut = text.rfind(" (caution: uses timing(s) flagged unstable:")
    return text if cut < 0 else f"{text[:cut]} <span class='warn'>{text[cut + 1:]}</span>"


def _finding(n: int, f: Finding, page: Page) -> str:
    rows = " ".join(_row_link(i) for i in f.rows[:40]) + (f" (+{len(f.rows) - 40} more)" if len(f.rows) > 40 else "")
    figs = " ".join(_a(fig.slug, fig.title) for fig in page.figures_for(f.rule))
    mark = "<span class='sig'>&#9679;</span> " if f.significant else "<span class='nosig'>&#9675;</span> "
    parts = [f"<li class='finding' id='finding-{n}' data-rule='{escape(f.rule, quote=True)}' "
             f"data-significant='{str(f.significant).lower()}'>{mark}<b>[{n}]</b> {_text(f)}<br>"
             f"<small>evidence rows: {rows or '-'}{'; plot: ' + figs if figs else ''}</small>"]
    if f.details:
        parts.append(f"<details><summary>{len(f.details)} group(s)</summary><ul>"
                     + "".join(f"<li>{escape(d)}</li>" for d in f.details) + "</ul></details>")
    if f.pairs:
        parts.append(f"<details><summary>{len(f.pairs)} compared pair(s)</summary>{_pair_table(f.pairs)}</details>")
    parts.append("</li>")
    return "".join(parts)


def _sections(groups: list[tuple[str, list[tuple[int, Finding]]]], page: Page) -> list[str]:
    out = []
    for kind, items in groups:
        out.append(f"<h3 id='kind-{escape(kind, quote=True)}'>{escape(TITLES.get(kind, kind))}</h3><ul>")
        out += [_finding(n, f, page) for n, f in items]
        out.append("</ul>")
    return out


def _kv_table(items: list[tuple[str, str]]) -> str:
    return "<table>" + "".join(f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in items) + "</table>"


def _header(page: Page) -> list[str]:
    statuses = ", ".join(f"{k}: {v}" for k, v in page.statuses.items())
    devices = ", ".join(d["device"] for d in page.devices)
    out = [f"<h1>{escape(page.title)}</h1>",
           f"<p>{len(page.rows)} result rows on {len(page.devices)} device(s) ({escape(devices)}); "
           f"{escape(statuses)}. {len(page.findings)} finding(s). Generated {escape(page.stamp)}.</p>",
           "<nav>" + " ".join(_a(t, x) for t, x in (("sweep", "Sweep"), ("devices", "Devices"),
                                                     ("findings", "Findings"), ("accuracy", "Accuracy"),
                                                     ("quality", "Data quality"),
                                                     ("figures", "Figures"), ("method", "Method"),
                                                     ("rows", "Results"))) + "</nav>",
           "<h2 id='sweep'>Sweep</h2>"]
    if page.sweeps:
        for s in page.sweeps:
            out.append(_kv_table([("name", str(s.get("name", ""))), ("id", str(s.get("id", ""))),
                                  ("status", str(s.get("status", ""))), ("created", str(s.get("created_at", ""))),
                                  ("jobs", str(s.get("total", "")))]))
            out.append(f"<details open><summary>spec as run</summary><pre>{escape(spec_text(s.get('spec')))}</pre>"
                       "</details>")
    else:
        ids = sorted({m.sweep_id for m in page.meas if m.sweep_id})
        out.append(f"<p>No sweep record given; rows come from {escape(', '.join(ids) or 'single benchmarks')}.</p>")
    out.append("<h2 id='devices'>Devices and versions</h2>")
    if page.devices:
        cols = list(page.devices[0])
        out.append("<table><tr>" + "".join(f"<th>{escape(c)}</th>" for c in cols) + "</tr>" + "".join(
            "<tr>" + "".join(f"<td>{escape(d[c])}</td>" for c in cols) + "</tr>" for d in page.devices) + "</table>")
    if page.versions:
        out.append("<p>Host software:</p>" + _kv_table(list(page.versions.items())))
    return out


def _results(page: Page) -> list[str]:
    cols = ["id", *AXIS_COLUMNS, "status", "median_ms", "iqr_ms", "n", "stored sparsity", "max_abs_err", "top1",
            "MiB", "built"]
    out = ["<h2 id='rows'>Results</h2><div class='wide'><table><tr>" + "".join(f"<th>{escape(c)}</th>" for c in cols)
           + "</tr>"]
    for m in page.meas:
        cls = {"error": " class='err'", "skipped": " class='skip'"}.get(m.status, "")
        r: dict[str, Any] = {**m.axes, "id": m.id, "status": m.status + (" (emulated)" if m.emulated else " (unstable)" if m.unstable else ""),
                             "median_ms": m.median, "iqr_ms": m.row.get("iqr_ms"), "n": m.samples.size,
                             "stored sparsity": m.sparsity, "max_abs_err": m.row.get("max_abs_err"), "top1": m.top1,
                             "MiB": m.artifact_bytes / 2**20 if m.artifact_bytes else None, "built": m.built}
        tip = f" title='{escape(m.error, quote=True)}'" if m.error else ""
        cells = "".join(f"<td{' class=built' if c == 'built' else ''}>{escape(cell(r.get(c)))}</td>" for c in cols)
        out.append(f"<tr id='row-{m.id}'{cls}{tip}>{cells}</tr>")
    out.append("</table></div>")
    return out


def render(page: Page) -> str:
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{escape(page.title)}</title>"
             f"<style>{CSS}</style></head><body>", *_header(page), "<h2 id='findings'>Findings</h2>"]
    parts += _sections(page.dlas, page) or ["<p>No finding yet: compare more than one configuration of a layer "
                                           "(algorithms, systems, types, formats, devices) in one sweep.</p>"]
    table = page.accuracy_table()
    if table:
        cols = list(table[0])
        parts.append("<h2 id='accuracy'>Accuracy cost of each compression</h2><table><tr>"
                     + "".join(f"<th>{escape(c)}</th>" for c in cols) + "</tr>" + "".join(
                         "<tr>" + "".join(f"<td>{escape(r[c])}</td>" for c in cols) + "</tr>" for r in table)
                     + "</table>")
    parts.append("<h2 id='quality'>Data quality</h2>")
    parts += _sections(page.quality, page) or ["<p>Every job produced a stable timing.</p>"]
    parts.append("<h2 id='figures'>Figures</h2>")
    for fig in page.figures:
        data = base64.b64encode(fig.svg.encode()).decode()
        parts.append(f"<figure id='{escape(fig.slug, quote=True)}'><h3>{escape(fig.title)}</h3>"
                     f"<img alt='{escape(fig.title, quote=True)}' src='data:image/svg+xml;base64,{data}'>"
                     f"<figcaption>{escape(fig.caption)}</figcaption></figure>")
    parts.append(f"<h2 id='method'>Method</h2><p>{escape(METHOD)}</p>")
    parts += _results(page)
    parts.append("</body></html>")
    return "\n".join(parts)
