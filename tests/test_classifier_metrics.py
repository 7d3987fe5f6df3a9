"""Classifier metrics and losses: AP/AUROC/F1 vs scikit-learn, the patient bootstrap, ASL by hand."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from classifier import metrics
from classifier.losses import AsymmetricLoss, MaskedBCE, class_weights_from_prevalence

# ---------------------------------------------------------------- metrics


def _fixed(seed: int = 0, n: int = 120, c: int = 4):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, c)) < [0.4, 0.2, 0.1, 0.05]).astype(np.float64)
    p = np.clip(0.3 * y + rng.random((n, c)) * 0.7, 0, 1)
    p[:20] = np.round(p[:20], 1)  # ties
    return y, p


def test_metrics_equal_sklearn():
    from sklearn.metrics import average_precision_score, f1_score, recall_score, roc_auc_score

    y, p = _fixed()
    classes = ["a", "b", "c", "d"]
    ev = metrics.evaluate(y, p, classes, {}, n_boot=0)
    for j, c in enumerate(classes):
        m = ev["per_class"][c]
        assert m["ap"] == pytest.approx(average_precision_score(y[:, j], p[:, j]), abs=1e-6)
        assert m["auroc"] == pytest.approx(roc_auc_score(y[:, j], p[:, j]), abs=1e-6)
        assert m["f1"] == pytest.approx(f1_score(y[:, j], p[:, j] > 0.5), abs=1e-6)
        assert m["fnr"] == pytest.approx(1 - recall_score(y[:, j], p[:, j] > 0.5), abs=1e-6)
        assert m["n_pos"] == int(y[:, j].sum())
    assert ev["map"] == pytest.approx(np.mean([average_precision_score(y[:, j], p[:, j]) for j in range(4)]), abs=1e-6)
    # the bootstrap's vectorised AP is the same AP, also with duplicate rows (integer weights)
    w = np.random.default_rng(1).integers(0, 3, size=(3, len(y))).astype(float)
    for j in range(4):
        fast = metrics.weighted_ap(y[:, j], p[:, j], w)
        for b in range(3):
            assert fast[b] == pytest.approx(average_precision_score(y[:, j], p[:, j], sample_weight=w[b]), abs=1e-9)


def test_patient_level_resampled_ap_equals_the_row_weighted_ap():
    """The bootstrap's sparse patient-level AP is the row-weighted AP (ties, repeated patients, empty resamples)."""
    rng = np.random.default_rng(3)
    for trial in range(25):
        n = int(rng.integers(5, 300))
        y = (rng.random(n) < rng.uniform(0.01, 0.5)).astype(float)
        y[0] = 1.0
        p = np.round(rng.random(n), int(rng.integers(1, 3)))  # one or two decimals: many ties
        resamples = metrics.patient_resamples(rng.integers(0, max(1, n // 3), n), 40, seed=trial)
        reference = metrics.weighted_ap(y, p, resamples.row_weights())
        np.testing.assert_allclose(
            metrics.resampled_ap(y, p, resamples.codes, resamples.counts), reference, rtol=1e-12, atol=1e-12
        )


def test_class_without_positives_is_reported_and_excluded():
    y, p = _fixed()
    y[:, 3] = 0.0  # no positives in this split
    y[:10, 1] = np.nan  # not annotated: dropped for that class only
    classes = ["a", "b", "c", "d"]
    groups = {"a": "head", "b": "medium", "c": "tail", "d": "tail"}
    ev = metrics.evaluate(y, p, classes, groups, patient_ids=np.arange(len(y)) // 2, n_boot=50, seed=0)
    assert ev["per_class"]["d"]["n_pos"] == 0 and ev["per_class"]["d"]["ap"] is None
    assert ev["classes_without_positives"] == ["d"]
    aps = [ev["per_class"][c]["ap"] for c in "abc"]
    assert ev["map"] == pytest.approx(np.mean(aps))  # not (sum + 0) / 4
    assert ev["tail_map"] == pytest.approx(ev["per_class"]["c"]["ap"])
    assert ev["per_class"]["b"]["n"] == len(y) - 10
    lo, hi = ev["ci"]["map"]
    assert lo <= ev["map"] <= hi


def test_macro_ap_for_model_selection_skips_classes_without_positives_and_unannotated_rows():
    """``macro_ap`` (best epoch, ensemble weights, val_map) follows the same rules as ``evaluate``'s ``map``.

    A class with no positive in val has no AP (not 0), and NaN cells are dropped
    for that class only (not read as negatives).
    """
    from sklearn.metrics import average_precision_score

    y, p = _fixed(seed=2, n=150)
    y[:, 3] = 0.0  # no positives in val
    y[:30, 1] = np.nan  # not annotated for class b
    p[:30, 1] = 1.0  # ...and scored highest: read as negatives they would pull b's AP down
    expected = np.mean([average_precision_score(y[~np.isnan(y[:, j]), j], p[~np.isnan(y[:, j]), j]) for j in range(3)])
    assert metrics.macro_ap(y, p) == pytest.approx(expected, abs=1e-9)
    assert metrics.macro_ap(y, p) == pytest.approx(
        metrics.evaluate(y, p, list("abcd"), {}, n_boot=0)["map"], abs=1e-6
    )  # torchmetrics: float32
    assert metrics.macro_ap(np.zeros((5, 2)), np.random.default_rng(0).random((5, 2))) is None  # nothing to score


def _independent_boot_aps(y: np.ndarray, p: np.ndarray, patients: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """scikit-learn AP of one class under the same patient resamples (row weight = times its patient was drawn)."""
    from sklearn.metrics import average_precision_score

    w = metrics.patient_resamples(patients, n_boot, seed).row_weights()
    assert all((w[b] * y).sum() > 0 for b in range(n_boot))  # every resample holds a positive (no fallback involved)
    return np.array([average_precision_score(y, p, sample_weight=w[b]) for b in range(n_boot)])


def test_interval_and_p_value_follow_their_definitions():
    """95 % interval = the 2.5 / 97.5 percentiles of the patient-resampled mAP; paired p = twice the smaller share of
    resampled differences on either side of 0 — both recomputed here independently with scikit-learn's AP."""
    rng = np.random.default_rng(4)
    n = 160
    y = (rng.random(n) < 0.3).astype(float)
    base = np.clip(0.25 * y + 0.75 * rng.random(n), 0, 1)
    arm = np.clip(base + 0.01 * (y - 0.5) + 0.05 * rng.standard_normal(n), 0, 1)  # a small, uncertain gain (p ~0.16)
    patients = np.arange(n) // 2
    n_boot, seed = 300, 4
    boot_base = _independent_boot_aps(y, base, patients, n_boot, seed)
    ev = metrics.evaluate(
        y[:, None], base[:, None], ["a"], {"a": "head"}, patient_ids=patients, n_boot=n_boot, seed=seed
    )
    assert ev["ci"]["map"] == pytest.approx(tuple(np.percentile(boot_base, [2.5, 97.5])), abs=1e-9)

    diffs = _independent_boot_aps(y, arm, patients, n_boot, seed) - boot_base
    expected_p = min(1.0, 2 * min(np.mean(diffs <= 0), np.mean(diffs >= 0)))
    assert 0.02 < expected_p < 0.9  # the data make p informative: neither 0 nor 1
    pb = metrics.paired_bootstrap(
        y[:, None], base[:, None], arm[:, None], ["a"], {"a": "head"}, patients, n_boot=n_boot, seed=seed
    )
    assert pb["map"]["p"] == pytest.approx(expected_p, abs=1e-9)
    assert pb["map"]["ci"] == pytest.approx(tuple(np.percentile(diffs, [2.5, 97.5])), abs=1e-9)


def test_bootstrap_resamples_patients_and_pairs_runs():
    patients = np.array(["p1", "p1", "p2", "p3", "p3", "p3"])
    w = metrics.patient_weights(patients, 200, seed=0)
    assert (w[:, 0] == w[:, 1]).all() and (w[:, 3] == w[:, 5]).all()  # a patient's images move together
    r = metrics.patient_resamples(patients, 200, seed=0)
    assert (r.counts.sum(1) == 3).all()  # each resample draws as many PATIENTS as the split has (not rows)
    assert (r.counts == 0).any() and (r.counts >= 2).any()  # with replacement
    np.testing.assert_array_equal(w, r.counts[:, [0, 0, 1, 2, 2, 2]])  # an image weighs what its patient was drawn
    assert len({tuple(row) for row in w}) > 5  # resamples differ
    y, p = _fixed(n=200)
    classes, groups = ["a", "b", "c", "d"], {"a": "head", "b": "head", "c": "medium", "d": "tail"}
    pats = np.arange(200) // 3
    same = metrics.paired_bootstrap(y, p, p, classes, groups, pats, n_boot=100, seed=0)
    assert same["map"]["diff"] == 0 and same["map"]["ci"] == (0.0, 0.0)
    better = np.clip(p + 0.3 * (y - 0.5), 0, 1)
    pb = metrics.paired_bootstrap(y, p, better, classes, groups, pats, n_boot=200, seed=0)
    assert pb["map"]["diff"] > 0 and pb["map"]["ci"][0] > 0 and pb["map"]["p"] < 0.05
    assert set(pb) == {"map", "head_map", "medium_map", "tail_map"}


def test_paired_bootstrap_over_seeds_is_one_consistent_bootstrap():
    """Seed-averaged Δ with one joint bootstrap: its interval and p agree, and one run equals the single-run API."""
    y, p = _fixed(n=240)
    classes, groups = ["a", "b", "c", "d"], {"a": "head", "b": "head", "c": "medium", "d": "tail"}
    pats = np.arange(240) // 2
    rng = np.random.default_rng(1)
    bases = [np.clip(p + 0.05 * rng.standard_normal(p.shape), 0, 1) for _ in range(3)]
    arms = [np.clip(b + g * (y - 0.5), 0, 1) for b, g in zip(bases, (0.02, 0.0, 0.25))]  # seeds disagree
    pooled = metrics.paired_bootstrap_runs(y, bases, arms, classes, groups, pats, n_boot=300, seed=0)
    single = [
        metrics.paired_bootstrap(y, b, a, classes, groups, pats, n_boot=300, seed=0) for b, a in zip(bases, arms)
    ]
    for key in ("map", "head_map", "medium_map", "tail_map"):
        assert pooled[key]["diff"] == pytest.approx(np.mean([s[key]["diff"] for s in single]))
        lo, hi = pooled[key]["ci"]
        assert lo <= pooled[key]["diff"] <= hi
        assert (lo > 0 or hi < 0) == (pooled[key]["p"] < 0.05), (key, pooled[key])
    one = metrics.paired_bootstrap_runs(y, bases[:1], arms[:1], classes, groups, pats, n_boot=300, seed=0)
    assert one == single[0]
    with pytest.raises(ValueError, match="matching runs"):
        metrics.paired_bootstrap_runs(y, bases, arms[:2], classes, groups, pats)


def test_bootstrap_interval_covers_estimate_when_rare_positives_drop_out():
    """Tail classes with one positive patient vanish from ~37% of resamples; the interval must not drift away."""
    rng = np.random.default_rng(0)
    n, rare = 400, 8
    y = np.zeros((n, 1 + rare))
    y[:, 0] = rng.random(n) < 0.3
    p = np.clip(0.6 * y + 0.4 * rng.random(y.shape), 0, 1)  # the head class is easy
    for j in range(1, 1 + rare):  # each rare class: one positive, ranked in the middle (low AP)
        y[rng.integers(n), j] = 1
        p[:, j] = rng.random(n)
    classes = ["head"] + [f"tail{j}" for j in range(rare)]
    groups = {"head": "head", **{c: "tail" for c in classes[1:]}}
    out = metrics.evaluate(y, p, classes, groups, patient_ids=np.arange(n), n_boot=400, seed=0)
    for key in ("map", "tail_map"):
        lo, hi = out["ci"][key]
        assert lo <= out[key] <= hi, (key, out[key], (lo, hi))


def test_submission_csv_has_40_columns(tmp_path: Path):
    from synth.taxonomy import CXR_LT_CLASSES

    missing = metrics.write_submission(
        tmp_path / "s.csv", ["x1", "x2"], np.array([[0.1, 0.9], [0.5, 0.2]]), ["Edema", "Mass"]
    )
    df = pd.read_csv(tmp_path / "s.csv")
    assert list(df.columns) == ["dicom_id", *CXR_LT_CLASSES]
    assert df.loc[0, "Mass"] == pytest.approx(0.9) and len(missing) == 38


# ---------------------------------------------------------------- losses


def test_asl_matches_hand_computation_and_ignores_nan():
    logits = torch.tensor([[0.0, 2.0, -1.0]])
    labels = torch.tensor([[1.0, 0.0, float("nan")]])
    loss = AsymmetricLoss(gamma_neg=4, gamma_pos=1, clip=0.05)(logits, labels)
    # positive cell: p = 0.5 -> -(1-p)^1 log p ; negative cell: p_m = sigmoid(2) - 0.05 -> -p_m^4 log(1-p_m); NaN cell:
    # no loss
    p_neg = 1 / (1 + math.exp(-2.0)) - 0.05
    expected = (-(0.5) * math.log(0.5) - p_neg**4 * math.log(1 - p_neg)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    # a very easy negative (p < clip) costs exactly nothing
    assert AsymmetricLoss(clip=0.05)(torch.tensor([[-5.0]]), torch.tensor([[0.0]])).item() == 0.0
    logits.requires_grad_(True)
    AsymmetricLoss()(logits, labels).backward()
    assert torch.isfinite(logits.grad).all() and logits.grad[0, 2] == 0
    # class weights scale each class's term
    w = torch.tensor([2.0, 1.0, 1.0])
    weighted = AsymmetricLoss(class_weights=w)(logits.detach(), labels)
    assert weighted.item() == pytest.approx((-2 * 0.5 * math.log(0.5) - p_neg**4 * math.log(1 - p_neg)) / 2, rel=1e-5)
    bce = MaskedBCE()(torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0, float("nan")]]))
    assert bce.item() == pytest.approx(math.log(2), rel=1e-6)


def test_class_weights_favour_rare_classes():
    w = class_weights_from_prevalence(np.array([0.5, 0.05, 0.005, 0.0]), power=0.5, max_weight=10)
    assert w[0] < w[1] < w[2] <= w[3] and w.mean() == pytest.approx(1.0)
    assert np.allclose(class_weights_from_prevalence(np.array([0.5, 0.01]), power=0), 1.0)
