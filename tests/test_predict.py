"""Issue 20: test-only evaluation with the model's groups, and ``synth predict`` on unlabeled images.

The ensembles here are random-init ConvNeXt-atto members written by hand in the layout
``classify train`` writes (ensemble.json + member-k/{member.json, model.safetensors}): what is
tested is the plumbing (groups, rows, columns, files), not accuracy, and it takes seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from data_fixtures import assert_one_error_line, invoke, make_cxrlt, prepare_args
from model_fixtures import CLASSES, PREVALENCE, make_ensemble
from PIL import Image
from typer.testing import CliRunner

from classifier.ensemble import model_groups, predict
from synth.cli import app
from synth.manifest import read_manifest
from synth.prepare import prepare_dataset
from synth.taxonomy import CXR_LT_CLASSES


@pytest.fixture()
def test_only(tmp_path: Path) -> Path:
    """An external, test-only prepared set (no train rows at all)."""
    csv = make_cxrlt(tmp_path, patients=6, per_patient=2)
    result = invoke(*prepare_args(csv, tmp_path / "mimic", tmp_path / "external", "--size", "32", "--split", "test"))
    assert result.exit_code == 0, result.output
    return tmp_path / "external" / "manifest.csv"


# ---------------------------------------------------------------- evaluate on a test-only set


def evaluate(*args) -> object:
    return CliRunner().invoke(app, ["evaluate", *map(str, args)])


def test_evaluate_test_only_set_takes_groups_from_the_model(test_only, tmp_path):
    model = make_ensemble(tmp_path / "model")
    out = tmp_path / "eval"
    result = evaluate("--model", model, "--data", test_only, "--split", "test", "--out", out, "--n-boot", "0")
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["groups"] == {
        "Support Devices": "head",
        "Fracture": "medium",
        "Rib Fracture": "tail",
        "Normal": "head",
    }
    assert metrics["groups_from"] == "model" and metrics["train_prevalence"] == PREVALENCE
    assert metrics["n"] == len(read_manifest(test_only))


def test_evaluate_ensemble_saved_before_groups_derives_them_from_its_prevalence(test_only, tmp_path):
    model = make_ensemble(tmp_path / "model", store_groups=False)
    out = tmp_path / "eval"
    result = evaluate("--model", model, "--data", test_only, "--out", out, "--n-boot", "0")
    assert result.exit_code == 0, result.output
    assert json.loads((out / "metrics.json").read_text())["groups"]["Rib Fracture"] == "tail"


def test_evaluate_ensemble_without_prevalence_on_test_only_set_is_one_clear_error(test_only, tmp_path):
    model = make_ensemble(tmp_path / "model", store_groups=False, store_prevalence=False)
    result = evaluate("--model", model, "--data", test_only, "--out", tmp_path / "eval", "--n-boot", "0")
    assert_one_error_line(result, "no real training rows", "retrain")


def test_model_groups_prefers_stored_groups():
    spec = {"train_prevalence": PREVALENCE, "groups": {c: "tail" for c in CLASSES}}
    assert model_groups(spec)[0] == {c: "tail" for c in CLASSES}
    assert model_groups({"classes": CLASSES}) is None


# ---------------------------------------------------------------- synth predict


def _raw_images(folder: Path, n: int = 7) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        pixels = rng.integers(0, 255, (50 + i, 44), dtype=np.uint8)
        path = folder / f"sub{i % 2}" / f"img{i}.{'jpg' if i % 3 == 0 else 'png'}"
        path.parent.mkdir(parents=True, exist_ok=True)
        if i % 3 == 1:
            Image.fromarray(np.stack([pixels] * 3, -1)).save(path)  # RGB
        elif i % 3 == 2:
            Image.fromarray(pixels.astype(np.uint16) * 200).save(path)  # 16-bit
        else:
            Image.fromarray(pixels).save(path, quality=95)
        paths.append(path)
    return paths


def test_predict_relative_out_path(tmp_path, monkeypatch):
    make_ensemble(tmp_path / "model", sizes=(32,))
    _raw_images(tmp_path / "unlabeled", n=2)
    monkeypatch.chdir(tmp_path)
    result = invoke("predict", "--model", "model", "--images", "unlabeled", "--out", "sub.csv", "--size", "32")
    assert result.exit_code == 0, result.output
    assert len(pd.read_csv(tmp_path / "sub.csv")) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "sub.csv", "unlabeled"]


def test_predict_images_folder_writes_submission_in_taxonomy_order(tmp_path):
    model = make_ensemble(tmp_path / "model")
    paths = _raw_images(tmp_path / "unlabeled")
    out = tmp_path / "sub" / "submission.csv"
    result = invoke("predict", "--model", model, "--images", tmp_path / "unlabeled", "--out", out, "--size", "48")
    assert result.exit_code == 0, result.output
    sub = pd.read_csv(out, dtype={"dicom_id": str})
    assert list(sub.columns) == ["dicom_id"] + [c for c in CXR_LT_CLASSES if c in CLASSES]
    assert sorted(sub["dicom_id"]) == sorted(p.stem for p in paths)
    assert sub[CLASSES].apply(lambda col: col.between(0, 1)).all().all()
    assert sorted(p.name for p in out.parent.iterdir()) == ["submission.csv"], "temporary cache left behind"

    # the same images through `synth prepare` give the same probabilities: one decoding, one inference path
    csv = tmp_path / "labels.csv"
    rows = [
        {
            "dicom_id": p.stem,
            "subject_id": str(i),
            "study_id": str(i),
            "ViewPosition": "PA",
            "fpath": str(p.relative_to(tmp_path / "unlabeled")),
            **{c: "" for c in CXR_LT_CLASSES},
        }
        for i, p in enumerate(paths)
    ]
    pd.DataFrame(rows).to_csv(csv, index=False)
    manifest = prepare_dataset(
        "cxrlt", csv, tmp_path / "unlabeled", tmp_path / "prepared", size=48, split="test", workers=1
    )
    probs, classes = predict(model, read_manifest(manifest))
    expected = (
        pd.DataFrame(probs, columns=classes).assign(dicom_id=read_manifest(manifest)["dicom_id"]).set_index("dicom_id")
    )
    np.testing.assert_allclose(
        sub.set_index("dicom_id").loc[expected.index, CLASSES].to_numpy(),
        expected[CLASSES].to_numpy(),
        rtol=1e-4,
        atol=1e-5,
    )


def test_predict_prepared_manifest_split_and_plain_csv(test_only, tmp_path):
    model = make_ensemble(tmp_path / "model")
    out = tmp_path / "a.csv"
    result = invoke("predict", "--model", model, "--manifest", test_only, "--split", "test", "--out", out)
    assert result.exit_code == 0, result.output
    assert pd.read_csv(out, dtype=str)["dicom_id"].tolist() == read_manifest(test_only)["dicom_id"].tolist()
    assert_one_error_line(
        invoke("predict", "--model", model, "--manifest", test_only, "--out", out), "already exists", "--overwrite"
    )

    # a challenge-style list (dicom_id + fpath relative to the image root), no labels
    listing = tmp_path / "development.csv"
    src = pd.read_csv(tmp_path / "train_labeled.csv", dtype=str)[["dicom_id", "subject_id", "fpath"]]
    src.to_csv(listing, index=False)
    out_b = tmp_path / "b.csv"
    result = invoke(
        "predict",
        "--model",
        model,
        "--manifest",
        listing,
        "--images",
        tmp_path / "mimic",
        "--out",
        out_b,
        "--size",
        "32",
    )
    assert result.exit_code == 0, result.output
    assert pd.read_csv(out_b, dtype=str)["dicom_id"].tolist() == src["dicom_id"].tolist()


def test_predict_bad_input_is_one_error_line(tmp_path):
    model = make_ensemble(tmp_path / "model", sizes=(32,))
    listing = tmp_path / "list.csv"
    pd.DataFrame({"dicom_id": ["a"], "fpath": ["missing.png"]}).to_csv(listing, index=False)
    out = tmp_path / "s.csv"
    assert_one_error_line(
        invoke("predict", "--model", model, "--manifest", listing, "--out", out), "image not found", "--images"
    )
    assert_one_error_line(invoke("predict", "--model", tmp_path, "--images", tmp_path, "--out", out), "ensemble.json")
    assert_one_error_line(invoke("predict", "--model", model, "--out", out), "--manifest", "--images")
    assert not out.exists()


# ---------------------------------------------------------------- the CXR-LT workflow on real NIH images


@pytest.mark.shared_data
def test_nih_given_split_train_then_external_test_only_evaluate_and_predict(nih_sample: Path, tmp_path: Path):
    """Given split in, model trained (stores its groups), a held-out site scored test-only, unlabeled images
    predicted."""
    from dataclasses import replace

    from classifier.config import EnsembleConfig, MemberConfig
    from classifier.train import train_ensemble

    raw = pd.read_csv(nih_sample / "Data_Entry_2017_v2020.csv", dtype=str)
    patient = raw["Patient ID"].astype(int)
    site_a = raw[patient % 10 < 6].copy()
    site_a["split"] = np.where(patient[site_a.index] % 10 < 4, "train", "Validate")  # a user's spelling
    site_b = raw[patient % 10 >= 6]  # the external site: never seen in training
    site_a.to_csv(tmp_path / "site_a.csv", index=False)
    site_b.to_csv(tmp_path / "site_b.csv", index=False)
    images = nih_sample / "images"
    a = prepare_dataset("nih", tmp_path / "site_a.csv", images, tmp_path / "a", size=32, workers=1)
    b = prepare_dataset("nih", tmp_path / "site_b.csv", images, tmp_path / "b", size=32, workers=1, split="test")
    a_df = read_manifest(a)
    assert set(a_df["split"]) == {"train", "val"}  # kept as given: no test rows invented
    assert set(read_manifest(b)["split"]) == {"test"}

    cfg = EnsembleConfig(members=[MemberConfig(image_size=32)])
    cfg = replace(cfg, train=replace(cfg.train, epochs=1, batch_size=32, ema_decay=0.9))
    model = train_ensemble(cfg, a_df, tmp_path / "model")
    spec = json.loads((model / "ensemble.json").read_text())
    assert spec["groups"] and set(spec["groups"]) == set(spec["classes"]) and spec["group_thresholds"]["head"] == 0.10

    out = tmp_path / "eval"
    result = evaluate("--model", model, "--data", b, "--split", "test", "--out", out, "--n-boot", "0")
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["groups_from"] == "model" and metrics["groups"] == spec["groups"]
    assert metrics["n"] == len(site_b)

    sub = tmp_path / "sub.csv"
    listing = tmp_path / "unlabeled.csv"
    site_b[["Image Index"]].rename(columns={"Image Index": "fpath"}).assign(
        dicom_id=site_b["Image Index"].str.rsplit(".", n=1).str[0]
    ).to_csv(listing, index=False)
    result = invoke(
        "predict", "--model", model, "--manifest", listing, "--images", images, "--out", sub, "--size", "32"
    )
    assert result.exit_code == 0, result.output
    got = pd.read_csv(sub, dtype={"dicom_id": str}).set_index("dicom_id")
    want = pd.read_csv(out / "probs.csv", dtype={"dicom_id": str}).set_index("dicom_id")
    np.testing.assert_allclose(got.loc[want.index, list(want.columns)].to_numpy(), want.to_numpy(), atol=2e-6)
