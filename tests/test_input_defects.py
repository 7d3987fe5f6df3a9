"""Issue 35 (part 4): readers, manifests and messages — "nothing a user has is ever deleted, and nothing wrong is
ever silent".

Every test here failed on the code before its fix (checked by running it against that revision).
"""

from __future__ import annotations

import errno
import gzip
import shlex
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import typer
from data_fixtures import assert_one_error_line, invoke, make_cxrlt, prepare_args
from PIL import Image
from typer.testing import CliRunner

from synth.errors import UserError
from synth.manifest import read_manifest, write_manifest
from synth.readers import read_cxrlt, read_nih
from synth.taxonomy import CXR_LT_CLASSES


def _nih_csv(tmp_path: Path, rows: list[tuple[str, str, str]]) -> Path:
    csv = tmp_path / "Data_Entry.csv"
    pd.DataFrame(rows, columns=["Image Index", "Finding Labels", "Patient ID"]).assign(
        **{"View Position": "PA"}
    ).to_csv(csv, index=False)
    return csv


def _png(path: Path, value: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8), value, dtype=np.uint8)).save(path)
    return path


def _manifest(tmp_path: Path) -> Path:
    rows = []
    for i in range(4):
        labels = {c: 0.0 for c in CXR_LT_CLASSES}
        labels["Mass"] = float(i % 2)
        rows.append(
            {
                "dicom_id": f"d{i}",
                "subject_id": f"p{i}",
                "study_id": f"s{i}",
                "ViewPosition": "PA",
                "fpath": f"images/{i}.png",
                "split": "test",
                "source": "real",
                **labels,
            }
        )
    return write_manifest(pd.DataFrame(rows), tmp_path / "data" / "manifest.csv")


# ---------------------------------------------------------------- 1. NIH reader


def test_nih_same_file_name_in_two_folders_is_an_error_naming_both(tmp_path):
    csv = _nih_csv(tmp_path, [("a.png", "Mass", "1"), ("b.png", "No Finding", "2")])
    first = _png(tmp_path / "nih" / "images_001" / "images" / "a.png", 10)
    second = _png(tmp_path / "nih" / "images_002" / "images" / "a.png", 200)  # another image, same name
    _png(tmp_path / "nih" / "images_001" / "images" / "b.png", 5)
    with pytest.raises(UserError) as err:
        read_nih(csv, tmp_path / "nih")
    assert str(first) in str(err.value) and str(second) in str(err.value)
    second.unlink()
    for k in (1, 2):  # files no label row names may repeat (a README in each archive folder)
        (tmp_path / "nih" / f"images_00{k}" / "README.txt").write_text(f"part {k}")
    assert read_nih(csv, tmp_path / "nih")["fpath"].tolist()[0] == str(first)


def test_nih_byte_identical_copies_are_a_warning_not_an_error(tmp_path):
    csv = _nih_csv(tmp_path, [("a.png", "Mass", "1")])
    first = _png(tmp_path / "nih" / "images_001" / "images" / "a.png", 10)
    copy = tmp_path / "nih" / "images_002" / "images" / "a.png"
    copy.parent.mkdir(parents=True)
    copy.write_bytes(first.read_bytes())
    with pytest.warns(UserWarning, match="same bytes"):
        df = read_nih(csv, tmp_path / "nih")
    assert df["fpath"].tolist() == [str(first)]  # the first in sorted order, whatever the walk order


@pytest.mark.parametrize("cell", ["", "  "])
def test_nih_empty_finding_labels_is_an_error_naming_the_row(tmp_path, cell):
    csv = _nih_csv(tmp_path, [("a.png", "Mass", "1"), ("b.png", cell, "2"), ("c.png", "No Finding", "3")])
    with pytest.raises(UserError, match=r"'Finding Labels' row 3 is empty"):
        read_nih(csv)


def test_nih_no_finding_with_a_finding_is_an_error_naming_the_row(tmp_path):
    csv = _nih_csv(tmp_path, [("a.png", "Mass", "1"), ("b.png", "No Finding|Mass", "2")])
    with pytest.raises(UserError, match=r"'Finding Labels' row 3 has 'No Finding\|Mass'"):
        read_nih(csv)


# ---------------------------------------------------------------- 2. duplicate / missing class columns


