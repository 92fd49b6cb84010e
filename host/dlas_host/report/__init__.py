"""``dlas-host report``: a self-contained HTML report (plots embedded) and a Markdown twin."""

from __future__ import annotations

import base64
import html
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .observations import Finding, Row, observe
from .plots import make_figures

COLUMNS = ("id", "device", "model", "dataset", "system", "algorithm", "layout", "sparse_format", "sparsity",
           "pruning", "quantization", "tuning", "median_ms", "iqr_ms", "p90_ms", "n", "max_abs_err", "top1", "status")


@dataclass
class Report:
    html_path: Path
    markdown_path: Path
    figures: int
    findings: list[Finding]
    rows: int


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 0.01 and value else f"{value:.2f}"
    return str(value)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def write_report(rows: list[Row], out_dir: Path, title: str = "DLAS Lab report") -> Report:
    out_dir.mkdir(parents=True, exist_ok=True)
    findings = observe(rows)
    figures = make_figures(rows)
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    devices = sorted({r["device"] for r in rows})
    statuses: dict[str, int] = {}
    for r in rows:
        statuses[r["status"]] = statuses.get(r["status"], 0) + 1

    # ---- HTML (self-contained)
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>",
             "body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px;color:#222}",
             "table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ccc;padding:2px 6px}",
             "tr:target{background:#fff3b0}li{margin:.4em 0}img{max-width:100%;border:1px solid #eee}",
             ".err{color:#a00}.skip{color:#888}</style></head><body>",
             f"<h1>{html.escape(title)}</h1><p>{len(rows)} result rows on {len(devices)} device(s) "
             f"({', '.join(map(html.escape, devices))}); "
             + ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items())) + f". Generated {stamp}.</p>",
             "<h2 id='observations'>Observations</h2><ol>"]
    for f in findings:
        links = " ".join(f"<a href='#row-{i}'>#{i}</a>" for i in f.rows[:30])
        parts.append(f"<li class='obs' data-rule='{f.rule}'>{html.escape(f.text)} <small>rows: {links}</small></li>")
    if not findings:
        parts.append("<li>No pattern stands out yet: run a sweep over more than one layer.</li>")
    parts.append("</ol><h2>Figures</h2>")
    for name, png in figures:
        parts.append(f"<h3 id='{_slug(name)}'>{html.escape(name)}</h3>"
                     f"<img alt='{html.escape(name)}' src='data:image/png;base64,{base64.b64encode(png).decode()}'>")
    parts.append("<h2 id='rows'>Results</h2><table><tr>" + "".join(f"<th>{c}</th>" for c in COLUMNS) + "</tr>")
    for r in rows:
        cls = {"error": " class='err'", "skipped": " class='skip'"}.get(r["status"], "")
        cells = "".join(f"<td>{html.escape(_cell(r.get(c)))}</td>" for c in COLUMNS)
        title_attr = f" title='{html.escape(r.get('error') or '')}'" if r.get("error") else ""
        parts.append(f"<tr id='row-{r['id']}'{cls}{title_attr}>{cells}</tr>")
    parts.append("</table></body></html>")
    html_path = out_dir / "report.html"
    html_path.write_text("\n".join(parts))

    # ---- Markdown (figures as files beside it)
    md = [f"# {title}", "", f"{len(rows)} result rows on {', '.join(devices)}; generated {stamp}.", "",
          "## Observations", ""]
    md += [f"{i}. {f.text} (rows {', '.join(f'#{x}' for x in f.rows[:30])})" for i, f in enumerate(findings, 1)]
    md += ["", "## Figures", ""]
    for name, png in figures:
        fname = f"{_slug(name)}.png"
        (out_dir / fname).write_bytes(png)
        md += [f"### {name}", "", f"![{name}]({fname})", ""]
    md += ["## Results", "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    md += ["| " + " | ".join(_cell(r.get(c)) for c in COLUMNS) + " |" for r in rows]
    md_path = out_dir / "report.md"
    md_path.write_text("\n".join(md) + "\n")
    return Report(html_path, md_path, len(figures), findings, len(rows))
