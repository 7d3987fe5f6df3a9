"""Render an ablation's ``results.json`` into ``report.md`` and one self-contained ``report.html``.

The HTML embeds every figure and image grid as a base64 data URI and has no
external references, so it can be mailed or attached to a paper review as a
single file. A tiny inline script records in the DOM how many images failed
to decode (``#render-check[data-broken]``), which the test reads back from
headless Chromium.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path
from typing import Any

from synth.ablation.results import (
    ARM_LABELS,
    GROUPS,
    PER_CLASS_METRICS,
    RESULTS_FILE,
    Estimate,
    arm_by_name,
    group_estimate,
    harmed_classes,
    load_results,
    paired_estimate,
    paired_vs_resampled,
    per_class_mean,
)
from synth.ablation.arms import ARMS, SYNTHETIC_FILTERED
from synth.errors import UserError
from synth.io import write_text_atomic, atomic_path
from synth.taxonomy import report_class_slug

GROUP_COLOURS = {"head": "#1f77b4", "medium": "#ff7f0e", "tail": "#d62728"}
GRID_TILE = 96
GRID_ROWS = ("real", "kept", "rejected")


def render_report(report_dir: str | Path) -> dict[str, Path]:
    """Write report.md, report.html and figures/ next to ``report_dir/results.json``."""
    report_dir = Path(report_dir)
    results = load_results(report_dir / RESULTS_FILE)
    figures = _figures(results, report_dir)
    for name, png in figures.items():
        with atomic_path(report_dir / "figures" / f"{name}.png") as tmp:
            tmp.write_bytes(png)
    md_path, html_path = report_dir / "report.md", report_dir / "report.html"
    write_text_atomic(md_path, _markdown(results, figures))
    write_text_atomic(html_path, _html(results, figures))
    return {"md": md_path, "html": html_path, "results": report_dir / RESULTS_FILE}


# ---------------------------------------------------------------- figures


def _figures(results: dict[str, Any], report_dir: Path) -> dict[str, bytes]:
    import matplotlib

    matplotlib.use("Agg")
    figures = {"group_map": _group_map_plot(results), "delta_ap_vs_prevalence": _delta_ap_plot(results)}
    for cls, rows in results.get("grids", {}).items():
        figures[f"grid_{report_class_slug(cls)}"] = _grid(cls, rows, report_dir)
    return figures


def _group_map_plot(results: dict[str, Any]) -> bytes:
    import matplotlib.pyplot as plt

    arms = results["arms"]
    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=110)
    width = 0.8 / len(arms)
    for i, arm in enumerate(arms):
        est = [group_estimate(arm, g) for g in GROUPS]
        xs = [j + (i - (len(arms) - 1) / 2) * width for j in range(len(GROUPS))]
        yerr = [[max(e.mean - e.ci[0], 0) for e in est], [max(e.ci[1] - e.mean, 0) for e in est]]
        ax.bar(xs, [e.mean for e in est], width, yerr=yerr, capsize=3, label=_label(arm))
    ax.set_xticks(range(len(GROUPS)), [g.capitalize() for g in GROUPS])
    ax.set_ylabel("mAP (test)")
    ax.set_title("mAP by frequency group (mean over seeds, patient-bootstrap 95% CI)", fontsize=9)
    ax.legend(fontsize=7, loc="best")
    return _png(fig)


def _delta_ap_plot(results: dict[str, Any]) -> bytes:
    import matplotlib.pyplot as plt

    baseline = arm_by_name(results, results["baseline"])
    others = [a for a in results["arms"] if a["name"] != results["baseline"]]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    markers = "os^Dv"
    for i, arm in enumerate(others):
        for group, colour in GROUP_COLOURS.items():
            pts = [
                (results["train_prevalence"][c], per_class_mean(arm, c, "ap") - per_class_mean(baseline, c, "ap"))
                for c in results["classes"]
                if results["groups"].get(c) == group and results["train_prevalence"].get(c, 0) > 0
            ]
            pts = [p for p in pts if not math.isnan(p[1])]
            if pts:
                ax.scatter(*zip(*pts), c=colour, marker=markers[i % len(markers)], s=22, alpha=0.8,
                           label=f"{_label(arm)} · {group}")
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("training prevalence (log scale)")
    ax.set_ylabel("ΔAP vs real only")
    ax.set_title("Per-class ΔAP vs training prevalence", fontsize=9)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=6, loc="best")
    else:
        ax.text(0.5, 0.5, "no arm besides real only", transform=ax.transAxes, ha="center")
    return _png(fig)


def _grid(cls: str, rows: dict[str, list[str]], report_dir: Path) -> bytes:
    """One PNG per class: real examples, kept synthetic, rejected synthetic, one row each."""
    from PIL import Image, ImageDraw

    label_w = 80
    n_cols = max((len(rows.get(r, [])) for r in GRID_ROWS), default=0) or 1
    sheet = Image.new("L", (label_w + n_cols * GRID_TILE, len(GRID_ROWS) * GRID_TILE), 255)
    draw = ImageDraw.Draw(sheet)
    for r, row in enumerate(GRID_ROWS):
        draw.text((6, r * GRID_TILE + GRID_TILE // 2 - 6), row, fill=0)
        for c, rel in enumerate(rows.get(row, [])):
            path = Path(rel) if Path(rel).is_absolute() else report_dir / rel
            if not path.exists():
                raise UserError(f"{report_dir / RESULTS_FILE}: grid image {path} for {cls!r} is missing; re-run `synth ablate` to re-export samples")
            with Image.open(path) as im:
                tile = im.convert("L").resize((GRID_TILE - 4, GRID_TILE - 4))
            sheet.paste(tile, (label_w + c * GRID_TILE + 2, r * GRID_TILE + 2))
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    return buf.getvalue()


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


# ---------------------------------------------------------------- tables (shared by md and html)


def _headline(results: dict[str, Any]) -> list[str]:
    """One sentence per non-baseline arm on the tail group: the product's answer."""
    lines = []
    for arm in results["arms"]:
        if arm["name"] == results["baseline"]:
            continue
        tail, head = _verdict_tail(results, arm), paired_estimate(arm, "head")
        verdict = "helps" if tail.excludes_zero and tail.mean > 0 else "hurts" if tail.excludes_zero else "shows no clear effect on"
        against = _verdict_against(results, arm)
        if against:
            line = (f"{_label(arm)} {verdict} the tail vs {against}: ΔmAP {_fmt_diff(tail)} (vs real only "
                    f"{_fmt_diff(paired_estimate(arm, 'tail'))}; head vs real only {_fmt_diff(head)}), {tail.n_seeds} seed(s).")
        else:
            line = f"{_label(arm)} {verdict} the tail: ΔmAP {_fmt_diff(tail)} (head {_fmt_diff(head)}), {tail.n_seeds} seed(s)."
        harmed = harmed_classes(arm)
        if harmed is not None:
            line += (f" Do no harm: {len(harmed)} class(es) significantly below real only"
                     + (f" ({', '.join(harmed)})" if harmed else ""))
            few = arm.get("harm_not_judged") or []
            line += f"; {len(few)} class(es) with < 5 test positives not judged." if few else "."
        lines.append(line)
    for extra in (_tail_evidence(results), _fidelity_summary(results)):
        if extra:
            lines.append(extra)
    target = results.get("target")
    if target and any(a["name"] == SYNTHETIC_FILTERED.name for a in results["arms"]):
        arm = arm_by_name(results, SYNTHETIC_FILTERED.name)
        tail, head = _verdict_tail(results, arm), paired_estimate(arm, "head")
        against = _verdict_against(results, arm)
        harmed_tail = harmed_classes(arm, results["groups"], "tail")
        met = tail.mean >= target["tail_gain"] and tail.ci[0] > 0 and head.mean >= -target["max_head_drop"] \
            and not harmed_tail
        lines.append(
            f"Target (filtered arm: tail ΔmAP{' vs ' + against if against else ''} ≥ +{target['tail_gain']:.2f} with its "
            f"interval above 0, head ΔmAP ≥ -{target['max_head_drop']:.2f}"
            f"{', no tail class significantly below real only' if harmed_tail is not None else ''}): "
            f"{'MET' if met else 'NOT MET'}."
        )
    return lines