def test_duplicate_class_column_in_a_label_file_is_an_error_naming_it(tmp_path):
    csv = make_cxrlt(tmp_path, patients=2, per_patient=1)
    text = csv.read_text().splitlines()
    text = [text[0] + ",Mass"] + [line + ",1" for line in text[1:]]  # a second 'Mass' column, all positive
    csv.write_text("\n".join(text) + "\n")
    result = invoke(*prepare_args(csv, tmp_path / "mimic", tmp_path / "out", "--size", "16"))
    assert_one_error_line(result, "'Mass'", "more than once")
    assert not (tmp_path / "out").exists()


def test_duplicate_class_column_in_a_manifest_is_an_error_naming_it(tmp_path):
    path = _manifest(tmp_path)
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    df.insert(len(df.columns), "Mass_copy", "1")
    df.to_csv(path, index=False)
    path.write_text(path.read_text().replace("Mass_copy", "Mass", 1))
    with pytest.raises(UserError, match="column 'Mass' appears more than once"):
        read_manifest(path)


def test_evaluate_refuses_a_manifest_without_a_class_column_of_the_model(tmp_path):
    from model_fixtures import make_ensemble

    from classifier.evaluation import evaluate_model

    path = _manifest(tmp_path)
    pd.read_csv(path, dtype=str, keep_default_na=False).drop(columns=["Fracture"]).to_csv(path, index=False)
    model = make_ensemble(tmp_path / "model", sizes=(32,))  # a valid model folder: only the manifest is wrong
    with pytest.raises(UserError, match="no column 'Fracture'"):
        evaluate_model(model, path, "test", tmp_path / "eval", n_boot=0)
    assert not (tmp_path / "eval").exists()


def test_a_class_without_annotated_rows_is_listed_as_not_scored():
    from classifier.metrics import evaluate

    y = np.array([[1.0, np.nan], [0.0, np.nan], [1.0, np.nan]])
    p = np.array([[0.9, 0.5], [0.1, 0.5], [0.8, 0.5]])
    out = evaluate(y, p, ["Mass", "Nodule"], {"Mass": "head", "Nodule": "head"}, n_boot=0)
    assert out["classes_not_annotated"] == ["Nodule"]
    assert out["per_class"]["Nodule"]["ap"] is None


# ---------------------------------------------------------------- 3. empty / ';'-separated files, numpy reprs


def test_zero_byte_labels_file_is_one_error_line(tmp_path):
    csv = tmp_path / "labels.csv"
    csv.write_bytes(b"")
    result = invoke(*prepare_args(csv, tmp_path, tmp_path / "out"))
    assert_one_error_line(result, "labels.csv", "empty")
    assert not (tmp_path / "out").exists()


def test_empty_gzip_labels_file_is_one_error_line(tmp_path):
    csv = tmp_path / "labels.csv.gz"
    with gzip.open(csv, "wb"):
        pass
    assert_one_error_line(invoke(*prepare_args(csv, tmp_path, tmp_path / "out")), "labels.csv.gz", "no header")


def test_semicolon_separated_labels_file_says_so(tmp_path):
    csv = make_cxrlt(tmp_path, patients=2, per_patient=1)
    pd.read_csv(csv, dtype=str).to_csv(csv, index=False, sep=";")
    result = invoke(*prepare_args(csv, tmp_path / "mimic", tmp_path / "out", "--size", "16"))
    assert_one_error_line(result, "';'-separated", "save it comma-separated")


def test_bad_label_value_message_shows_the_plain_number(tmp_path):
    path = _manifest(tmp_path)
    text = path.read_text().splitlines()
    header = text[0].split(",")
    row = text[2].split(",")
    row[header.index("Mass")] = "2"
    path.write_text("\n".join([text[0], text[1], ",".join(row), *text[3:]]) + "\n")
    with pytest.raises(UserError) as err:
        read_manifest(path)
    assert "row 3 has 2 " in str(err.value) and "np." not in str(err.value)


# ---------------------------------------------------------------- 4. fpath confined to --images


@pytest.mark.parametrize("escape", ["absolute", "dotdot"])
def test_cxrlt_fpath_outside_images_is_refused_naming_the_row(tmp_path, escape):
    csv = make_cxrlt(tmp_path, patients=2, per_patient=1)
    secret = _png(tmp_path / "elsewhere" / "secret.png", 7)
    df = pd.read_csv(csv, dtype=str)
    df.loc[1, "fpath"] = str(secret) if escape == "absolute" else "../elsewhere/secret.png"
    df.to_csv(csv, index=False)
    with pytest.raises(UserError, match=r"'fpath' row 3 .*outside --images"):
        read_cxrlt(csv, tmp_path / "mimic")
    out = tmp_path / "out"
    assert_one_error_line(invoke(*prepare_args(csv, tmp_path / "mimic", out, "--size", "16")), "row 3", "outside")
    assert not out.exists()


