"""The report's tables as (header, rows) of strings, shared by the Markdown and the HTML page, and the notes that
say how their numbers were computed."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from synth.ablation.evidence import evidence_of
from synth.ablation.gains import break_even, class_gains, resampled_positives
from synth.ablation.report.formatting import arm_label, arm_short, fmt, fmt_count, fmt_diff, fmt_est, fmt_rho
from synth.ablation.report.verdicts import arm_verdicts
from synth.ablation.results import (
    GATE_MIN_SPEARMAN,
    GATE_MUST_DROP_BELOW,
    GATE_MUST_KEEP_FROM,
    GROUPS,
    PER_CLASS_METRICS,
    arm_by_name,
    gate_agreement,
    gate_benefit,
    group_estimate,
    is_judgeable,
    paired_estimate,
    paired_vs_resampled,
    per_class_mean,
    row_estimate,
    target_arm,
)

SEED_RULE = (
    "Values are the mean over seeds of each seed's test-set estimate; the bracket is the mean over seeds "
    "of each seed's 95% patient-bootstrap interval; ± is the standard deviation across seeds."
)


PAIRED_RULE = (
    "Δ is the mean over seeds of (arm − real only trained with the same seed); its 95% interval and p come "
    "from one paired patient bootstrap that scores every seed on the same resampled patients; "
    "* = the interval excludes 0."
)


RESAMPLED_RULE = (
    "Δ is the mean over seeds of (synthetic arm − real, tail re-sampled trained with the same seed), the same paired "
    "patient bootstrap; * = the interval excludes 0."
)


def group_table(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    header = ["Arm", *[f"{g} mAP" for g in GROUPS], "seeds"]
    rows = []
    for arm in results["arms"]:
        est = [group_estimate(arm, g) for g in GROUPS]
        rows.append([arm_label(arm), *[fmt_est(e) for e in est], str(len(arm["seeds"]))])
    return header, rows


def paired_table(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    header = ["Arm", *[f"Δ {g}" for g in GROUPS]]
    rows = []
    for arm in results["arms"]:
        if arm["name"] != results["baseline"]:
            rows.append([arm_label(arm), *[fmt_diff(paired_estimate(arm, g)) for g in GROUPS]])
    return header, rows


def paired_resampled_table(results: dict[str, Any]) -> tuple[list[str], list[list[str]]] | None:
    rows = []
    for arm in results["arms"]:
        if paired_vs_resampled(arm, "tail") is not None:
            rows.append([arm_label(arm), *[fmt_diff(paired_vs_resampled(arm, g)) for g in GROUPS]])
    return (["Arm", *[f"Δ {g}" for g in GROUPS]], rows) if rows else None


def resampling_table(results: dict[str, Any]) -> tuple[str, tuple[list[str], list[list[str]]]] | None:
    arm = next((a for a in results["arms"] if a.get("resampling")), None)
    if arm is None:
        return None
    r = arm["resampling"]
    note = (
        f"{arm_label(arm)}: real rows only, repeat factors {r.get('rule', '')}; t = {r['threshold']:.4g}, "
        f"{r.get('n_presented')} rows per epoch from {r.get('n_rows')} ({r.get('n_rows_repeated')} repeated)."
    )
    header = [
        "Class",
        "real train positives",
        "r(c)",
        "presented per epoch (resampled)",
        "presented per epoch (mixing arm)",
    ]
    rows = [
        [c, str(v["n_pos"]), fmt(v["r_class"], 2), str(v["presented"]), str(v["mixing_arm"])]
        for c, v in r.get("per_class", {}).items()
    ]
    return note, (header, rows)


GAIN_BY_POSITIVES_TITLE = "Gain over re-sampling vs real training positives (across the generated classes)"

GAIN_BY_POSITIVES_RULE = (
    "Per generated class, ΔAP = the mean over seeds of the arm's test AP − the mean over the same seeds of real, "
    "tail re-sampled's (seeds both ran); classes are binned by their real training positives (the re-sampling "
    "arm's count). Each cell: the mean ΔAP over the bin's classes (how many of them gain). 'fit': the least-squares "
    "slope of ΔAP on log10(positives), per 10× more positives, and the count where the fitted line crosses 0 "
    "(only for a falling line, and only within half the smallest to twice the largest count; at least 3 classes). "
    "Classes differ in difficulty as well as in count, so this is a correlation across classes, not the controlled "
    "experiment that varies the positives of one class; one class's ΔAP is noisy where it has few test positives."
)

GAIN_BINS: tuple[tuple[str, float, float], ...] = (
    ("< 10", 0, 10),
    ("10–29", 10, 30),
    ("30–99", 30, 100),
    (">= 100", 100, math.inf),
)


def gain_by_positives_table(results: dict[str, Any]) -> tuple[list[str], list[list[str]]] | None:
    """Issue #36's question seen across this run's classes: does a synthetic arm's gain over re-sampling shrink as a
    class has more real positives, and where would it reach 0? Only results.json is read, so old runs re-render.
    None without the re-sampling arm or an arm compared with it."""
    resampled, n_pos = resampled_positives(results)
    target = target_arm(results) if results.get("target") else None
    arms = _gain_arms(results, target)
    if not n_pos or not arms:
        return None
    gains = [class_gains(arm, resampled, n_pos) for arm in arms]
    if not any(gains):
        return None
    header = ["real train positives", "classes"]
    header += [f"{arm_short(a)}{' (target)' if a['name'] == target else ''} ΔAP vs re-sampled" for a in arms]
    rows = []
    for label, low, high in GAIN_BINS:
        in_bin = [c for c, n in n_pos.items() if low <= n < high]
        if in_bin:
            rows.append([label, str(len(in_bin)), *[_bin_cell([g[c] for c in in_bin if c in g]) for g in gains]])
    rows.append(["fit", str(len(n_pos)), *[_fit_cell([n_pos[c] for c in g], list(g.values())) for g in gains]])
    return header, rows


def _gain_arms(results: dict[str, Any], target: str | None) -> list[dict[str, Any]]:
    """The arms trained on top of re-sampling (they carry ``paired_vs_resampled``), the pre-registered ``target``
    first so the arm the run is judged by is the first column read."""
    arms = [a for a in results["arms"] if a.get("paired_vs_resampled")]
    return sorted(arms, key=lambda a: a["name"] != target)


def _bin_cell(deltas: list[float]) -> str:
    """A bin's mean ΔAP and how many of its classes gained: a mean alone can hide one large class-level swing."""
    if not deltas:
        return "–"
    return f"{np.mean(deltas):+.3f} ({sum(d > 0 for d in deltas)}/{len(deltas)} > 0)"


