"""The real_resampled arm: LVIS repeat factors, the mixing-matched threshold, and the classifier hook."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from synth.ablation.resampling import derive_threshold, plan_resampling

CLASSES = ["Head", "B", "C", "D"]


def _train(extra: list[tuple[tuple[str, ...], int]] | None = None) -> pd.DataFrame:
    """100 real training rows: Head 40 positives; B 2, C 5, D 10, each alone (plus ``extra`` label sets)."""
    spec = [(("Head",), 40), (("B",), 2), (("C",), 5), (("D",), 10), ((), 43)] + (extra or [])
    rows = []
    for labels, count in spec:
        for _ in range(count):
            i = len(rows)
            rows.append(
                {"dicom_id": f"d{i}", "split": "train", "source": "real", **{c: float(c in labels) for c in CLASSES}}
            )
    return pd.DataFrame(rows)


def test_threshold_matches_the_median_generated_class_to_the_mixing_arm():
    train = _train()
    generated = {"B": 20, "C": 20, "D": 20}
    # t(c) = f(c) * ((n_pos + n_gen) / n_pos)^2: B 0.02 * 11^2 = 2.42, C 0.05 * 5^2 = 1.25, D 0.10 * 3^2 = 0.9
    assert derive_threshold(train, generated) == pytest.approx(1.25)
    plan = plan_resampling(train, CLASSES, generated)
    c = plan.per_class["C"]
    assert c["r_class"] == pytest.approx(5.0) and c["presented_expected"] == pytest.approx(25.0) == c["mixing_arm"]
    # rarer than the median: presented less than in the mixing arm, commoner: more (one t cannot match all)
    b, d = plan.per_class["B"], plan.per_class["D"]
    assert b["r_class"] == pytest.approx(math.sqrt(1.25 / 0.02)) and b["presented_expected"] < b["mixing_arm"] == 22
    assert d["r_class"] == pytest.approx(math.sqrt(1.25 / 0.10)) and d["presented_expected"] > d["mixing_arm"] == 30
    # head rows (a class not generated) and rows without findings are presented once, although t > f(Head)
    head_ids = set(train.loc[train["Head"] == 1, "dicom_id"])
    assert not head_ids & set(plan.repeats)
    # stochastic rounding: each repeat count is floor or ceil of r(image)
    for cls in ("B", "C", "D"):
        r = plan.per_class[cls]["r_class"]
        for i in train.loc[train[cls] == 1, "dicom_id"]:
            assert plan.repeats.get(i, 1) in (math.floor(r), math.ceil(r))
    assert plan.n_presented == len(train) + sum(k - 1 for k in plan.repeats.values())


def test_image_repeat_is_the_max_over_its_positive_classes():
    train = _train(extra=[(("Head", "B"), 1)])  # a head-positive image that also shows the rarest class
    plan = plan_resampling(train, CLASSES, {"B": 20, "C": 20, "D": 20}, threshold=1.0)
    r_b = math.sqrt(1.0 / (3 / 101))
    both = train.index[(train["Head"] == 1) & (train["B"] == 1)][0]
    assert plan.repeats[train.loc[both, "dicom_id"]] in (math.floor(r_b), math.ceil(r_b))


def test_stochastic_rounding_presents_r_on_average():
    rng = np.random.default_rng(0)
    rows = [
        {"dicom_id": f"d{i}", "split": "train", "source": "real", "A": float(rng.random() < 0.03)} for i in range(4000)
    ]
    train = pd.DataFrame(rows)
    plan = plan_resampling(train, ["A"], {"A": 100}, threshold=0.5)
    pos = train.loc[train["A"] == 1, "dicom_id"]
    r = math.sqrt(0.5 / (len(pos) / len(train)))
    mean = np.mean([plan.repeats.get(i, 1) for i in pos])
    assert abs(mean - r) < 0.3 and math.floor(r) != math.ceil(r)


def test_classifier_presents_repeated_rows_with_the_real_prevalence_class_weights(monkeypatch):
    """The hook repeats rows of the 'real' training set only; class weights (the loss) stay real_only's."""
    import classifier.train as train_mod
    from classifier.config import EnsembleConfig

    seen = []

    class Stop(Exception):
        pass

    def fake_member(ens, k, member, sets, classes, class_weights, *rest, **kwargs):  # what the member is handed
        seen.append((sets, np.asarray(class_weights).copy()))
        raise Stop

    monkeypatch.setattr(train_mod, "train_member", fake_member)
    df = _train()
    df = pd.concat([df, df.head(10).assign(split="val", dicom_id=lambda d: "v" + d["dicom_id"])], ignore_index=True)
    df["fpath"], df["subject_id"] = "x.png", df["dicom_id"]
    df.loc[df.index[-1], "B"] = 1.0  # val needs nothing special; keep a positive of B there too
    repeats = {"d40": 5, "d41": 3}  # the two B positives
    for row_repeats in (None, repeats):
        with pytest.raises(Stop):
            train_mod.train_ensemble(EnsembleConfig(), df, "unused", classes=CLASSES, row_repeats=row_repeats)
    (plain, w_plain), (rep, w_rep) = seen
    assert len(plain["real"]) == 100 and len(rep["real"]) == 100 + 4 + 2
    assert (rep["real"]["dicom_id"] == "d40").sum() == 5 and (rep["real"]["dicom_id"] == "d41").sum() == 3
    assert len(rep["val"]) == len(plain["val"]) == 10 and rep["synthetic"].empty
    np.testing.assert_array_equal(w_plain, w_rep)
