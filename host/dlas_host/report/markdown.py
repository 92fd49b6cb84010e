"""The report as Markdown, its figures as PNG files beside it."""

from __future__ import annotations

from pathlib import Path

from .context import spec_text
from .findings import TITLES, Finding
from .page import AXIS_COLUMNS, METHOD, Page, cell
from .stats import fmt_p, fmt_ratio


def _esc(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _finding(n: int, f: Finding, page: Page) -> list[str]:
    rows = ", ".join(f"#{i}" for i in f.rows[:40]) + (f" (+{len(f.rows) - 40} more)" if len(f.rows) > 40 else "")
    figs = ", ".join(f"[{fig.title}]({fig.slug}.svg)" for fig in page.figures_for(f.rule))
    out = [f"{n}. {'**significant** ' if f.significant else ''}{f.text}",
           f"   Evidence rows: {rows or '-'}" + (f"; plot: {figs}" if figs else "")]
    out += [f"   - {d}" for d in f.details]
    if f.pairs:
        out += ["", "   | candidate | baseline | speedup | 95 % CI | Mann-Whitney | samples | verdict |",
                "   |---|---|---|---|---|---|---|"]
        for p in f.pairs:
            c = p.comparison
            ci = f"{fmt_ratio(c.low)} - {fmt_ratio(c.high)}" if c.tested else "-"
            mark = " (unstable)" if p.unstable else ""
            out.append(f"   | #{p.cand} {_esc(p.cand_label)} | #{p.base} {_esc(p.base_label)} | {fmt_ratio(c.speedup)} "
                       f"| {ci} | {fmt_p(c.p) if c.tested else '-'} | {c.n_cand} / {c.n_base} | "
                       f"{c.verdict}{mark} |")
        out.append("")
    return out


def _sections(groups: list, page: Page) -> list[str]:
    out: list[str] = []
    for kind, items in groups:
        out += [f"### {TITLES.get(kind, kind)}", ""]
        for n, f in items:
            out += _finding(n, f, page)
        out.append("")
    return out


def render(page: Page, out_dir: Path) -> str:
    statuses = ", ".join(f"{k}: {v}" for k, v in page.statuses.items())
    md = [f"# {page.title}", "",
          f"{len(page.rows)} result rows on {', '.join(d['device'] for d in page.devices) or 'no device'}; "
          f"{statuses}. {len(page.findings)} finding(s). Generated {page.stamp}.", "", "## Sweep", ""]
    for s in page.sweeps:
        md += [f"**{s.get('name', '')}** `{s.get('id', '')}` ({s.get('status', '')}, {s.get('total', '')} jobs, "
               f"created {s.get('created_at', '')})", "", "```yaml", spec_text(s.get("spec")).rstrip(), "```", ""]
    if not page.sweeps:
        md += ["No sweep record given.", ""]
    md += ["## Devices and versions", ""]
    if page.devices:
        cols = list(page.devices[0])
        md += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        md += ["| " + " | ".join(_esc(d[c]) for c in cols) + " |" for d in page.devices]
        md.append("")
    md += [f"- {k}: {_esc(v)}" for k, v in page.versions.items()] + ["", "## Findings", ""]
    md += _sections(page.dlas, page) or ["No finding yet.", ""]
    table = page.accuracy_table()
    if table:
        cols = list(table[0])
        md += ["## Accuracy cost of each compression", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        md += ["| " + " | ".join(_esc(r[c]) for c in cols) + " |" for r in table] + [""]
    md += ["## Data quality", ""]
    md += _sections(page.quality, page) or ["Every job produced a stable timing.", ""]
    md += ["## Figures", ""]
    for fig in page.figures:
        (out_dir / f"{fig.slug}.svg").write_text(fig.svg)
        md += [f"### {fig.title}", "", f"![{fig.title}]({fig.slug}.svg)", ""]
        md += [fig.caption, ""] if fig.caption else []
    md += ["## Method", "", METHOD, "", "## Results", ""]
    cols = ["id", *AXIS_COLUMNS, "status", "median_ms", "n", "stored sparsity"]
    md += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for m in page.meas:
        r = {**m.axes, "id": m.id, "status": m.status + (" (emulated)" if m.emulated else " (unstable)" if m.unstable else ""), "median_ms": m.median,
             "n": m.samples.size, "stored sparsity": m.sparsity}
        md.append("| " + " | ".join(_esc(cell(r.get(c))) for c in cols) + " |")
    return "\n".join(md) + "\n"
