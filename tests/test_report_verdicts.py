"""The report's verdicts: the filter table, the verdict against the re-sampled baseline with harmed classes
named, and the transfer gate against the oracle's fidelity and against what each kept set did."""

from __future__ import annotations

import json
import math
from pathlib import Path

from report_fixtures import make_results

from synth.ablation.report import render_report
from synth.ablation.results import arm_by_name


def test_filter_table_shows_rules_that_flag_without_rejecting():
    """Outliers kept under outlier_rejects: false must still be counted in the report, apart from rejections."""
    from synth.ablation.report.tables import filter_table as _filter_table

    results = {
        "filter": {
            "classes": {
                "Pneumothorax": {
                    "n": 10,
                    "kept": 8,
                    "rejected": {"verifier": 2},
                    "flagged": {"verifier": 2, "outlier": 3, "near_copy": 0},
                }
            }
        }
    }
    header, rows = _filter_table(results)
    assert "flagged: outlier" in header and "flagged: verifier" not in header and "flagged: near_copy" not in header
    assert rows[0][header.index("flagged: outlier")] == "3" and rows[0][header.index("rejected: verifier")] == "2"


def _with_resampled(results: dict, harmed: list[str]) -> dict:
    """Add a real_resampled arm, the filtered arm's comparison with it and its do-no-harm list."""
    import copy

    resampled = copy.deepcopy(arm_by_name(results, "synthetic_unfiltered"))
    resampled.update(
        name="real_resampled",
        label="Real, tail re-sampled",
        harmed=[],
        resampling={
            "threshold": 0.2,
            "rule": "r",
            "n_rows": 1000,
            "n_presented": 1100,
            "n_rows_repeated": 30,
            "per_class": {"Hernia": {"n_pos": 5, "r_class": 4.0, "presented": 20, "mixing_arm": 45}},
        },
    )
    results["arms"].insert(1, resampled)
    results["verdict_baseline"] = "real_resampled"
    for arm in results["arms"]:
        if arm["name"].startswith("synthetic"):
            arm["harmed"] = []
            arm["paired_vs_resampled"] = {
                g: {"diff": 0.01, "ci": [-0.01, 0.03], "p": 0.3, "run_diffs": [0.01, 0.01, 0.01]}
                for g in ("overall", "head", "medium", "tail")
            }
    arm_by_name(results, "synthetic_filtered")["harmed"] = harmed
    arm_by_name(results, "synthetic_filtered")["paired_vs_resampled"]["tail"] = {
        "diff": 0.05,
        "ci": [0.03, 0.07],
        "p": 0.001,
        "run_diffs": [0.04, 0.05, 0.06],
    }
    results["timings"] = {
        "steps": [
            {"step": "generator", "seconds": 3000.0, "cached": True},
            {"step": "real_only/seed-0", "seconds": 200.5, "cached": False},
        ],
        "this_run_seconds": 230.0,
        "all_steps_seconds": 3200.5,
        "rule": "r",
    }
    return results


def test_verdict_is_against_the_resampled_baseline_and_names_harmed_classes(tmp_path: Path):
    results = make_results(tmp_path / "r")
    tail = sorted(c for c, g in results["groups"].items() if g == "tail")
    _with_resampled(results, harmed=[tail[0]])
    (tmp_path / "r" / "results.json").write_text(json.dumps(results))
    md = render_report(tmp_path / "r")["md"].read_text()
    # vs real_resampled +0.050 (the headline), vs real only +0.080 alongside
    assert (
        "- + synthetic, filtered helps the tail vs real, tail re-sampled: ΔmAP +0.050 [+0.030, +0.070], p=0.001* "
        "(vs real only +0.080 [+0.060, +0.100], p≤0.010*;"
    ) in md
    assert "- + synthetic, unfiltered shows no clear effect on the tail vs real, tail re-sampled: ΔmAP +0.010" in md
    assert f"Do no harm: 1 class(es) significantly below real only ({tail[0]})." in md
    assert "Do no harm: 0 class(es) significantly below real only." in md
    # +0.050 clears the 0.05 gain, but a tail class is harmed: not met
    assert "no tail class significantly below real only): NOT MET." in md
    assert "## Paired differences vs real, tail re-sampled (the verdict's reference)" in md
    assert "| Hernia | 5 | 4.00 | 20 | 45 |" in md
    assert (
        "## Stage wall times" in md
        and "| generator | 3000.0 | cached |" in md
        and "| real_only/seed-0 | 200.5 | ran |" in md
    )

    _with_resampled(make_results(tmp_path / "ok"), harmed=[])
    results = _with_resampled(make_results(tmp_path / "ok"), harmed=[])
    (tmp_path / "ok" / "results.json").write_text(json.dumps(results))
    assert "no tail class significantly below real only): MET." in render_report(tmp_path / "ok")["md"].read_text()


