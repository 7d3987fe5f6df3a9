"""``report.md``: the headline, tables and figure links as Markdown (figures are files under ``figures/``)."""

from __future__ import annotations

import json
from typing import Any

from synth.ablation.report.tables import (
    FIDELITY_RULE,
    PAIRED_RULE,
    SEED_RULE,
    class_table,
    fidelity_table,
    filter_table,
    gate_vs_fidelity,
    group_table,
    paired_resampled_table,
    paired_table,
    provenance,
    resampling_table,
    timings_table,
)
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
        SEED_RULE,
        "",
        _md_table(*group_table(results)),
        "",
        "![mAP by group](figures/group_map.png)",
        "",
        "## Paired differences vs real only (paired patient bootstrap on the same test set)",
        "",
        PAIRED_RULE,
        "",
        _md_table(*paired_table(results)),
        "",
    ]
    resampled = paired_resampled_table(results)
    if resampled:
        out += [
            "## Paired differences vs real, tail re-sampled (the verdict's reference)",
            "",
            _md_table(*resampled),
            "",
        ]
    resampling = resampling_table(results)
    if resampling:
        out += ["## Re-sampling baseline", "", resampling[0], "", _md_table(*resampling[1]), ""]
    out += [
        "## Per-class ΔAP vs training prevalence",
        "",
        "![ΔAP vs prevalence](figures/delta_ap_vs_prevalence.png)",
        "",
        "## Per-class metrics (mean over seeds)",
        "",
        _md_table(*class_table(results)),
        "",
    ]
    filt = filter_table(results)
    if filt:
        extractor = results["filter"].get("extractor", "unknown")
        out += ["## Filter summary", "", f"FID/KID on {extractor} features.", "", _md_table(*filt), ""]
    fidelity = fidelity_table(results)
    if fidelity:
        out += ["## Generator fidelity (phantom oracle)", "", FIDELITY_RULE, "", _md_table(*fidelity), ""]
    gate = gate_vs_fidelity(results)
    if gate:
        out += ["## Transfer gate vs oracle fidelity", "", gate[0], "", _md_table(*gate[1]), ""]
    grids = [n for n in figures if n.startswith("grid_")]
    if grids:
        out += ["## Image grids (rows: real, kept synthetic, rejected synthetic)", ""]
        for cls in results.get("grids", {}):
            out += [f"### {cls}", "", f"![{cls}](figures/grid_{report_class_slug(cls)}.png)", ""]
    timings = timings_table(results)
    if timings:
        out += ["## Stage wall times", "", timings[0], "", _md_table(*timings[1]), ""]
    out += ["## Reproduce", ""] + md_provenance(provenance(results))
    return "\n".join(out) + "\n"


def _md_table(header: list[str], rows: list[list[str]]) -> str:
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