def test_cxrlt_fpath_with_dotdot_that_stays_inside_images_is_read(tmp_path):
    csv = make_cxrlt(tmp_path, patients=2, per_patient=1)
    df = pd.read_csv(csv, dtype=str)
    df.loc[0, "fpath"] = "files/../" + df.loc[0, "fpath"]
    df.to_csv(csv, index=False)
    assert Path(read_cxrlt(csv, tmp_path / "mimic")["fpath"][0]).is_file()


# ---------------------------------------------------------------- 5. tif, filter's hint, disk-full message


def test_predict_images_reads_tiff_and_warns_about_other_files(tmp_path, capsys):
    from synth.commands.predict import _rows
    from synth.prepare_images import cache_image

    folder = tmp_path / "imgs"
    _png(folder / "a.png", 3)
    Image.fromarray((np.arange(64, dtype=np.uint16).reshape(8, 8) * 900)).save(folder / "b.tif")
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(folder / "c.TIFF")
    (folder / "d.dcm").write_bytes(b"DICM")
    df, raw = _rows(None, folder, None)
    assert raw and sorted(df["dicom_id"]) == ["a", "b", "c"]
    assert "skipped 1 file(s)" in capsys.readouterr().err
    assert cache_image((str(folder / "b.tif"), str(tmp_path / "b.png"), 4)) is None  # decodable like prepare's


def test_unreadable_image_hint_names_no_option_the_command_lacks(tmp_path):
    from synth.image_datasets import load_gray

    bad = tmp_path / "x.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(UserError) as err:
        load_gray(bad)
    assert "pass --skip-bad-images" not in str(err.value) and "synth prepare" in str(err.value)


def _disk_full_app():
    from synth.cli import _SynthTyper
    from synth.errors import resumable

    app = _SynthTyper()

    def fail():
        raise OSError(errno.ENOSPC, "No space left on device", "/out/x")

    app.command("restarts")(fail)
    app.command("resumes")(resumable(lambda: fail()))
    return app


def test_disk_full_message_promises_a_resume_only_where_a_rerun_resumes():
    from synth.commands.data import prepare
    from synth.commands.generate import generate_command

    app = _disk_full_app()
    restarts = CliRunner().invoke(app, ["restarts"])
    resumes = CliRunner().invoke(app, ["resumes"])
    assert restarts.exit_code == resumes.exit_code == 1
    assert "resume" not in restarts.output and "starts over" in restarts.output
    assert "rerun to resume" in resumes.output
    assert getattr(generate_command, "resumes_on_rerun", False)
    assert getattr(prepare, "resumes_on_rerun", False)  # resumable since issue 38: a rerun keeps the cached images
    assert isinstance(app, typer.Typer)


# ---------------------------------------------------------------- 6. the report's reproduce command


def test_reproduce_command_repeats_set_overrides_and_quotes_paths(tmp_path):
    from ablation_fakes import write_config

    from synth.ablation.config import load_ablation_config
    from synth.ablation.stages import provenance
    from synth.config import parse_sets

    folder = tmp_path / "my runs"
    folder.mkdir()
    path = write_config(folder)
    cfg = load_ablation_config(
        path, arms=["real_only", "synthetic_filtered"], sets=parse_sets(["evaluation.n_boot=200", "name=my run"])
    )
    assert cfg.evaluation.n_boot == 200
    commands = provenance(cfg)["commands"]
    assert shlex.split(commands[0]) == [
        "synth",
        "ablate",
        "--config",
        str(path),
        "--set",
        "evaluation.n_boot=200",
        "--set",
        "name=my run",
        "--seeds",
        "0,1",
        "--arms",
        "real_only,synthetic_filtered",
        "--output-root",
        str(folder / "outputs"),
    ]
    assert shlex.split(commands[1]) == ["synth", "report", "my run", "--reports-root", str(folder / "outputs/reports")]
    assert "sets" not in cfg.to_dict()  # provenance only: the run's hash does not change