def test_filter_table_and_gate_vs_fidelity_with_spearman(tmp_path: Path):
    """The transfer gate's score per class in the filter table, and beside the oracle's fidelity with Spearman's
    rho."""
    results = make_results(tmp_path / "r")
    tail = sorted(c for c, g in results["groups"].items() if g == "tail")[:4]
    aurocs, fidelity = (
        [0.9, 0.7, 0.55, 0.45],
        [0.8, 0.3, 0.5, 0.05],
    )  # ranks 1,2,3,4 vs 1,3,2,4: rho = 1 - 6*2/60 = 0.8
    results["filter"]["classes"] = {
        c: {
            "n": 40,
            "kept": 40 if a > 0.5 else 0,
            "rejected": {} if a > 0.5 else {"no_transfer": 40},
            "transfer": {"judged": True, "passed": a > 0.5, "auroc": a, "ci": [a - 0.05, a + 0.05]},
        }
        for c, a in zip(tail, aurocs)
    }
    results["filter"]["classes"]["Normal"] = {
        "n": 5,
        "kept": 5,
        "rejected": {},
        "transfer": {"judged": False, "passed": True, "auroc": None, "ci": [None, None]},
    }
    results["fidelity"] = {
        "classes": {c: {"oracle_val_ap": 0.9, "real": 0.8, "generated": f} for c, f in zip(tail, fidelity)}
    }
    (tmp_path / "r" / "results.json").write_text(json.dumps(results))
    md = render_report(tmp_path / "r")["md"].read_text()
    assert "| transfer gate AUROC [95% CI] |" in md and "rejected: no_transfer" in md
    assert "A transfer gate pass means the class's set carries class-specific content" in md
    assert f"| {tail[3]} | 40 | 0 | 40 |" in md and "0.450 [0.400, 0.500] dropped" in md and "not judged (kept)" in md
    assert "Gate (real data only) vs oracle fidelity on 4 judgeable tail class(es): Spearman ρ = +0.80." in md
    assert "dropped (dropped: none): MET." in md  # issue #18's bar: rho >= 0.6, the 5 % set dropped, the 80 % set kept
    assert f"| {tail[0]} | 0.900 [0.850, 0.950] | 0.800 | kept |" in md


def test_gate_benefit_ranks_kept_sets_by_what_they_did(tmp_path: Path):
    """Per kept tail class: the gate's AUROC beside the filtered arm's ΔAP vs real only (and the oracle's fidelity),
    with both rank correlations; dropped sets and head classes are left out, and without an oracle only the gate
    is judged."""
    results = make_results(tmp_path / "r")
    a, b, c, d = sorted(x for x, g in results["groups"].items() if g == "tail")[:4]
    head = next(x for x, g in results["groups"].items() if g == "head")
    gate = {a: (0.9, True), b: (0.8, True), c: (0.7, True), d: (0.45, False), head: (0.95, True)}
    results["generated_classes"] = list(gate)
    results["filter"]["classes"] = {
        x: {"n": 40, "kept": 40, "rejected": {}, "transfer": {"judged": True, "passed": kept, "auroc": auroc}}
        for x, (auroc, kept) in gate.items()
    }
    diffs = {a: 0.10, b: 0.02, c: 0.05, d: 0.20, head: 0.30}  # ΔAP ranks a > c > b: rho with the gate = 0.5
    arm_by_name(results, "synthetic_filtered")["per_class_paired"] = {
        x: {"diff": v, "ci": [v - 0.01, v + 0.01]} for x, v in diffs.items()
    }
    results["fidelity"] = {
        "classes": {x: {"oracle_val_ap": 0.9, "generated": f} for x, f in ((a, 0.9), (b, 0.2), (c, 0.6))}
    }
    (tmp_path / "r" / "results.json").write_text(json.dumps(results))
    md = render_report(tmp_path / "r")["md"].read_text()
    assert "## Did the gate see which kept sets helped?" in md
    rhos = "Spearman ρ of ΔAP with the gate's AUROC = +0.50 over 3 class(es); with the oracle's fidelity = +1.00."
    assert rhos in md
    assert f"| {a} | 0.900 | +0.100 [+0.090, +0.110] | 0.900 |" in md
    section = md.split("## Did the gate see")[1].split("\n## ")[0]
    assert d not in section and head not in section  # a dropped set did not train; head classes are not the question

    del results["fidelity"]  # real data: no oracle, the gate alone is judged
    (tmp_path / "r" / "results.json").write_text(json.dumps(results))
    md = render_report(tmp_path / "r")["md"].read_text()
    assert "over 3 class(es). A gate that saw" in md and f"| {a} | 0.900 | +0.100 [+0.090, +0.110] |\n" in md

    results["arms"] = [x for x in results["arms"] if x["name"] != "synthetic_filtered"]
    (tmp_path / "r" / "results.json").write_text(json.dumps(results))
    assert "Did the gate see" not in render_report(tmp_path / "r")["md"].read_text()


