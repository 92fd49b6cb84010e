"""``dlas-host report``: one self-contained HTML page (figures embedded) and a Markdown twin, with the
sweep's spec, its devices and versions, the figures, and findings each backed by statistics on the raw
samples and linked to its evidence rows and plot."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from . import html, markdown
from .context import load_sweeps
from .findings import Finding
from .page import build
from .rules import observe

__all__ = ["Finding", "Report", "load_sweeps", "observe", "write_report"]


@dataclass
class Report:
    html_path: Path
    markdown_path: Path
    figures: int
    findings: list[Finding]
    rows: int

    @property
    def kinds(self) -> set[str]:
        """The DLAS finding kinds stated (notes on data quality excluded)."""
        return {f.rule for f in self.findings if not f.quality}


def write_report(rows: Sequence[Mapping[str, Any]], out_dir: Path, title: str = "DLAS Lab report", *,
                 sweeps: Sequence[Mapping[str, Any]] | None = None) -> Report:
    """Write ``report.html`` and ``report.md`` (PNGs beside it) under ``out_dir``.

    ``sweeps``: the sweep records to show in the header (``load_sweeps(db_path, rows)`` reads them from the
    results database); without them the page lists the rows' sweep ids.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    page = build(list(rows), title, [dict(s) for s in sweeps or []])
    html_path = out_dir / "report.html"
    html_path.write_text(html.render(page))
    md_path = out_dir / "report.md"
    md_path.write_text(markdown.render(page, out_dir))
    return Report(html_path, md_path, len(page.figures), page.findings, len(page.rows))
