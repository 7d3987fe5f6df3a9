"""Issue 20: real CXR-LT data in — given splits, test-only sets, uncertain labels and ``synth prepare``'s bad-input
defects (the later stages' defects: test_real_data_stages).

Every test here failed on the code before its fix (checked by running it against that revision).
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from data_fixtures import assert_one_error_line, invoke, make_cxrlt, prepare_args

from synth.manifest import read_manifest
from synth.prepare import prepare_dataset
from synth.readers import read_cxrlt, read_nih
from synth.taxonomy import CXR_LT_CLASSES


@pytest.fixture()
def cxrlt(tmp_path: Path) -> tuple[Path, Path]:
    return make_cxrlt(tmp_path), tmp_path / "mimic"


def _prepare_args(csv: Path, images: Path, out: Path, *extra: str) -> tuple[str, ...]:
    return prepare_args(csv, images, out, "--size", "16", *extra)


def _with_split(csv: Path, by_patient: dict[int, str]) -> pd.DataFrame:
    df = pd.read_csv(csv, dtype={"subject_id": str})
    df["split"] = [by_patient[int(s) % 4] for s in df["subject_id"]]
    df.to_csv(csv, index=False)
    return df


# ---------------------------------------------------------------- given splits


def test_split_column_is_kept_as_given(cxrlt, tmp_path):
    csv, images = cxrlt
    # spellings a user might write; patient p % 4 decides the split (p % 4 == 0 carries Rib Fracture: train)
    src = _with_split(csv, {0: "Train", 1: "TRAIN", 2: "validate", 3: "Test"})
    result = invoke(*_prepare_args(csv, images, tmp_path / "out"))
    assert result.exit_code == 0, result.output
    df = read_manifest(tmp_path / "out").set_index("dicom_id")
    expected = src.set_index("dicom_id")["split"].str.lower().replace({"validate": "val"})
    assert df.loc[expected.index, "split"].tolist() == expected.tolist()
    assert json.loads((tmp_path / "out" / "prepare.json").read_text())["split_source"] == "column"


def test_given_split_with_a_patient_in_two_splits_names_the_patient(cxrlt, tmp_path):
    csv, images = cxrlt
    df = _with_split(csv, {0: "train", 1: "train", 2: "val", 3: "test"})
    df.loc[(df["subject_id"] == "10003").to_numpy().nonzero()[0][0], "split"] = (
        "train"  # one of 10003's images in train
    )
    df.to_csv(csv, index=False)
    out = tmp_path / "out"
    assert_one_error_line(invoke(*_prepare_args(csv, images, out)), "'10003'", "test", "train", "one split")
    assert not out.exists()


def test_bad_split_value_names_the_row(cxrlt, tmp_path):
    csv, images = cxrlt
    df = _with_split(csv, {0: "train", 1: "train", 2: "val", 3: "test"})
    df.loc[4, "split"] = "holdout"
    df.to_csv(csv, index=False)
    assert_one_error_line(invoke(*_prepare_args(csv, images, tmp_path / "out")), "'split' row 6", "holdout")


def test_one_label_file_per_split(cxrlt, tmp_path):
    csv, images = cxrlt
    df = pd.read_csv(csv, dtype={"subject_id": str})
    part = df["subject_id"].astype(int) % 4
    files = {}
    for name, keep in (("train", part <= 1), ("val", part == 2), ("test", part == 3)):
        files[name] = tmp_path / f"{name}.csv"
        df[keep].to_csv(files[name], index=False)
    out = tmp_path / "out"
    result = invoke(
        *_prepare_args(
            files["train"], images, out, "--val-labels", str(files["val"]), "--test-labels", str(files["test"])
        )
    )
    assert result.exit_code == 0, result.output
    got = read_manifest(out).set_index("dicom_id")["split"]
    for name, path in files.items():
        assert set(got.loc[pd.read_csv(path, dtype=str)["dicom_id"]]) == {name}


def test_test_only_external_set_prepares_without_train_positives(cxrlt, tmp_path):
    csv, images = cxrlt
    df = pd.read_csv(csv)
    df["Hernia"] = 0
    df.loc[df["subject_id"] == 10005, "Hernia"] = 1  # a class no train split could hold: there is no train split
    df.to_csv(csv, index=False)
    out = tmp_path / "out"
    result = invoke(*_prepare_args(csv, images, out, "--split", "test"))
    assert result.exit_code == 0, result.output
    manifest = read_manifest(out)
    assert set(manifest["split"]) == {"test"} and len(manifest) == len(df)
    provenance = json.loads((out / "prepare.json").read_text())
    assert provenance["split_source"] == "--split test"


def test_split_option_contradicting_the_split_column_is_an_error(cxrlt, tmp_path):
    csv, images = cxrlt
    _with_split(csv, {0: "train", 1: "train", 2: "val", 3: "test"})
    assert_one_error_line(
        invoke(*_prepare_args(csv, images, tmp_path / "out", "--split", "test")), "--split test", "split column"
    )


@pytest.mark.parametrize("flags", [("--val", "0.3"), ("--seed", "5", "--test", "0.4")])
def test_patient_split_flags_with_a_given_split_are_an_error(cxrlt, tmp_path, flags):
    """--val / --test / --seed shape our patient split only; with a given split they were silently ignored."""
    csv, images = cxrlt
    _with_split(csv, {0: "train", 1: "train", 2: "val", 3: "test"})
    out = tmp_path / "out"
    named = " / ".join(f for f in flags if f.startswith("--"))
    assert_one_error_line(invoke(*_prepare_args(csv, images, out, *flags)), named, "split column")
    assert not out.exists()
    assert invoke(*_prepare_args(csv, images, out)).exit_code == 0  # without them the given split is used


# ---------------------------------------------------------------- uncertain labels


@pytest.mark.parametrize("policy, expected", [("ignore", np.nan), ("zero", 0.0), ("one", 1.0)])
def test_uncertain_policy(cxrlt, tmp_path, policy, expected):
    csv, images = cxrlt
    df = pd.read_csv(csv)
    df["Edema"] = df["Edema"].astype(object)
    df.loc[3, "Edema"] = -1
    df.to_csv(csv, index=False)
    assert_one_error_line(invoke(*_prepare_args(csv, images, tmp_path / "refused")), "'Edema' row 5", "--uncertain")
    got = read_cxrlt(csv, images, uncertain=policy)["Edema"]
    np.testing.assert_array_equal(got.iloc[3], expected)
    assert got.drop(index=3).eq(0).all()


# ---------------------------------------------------------------- defects 1-3


@pytest.mark.parametrize("value", ["TRUE", "uncertain", "1 (probable)", "yes"])
def test_defect1_non_label_cells_are_an_error_naming_column_row_value(cxrlt, value):
    csv, images = cxrlt
    df = pd.read_csv(csv)
    df["Edema"] = df["Edema"].astype(object)
    df.loc[6, "Edema"] = value
    df.to_csv(csv, index=False)
    with pytest.raises(Exception, match=rf"'Edema' row 8 has '{value}'".replace("(", r"\(").replace(")", r"\)")):
        read_cxrlt(csv, images)


def test_defect1_boolean_label_file_is_refused_not_prepared_empty(cxrlt, tmp_path):
    csv, images = cxrlt
    df = pd.read_csv(csv)
    for c in CXR_LT_CLASSES:
        df[c] = df[c].map({1: True, 0: False})
    df.to_csv(csv, index=False)  # writes True / False
    out = tmp_path / "out"
    assert_one_error_line(invoke(*_prepare_args(csv, images, out)), "'Adenopathy' row 2", "False")
    assert not out.exists()


def test_defect1_float_labels_are_fine(cxrlt):
    csv, images = cxrlt
    df = pd.read_csv(csv)
    df["Edema"] = df["Edema"].astype(float)  # written as 0.0 / 1.0
    df.to_csv(csv, index=False)
    assert read_cxrlt(csv, images)["Edema"].eq(0.0).all()


def test_defect2_float_written_patient_ids_are_one_patient(cxrlt):
    csv, images = cxrlt
    df = pd.read_csv(csv, dtype=str)
    first = df.index[df["subject_id"] == "10001"]
    df.loc[first[1:], "subject_id"] = "10001.0"  # a spreadsheet round trip of some rows
    df.to_csv(csv, index=False)
    got = read_cxrlt(csv, images)
    assert set(got.loc[first, "subject_id"]) == {"10001"}


@pytest.mark.parametrize("column", ["subject_id", "fpath"])
def test_defect2_blank_required_cell_is_one_error(cxrlt, tmp_path, column):
    csv, images = cxrlt
    df = pd.read_csv(csv, dtype=str)
    df.loc[2, column] = ""
    df.to_csv(csv, index=False)
    out = tmp_path / "out"
    assert_one_error_line(invoke(*_prepare_args(csv, images, out)), f"'{column}' row 4", "empty")
    assert not out.exists()


def test_defect3_nih_findings_with_spaces_around_the_bar(tmp_path):
    rows = [("a.png", "Effusion | Mass", "1"), ("b.png", "Effusion|Mass", "2"), ("c.png", "No Finding", "3")]
    csv = tmp_path / "Data_Entry.csv"
    pd.DataFrame(rows, columns=["Image Index", "Finding Labels", "Patient ID"]).assign(
        **{"View Position": "PA"}
    ).to_csv(csv, index=False)
    df = read_nih(csv).set_index("dicom_id")
    assert df.loc["a", ["Pleural Effusion", "Mass"]].tolist() == [1.0, 1.0]
    np.testing.assert_array_equal(
        df.loc["a", list(CXR_LT_CLASSES)].to_numpy(float), df.loc["b", list(CXR_LT_CLASSES)].to_numpy(float)
    )


# ---------------------------------------------------------------- defects 6, 9


def test_defect6_prepared_dataset_is_readable_by_the_lab(cxrlt, tmp_path):
    csv, images = cxrlt
    old = os.umask(0o022)
    try:
        manifest = prepare_dataset("cxrlt", csv, images, tmp_path / "out", size=16, workers=1)
    finally:
        os.umask(old)
    out = manifest.parent
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    for name in ("manifest.csv", "stats.json", "prepare.json"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o644, name
    assert stat.S_IMODE(next((out / "images").iterdir()).stat().st_mode) == 0o644


def test_defect9_rerun_removes_a_killed_prepares_temporary_folder(cxrlt, tmp_path):
    csv, images = cxrlt
    dead_pid = 2**22 + 12345  # above pid_max of a default Linux: never a live process
    stale = tmp_path / f".out.{dead_pid}.abc123.tmp"
    (stale / "images").mkdir(parents=True)
    (stale / "images" / "x.png").write_bytes(b"partial")
    other = tmp_path / ".other.1.abc.tmp"  # another dataset's folder: not ours to touch
    other.mkdir()
    prepare_dataset("cxrlt", csv, images, tmp_path / "out", size=16, workers=1)
    assert not stale.exists()
    assert other.exists()
    assert not list(tmp_path.glob(".out.*"))


# ---------------------------------------------------------------- defect 8


def _assert_one_os_error_line(result, *needles: str) -> None:
    assert result.exit_code == 1, (result.exit_code, result.output, result.exception)
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_defect8_disk_full_is_one_error_line_and_leaves_nothing(cxrlt, tmp_path, monkeypatch):
    import errno

    import synth.prepare

    csv, images = cxrlt

    def full(df, path):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(synth.prepare, "write_manifest", full)
    out = tmp_path / "out"
    _assert_one_os_error_line(
        invoke(*_prepare_args(csv, images, out)), "No space left on device", "manifest.csv", "rerun to resume"
    )
    # no dataset; the cached images wait in .out.partial, and the rerun resumes from them (issue 38)
    assert not out.exists() and [p.name for p in tmp_path.glob(".out.*")] == [".out.partial"]


def test_defect8_permission_and_not_a_folder_errors_are_one_line(cxrlt, tmp_path, monkeypatch):
    import errno

    import synth.prepare

    csv, images = cxrlt
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    _assert_one_os_error_line(invoke(*_prepare_args(csv, images, blocker / "out")), str(blocker))

    def denied(tmp, out):
        raise PermissionError(errno.EACCES, "Permission denied", str(out))

    monkeypatch.setattr(synth.prepare, "_replace_dir", denied)
    _assert_one_os_error_line(
        invoke(*_prepare_args(csv, images, tmp_path / "out")), "Permission denied", "permissions"
    )


def test_defect6_phantom_dataset_is_readable_by_the_lab(tmp_path):
    """synth phantom renders into a mkdtemp folder (0700) and renames it: the lab must still read it."""
    from synth.phantom import render_dataset

    old = os.umask(0o022)
    try:
        render_dataset(8, 32, 0, tmp_path / "ph", workers=1)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "ph").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "ph" / "images").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "ph" / "labels.csv").stat().st_mode) == 0o644