def _verdict_against(results: dict[str, Any], arm: dict[str, Any]) -> str | None:
    """The label of the stronger baseline a synthetic arm's verdict is against (None: real only)."""
    ref = results.get("verdict_baseline", results["baseline"])
    if ref == results["baseline"] or paired_vs_resampled(arm, "tail") is None:
        return None
    return ARM_LABELS.get(ref, ref).lower()


def _verdict_tail(results: dict[str, Any], arm: dict[str, Any]) -> Estimate:
    """Tail ΔmAP the verdict rests on: vs real_resampled when it ran (the headline), else vs real_only."""
    vs = paired_vs_resampled(arm, "tail") if _verdict_against(results, arm) else None
    return vs if vs is not None else paired_estimate(arm, "tail")


FEW_TEST_POSITIVES = 10
JUDGEABLE_ORACLE_AP = 0.5  #: below this oracle val AP a class's fidelity is not reported as evidence


def is_judgeable(fidelity_row: dict[str, Any]) -> bool:
    """Whether the oracle is good enough on this class for its fidelity to count."""
    return (fidelity_row.get("oracle_val_ap") or 0) >= JUDGEABLE_ORACLE_AP


def _fidelity_summary(results: dict[str, Any]) -> str | None:
    """Whether the generator drew what it was asked for: the first thing to check when synthetic data does not help."""
    classes = (results.get("fidelity") or {}).get("classes", {})
    judged = {c: v for c, v in classes.items() if is_judgeable(v) and v.get("generated") is not None}
    if not judged:
        return None

    def mean(key: str) -> str:
        vals = [v[key] for v in judged.values() if v.get(key) is not None]
        return f"{100 * sum(vals) / len(vals):.0f}%" if vals else "–"

    return (f"Generator fidelity (phantom oracle, {len(judged)} judgeable class(es)): the prompted finding is detected "
            f"in {mean('generated')} of generated and {mean('kept')} of kept images on average, vs {mean('real')} of "
            "real training positives.")


