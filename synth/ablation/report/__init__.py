"""Render an ablation's ``results.json`` into ``report.md`` and one self-contained ``report.html``.

The HTML embeds every figure and image grid as a base64 data URI and has no
external references, so it can be mailed or attached to a paper review as a
single file. A tiny inline script records in the DOM how many images failed
to decode (``#render-check[data-broken]``), which the test reads back from
headless Chromium.
"""

from __future__ import annotations

from pathlib import Path

from synth.ablation.report.figures import render_figures
from synth.ablation.report.html_page import html_report
from synth.ablation.report.markdown_page import markdown_report
from synth.ablation.results import RESULTS_FILE, is_judgeable, load_results
from synth.io import atomic_path, write_text_atomic

__all__ = ["render_report", "is_judgeable"]


def render_report(report_dir: str | Path) -> dict[str, Path]:
    """Write report.md, report.html and figures/ next to ``report_dir/results.json``."""
    report_dir = Path(report_dir)
    results = load_results(report_dir / RESULTS_FILE)
    figures = render_figures(results, report_dir)
    for name, png in figures.items():
        with atomic_path(report_dir / "figures" / f"{name}.png") as tmp:
            tmp.write_bytes(png)
    md_path, html_path = report_dir / "report.md", report_dir / "report.html"
    write_text_atomic(md_path, markdown_report(results, figures))
    write_text_atomic(html_path, html_report(results, figures))
    return {"md": md_path, "html": html_path, "results": report_dir / RESULTS_FILE}
