"""The evidence rule (issue #38): a verdict stands only on classes with enough test positives, "helps" needs an
effect of a stated size, and a degenerate bootstrap prints no p-value.

The report-level tests edit the plausible fixture results.json; the collect-level ones run the ablation runner
on fake training stages with the real metrics, on a manifest whose test positives are designed; one runs on the
NIH sample's own split (skipped where ../shared/data is absent).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from ablation_fakes import CLASSES, real_metrics, write_config
from report_fixtures import make_results
from sklearn.metrics import average_precision_score

from synth.ablation import stages
from synth.ablation.config import load_ablation_config
from synth.ablation.evidence import evidence_section, group_evidence, is_degenerate, judged_groups
from synth.ablation.report import render_report
from synth.ablation.results import arm_by_name
from synth.ablation.runner import plan, run_ablation
from synth.errors import UserError
from synth.manifest import label_matrix, write_manifest

REAL_PREPARE = stages.prepare_data


# ---------------------------------------------------------------- the rule itself


def test_group_evidence_splits_judged_and_not_judged_and_skips_unannotated_classes():
    groups = {"A": "head", "B": "tail", "C": "tail", "D": "tail", "E": "medium"}
    positives = {"A": 40, "B": 12, "C": 3, "D": None, "E": 0}
    ev = group_evidence(groups, positives, 10)
    assert ev["tail"] == {"judged": ["B"], "not_judged": {"C": 3}}  # D is not annotated: not scored at all
    assert ev["medium"] == {"judged": [], "not_judged": {"E": 0}} and ev["head"]["judged"] == ["A"]
    # C (3 positives) would move the tail Δ: the verdict's Δ is recomputed over the judged classes only
    assert judged_groups(evidence_section(groups, positives, 10, 0.005)) == {"A": "head", "B": "tail"}
    # a not-judged class without positives is already out of every mean: nothing to recompute
    assert judged_groups(evidence_section(groups, {**positives, "C": 0}, 10, 0.005)) is None


def test_paired_bootstrap_reports_how_many_distinct_values_it_took():
    from classifier.metrics import paired_bootstrap_runs

    rng = np.random.default_rng(0)
    y = (rng.random((60, 2)) < 0.3).astype(float)
    p = rng.random((60, 2))
    groups = {"a": "head", "b": "tail"}
    patients = np.arange(60).astype(str)
    same = paired_bootstrap_runs(y, [p], [p], ["a", "b"], groups, patients, n_boot=200, seed=0)
    assert same["tail_map"]["n_distinct"] == 1 and same["tail_map"]["modal_share"] == 1.0  # every resampled Δ is 0
    other = paired_bootstrap_runs(y, [p], [rng.random((60, 2))], ["a", "b"], groups, patients, n_boot=200, seed=0)
    assert other["tail_map"]["n_distinct"] > 100 and other["tail_map"]["modal_share"] < 0.05
    assert not is_degenerate(other["tail_map"]["n_distinct"], other["tail_map"]["modal_share"])
    # one positive (one patient): left out of ~e^-1 of the resamples, where the class keeps its full-split AP
    y[:, 1] = 0
    y[5, 1] = 1
    one = paired_bootstrap_runs(y, [p], [rng.random((60, 2))], ["a", "b"], groups, patients, n_boot=1000, seed=0)
    assert one["tail_map"]["modal_share"] == pytest.approx(np.exp(-1), abs=0.05)
    assert is_degenerate(one["tail_map"]["n_distinct"], one["tail_map"]["modal_share"])


# ---------------------------------------------------------------- the report's wording


def _results(tmp_path: Path, tail_positives: int, min_effect: float = 0.005) -> tuple[dict, list[str]]:
    results = make_results(tmp_path)
    positives = {c: (tail_positives if g == "tail" else 40) for c, g in results["groups"].items()}
    results["evidence"] = evidence_section(results["groups"], positives, 10, min_effect)
    return results, [c for c, g in results["groups"].items() if g == "tail"]


def _render(tmp_path: Path, results: dict) -> list[str]:
    (tmp_path / "results.json").write_text(json.dumps(results))
    return render_report(tmp_path)["md"].read_text().splitlines()


def _line(md: list[str], start: str) -> str:
    return next(line for line in md if line.startswith(start))


def test_a_tail_without_enough_test_positives_is_not_judged_and_says_why(tmp_path: Path):
    results, tail = _results(tmp_path, tail_positives=3)
    md = _render(tmp_path, results)
    for label in ("+ synthetic, unfiltered", "+ synthetic, filtered", "Synthetic pretrain → real fine-tune"):
        line = _line(md, f"- {label}")
        assert line.startswith(f"- {label}: tail not judged — no tail class has ≥ 10 test positives"), line
        assert f": {len(tail)} classes with at most 3 test positives each (listed in the evidence table)." in line
        assert "For reference only: ΔmAP" in line
        assert "helps" not in line and "hurts" not in line
    assert _line(md, "- Target (").endswith("NOT MET (the tail is not judged).")
    assert f"tail 0 of {len(tail)} class(es) judged" in _line(md, "- Evidence rule (this run's evaluation settings")
    table_row = _line(md, "| tail | 0 of ")  # the evidence table lists every class set aside
    assert f"{tail[0]} (3 test positives)" in table_row and f"{tail[-1]} (3 test positives)" in table_row


def test_helps_needs_the_interval_off_zero_and_the_minimum_effect(tmp_path: Path):
    results, tail = _results(tmp_path, tail_positives=12)
    arm = arm_by_name(results, "synthetic_filtered")
    arm["paired_over_seeds"] = {
        g: {"diff": 0.003, "ci": [0.001, 0.005], "p": 0.002, "run_diffs": [0.003] * 3, "n_distinct": 900}
        for g in ("overall", "head", "medium", "tail")
    }
    line = _line(_render(tmp_path, results), "- + synthetic, filtered")
    assert line.startswith("- + synthetic, filtered shows no clear effect on the tail: ΔmAP +0.003 [+0.001, +0.005]")
    assert f"It stands on {len(tail)} of {len(tail)} tail class(es)." in line

    results["evidence"]["min_effect"] = 0.002  # a stated smaller minimum: the same numbers now count
    md = _render(tmp_path, results)
    assert _line(md, "- + synthetic, filtered").startswith("- + synthetic, filtered helps the tail: ΔmAP +0.003")
    assert "|Δ| ≥ 0.002 (evaluation.min_effect)" in _line(md, "- Evidence rule")


def test_a_degenerate_bootstrap_prints_no_p_value_and_no_verdict(tmp_path: Path):
    results, _ = _results(tmp_path, tail_positives=12)
    arm = arm_by_name(results, "synthetic_pretrain")
    arm["paired_over_seeds"] = {
        g: {"diff": 0.04, "ci": [0.03, 0.05], "p": 0.0, "run_diffs": [0.04] * 3, "n_distinct": 3}
        for g in ("overall", "head", "medium", "tail")
    }
    md = _render(tmp_path, results)
    line = _line(md, "- Synthetic pretrain")
    assert line.startswith(
        "- Synthetic pretrain → real fine-tune: tail not judged — its bootstrap distribution is degenerate."
    )
    assert "+0.040 [+0.030, +0.050], degenerate bootstrap (3 distinct values): no p" in line
    assert "p<0.001" not in line and "*" not in line
    paired_row = _line(md, "| Synthetic pretrain → real fine-tune | +")
    assert "degenerate bootstrap" in paired_row and "p<0.001" not in paired_row


# ---------------------------------------------------------------- the runner: Δ over the judged classes


def _designed_manifest(out: Path) -> Path:
    """30 train / 10 val / 20 test rows. Training prevalence: Atelectasis head, Cardiomegaly medium, the other
    three tail (no training positive). Test positives: Atelectasis 10, Cardiomegaly 12, Pleural Effusion 0,
    Pneumothorax 2, Rib Fracture 12."""
    (out / "images").mkdir(parents=True, exist_ok=True)
    from PIL import Image

    rows = []
    for i in range(60):
        Image.fromarray(np.full((16, 16), i, dtype=np.uint8)).save(out / "images" / f"{i}.png")
        split, k = ("train", i) if i < 30 else ("val", i - 30) if i < 40 else ("test", i - 40)
        labels = {c: 0.0 for c in CLASSES}
        labels["Atelectasis"] = float(k % 2 == 0)
        labels["Cardiomegaly"] = float(k in (3, 7) if split == "train" else k < 12 and split == "test")
        if split == "test":
            labels["Pneumothorax"] = float(k in (0, 1))
            labels["Rib Fracture"] = float(k >= 8)
        rows.append(
            {
                "dicom_id": f"d{i}",
                "subject_id": f"p{i}",
                "study_id": f"s{i}",
                "ViewPosition": "PA",
                "fpath": f"images/{i}.png",
                "split": split,
                "source": "real",
                **labels,
            }
        )
    return write_manifest(pd.DataFrame(rows), out / "manifest.csv")


def test_verdict_delta_is_recomputed_over_the_judged_classes_only(tmp_path: Path, monkeypatch):
    fake = real_metrics(monkeypatch)

    def prepare(cfg, out):
        fake.calls.append("data")
        return _designed_manifest(out)

    monkeypatch.setattr(stages, "prepare_data", prepare)
    cfg = load_ablation_config(write_config(tmp_path, seeds=[0, 1], arms=["real_only", "synthetic_filtered"]))
    results = json.loads((run_ablation(cfg, log=lambda m: None) / "results.json").read_text())
    ev = results["evidence"]
    assert ev["min_test_positives"] == 10 and ev["min_effect"] == 0.005
    assert ev["groups"]["tail"] == {
        "judged": ["Rib Fracture"],
        "not_judged": {"Pleural Effusion": 0, "Pneumothorax": 2},
    }
    assert ev["groups"]["head"]["judged"] == ["Atelectasis"] and ev["groups"]["medium"]["judged"] == ["Cardiomegaly"]

    steps = {s.name: s.folder for s in plan(cfg)}
    test = pd.read_csv(json.loads((steps["data"] / "done.json").read_text())["output"])
    y = label_matrix(test[test["split"] == "test"], results["classes"])
    probs = {(a, s): np.load(steps[f"{a}/seed-{s}"] / "test_probs.npy") for a in cfg.arms for s in cfg.seeds}

    def ap_diff(cls: str, seed: int) -> float:
        j = results["classes"].index(cls)
        base, arm = probs["real_only", seed][:, j], probs["synthetic_filtered", seed][:, j]
        return average_precision_score(y[:, j], arm) - average_precision_score(y[:, j], base)

    arm = arm_by_name(results, "synthetic_filtered")
    judged = arm["judged_paired"]
    assert judged["against"] == "real_only"
    want = np.mean([ap_diff("Rib Fracture", s) for s in (0, 1)])  # Pneumothorax (2 positives) left out
    assert judged["groups"]["tail"]["diff"] == pytest.approx(want, abs=1e-6)
    every = np.mean([(ap_diff("Rib Fracture", s) + ap_diff("Pneumothorax", s)) / 2 for s in (0, 1)])
    assert arm["paired_over_seeds"]["tail"]["diff"] == pytest.approx(every, abs=1e-6)
    assert abs(want - every) > 1e-3  # the two really differ: the test can tell them apart
    md = (cfg.report_dir / "report.md").read_text()
    assert f"ΔmAP {want:+.3f} [" in md
    assert "It stands on 1 of 3 tail class(es); not judged: Pleural Effusion (0 test positives), " in md
    assert "Pneumothorax (2 test positives)." in md


def test_nih_sample_own_split_pneumonia_tail_reads_not_judged(tmp_path: Path, monkeypatch, nih_sample: Path):
    """The issue's case: on the NIH sample's own test split the only tail class, Pneumonia, has 1 positive."""
    fake = real_metrics(monkeypatch)
    monkeypatch.setattr(stages, "prepare_data", REAL_PREPARE)
    path = write_config(
        tmp_path,
        seeds=[0],
        arms=["real_only", "synthetic_filtered"],
        generate__classes=["Pneumonia"],
        data={
            "source": "prepare",
            "format": "nih",
            "labels": str(nih_sample / "Data_Entry_2017_v2020.csv"),
            "images": str(nih_sample / "images"),
            "size": 32,
        },
    )
    report_dir = run_ablation(load_ablation_config(path), log=lambda m: None)
    results = json.loads((report_dir / "results.json").read_text())
    assert results["evidence"]["groups"]["tail"] == {"judged": [], "not_judged": {"Pneumonia": 1}}
    md = (report_dir / "report.md").read_text()
    assert (
        "- + synthetic, filtered: tail not judged — no tail class has ≥ 10 test positives "
        "(evaluation.min_test_positives): Pneumonia (1 test positive). For reference only: ΔmAP"
    ) in md
    assert "helps the tail" not in md and "hurts the tail" not in md
    # one positive: the tail's bootstrap sits on one value whenever that patient is not drawn: no "p<0.001"
    line = next(x for x in md.splitlines() if x.startswith("- + synthetic, filtered"))
    assert "degenerate bootstrap (one value in 3" in line and "p<0.001" not in line
    assert fake.calls[-2:] == ["real_only/0", "synthetic_filtered/0"]


def test_evidence_settings_are_validated(tmp_path: Path):
    for key, value, message in (
        ("evaluation__min_test_positives", 0, "min_test_positives 0 must be >= 1"),
        ("evaluation__min_effect", -0.1, "evaluation.min_effect: -0.1 must be >= 0"),
    ):
        with pytest.raises(UserError, match=message):
            load_ablation_config(write_config(tmp_path, **{key: value}))