def _tail_evidence(results: dict[str, Any]) -> str | None:
    """How many test positives the tail verdicts rest on: a CI cannot say that a class with one positive is noisy."""
    baseline = arm_by_name(results, results["baseline"])
    first = next(iter(baseline["seeds"].values()), {})
    n_pos = {c: int(m.get("n_pos") or 0) for c, m in first.get("per_class", {}).items() if results["groups"].get(c) == "tail"}
    scored = {c: n for c, n in n_pos.items() if n > 0}
    if not scored:
        return None
    few = sorted(c for c, n in scored.items() if n < FEW_TEST_POSITIVES)
    line = (f"Tail evidence: {len(scored)} tail class(es) scored on {sum(scored.values())} test positives "
            f"(fewest {min(scored.values())}).")
    if few:
        line += (f" {len(few)} of them have < {FEW_TEST_POSITIVES} positives, where one image moves the AP a lot: "
                 "read the tail verdicts as indicative, not conclusive.")
    return line


def _dataset_line(ds: dict[str, Any]) -> str:
    line = "Dataset: " + ", ".join(f"{k} = {v}" for k, v in ds.items())
    if ds.get("n_heldout"):
        line += (f". The test rows include {ds['n_heldout']} held-out phantom images (new patients from another phantom "
                 "seed, rendered for evaluation only; no model saw them).")
    return line


