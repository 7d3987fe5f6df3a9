"""Data stage: readers, patient split, statistics, ``synth prepare`` and its errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from data_fixtures import assert_one_error_line, invoke, make_cxrlt, prepare_args
from PIL import Image

from synth.errors import UserError
from synth.image_datasets import ManifestDataset
from synth.manifest import read_manifest
from synth.prepare import prepare_dataset
from synth.readers import NIH_TO_CXRLT, read_cxrlt, read_nih
from synth.splits import SplitFractions, assert_no_patient_leakage, patient_split
from synth.stats import compute_stats, load_stats
from synth.taxonomy import CXR_LT_CLASSES, UnknownClassError, resolve_class

NIH_ANNOTATED = set(NIH_TO_CXRLT.values())


@pytest.fixture()
def cxrlt(tmp_path: Path) -> tuple[Path, Path]:
    return make_cxrlt(tmp_path), tmp_path / "mimic"


def test_prepare_settings_from_python_are_checked_like_a_yaml(cxrlt, tmp_path):
    """``prepare_dataset``'s keywords are PrepareConfig fields: a misspelt one or a bad value fails before any
    output, and a config object plus keywords is ambiguous."""
    from synth.prepare import PrepareConfig

    csv, images = cxrlt
    with pytest.raises(UserError, match="sizee"):
        prepare_dataset("cxrlt", csv, images, tmp_path / "a", sizee=32)
    with pytest.raises(UserError, match="--size 2"):
        prepare_dataset("cxrlt", csv, images, tmp_path / "b", size=2)
    with pytest.raises(TypeError, match="not both"):
        prepare_dataset("cxrlt", csv, images, tmp_path / "c", PrepareConfig(), size=32)
    assert not any((tmp_path / name).exists() for name in "abc")


def test_cxrlt_prepare_roundtrips_labels_and_caches_images(cxrlt, tmp_path):
    csv, images = cxrlt
    manifest_path = prepare_dataset("cxrlt", csv, images, tmp_path / "out", size=32, seed=1)
    df = read_manifest(manifest_path)
    src = pd.read_csv(csv, dtype={"dicom_id": str})
    assert len(df) == len(src) and set(df["source"]) == {"real"}
    merged = df.set_index("dicom_id").loc[src["dicom_id"]]
    for c in CXR_LT_CLASSES:
        np.testing.assert_array_equal(merged[c].to_numpy(), src[c].to_numpy(dtype=float), err_msg=c)
    assert np.isnan(merged.loc["d0000", "Tuberculosis"])
    assert all(f.startswith("images/") for f in df["fpath"])
    for path in (manifest_path.parent / f for f in df["fpath"]):
        with Image.open(path) as im:
            assert im.mode == "L" and im.size == (32, 32)
    # the 16-bit source is scaled, not clipped to white
    with Image.open(manifest_path.parent / "images" / "d0002.png") as im:
        assert np.asarray(im).std() > 20
    assert_no_patient_leakage(df)
    assert set(df["split"]) == {"train", "val", "test"}
    stats = load_stats(manifest_path.parent)
    assert stats["images"]["all"] == len(df)
    assert stats["annotated"]["all"]["Tuberculosis"] == len(df) - 1
    assert not list(tmp_path.glob(".out.*")), "temporary folder left behind"
    provenance = json.loads((manifest_path.parent / "prepare.json").read_text())
    assert "Adenopathy" in provenance["classes_without_positives"]  # all-zero: reported, not refused
    batch = ManifestDataset(df)[0]
    assert batch["pixel_values"].shape == (1, 32, 32)


def test_cxrlt_missing_label_column_is_one_error_line(cxrlt, tmp_path):
    csv, images = cxrlt
    pd.read_csv(csv).drop(columns=["Pneumoperitoneum"]).to_csv(csv, index=False)
    out = tmp_path / "out"
    result = invoke("prepare", "--format", "cxrlt", "--labels", csv, "--images", images, "--out", out)
    assert_one_error_line(result, "Pneumoperitoneum", str(csv))
    assert not out.exists()


def test_cxrlt_bad_label_value_names_column_and_row(cxrlt):
    csv, images = cxrlt
    df = pd.read_csv(csv)
    df["Edema"] = df["Edema"].astype(object)
    df.loc[3, "Edema"] = -1
    df.to_csv(csv, index=False)
    with pytest.raises(Exception, match=r"'Edema' row 5"):
        read_cxrlt(csv, images)


def test_corrupt_image_fails_cleanly_or_is_skipped(cxrlt, tmp_path):
    csv, images = cxrlt
    bad = next(images.rglob("d0051.png"))
    bad.write_bytes(b"not a png at all")
    out = tmp_path / "out"
    args = ("prepare", "--format", "cxrlt", "--labels", csv, "--images", images, "--out", out, "--size", "16")
    assert_one_error_line(invoke(*args), "cannot read image", "d0051.png", "--skip-bad-images")
    # no dataset; the images cached so far wait in .out.partial for the rerun (resumable prepare, issue 38)
    assert not out.exists() and [p.name for p in tmp_path.glob(".out.*")] == [".out.partial"]

    result = invoke(*args, "--skip-bad-images")
    assert result.exit_code == 0, result.output
    skipped = pd.read_csv(out / "skipped.csv", dtype=str)
    assert skipped["dicom_id"].tolist() == ["d0051"]
    assert "d0051" not in set(read_manifest(out)["dicom_id"])
    assert not list(tmp_path.glob(".out.*"))


def test_missing_image_names_the_path(cxrlt, tmp_path):
    csv, images = cxrlt
    next(images.rglob("d0030.jpg")).unlink()
    out = tmp_path / "out"
    assert_one_error_line(
        invoke("prepare", "--format", "cxrlt", "--labels", csv, "--images", images, "--out", out),
        "image not found",
        "d0030.jpg",
    )
    assert not out.exists()


def test_empty_split_is_an_error(tmp_path):
    csv = make_cxrlt(tmp_path, patients=2, per_patient=2)
    out = tmp_path / "out"
    result = invoke("prepare", "--format", "cxrlt", "--labels", csv, "--images", tmp_path / "mimic", "--out", out)
    assert_one_error_line(result, "split is empty", "--val/--test")
    assert not out.exists()


def test_class_without_train_positive_is_an_error(cxrlt, tmp_path):
    csv, images = cxrlt
    df = pd.read_csv(csv)
    df["Hernia"] = 0
    df.loc[df["subject_id"] == 10005, "Hernia"] = 1  # one patient; stratification sends it to the largest split
    df.to_csv(csv, index=False)
    out = tmp_path / "out"
    result = invoke(*prepare_args(csv, images, out, "--val", "0.1", "--test", "0.6"))
    assert_one_error_line(result, "'Hernia'", "train", "--seed")
    assert not out.exists()


def test_existing_out_needs_overwrite_and_foreign_folders_are_never_replaced(cxrlt, tmp_path):
    csv, images = cxrlt
    out = tmp_path / "out"
    args = ("prepare", "--format", "cxrlt", "--labels", csv, "--images", images, "--out", out, "--size", "16")
    assert invoke(*args).exit_code == 0
    assert_one_error_line(invoke(*args), "already exists", "--overwrite")
    result = invoke(*args, "--overwrite", "--size", "24")
    assert result.exit_code == 0, result.output
    with Image.open(next((out / "images").iterdir())) as im:
        assert im.size == (24, 24)
    assert_one_error_line(
        invoke("prepare", "--format", "cxrlt", "--labels", csv, "--images", images, "--out", images, "--overwrite"),
        "not a `synth prepare` output",
    )
    assert any(images.rglob("*.jpg"))


def test_unknown_format_and_unknown_class(cxrlt, tmp_path):
    csv, images = cxrlt
    assert_one_error_line(
        invoke("prepare", "--format", "mimic", "--labels", csv, "--images", images, "--out", tmp_path / "o"),
        "--format",
        "cxrlt",
    )
    with pytest.raises(UnknownClassError, match="Rib Fracture"):
        resolve_class("rib fractures")


def test_pool_and_serial_caches_are_identical(tmp_path):
    csv = make_cxrlt(tmp_path, patients=24, per_patient=3)
    a = prepare_dataset("cxrlt", csv, tmp_path / "mimic", tmp_path / "a", size=16, workers=1)
    b = prepare_dataset("cxrlt", csv, tmp_path / "mimic", tmp_path / "b", size=16, workers=2)
    assert a.read_text() == b.read_text()
    for f in (a.parent / "images").iterdir():
        assert f.read_bytes() == (b.parent / "images" / f.name).read_bytes()


# ---------------------------------------------------------------- statistics


def test_stats_counts_conditionals_and_label_sets():
    rows = [("Pneumothorax", "Support Devices"), ("Pneumothorax",), ("Support Devices",), ("Normal",), ("Normal",)]
    df = pd.DataFrame({c: [float(c in r) for r in rows] for c in CXR_LT_CLASSES})
    df["Fracture"] = np.nan
    df["subject_id"] = ["1", "2", "3", "4", "5"]
    df["split"] = "train"
    stats = compute_stats(df)
    assert "Fracture" not in stats["classes"]
    assert stats["positives"]["train"]["Pneumothorax"] == 2
    assert stats["prevalence"]["train"]["Normal"] == pytest.approx(0.4)
    assert stats["prevalence"]["val"]["Normal"] is None
    i, j = stats["classes"].index("Pneumothorax"), stats["classes"].index("Support Devices")
    assert stats["cooccurrence"]["matrix"][i][j] == 1
    assert stats["conditional"]["matrix"][i][j] == pytest.approx(0.5)
    assert stats["conditional"]["matrix"][i][i] == pytest.approx(1.0)
    assert stats["label_sets"]["train"][0] == {"labels": ["Normal"], "count": 2}
    assert {"labels": ["Pneumothorax", "Support Devices"], "count": 1} in stats["label_sets"]["train"]
    assert sum(r["count"] for r in stats["label_sets"]["train"]) == 5
    assert stats["groups"]["Normal"] == "head"
    json.dumps(stats)  # JSON-ready


# ---------------------------------------------------------------- real NIH data


def test_nih_sample_through_synth_prepare(nih_sample, tmp_path):
    out = tmp_path / "nih"
    labels = nih_sample / "Data_Entry_2017_v2020.csv"
    result = invoke(*prepare_args(labels, nih_sample / "images", out, "--size", "32", "--workers", "2", fmt="nih"))
    assert result.exit_code == 0, result.output
    assert "train" in result.output and "tail" in result.output
    df = read_manifest(out)
    assert len(df) == len(pd.read_csv(nih_sample / "Data_Entry_2017_v2020.csv"))
    assert_no_patient_leakage(df)
    for c in CXR_LT_CLASSES:  # absent NIH classes stay empty, never zero-filled
        assert df[c].isna().all() != (c in NIH_ANNOTATED), c
    assert df["Lung Lesion"].isna().all() and df["Fracture"].isna().all()
    stats = load_stats(out / "stats.json")
    assert set(stats["classes"]) == NIH_ANNOTATED
    with Image.open(out / df["fpath"].iloc[0]) as im:
        assert im.mode == "L" and im.size == (32, 32)


@pytest.fixture(scope="module")
def nih_full(shared_data: Path) -> pd.DataFrame:
    df = read_nih(shared_data / "nih-labels-full.csv.gz")
    df["split"] = patient_split(df, SplitFractions(val=0.1, test=0.2), seed=0)
    return df


def test_nih_full_labels_parse_split_and_group(nih_full):
    df = nih_full
    assert len(df) == 112_120
    assert_no_patient_leakage(df)
    share = df["split"].value_counts(normalize=True)
    assert share["train"] == pytest.approx(0.7, abs=0.01) and share["test"] == pytest.approx(0.2, abs=0.01)
    # stratified: every class, even the rarest, is split close to 70/10/20
    for c in NIH_ANNOTATED:
        pos = df.loc[df[c] == 1, "split"].value_counts(normalize=True)
        assert pos["train"] == pytest.approx(0.7, abs=0.03), c
        assert pos["test"] == pytest.approx(0.2, abs=0.03), c
    stats = compute_stats(df)
    assert stats["groups"]["Hernia"] == "tail"
    assert stats["groups"]["Infiltration"] == "head"
    assert "Lung Lesion" not in stats["groups"]  # not annotated in NIH


def test_patient_split_is_seeded(nih_full):
    sub = nih_full.iloc[:5000]
    a = patient_split(sub, seed=3)
    assert a.equals(patient_split(sub, seed=3))
    assert not a.equals(patient_split(sub, seed=4))


def test_leakage_check_fires():
    df = pd.DataFrame({"subject_id": ["1", "1", "2"], "split": ["train", "test", "val"]})
    with pytest.raises(AssertionError, match="'1'"):
        assert_no_patient_leakage(df)