def _fit_cell(counts: list[int], deltas: list[float]) -> str:
    """The slope of ΔAP on log10(positives) and the break-even count where the line crosses 0: the count above which
    re-sampling alone would do as well. No break-even is named for a rising line or a crossing far outside the
    observed counts (an extrapolation the classes cannot support)."""
    x = np.log10(np.asarray(counts, dtype=float))
    if len(deltas) < 3 or np.ptp(x) == 0:
        return "–"
    slope, intercept = np.polyfit(x, np.asarray(deltas, dtype=float), 1)
    n_star = break_even(slope, intercept, counts)
    return f"slope {slope:+.3f} per 10×, break-even {fmt_count(n_star)}"


def timings_table(results: dict[str, Any]) -> tuple[str, tuple[list[str], list[list[str]]]] | None:
    t = results.get("timings")
    if not t or not t.get("steps"):
        return None
    note = (
        f"This run: {t.get('this_run_seconds', 0):.0f} s wall; all steps as measured when they ran: "
        f"{t.get('all_steps_seconds', 0):.0f} s. {t.get('rule', '')}"
    )
    rows = [[r["step"], fmt(r.get("seconds"), 1), "cached" if r.get("cached") else "ran"] for r in t["steps"]]
    return note, (["Step", "seconds", "this run"], rows)