def _group_table(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    header = ["Arm", *[f"{g} mAP" for g in GROUPS], "seeds"]
    rows = []
    for arm in results["arms"]:
        est = [group_estimate(arm, g) for g in GROUPS]
        rows.append([_label(arm), *[_fmt_est(e) for e in est], str(len(arm["seeds"]))])
    return header, rows


def _paired_table(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    header = ["Arm", *[f"Δ {g}" for g in GROUPS]]
    rows = []
    for arm in results["arms"]:
        if arm["name"] != results["baseline"]:
            rows.append([_label(arm), *[_fmt_diff(paired_estimate(arm, g)) for g in GROUPS]])
    return header, rows


def _paired_resampled_table(results: dict[str, Any]) -> tuple[list[str], list[list[str]]] | None:
    rows = []
    for arm in results["arms"]:
        if paired_vs_resampled(arm, "tail") is not None:
            rows.append([_label(arm), *[_fmt_diff(paired_vs_resampled(arm, g)) for g in GROUPS]])
    return (["Arm", *[f"Δ {g}" for g in GROUPS]], rows) if rows else None


def _resampling_table(results: dict[str, Any]) -> tuple[str, tuple[list[str], list[list[str]]]] | None:
    arm = next((a for a in results["arms"] if a.get("resampling")), None)
    if arm is None:
        return None
    r = arm["resampling"]
    note = (f"{_label(arm)}: real rows only, repeat factors {r.get('rule', '')}; t = {r['threshold']:.4g}, "
            f"{r.get('n_presented')} rows per epoch from {r.get('n_rows')} ({r.get('n_rows_repeated')} repeated).")
    header = ["Class", "real train positives", "r(c)", "presented per epoch (resampled)", "presented per epoch (mixing arm)"]
    rows = [[c, str(v["n_pos"]), _fmt(v["r_class"], 2), str(v["presented"]), str(v["mixing_arm"])]
            for c, v in r.get("per_class", {}).items()]
    return note, (header, rows)


def _timings_table(results: dict[str, Any]) -> tuple[str, tuple[list[str], list[list[str]]]] | None:
    t = results.get("timings")
    if not t or not t.get("steps"):
        return None
    note = (f"This run: {t.get('this_run_seconds', 0):.0f} s wall; all steps as measured when they ran: "
            f"{t.get('all_steps_seconds', 0):.0f} s. {t.get('rule', '')}")
    rows = [[r["step"], _fmt(r.get("seconds"), 1), "cached" if r.get("cached") else "ran"] for r in t["steps"]]
    return note, (["Step", "seconds", "this run"], rows)


def _class_table(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    arms = results["arms"]
    header = ["Class", "group", "train prev.", "test pos."]
    for arm in arms:
        header += [f"{_short(arm)} {m.upper()}" for m in PER_CLASS_METRICS]
    rows = []
    first = arms[0]
    for cls in sorted(results["classes"], key=lambda c: -results["train_prevalence"].get(c, 0)):
        n_pos = per_class_mean(first, cls, "n_pos")
        row = [cls, results["groups"].get(cls, ""), f"{results['train_prevalence'].get(cls, math.nan):.4f}",
               "" if math.isnan(n_pos) else str(int(n_pos))]
        for arm in arms:
            row += [_fmt(per_class_mean(arm, cls, m)) for m in PER_CLASS_METRICS]
        rows.append(row)
    return header, rows


def _filter_table(results: dict[str, Any]) -> tuple[list[str], list[list[str]]] | None:
    filt = results.get("filter")
    if not filt or not filt.get("classes"):
        return None
    reasons = sorted({r for c in filt["classes"].values() for r in c.get("rejected", {})})
    # rules that only report (e.g. outliers when outlier_rejects is false): counted, the images kept
    flag_only = sorted({r for c in filt["classes"].values() for r, n in c.get("flagged", {}).items() if n} - set(reasons))
    has_oracle = any(c.get("oracle_fidelity") is not None for c in filt["classes"].values())
    has_gate = any(c.get("transfer") for c in filt["classes"].values())
    header = ["Class", "generated", "kept", *[f"rejected: {r}" for r in reasons], *[f"flagged: {r}" for r in flag_only],
              "FID", "FID floor", "FID / floor", "KID"]
    if has_gate:
        header.append("transfer gate AUROC [95% CI]")
    if has_oracle:
        header.append("oracle fidelity")
    rows = []
    for cls, c in filt["classes"].items():
        fid, floor = c.get("fid"), c.get("fid_floor")
        ratio = fid / floor if fid is not None and floor else math.nan
        fid_txt = _fmt(fid, 2) + (f" [{_fmt(c['fid_ci'][0], 2)}, {_fmt(c['fid_ci'][1], 2)}]" if c.get("fid_ci") else "")
        row = [cls, str(c.get("n", "")), str(c.get("kept", "")), *[str(c.get("rejected", {}).get(r, 0)) for r in reasons],
               *[str(c.get("flagged", {}).get(r, 0)) for r in flag_only],
               fid_txt, _fmt(floor, 2), _fmt(ratio, 2), _fmt(c.get("kid"), 4)]
        if has_gate:
            row.append(_gate_cell(c.get("transfer")))
        if has_oracle:
            row.append(_fmt(c.get("oracle_fidelity")))
        rows.append(row)
    return header, rows


def _gate_cell(gate: dict[str, Any] | None) -> str:
    if not gate:
        return "–"
    if not gate.get("judged"):
        return "not judged (" + ("kept" if gate.get("passed") else "dropped") + ")"
    ci = gate.get("ci") or [None, None]
    return f"{_fmt(gate.get('auroc'))} [{_fmt(ci[0])}, {_fmt(ci[1])}]" + ("" if gate.get("passed") else " dropped")


def _gate_vs_fidelity(results: dict[str, Any]) -> tuple[str, tuple[list[str], list[list[str]]]] | None:
    """Per judgeable tail class: the real-data-only transfer gate's score beside the phantom oracle's fidelity."""
    filt = (results.get("filter") or {}).get("classes", {})
    fid = (results.get("fidelity") or {}).get("classes", {})
    rows, pairs = [], []
    for cls, f in fid.items():
        gate = (filt.get(cls) or {}).get("transfer") or {}
        if results["groups"].get(cls) != "tail" or not is_judgeable(f) or f.get("generated") is None or not gate.get("judged"):
            continue
        pairs.append((gate["auroc"], f["generated"]))
        rows.append([cls, _gate_cell(gate), _fmt(f["generated"]), "kept" if gate.get("passed") else "dropped"])
    if not rows:
        return None
    rho = _spearman([p[0] for p in pairs], [p[1] for p in pairs]) if len(pairs) >= 3 else None
    note = (f"Gate (real data only) vs oracle fidelity on {len(rows)} judgeable tail class(es): Spearman ρ = "
            + (f"{rho:+.2f}" if rho is not None else "– (fewer than 3 classes)")
            + ". The oracle only judges here; it never feeds the gate.")
    return note, (["Class", "transfer gate AUROC [95% CI]", "oracle fidelity (generated)", "gate decision"], rows)


def _spearman(x: list[float], y: list[float]) -> float | None:
    from scipy.stats import spearmanr

    rho = spearmanr(x, y).statistic
    return None if rho is None or math.isnan(rho) else float(rho)


_FIDELITY_RULE = ("Fidelity = share of images in which the phantom oracle (an evaluation-only judge trained on a separate "
                  "class-balanced phantom set; nothing it says reaches the filter or the classifiers) detects the class the "
                  "image was generated for, at its F1-optimal validation threshold. 'real' is the same rate on the class's "
                  "real training positives: the judge's own sensitivity. A class with oracle val AP < 0.5 cannot be judged.")


def _fidelity_table(results: dict[str, Any]) -> tuple[list[str], list[list[str]]] | None:
    fid = results.get("fidelity")
    if not fid or not fid.get("classes"):
        return None
    header = ["Class", "oracle val AP", "real", "generated", "kept", "rejected", "n real", "n generated"]
    rows = []
    for cls, c in fid["classes"].items():
        judged = is_judgeable(c)
        rows.append([cls + ("" if judged else " (not judgeable)"), _fmt(c.get("oracle_val_ap")),
                     *[_fmt(c.get(k)) for k in ("real", "generated", "kept", "rejected")],
                     str(c.get("n_real", "")), str(c.get("n_generated", ""))])
    return header, rows


def _provenance(results: dict[str, Any]) -> dict[str, Any]:
    return results.get("provenance", {})


# ---------------------------------------------------------------- markdown


def _markdown(results: dict[str, Any], figures: dict[str, bytes]) -> str:
    ds = results.get("dataset", {})
    out = [f"# Ablation report: {results['name']}", "", f"_{results.get('question', 'Does synthetic tail data help, where, and by how much?')}_", ""]
    out += [f"- {line}" for line in _headline(results)] + [""]
    if ds:
        out += [_dataset_line(ds), ""]
    out += ["## mAP per frequency group", "", _SEED_RULE, "", _md_table(*_group_table(results)), "",
            "![mAP by group](figures/group_map.png)", "",
            "## Paired differences vs real only (paired patient bootstrap on the same test set)", "",
            _PAIRED_RULE, "", _md_table(*_paired_table(results)), ""]
    resampled = _paired_resampled_table(results)
    if resampled:
        out += ["## Paired differences vs real, tail re-sampled (the verdict's reference)", "", _md_table(*resampled), ""]
    resampling = _resampling_table(results)
    if resampling:
        out += ["## Re-sampling baseline", "", resampling[0], "", _md_table(*resampling[1]), ""]
    out += ["## Per-class ΔAP vs training prevalence", "", "![ΔAP vs prevalence](figures/delta_ap_vs_prevalence.png)", "",
            "## Per-class metrics (mean over seeds)", "", _md_table(*_class_table(results)), ""]
    filt = _filter_table(results)
    if filt:
        out += ["## Filter summary", "", f"FID/KID on {results['filter'].get('extractor', 'unknown')} features.", "", _md_table(*filt), ""]
    fidelity = _fidelity_table(results)
    if fidelity:
        out += ["## Generator fidelity (phantom oracle)", "", _FIDELITY_RULE, "", _md_table(*fidelity), ""]
    gate = _gate_vs_fidelity(results)
    if gate:
        out += ["## Transfer gate vs oracle fidelity", "", gate[0], "", _md_table(*gate[1]), ""]
    grids = [n for n in figures if n.startswith("grid_")]
    if grids:
        out += ["## Image grids (rows: real, kept synthetic, rejected synthetic)", ""]
        for cls in results.get("grids", {}):
            out += [f"### {cls}", "", f"![{cls}](figures/grid_{report_class_slug(cls)}.png)", ""]
    timings = _timings_table(results)
    if timings:
        out += ["## Stage wall times", "", timings[0], "", _md_table(*timings[1]), ""]
    out += ["## Reproduce", ""] + _md_provenance(_provenance(results))
    return "\n".join(out) + "\n"


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(map(esc, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(esc, r)) + " |" for r in rows]
    return "\n".join(lines)


def _md_provenance(prov: dict[str, Any]) -> list[str]:
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


# ---------------------------------------------------------------- html

_SEED_RULE = (
    "Values are the mean over seeds of each seed's test-set estimate; the bracket is the mean over seeds "
    "of each seed's 95% patient-bootstrap interval; ± is the standard deviation across seeds."
)
_PAIRED_RULE = (
    "Δ is the mean over seeds of (arm − real only trained with the same seed); its 95% interval and p come "
    "from one paired patient bootstrap that scores every seed on the same resampled patients; "
    "* = the interval excludes 0."
)

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
"""

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


def _html(results: dict[str, Any], figures: dict[str, bytes]) -> str:
    e = html.escape
    ds = results.get("dataset", {})
    body = [f"<h1>Ablation report: {e(results['name'])}</h1>",
            f"<p><em>{e(results.get('question', 'Does synthetic tail data help, where, and by how much?'))}</em></p>",
            "<ul class='headline'>" + "".join(f"<li>{e(l)}</li>" for l in _headline(results)) + "</ul>"]
    if ds:
        body.append("<p class='note'>" + e(_dataset_line(ds)) + "</p>")
    body += ["<h2>mAP per frequency group</h2>", f"<p class='note'>{e(_SEED_RULE)}</p>", _html_table(*_group_table(results)),
             _img(figures["group_map"], "mAP by frequency group"),
             "<h2>Paired differences vs real only</h2>",
             f"<p class='note'>{e(_PAIRED_RULE)} Green = the interval excludes 0.</p>",
             _html_table(*_paired_table(results), highlight=True)]
    resampled = _paired_resampled_table(results)
    if resampled:
        body += ["<h2>Paired differences vs real, tail re-sampled (the verdict's reference)</h2>",
                 _html_table(*resampled, highlight=True)]
    resampling = _resampling_table(results)
    if resampling:
        body += ["<h2>Re-sampling baseline</h2>", f"<p class='note'>{e(resampling[0])}</p>", _html_table(*resampling[1])]
    body += ["<h2>Per-class ΔAP vs training prevalence</h2>", _img(figures["delta_ap_vs_prevalence"], "Per-class delta AP"),
             "<h2>Per-class metrics (mean over seeds)</h2>", _html_table(*_class_table(results))]
    filt = _filter_table(results)
    if filt:
        body += ["<h2>Filter summary</h2>", f"<p class='note'>FID/KID on {e(results['filter'].get('extractor', 'unknown'))} features; "
                 "the floor is real-vs-real FID at the same sample size.</p>", _html_table(*filt)]
    fidelity = _fidelity_table(results)
    if fidelity:
        body += ["<h2>Generator fidelity (phantom oracle)</h2>", f"<p class='note'>{e(_FIDELITY_RULE)}</p>", _html_table(*fidelity)]
    gate = _gate_vs_fidelity(results)
    if gate:
        body += ["<h2>Transfer gate vs oracle fidelity</h2>", f"<p class='note'>{e(gate[0])}</p>", _html_table(*gate[1])]
    if results.get("grids"):
        body.append("<h2>Image grids</h2><p class='note'>Rows: real examples, kept synthetic, rejected synthetic.</p>")
        for cls in results["grids"]:
            body += [f"<h3>{e(cls)}</h3>", _img(figures[f"grid_{report_class_slug(cls)}"], f"{cls} grid")]
    timings = _timings_table(results)
    if timings:
        body += ["<h2>Stage wall times</h2>", f"<p class='note'>{e(timings[0])}</p>", _html_table(*timings[1])]
    body += ["<h2>Reproduce</h2>", _html_provenance(_provenance(results))]
    return ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<title>Ablation report: {e(results['name'])}</title><style>{_CSS}</style></head><body>\n"
            + "\n".join(body) + _CHECK_SCRIPT + "</body></html>\n")


def _html_table(header: list[str], rows: list[list[str]], highlight: bool = False) -> str:
    e = html.escape
    out = ["<div class='scroll'><table><thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr></thead><tbody>"]
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            cls = " class='sig'" if highlight and i > 0 and cell.endswith("*") else ""
            cells.append(f"<td{cls}>{e(cell)}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    return "".join(out) + "</tbody></table></div>"


def _html_provenance(prov: dict[str, Any]) -> str:
    return "<pre>" + html.escape("\n".join(_md_provenance(prov)).replace("```bash\n", "").replace("```json\n", "").replace("```", "")) + "</pre>"


def _img(png: bytes, alt: str) -> str:
    return f"<p><img alt='{html.escape(alt)}' src='data:image/png;base64,{base64.b64encode(png).decode()}'></p>"


# ---------------------------------------------------------------- formatting


def _label(arm: dict[str, Any]) -> str:
    return arm.get("label") or ARM_LABELS.get(arm["name"], arm["name"])


def _short(arm: dict[str, Any]) -> str:
    return ARMS[arm["name"]].short if arm["name"] in ARMS else arm["name"]


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def _fmt_est(est: Estimate) -> str:
    if est.n_seeds == 0:
        return "–"
    return f"{est.mean:.3f} ± {est.std:.3f} [{est.ci[0]:.3f}, {est.ci[1]:.3f}]"


def _fmt_diff(est: Estimate) -> str:
    """Signed difference with interval; a trailing * marks an interval that excludes 0."""
    if est.n_seeds == 0:
        return "–"
    p = "" if est.p is None else ", p<0.001" if est.p < 0.001 else f", p{'≤' if est.p_is_bound else '='}{est.p:.3f}"
    return f"{est.mean:+.3f} [{est.ci[0]:+.3f}, {est.ci[1]:+.3f}]{p}" + ("*" if est.excludes_zero else "")