def _gain_results(n_pos: dict[str, int], gains: dict[str, dict[str, float]], target: str | None = None) -> dict:
    """A minimal results dict for the gain-by-positives table: real_resampled with AP 0.5 for every class and seed,
    each synthetic arm (``gains``: arm -> class -> ΔAP) at 0.5 + ΔAP ± 0.01 on seeds 0/1 (the seed wobble averages
    out) and, on a seed 2 re-sampling never ran, +0.4 more (it must be left out)."""
    resampled = {
        "name": "real_resampled",
        "seeds": {s: {"per_class": {c: {"ap": 0.5} for c in n_pos}} for s in ("0", "1")},
        "resampling": {"per_class": {c: {"n_pos": n} for c, n in n_pos.items()}},
    }
    arms = [{"name": "real_only", "seeds": resampled["seeds"]}, resampled]
    for name, delta in gains.items():
        seeds = {
            s: {"per_class": {c: {"ap": 0.5 + d + shift} for c, d in delta.items()}}
            for s, shift in (("0", 0.01), ("1", -0.01), ("2", 0.4))
        }
        arms.append({"name": name, "short": name, "seeds": seeds, "paired_vs_resampled": {"tail": {"diff": 0.0}}})
    return {"arms": arms, **({"target": {"arm": target}} if target else {})}


def test_gain_by_positives_bins_means_and_counts():
    """Per bin of real training positives: the classes in it, each arm's mean ΔAP over them (seeds both arms ran)
    and how many gained; an empty bin is skipped, the target arm is the first column, real_only is no column."""
    from synth.ablation.report.tables import gain_by_positives_table

    n_pos = {"A": 3, "B": 8, "C": 12, "D": 25, "E": 300}
    gains = {
        "mix": {"A": 0.04, "B": -0.02, "C": 0.01, "D": 0.03, "E": -0.05},
        "weighted": {"A": 0.02, "B": 0.02, "C": -0.01, "D": -0.03, "E": 0.01},
    }
    header, rows = gain_by_positives_table(_gain_results(n_pos, gains, target="weighted"))
    assert header == [
        "real train positives",
        "classes",
        "weighted (target) ΔAP vs re-sampled",
        "mix ΔAP vs re-sampled",
    ]
    assert rows[:3] == [
        ["< 10", "2", "+0.020 (2/2 > 0)", "+0.010 (1/2 > 0)"],
        ["10–29", "2", "-0.020 (0/2 > 0)", "+0.020 (2/2 > 0)"],
        [">= 100", "1", "+0.010 (1/1 > 0)", "-0.050 (0/1 > 0)"],
    ]
    assert rows[3][:2] == ["fit", "5"]


def test_gain_by_positives_break_even_of_a_falling_line():
    """ΔAP = 0.06 − 0.04·log10(n) crosses 0 at n = 10^1.5 ≈ 32; a rising line, or a falling one that crosses far
    beyond the observed counts, names no break-even."""
    from synth.ablation.report.tables import gain_by_positives_table

    n_pos = {"A": 4, "B": 6, "C": 15, "D": 40, "E": 150}
    falling = {c: 0.06 - 0.04 * math.log10(n) for c, n in n_pos.items()}
    rising = {c: -falling[c] for c in n_pos}
    far = {c: 0.5 - 0.04 * math.log10(n) for c, n in n_pos.items()}  # crosses 0 at 10^12.5
    _, rows = gain_by_positives_table(_gain_results(n_pos, {"falling": falling, "rising": rising, "far": far}))
    assert rows[-1] == [
        "fit",
        "5",
        "slope -0.040 per 10×, break-even ≈ 32",
        "slope +0.040 per 10×, break-even none in range",
        "slope -0.040 per 10×, break-even none in range",
    ]


def test_gain_by_positives_section_only_with_the_resampling_arm(tmp_path: Path):
    """Both pages show the section when real_resampled ran with per-class positives; without it the section is
    absent rather than empty."""
    results = _with_resampled(make_results(tmp_path / "r"), harmed=[])
    (tmp_path / "r" / "results.json").write_text(json.dumps(results))
    paths = render_report(tmp_path / "r")
    title = "## Gain over re-sampling vs real training positives (across the generated classes)"
    md = paths["md"].read_text()
    assert title in md and "this is a correlation across classes" in md
    assert "| < 10 | 1 |" in md.split(title)[1]
    assert "<h2>Gain over re-sampling vs real training positives" in paths["html"].read_text()

    make_results(tmp_path / "none")
    assert "Gain over re-sampling" not in render_report(tmp_path / "none")["md"].read_text()
