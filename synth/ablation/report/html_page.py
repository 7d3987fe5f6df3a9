"""``report.html``: one self-contained page (figures as base64 data URIs, inline CSS, no external references).

A tiny inline script records in the DOM how many images failed to decode (``#render-check[data-broken]``),
which the report test reads back from headless Chromium.
"""

from __future__ import annotations

import base64
import html
from typing import Any

from synth.ablation.report import tables
from synth.ablation.report.markdown_page import md_provenance
from synth.ablation.report.verdicts import QUESTION, dataset_line, headline
from synth.taxonomy import report_class_slug

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2rem auto;max-width:1100px;color:#222;padding:0 1rem}
table{border-collapse:collapse;margin:.5rem 0 1.5rem;font-size:.85rem}
th,td{border:1px solid #ccc;padding:.25rem .5rem;text-align:right}
th:first-child,td:first-child{text-align:left}
th{background:#f3f3f3}
.scroll{overflow-x:auto}
.sig{font-weight:600;color:#0a7d32}
.headline li{margin:.3rem 0}
img{max-width:100%}
img.broken{outline:3px solid red}
pre{background:#f7f7f7;padding:.6rem;overflow-x:auto;font-size:.8rem}
.note{color:#555;font-size:.85rem}
"""  # noqa: E501 (minified CSS: one rule a line)


# Marks images that failed to decode, so a headless browser can report them from the DOM.
_CHECK_SCRIPT = """
<div id="render-check" data-images="?" data-broken="?"></div>
<script>
(function(){
  var imgs=document.images, broken=0;
  for(var i=0;i<imgs.length;i++){
    if(!imgs[i].complete||imgs[i].naturalWidth===0){broken++;imgs[i].className+=' broken';}
  }
  var el=document.getElementById('render-check');
  el.setAttribute('data-images', String(imgs.length));
  el.setAttribute('data-broken', String(broken));
})();
</script>
"""


def html_report(results: dict[str, Any], figures: dict[str, bytes]) -> str:
    e = html.escape
    ds = results.get("dataset", {})
    body = [
        f"<h1>Ablation report: {e(results['name'])}</h1>",
        f"<p><em>{e(results.get('question', QUESTION))}</em></p>",
        "<ul class='headline'>" + "".join(f"<li>{e(line)}</li>" for line in headline(results)) + "</ul>",
    ]
    if ds:
        body.append("<p class='note'>" + e(dataset_line(ds)) + "</p>")
    body += [
        "<h2>mAP per frequency group</h2>",
        f"<p class='note'>{e(tables.SEED_RULE)}</p>",
        _html_table(*tables.group_table(results)),
        _img(figures["group_map"], "mAP by frequency group"),
        "<h2>Paired differences vs real only</h2>",
        f"<p class='note'>{e(tables.PAIRED_RULE)} Green = the interval excludes 0.</p>",
        _html_table(*tables.paired_table(results), highlight=True),
    ]
    resampled = tables.paired_resampled_table(results)
    if resampled:
        body += [
            "<h2>Paired differences vs real, tail re-sampled (the verdict's reference)</h2>",
            _html_table(*resampled, highlight=True),
        ]
    body += _html_section("Evidence rule", *tables.evidence_table(results))
    resampling = tables.resampling_table(results)
    if resampling:
        body += _html_section("Re-sampling baseline", *resampling)
    gain = tables.gain_by_positives_table(results)
    if gain:
        body += _html_section(tables.GAIN_BY_POSITIVES_TITLE, tables.GAIN_BY_POSITIVES_RULE, gain)
    body += [
        "<h2>Per-class ΔAP vs training prevalence</h2>",
        _img(figures["delta_ap_vs_prevalence"], "Per-class delta AP"),
        "<h2>Per-class metrics (mean over seeds)</h2>",
        _html_table(*tables.class_table(results)),
    ]
    filt = tables.filter_table(results)
    if filt:
        body += _html_section("Filter summary", tables.filter_note(results), filt)
    for title, note, table in tables.gate_sections(results):
        body += _html_section(title, note, table)
    for section in tables.external_sections(results):
        body.append(f"<h2>{html.escape(section.title)}</h2>")
        body.append("<ul class='headline'>" + "".join(f"<li>{html.escape(x)}</li>" for x in section.lines) + "</ul>")
        for subtitle, note, table in section.tables:
            body += [f"<h3>{html.escape(subtitle)}</h3>", f"<p class='note'>{html.escape(note)}</p>"]
            body.append(_html_table(*table, highlight=True))
    if results.get("grids"):
        body.append("<h2>Image grids</h2><p class='note'>Rows: real examples, kept synthetic, rejected synthetic.</p>")
        for cls in results["grids"]:
            body += [f"<h3>{e(cls)}</h3>", _img(figures[f"grid_{report_class_slug(cls)}"], f"{cls} grid")]
    timings = tables.timings_table(results)
    if timings:
        body += _html_section("Stage wall times", *timings)
    body += ["<h2>Reproduce</h2>", _html_provenance(tables.provenance(results))]
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>Ablation report: {e(results['name'])}</title><style>{_CSS}</style></head><body>\n"
        + "\n".join(body)
        + _CHECK_SCRIPT
        + "</body></html>\n"
    )


def _html_section(title: str, note: str, table: tuple[list[str], list[list[str]]]) -> list[str]:
    return [f"<h2>{html.escape(title)}</h2>", f"<p class='note'>{html.escape(note)}</p>", _html_table(*table)]


def _html_table(header: list[str], rows: list[list[str]], highlight: bool = False) -> str:
    e = html.escape
    head = "".join(f"<th>{e(h)}</th>" for h in header)
    out = [f"<div class='scroll'><table><thead><tr>{head}</tr></thead><tbody>"]
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            cls = " class='sig'" if highlight and i > 0 and cell.endswith("*") else ""
            cells.append(f"<td{cls}>{e(cell)}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    return "".join(out) + "</tbody></table></div>"


def _html_provenance(prov: dict[str, Any]) -> str:
    text = "\n".join(md_provenance(prov)).replace("```bash\n", "").replace("```json\n", "").replace("```", "")
    return "<pre>" + html.escape(text) + "</pre>"


def _img(png: bytes, alt: str) -> str:
    return f"<p><img alt='{html.escape(alt)}' src='data:image/png;base64,{base64.b64encode(png).decode()}'></p>"