def class_table(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    arms = results["arms"]
    header = ["Class", "group", "train prev.", "test pos."]
    for arm in arms:
        header += [f"{arm_short(arm)} {m.upper()}" for m in PER_CLASS_METRICS]
    rows = []
    first = arms[0]
    for cls in sorted(results["classes"], key=lambda c: -results["train_prevalence"].get(c, 0)):
        n_pos = per_class_mean(first, cls, "n_pos")
        row = [
            cls,
            results["groups"].get(cls, ""),
            f"{results['train_prevalence'].get(cls, math.nan):.4f}",
            "" if math.isnan(n_pos) else str(int(n_pos)),
        ]
        for arm in arms:
            row += [fmt(per_class_mean(arm, cls, m)) for m in PER_CLASS_METRICS]
        rows.append(row)
    return header, rows


def filter_table(results: dict[str, Any]) -> tuple[list[str], list[list[str]]] | None:
    filt = results.get("filter")
    if not filt or not filt.get("classes"):
        return None
    reasons = sorted({r for c in filt["classes"].values() for r in c.get("rejected", {})})
    # rules that only report (e.g. outliers when outlier_rejects is false): counted, the images kept
    flagged = {r for c in filt["classes"].values() for r, n in c.get("flagged", {}).items() if n}
    flag_only = sorted(flagged - set(reasons))
    has_oracle = any(c.get("oracle_fidelity") is not None for c in filt["classes"].values())
    has_gate = any(c.get("transfer") for c in filt["classes"].values())
    header = [
        "Class",
        "generated",
        "kept",
        *[f"rejected: {r}" for r in reasons],
        *[f"flagged: {r}" for r in flag_only],
        "FID",
        "FID floor",
        "FID / floor",
        "KID",
    ]
    if has_gate:
        header.append("transfer gate AUROC [95% CI]")
    if has_oracle:
        header.append("oracle fidelity")
    rows = []
    for cls, c in filt["classes"].items():
        fid, floor = c.get("fid"), c.get("fid_floor")
        ratio = fid / floor if fid is not None and floor else math.nan
        fid_txt = fmt(fid, 2) + (f" [{fmt(c['fid_ci'][0], 2)}, {fmt(c['fid_ci'][1], 2)}]" if c.get("fid_ci") else "")
        row = [
            cls,
            str(c.get("n", "")),
            str(c.get("kept", "")),
            *[str(c.get("rejected", {}).get(r, 0)) for r in reasons],
            *[str(c.get("flagged", {}).get(r, 0)) for r in flag_only],
            fid_txt,
            fmt(floor, 2),
            fmt(ratio, 2),
            fmt(c.get("kid"), 4),
        ]
        if has_gate:
            row.append(_gate_cell(c.get("transfer")))
        if has_oracle:
            row.append(fmt(c.get("oracle_fidelity")))
        rows.append(row)
    return header, rows


GATE_MEANING = (
    "A transfer gate pass means the class's set carries class-specific content that ranks real positives above "
    "chance; it does not say how many of its images show the finding (on the phantom, sets the oracle judged 0 % "
    "faithful passed as readily as faithful ones: bench/results/gate_dose_response.json)."
)


def filter_note(results: dict[str, Any]) -> str:
    """The filter summary's caption (both pages): the features FID/KID used, and what a transfer-gate pass means."""
    filt = results.get("filter") or {}
    extractor = filt.get("extractor", "unknown")
    note = f"FID/KID on {extractor} features; the floor is real-vs-real FID at the same sample size."
    if any(c.get("transfer") for c in (filt.get("classes") or {}).values()):
        note += " " + GATE_MEANING
    return note


def _gate_cell(gate: dict[str, Any] | None) -> str:
    if not gate:
        return "–"
    if not gate.get("judged"):
        return "not judged (" + ("kept" if gate.get("passed") else "dropped") + ")"
    ci = gate.get("ci") or [None, None]
    return f"{fmt(gate.get('auroc'))} [{fmt(ci[0])}, {fmt(ci[1])}]" + ("" if gate.get("passed") else " dropped")


def gate_vs_fidelity(results: dict[str, Any]) -> tuple[str, tuple[list[str], list[list[str]]]] | None:
    """Per judgeable tail class: the real-data-only transfer gate's score beside the phantom oracle's fidelity,
    and whether the gate meets issue #18's bar (``synth.ablation.results.gate_agreement``)."""
    agreement = gate_agreement(results)
    if agreement is None:
        return None
    filt = (results.get("filter") or {}).get("classes", {})
    rows = [
        [cls, _gate_cell((filt.get(cls) or {}).get("transfer")), fmt(fidelity), "kept" if kept else "dropped"]
        for cls, _, fidelity, kept in agreement.rows
    ]
    rho = agreement.spearman
    note = (
        f"Gate (real data only) vs oracle fidelity on {len(rows)} judgeable tail class(es): Spearman ρ = "
        + fmt_rho(rho)
        + f". Bar: ρ ≥ {GATE_MIN_SPEARMAN}, every set with fidelity < {GATE_MUST_DROP_BELOW:.0%} dropped "
        + f"(kept: {', '.join(agreement.unfaithful_kept) or 'none'}), none with fidelity ≥ {GATE_MUST_KEEP_FROM:.0%} "
        + f"dropped (dropped: {', '.join(agreement.faithful_dropped) or 'none'}): "
        + ("MET" if agreement.met else "NOT MET")
        + ". The oracle only judges here; it never feeds the gate."
    )
    return note, (["Class", "transfer gate AUROC [95% CI]", "oracle fidelity (generated)", "gate decision"], rows)


def gate_benefit_section(results: dict[str, Any]) -> tuple[str, str, tuple[list[str], list[list[str]]]] | None:
    """Per kept tail class: the gate's score beside what the kept set did to that class's AP (and, on the phantom,
    the oracle's fidelity), with their rank correlations (``synth.ablation.results.gate_benefit``)."""
    benefit = gate_benefit(results)
    if benefit is None:
        return None
    oracle = any(r[3] is not None for r in benefit.rows)
    label = arm_label(arm_by_name(results, benefit.arm))
    rows = []
    for cls, auroc, paired, fidelity in benefit.rows:
        ci = paired.get("ci") or [math.nan, math.nan]
        diff = f"{paired['diff']:+.3f} [{ci[0]:+.3f}, {ci[1]:+.3f}]"
        rows.append([cls, fmt(auroc), diff] + ([fmt(fidelity)] if oracle else []))

    note = (
        f"Per tail class whose set the gate kept: its AP change in '{label}' vs real only (the arm trains on the "
        "real rows plus exactly the kept sets; paired patient bootstrap over seeds on the test rows) beside the "
        f"gate's score. Spearman ρ of ΔAP with the gate's AUROC = {fmt_rho(benefit.spearman_gate)} over "
        f"{len(rows)} class(es)"
        + (f"; with the oracle's fidelity = {fmt_rho(benefit.spearman_fidelity)}" if oracle else "")
        + ". A gate that saw what helps would rank the classes as ΔAP does. The test rows judge the gate here "
        "after the run; nothing in this table feeds a stage, and one class's ΔAP is noisy where it has few test "
        "positives."
    )
    header = ["Class", "transfer gate AUROC", "ΔAP vs real only [95% CI]"] + (["oracle fidelity"] if oracle else [])
    return "Did the gate see which kept sets helped?", note, (header, rows)


def gate_sections(results: dict[str, Any]) -> list[tuple[str, str, tuple[list[str], list[list[str]]]]]:
    """The sections that judge the filter's gate after the run, in page order: both pages show them."""
    benefit = gate_benefit_section(results)
    return ([benefit] if benefit else []) + oracle_sections(results)


FIDELITY_RULE = (
    "Fidelity = share of images in which the phantom oracle (an evaluation-only judge trained on a "
    "separate class-balanced phantom set; nothing it says reaches the filter or the classifiers) detects "
    "the class the image was generated for, at its F1-optimal validation threshold. 'real' is the same "
    "rate on the class's real training positives: the judge's own sensitivity. A class with oracle val "
    "AP < 0.5 cannot be judged."
)


def fidelity_table(results: dict[str, Any]) -> tuple[list[str], list[list[str]]] | None:
    fid = results.get("fidelity")
    if not fid or not fid.get("classes"):
        return None
    header = ["Class", "oracle val AP", "real", "generated", "kept", "rejected", "n real", "n generated"]
    rows = []
    for cls, c in fid["classes"].items():
        judged = is_judgeable(c)
        rows.append(
            [
                cls + ("" if judged else " (not judgeable)"),
                fmt(c.get("oracle_val_ap")),
                *[fmt(c.get(k)) for k in ("real", "generated", "kept", "rejected")],
                str(c.get("n_real", "")),
                str(c.get("n_generated", "")),
            ]
        )
    return header, rows


def oracle_sections(results: dict[str, Any]) -> list[tuple[str, str, tuple[list[str], list[list[str]]]]]:
    """The phantom oracle's sections that have data, as (title, note, table), in page order: both pages show them."""
    sections = []
    fidelity = fidelity_table(results)
    if fidelity:
        sections.append(("Generator fidelity (phantom oracle)", FIDELITY_RULE, fidelity))
    gate = gate_vs_fidelity(results)
    if gate:
        sections.append(("Transfer gate vs oracle fidelity", gate[0], gate[1]))
    return sections


def provenance(results: dict[str, Any]) -> dict[str, Any]:
    return results.get("provenance", {})


def evidence_table(results: dict[str, Any]) -> tuple[str, tuple[list[str], list[list[str]]]]:
    """The evidence rule's note and, per group, the classes its verdicts stand on and those set aside."""
    evidence = evidence_of(results)
    rows = [
        [g, f"{len(ev.judged)} of {ev.n_classes}", ", ".join(ev.judged) or "–", ev.not_judged_text() or "–"]
        for g, ev in evidence.groups.items()
        if ev.n_classes
    ]
    return evidence.rule_text(), (["Group", "classes judged", "judged", "not judged (test positives)"], rows)


def per_class_delta_table(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Per scored class: its test positives and every arm's ΔAP vs real only (paired patient bootstrap)."""
    evidence = evidence_of(results)
    positives = (results.get("evidence") or {}).get("test_positives", {})
    others = [a for a in results["arms"] if a["name"] != results["baseline"]]
    header = ["Class", "group", "test pos.", *[f"{arm_short(a)} ΔAP vs real only" for a in others]]
    rows = []
    for cls in sorted(results["classes"], key=lambda c: -results["train_prevalence"].get(c, 0)):
        if positives.get(cls) is None:
            continue  # not annotated by these rows: listed as not scored instead
        n = int(positives[cls])
        judged = "" if n >= evidence.min_test_positives else " (not judged)"
        cells = []
        for arm in others:
            row = (arm.get("per_class_paired") or {}).get(cls)
            cells.append(fmt_diff(row_estimate(arm, row)) if row and row.get("diff") is not None else "–")
        rows.append([cls, results["groups"].get(cls, ""), f"{n}{judged}", *cells])
    return header, rows


@dataclass(frozen=True)
class ExternalSection:
    """One external test set in the report: its verdict lines, notes and tables (both pages render it)."""

    title: str
    lines: list[str]
    tables: list[tuple[str, str, tuple[list[str], list[list[str]]]]]  # (subtitle, note, table)


def external_view(results: dict[str, Any], ext: dict[str, Any]) -> dict[str, Any]:
    """An external set's entry with the main results' shared keys (classes, groups from the training prevalence,
    baselines), so every table and verdict function reads it as it reads the main results."""
    shared = ("classes", "groups", "train_prevalence", "baseline", "verdict_baseline")
    return {**{k: results[k] for k in shared if k in results}, **ext}


def external_sections(results: dict[str, Any]) -> list[ExternalSection]:
    sections = []
    for ext in results.get("external") or []:
        view = external_view(results, ext)
        ds = ext.get("dataset", {})
        lines = arm_verdicts(view)
        lines.append(
            f"{ds.get('n_test', '?')} images of {ds.get('n_test_patients', '?')} patients from {ext.get('manifest')}; "
            "every arm and seed scored as on the test split (groups from the training prevalence, the same paired "
            "patient bootstrap); predictions cached beside each trained model."
        )
        if ext.get("not_scored"):
            lines.append(f"Not scored (the set does not annotate them): {', '.join(ext['not_scored'])}.")
        if ext.get("no_positives"):
            lines.append(f"Annotated but without a positive here (no AP): {', '.join(ext['no_positives'])}.")
        tables = [("mAP per frequency group", SEED_RULE, group_table(view))]
        tables.append(("Paired differences vs real only", PAIRED_RULE, paired_table(view)))
        resampled = paired_resampled_table(view)
        if resampled:
            tables.append(("Paired differences vs real, tail re-sampled", RESAMPLED_RULE, resampled))
        note, table = evidence_table(view)
        tables.append(("Evidence rule on this set", note, table))
        tables.append(("Per-class ΔAP vs real only", PAIRED_RULE, per_class_delta_table(view)))
        sections.append(ExternalSection(f"External test set: {ext['name']}", lines, tables))
    return sections
