"""Rules the science depends on, each tested where a one-line slip would otherwise pass the suite.

Found by mutation: a product line was changed by hand and the relevant test files were run; where
everything still passed, a test below now fails. The data here make the right and the wrong rows
disagree decisively (train prevalence vs all-split prevalence, real vs synthetic rows), so a slip
cannot hide behind a random split where the two happen to be close.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from filter_fixtures import render, save

from synth.manifest import write_manifest
from synth.taxonomy import CXR_LT_CLASSES

#: (split, source, {class: positives}, rows). Train prevalence: Cardiomegaly 40 % head, Pneumothorax 5 % medium,
#: Rib Fracture 0.5 % tail. Over all rows Pneumothorax is 30/280 = 10.7 % (head) and Rib Fracture 61/280 = 22 %
#: (head); counting the synthetic rows in, Rib Fracture would be 31/230 = 13 % in train (head).
#: Hernia is annotated in every other row only (as NIH leaves 25 classes empty): 15 of the 100 annotated train rows
#: are positive, 15 % (head); read as negatives, the 100 empty cells would make it 7.5 % (medium).
SPEC = (
    ("train", "real", {"Cardiomegaly": 80, "Pneumothorax": 10, "Rib Fracture": 1, "Hernia": 15}, 200),
    ("val", "real", {"Cardiomegaly": 10, "Pneumothorax": 20, "Rib Fracture": 20, "Hernia": 5}, 40),
    ("test", "real", {"Cardiomegaly": 10, "Pneumothorax": 0, "Rib Fracture": 40, "Hernia": 5}, 40),
    ("train", "synthetic", {"Rib Fracture": 30}, 30),
)
CLASSES = ["Cardiomegaly", "Pneumothorax", "Rib Fracture", "Hernia"]
PARTIAL = "Hernia"  #: annotated in even rows only
EXPECTED_GROUPS = {"Cardiomegaly": "head", "Pneumothorax": "medium", "Rib Fracture": "tail", "Hernia": "head"}


def _label(cls: str, i: int, positives: dict[str, int]) -> float:
    if cls == PARTIAL:
        return np.nan if i % 2 else float(i // 2 < positives.get(cls, 0))
    return float(i < positives.get(cls, 0))


def _manifest(root: Path) -> Path:
    rows, k = [], 0
    for split, source, positives, n in SPEC:
        for cls in CLASSES:
            assert positives.get(cls, 0) <= n
        for i in range(n):
            k += 1
            fpath = f"images/{k:04d}.png"
            labels = {c: _label(c, i, positives) for c in CLASSES}
            save(render(next((c for c in CLASSES if labels[c] == 1.0), None), k), root / fpath)
            row = {
                "dicom_id": f"i{k:04d}",
                "subject_id": f"p{k:04d}",
                "study_id": f"s{k:04d}",
                "ViewPosition": "PA",
                "fpath": fpath,
                "split": split,
                "source": source,
            }
            row.update({c: labels.get(c, np.nan) for c in CXR_LT_CLASSES})
            if source == "synthetic":
                row.update({"target_class": "Rib Fracture", "prompt": "chest x-ray, rib fracture", "seed": k})
            rows.append(row)
    return write_manifest(pd.DataFrame(rows), root / "manifest.csv")


@pytest.fixture(scope="module")
def skewed(tmp_path_factory) -> pd.DataFrame:
    from synth.manifest import read_manifest

    return read_manifest(_manifest(tmp_path_factory.mktemp("skewed")))


def test_the_skewed_manifest_tells_train_from_all_splits(skewed):
    """The data below only prove something because wrong rows would give other groups."""
    from synth.taxonomy import frequency_groups

    real = skewed[skewed["source"] == "real"]
    everything = frequency_groups({c: float((real[c] == 1).mean()) for c in CLASSES})
    assert everything["Pneumothorax"] == everything["Rib Fracture"] == "head"
    train = skewed[skewed["split"] == "train"]
    with_synthetic = frequency_groups({c: float((train[c] == 1).mean()) for c in CLASSES})
    assert with_synthetic["Rib Fracture"] == "head"
    real_train = train[train["source"] == "real"]
    assert real_train[PARTIAL].isna().sum() == 100 and (real_train[PARTIAL] == 1).sum() == 15
    empty_as_negative = frequency_groups({PARTIAL: float((real_train[PARTIAL] == 1).mean())})
    assert empty_as_negative[PARTIAL] == "medium"


def test_label_matrix_keeps_unannotated_cells_empty(skewed):
    from synth.manifest import label_matrix

    y = label_matrix(skewed, CLASSES)
    j = CLASSES.index(PARTIAL)
    assert np.isnan(y[:, j]).sum() == skewed[PARTIAL].isna().sum() > 0
    assert not np.isnan(y[:, :j]).any()


def test_stats_groups_come_from_the_train_split_only(skewed):
    from synth.stats import compute_stats

    real = skewed[skewed["source"] == "real"]
    stats = compute_stats(real)
    assert {c: stats["groups"][c] for c in CLASSES} == EXPECTED_GROUPS
    assert stats["prevalence"]["train"]["Rib Fracture"] == pytest.approx(1 / 200)
    assert stats["prevalence"]["train"][PARTIAL] == pytest.approx(15 / 100)  # over annotated rows only


def test_evaluate_fallback_groups_come_from_real_train_rows_only(skewed):
    from classifier.evaluation import train_groups

    groups, prevalence = train_groups(skewed, CLASSES)
    assert groups == EXPECTED_GROUPS
    assert prevalence["Rib Fracture"] == pytest.approx(1 / 200)  # not 31 / 230 with the synthetic rows


def test_generator_training_labels_are_the_train_split(skewed):
    from synth.cooccurrence import TrainingLabels

    labels = TrainingLabels(skewed[skewed["source"] == "real"])
    assert {c: labels.groups()[c] for c in CLASSES} == EXPECTED_GROUPS
    assert labels.positives()["Rib Fracture"] == 1


def test_classifier_stores_real_train_prevalence_and_selects_on_val(skewed, tmp_path, monkeypatch):
    """A +synthetic ensemble: groups, class weights and model selection come from REAL rows of the right split.

    Synthetic Rib Fracture rows ride along in training (mode mix) but must not move the stored training
    prevalence (and so the head / medium / tail every report uses); model selection and the ensemble's
    val_map are computed on the real val rows, and no test row is ever read.
    """
    import classifier.data as data
    import classifier.stage as stage
    import classifier.train as train
    from classifier.config import EnsembleConfig, MemberConfig
    from classifier.metrics import macro_ap

    cfg = EnsembleConfig(members=[MemberConfig(image_size=32)])
    cfg = replace(
        cfg,
        train=replace(cfg.train, epochs=1, batch_size=64, ema_decay=0.9, eval_batch_size=256),
        synthetic=replace(cfg.synthetic, mode="mix"),
    )
    read: list[str] = []
    original = data.read_image
    monkeypatch.setattr(
        data, "read_image", lambda path, size: (read.append(str(Path(path).resolve())), original(path, size))[1]
    )
    scored: list[np.ndarray] = []

    def recording_map(y, p):
        scored.append(np.asarray(y))
        return macro_ap(y, p)

    monkeypatch.setattr(stage, "macro_ap", recording_map)  # per-epoch model selection
    monkeypatch.setattr(train, "macro_ap", recording_map)  # ensemble weights
    out = train.train_ensemble(cfg, skewed, tmp_path / "model")

    spec = json.loads((out / "ensemble.json").read_text())
    assert spec["rows"] == {"real_train": 200, "val": 40, "synthetic": 30}
    assert spec["train_prevalence"]["Rib Fracture"] == pytest.approx(1 / 200)
    assert spec["train_prevalence"]["Pneumothorax"] == pytest.approx(10 / 200)
    assert spec["train_prevalence"][PARTIAL] == pytest.approx(15 / 100)  # empty cells are not negatives
    from classifier.ensemble import model_groups

    groups, _ = model_groups(spec)
    assert {c: groups[c] for c in CLASSES} == EXPECTED_GROUPS

    root = Path(skewed.attrs["root"])
    test_paths = {str((root / f).resolve()) for f in skewed.loc[skewed["split"] == "test", "fpath"]}
    assert read and not set(read) & test_paths, "classifier training read test images"
    # every score used for model selection / ensembling is over the 40 real val rows (Rib Fracture: 20 positives)
    val_y = skewed.loc[(skewed["split"] == "val") & (skewed["source"] == "real"), spec["classes"]].to_numpy(float)
    assert scored and all(
        y.shape == val_y.shape and np.array_equal(np.nan_to_num(y, nan=-1), np.nan_to_num(val_y, nan=-1))
        for y in scored
    )


# ---------------------------------------------------------------- seeds and model selection


@pytest.fixture(scope="module")
def small_real(tmp_path_factory) -> pd.DataFrame:
    from filter_fixtures import make_real

    from synth.manifest import read_manifest

    return read_manifest(make_real(tmp_path_factory.mktemp("small"), {"train": 8, "val": 4, "test": 1}))


def _tiny_ensemble(seed: int, epochs: int = 1):
    from classifier.config import EnsembleConfig, MemberConfig

    cfg = EnsembleConfig(members=[MemberConfig(image_size=32, seed=seed)])
    return replace(cfg, train=replace(cfg.train, epochs=epochs, batch_size=8, ema_decay=0.9, eval_batch_size=64))


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "member-0" / "model.safetensors"))


def test_classifier_seed_decides_the_model(small_real, tmp_path):
    """Same seed: the same weights (an arm's seeds are reproducible); another seed: other weights (seeds are real
    replicates, not copies — the ablation's seed spread would be 0 if the member seed were ignored)."""
    import torch

    from classifier.train import train_ensemble

    a = _weights(train_ensemble(_tiny_ensemble(0), small_real, tmp_path / "a"))
    again = _weights(train_ensemble(_tiny_ensemble(0), small_real, tmp_path / "again"))
    other = _weights(train_ensemble(_tiny_ensemble(1), small_real, tmp_path / "other"))
    assert all(torch.equal(a[k], again[k]) for k in a)
    assert not all(torch.equal(a[k], other[k]) for k in a)


def test_best_epoch_is_the_one_with_the_highest_val_map(small_real, tmp_path, monkeypatch):
    """select: best keeps the epoch whose val mAP is highest (scripted here: 0.2, 0.9, 0.5 -> epoch 2), weights
    included."""
    import torch

    import classifier.stage as stage
    import classifier.train as train
    from classifier.metrics import macro_ap

    scripted = iter([0.2, 0.9, 0.5])
    per_epoch: list[float] = []
    best_saves: list[tuple[int, dict]] = []

    def scripted_map(y, p):
        if len(per_epoch) >= 3:  # after the stage: the ensemble's own val mAP
            return macro_ap(y, p)
        per_epoch.append(next(scripted))
        return per_epoch[-1]

    original_save = stage.save_safetensors_atomic

    def recording_save(path, state, *args, **kwargs):
        if Path(path).name == "best.safetensors":
            best_saves.append((len(per_epoch), {k: v.detach().clone() for k, v in state.items()}))
        return original_save(path, state, *args, **kwargs)

    monkeypatch.setattr(stage, "macro_ap", scripted_map)  # per-epoch val mAP
    monkeypatch.setattr(train, "macro_ap", scripted_map)  # the ensemble's
    monkeypatch.setattr(stage, "save_safetensors_atomic", recording_save)
    cfg = _tiny_ensemble(0, epochs=3)
    cfg = replace(cfg, train=replace(cfg.train, select="best"))
    out = train.train_ensemble(cfg, small_real, tmp_path / "best")
    stage = json.loads((out / "member-0" / "member.json").read_text())["stages"][-1]
    assert [h["val_map"] for h in stage["history"]] == [0.2, 0.9, 0.5]
    assert stage["selected_epoch"] == 2 and stage["val_map"] == pytest.approx(0.9)
    assert [epoch for epoch, _ in best_saves] == [1, 2]  # saved on improvement only
    final, best = _weights(out), best_saves[-1][1]
    assert all(torch.equal(final[k], best[k]) for k in best)


# ---------------------------------------------------------------- evaluation


def test_evaluate_bootstraps_patients_of_the_evaluated_split(tmp_path):
    """`synth evaluate`'s intervals resample PATIENTS (here 2 test images each), as metrics.evaluate with the subject
    ids gives, and score the requested split's rows only."""
    from filter_fixtures import make_real

    from classifier import metrics
    from classifier.ensemble import predict
    from classifier.evaluation import evaluate_model
    from classifier.train import train_ensemble
    from synth.manifest import label_matrix, read_manifest

    df = read_manifest(make_real(tmp_path / "real", {"train": 8, "val": 4, "test": 10}))
    test = df["split"] == "test"
    df.loc[test, "subject_id"] = [f"t{i // 2}" for i in range(int(test.sum()))]  # two images per test patient
    manifest = write_manifest(df, tmp_path / "real" / "paired.csv")
    model = train_ensemble(_tiny_ensemble(0), df, tmp_path / "model")

    result = evaluate_model(model, manifest, "test", tmp_path / "eval", n_boot=200, seed=3)
    rows = df[test].reset_index(drop=True)
    probs, classes = predict(model, rows)
    y = label_matrix(rows, classes)
    groups = result["groups"]
    by_patient = metrics.evaluate(
        y, probs, classes, groups, patient_ids=rows["subject_id"].to_numpy(), n_boot=200, seed=3
    )
    by_row = metrics.evaluate(y, probs, classes, groups, patient_ids=None, n_boot=200, seed=3)
    assert result["n"] == 30 and result["n_patients"] == 15
    assert result["map"] == pytest.approx(by_patient["map"])
    assert result["ci"]["map"] == pytest.approx(by_patient["ci"]["map"])
    assert by_patient["ci"]["map"] != pytest.approx(by_row["ci"]["map"])  # the test can tell the two apart


def test_generator_trains_on_real_train_rows_only(skewed):
    """The generator learns from real training rows: never val / test patients, never earlier synthetic images."""
    from synth.generator.data import TrainingSet

    training = TrainingSet.load(Path(skewed.attrs["root"]) / "manifest.csv")
    allowed = skewed[(skewed["split"] == "train") & (skewed["source"] == "real")]
    assert len(training) == 200 and set(training.df["dicom_id"]) == set(allowed["dicom_id"])
    assert sum("Rib Fracture" in s for s in training.label_sets) == 1  # not the 30 synthetic ones
