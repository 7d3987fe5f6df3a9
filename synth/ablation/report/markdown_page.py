"""``report.md``: the headline, tables and figure links as Markdown (figures are files under ``figures/``)."""

from __future__ import annotations

import json
from typing import Any

from synth.ablation.report import tables
from synth.ablation.report.verdicts import QUESTION, dataset_line, headline
from synth.taxonomy import report_class_slug


def markdown_report(results: dict[str, Any], figures: dict[str, bytes]) -> str:
    ds = results.get("dataset", {})
    out = [f"# Ablation report: {results['name']}", "", f"_{results.get('question', QUESTION)}_", ""]
    out += [f"- {line}" for line in headline(results)] + [""]
    if ds:
        out += [dataset_line(ds), ""]
    out += [
        "## mAP per frequency group",
        "",
        tables.SEED_RULE,
        "",
        md_table(*tables.group_table(results)),
        "",
        "![mAP by group](figures/group_map.png)",
        "",
        "## Paired differences vs real only (paired patient bootstrap on the same test set)",
        "",
        tables.PAIRED_RULE,
        "",
        md_table(*tables.paired_table(results)),
        "",
    ]
    resampled = tables.paired_resampled_table(results)
    if resampled:
        out += [
            "## Paired differences vs real, tail re-sampled (the verdict's reference)",
            "",
            md_table(*resampled),
            "",
        ]
    out += _md_section("Evidence rule", *tables.evidence_table(results))
    resampling = tables.resampling_table(results)
    if resampling:
        out += _md_section("Re-sampling baseline", *resampling)
    gain = tables.gain_by_positives_table(results)
    if gain:
        out += _md_section(tables.GAIN_BY_POSITIVES_TITLE, tables.GAIN_BY_POSITIVES_RULE, gain)
    out += [
        "## Per-class ΔAP vs training prevalence",
        "",
        "![ΔAP vs prevalence](figures/delta_ap_vs_prevalence.png)",
        "",
        "## Per-class metrics (mean over seeds)",
        "",
        md_table(*tables.class_table(results)),
        "",
    ]
    filt = tables.filter_table(results)
    if filt:
        out += _md_section("Filter summary", tables.filter_note(results), filt)
    for title, note, table in tables.gate_sections(results):
        out += _md_section(title, note, table)
    for section in tables.external_sections(results):
        out += [f"## {section.title}", ""] + [f"- {line}" for line in section.lines] + [""]
        for subtitle, note, table in section.tables:
            out += [f"### {subtitle}", "", note, "", md_table(*table), ""]
    grids = [n for n in figures if n.startswith("grid_")]
    if grids:
        out += ["## Image grids (rows: real, kept synthetic, rejected synthetic)", ""]
        for cls in results.get("grids", {}):
            out += [f"### {cls}", "", f"![{cls}](figures/grid_{report_class_slug(cls)}.png)", ""]
    timings = tables.timings_table(results)
    if timings:
        out += _md_section("Stage wall times", *timings)
    out += ["## Reproduce", ""] + md_provenance(tables.provenance(results))
    return "\n".join(out) + "\n"


def _md_section(title: str, note: str, table: tuple[list[str], list[list[str]]]) -> list[str]:
    return [f"## {title}", "", note, "", md_table(*table), ""]


def md_table(header: list[str], rows: list[list[str]]) -> str:
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(map(esc, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(esc, r)) + " |" for r in rows]
    return "\n".join(lines)


def md_provenance(prov: dict[str, Any]) -> list[str]:
    out = []
    if prov.get("commands"):
        out += ["Commands:", "", "```bash", *prov["commands"], "```", ""]
    if prov.get("seeds") is not None:
        out += [f"Seeds: {prov['seeds']}", ""]
    if prov.get("git_commit"):
        out += [f"Git commit: `{prov['git_commit']}`", ""]
    if prov.get("versions"):
        out += ["Package versions: " + ", ".join(f"{k} {v}" for k, v in prov["versions"].items()), ""]
    if prov.get("config"):
        out += ["Configuration:", "", "```json", json.dumps(prov["config"], indent=2), "```", ""]
    return out
