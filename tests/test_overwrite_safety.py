"""Issue 35: nothing a user has is ever deleted, and no output is silently overwritten.

``--overwrite`` replaces only an output the command itself wrote (recognised by its marker file, or for
``synth predict`` the submission header) and holding nothing else; any other folder is one ``error:`` line naming
it, and every byte stays in place. Also: ``synth filter`` / ``synth evaluate`` refuse an existing ``--out`` without
the flag and write their folder whole; an ablation ``name`` is one folder name; user strings are printed literally
(no rich markup); a killed ``synth predict`` leaves no image cache behind for good; a full disk during
``classify train`` is one error line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from data_fixtures import assert_one_error_line, invoke
from filter_fixtures import filter_argv, make_real, make_synthetic, render
from typer.testing import CliRunner

from synth.cli import app
from synth.errors import UserError

PHANTOM_ARGS = ("--n", "4", "--size", "32", "--workers", "1")


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` (a folder: None) with its bytes: what "every byte left in place" compares."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def user_folder(folder: Path) -> Path:
    """A folder of the user's own: a file and a subfolder the tool never wrote."""
    (folder / "raw").mkdir(parents=True)
    (folder / "notes.txt").write_text("my notes\n")
    (folder / "raw" / "scan.png").write_bytes(b"\x89PNG not really")
    return folder


#: Each command with every required option; ``{out}`` is the --out; the inputs need not exist: the --out check
#: comes first.
COMMANDS = {
    "phantom": ["phantom", "--out", "{out}", *PHANTOM_ARGS, "--no-progress"],
    "filter": ["filter", "--synthetic", "x", "--data", "x", "--verifier", "x", "--out", "{out}"],
    "evaluate": ["evaluate", "--model", "x", "--data", "x", "--out", "{out}", "--n-boot", "0"],
}
#: The marker each command writes (with the keys it holds), to fake "an earlier output of this command".
MARKERS = {
    "phantom": ("phantom.json", {"arguments": {}}),
    "filter": ("summary.json", {"classes": {}, "near_copy": {}, "verifier": "v"}),
    "evaluate": ("metrics.json", {"split": "test", "model": "m", "submission": {}}),
}


def run(command: str, out: Path, *extra: str):
    args = [a.format(out=out) for a in COMMANDS[command]]
    return CliRunner().invoke(app, [*args, *extra])


# ---------------------------------------------------------------- a folder the tool did not write


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_overwrite_on_a_folder_the_tool_did_not_write_leaves_every_byte_in_place(command, tmp_path):
    """Fails on the old code: phantom deleted the folder; filter and evaluate had no --overwrite (a usage error)."""
    out = user_folder(tmp_path / "mine")
    before = snapshot(out)
    result = run(command, out, "--overwrite")
    assert_one_error_line(result, str(out), "nothing was changed")
    assert "--overwrite" not in result.output  # the flag would not help: never suggested for a foreign folder
    assert snapshot(out) == before


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_no_overwrite_on_a_folder_the_tool_did_not_write_does_not_suggest_the_flag(command, tmp_path):
    """Fails on the old code: phantom's refusal said "pass --overwrite" (which then deleted the folder)."""
    out = user_folder(tmp_path / "mine")
    before = snapshot(out)
    result = run(command, out)
    assert_one_error_line(result, str(out))
    assert "--overwrite" not in result.output
    assert snapshot(out) == before


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_overwrite_on_an_output_holding_the_users_files_too_leaves_every_byte_in_place(command, tmp_path):
    """Its own marker is not enough: the folder also holds a file the command never wrote (the notes would go)."""
    out = user_folder(tmp_path / "mine")
    name, content = MARKERS[command]
    (out / name).write_text(json.dumps(content))
    before = snapshot(out)
    result = run(command, out, "--overwrite")
    assert_one_error_line(result, str(out), "did not write", "notes.txt")
    assert "pass --overwrite" not in result.output
    assert snapshot(out) == before


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_another_commands_output_is_named_and_kept(command, tmp_path):
    out = tmp_path / "prepared"
    out.mkdir()
    (out / "prepare.json").write_text("{}")
    (out / "manifest.csv").write_text("dicom_id\n")
    before = snapshot(out)
    result = run(command, out, "--overwrite")
    assert_one_error_line(result, str(out), "`synth prepare` output")
    assert snapshot(out) == before


def test_a_marker_that_is_not_ours_does_not_make_the_folder_ours(tmp_path):
    """A user's own summary.json (not the filter's keys) is no licence to replace the folder."""
    out = tmp_path / "report"
    out.mkdir()
    (out / "summary.json").write_text(json.dumps({"total": 3}))
    before = snapshot(out)
    result = run("filter", out, "--overwrite")
    assert_one_error_line(result, str(out), "not a `synth filter` output", "summary.json is not one")
    assert snapshot(out) == before


@pytest.mark.parametrize("command", ["filter", "evaluate"])
def test_an_earlier_output_is_not_overwritten_without_the_flag(command, tmp_path):
    """Fails on the old code: filter and evaluate wrote over an earlier output without asking."""
    out = tmp_path / "earlier"
    out.mkdir()
    name, content = MARKERS[command]
    (out / name).write_text(json.dumps(content))
    before = snapshot(out)
    result = run(command, out)
    assert_one_error_line(result, str(out), "already exists", "--overwrite")
    assert snapshot(out) == before


def test_phantom_overwrite_replaces_its_own_output_only(tmp_path):
    out = tmp_path / "ph"
    assert invoke("phantom", "--out", out, *PHANTOM_ARGS).exit_code == 0
    labels = (out / "labels.csv").read_bytes()
    result = invoke("phantom", "--out", out, "--n", "5", "--size", "32", "--workers", "1")
    assert_one_error_line(result, "other arguments", "--overwrite")
    assert (out / "labels.csv").read_bytes() == labels
    result = invoke("phantom", "--out", out, "--n", "5", "--size", "32", "--workers", "1", "--overwrite")
    assert result.exit_code == 0, result.output
    assert json.loads((out / "phantom.json").read_text())["arguments"]["n"] == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ph"]  # no temporary or old folder left beside it


# ---------------------------------------------------------------- synth predict: a file, recognised by its header


def test_predict_overwrite_on_a_file_it_did_not_write_leaves_every_byte_in_place(tmp_path):
    """Fails on the old code: any existing --out file was replaced with --overwrite."""
    out = tmp_path / "important.csv"
    out.write_text("patient,weight\n1,70\n")
    result = invoke("predict", "--model", tmp_path, "--images", tmp_path, "--out", out, "--overwrite")
    assert_one_error_line(result, str(out), "nothing was changed")
    assert "--overwrite" not in result.output
    assert out.read_text() == "patient,weight\n1,70\n"


def test_predict_overwrite_passes_the_check_for_its_own_submission(tmp_path):
    out = tmp_path / "submission.csv"
    out.write_text("dicom_id,Atelectasis,Pneumothorax\na,0.1,0.2\n")
    result = invoke("predict", "--model", tmp_path, "--images", tmp_path, "--out", out)
    assert_one_error_line(result, "already exists", "--overwrite")
    result = invoke("predict", "--model", tmp_path / "none", "--images", tmp_path, "--out", out, "--overwrite")
    assert_one_error_line(result, "ensemble.json")  # past the --out check: the missing model is what stops it
    assert out.read_text().startswith("dicom_id,Atelectasis")


# ---------------------------------------------------------------- synth filter writes its folder whole


@pytest.fixture(scope="module")
def filter_inputs(tmp_path_factory) -> tuple[Path, Path, Path]:
    from synth.filtering import VerifierConfig, train_verifier

    root = tmp_path_factory.mktemp("filter")
    real = make_real(root / "real")
    cfg = VerifierConfig(
        arch="resnet10t", image_size=32, epochs=1, max_steps=2, batch_size=24, lr=3e-3, seed=0, eval_batch_size=64
    )
    verifier = train_verifier(real, root / "verifier", cfg)
    synthetic = make_synthetic(
        root / "synthetic", [("Pneumothorax", render("Pneumothorax", 500 + i)) for i in range(6)]
    )
    return synthetic, real, verifier


def test_filter_refuses_then_replaces_its_output_whole_and_a_failed_write_leaves_the_old_one(
    filter_inputs, tmp_path, monkeypatch
):
    """Fails on the old code: a second run overwrote the folder without --overwrite, file by file (a failure at
    summary.json left the new kept.csv beside the old summary)."""
    import synth.filtering.outputs as outputs

    synthetic, real, verifier = filter_inputs
    out = tmp_path / "filtered"
    config = tmp_path / "rules.yaml"
    config.write_text(yaml.safe_dump({"bootstrap": 5, "kid_subsets": 5, "nearcopy_calibration_images": 20}))
    argv = [*filter_argv(synthetic, real, verifier, out), "--config", str(config)]
    first = CliRunner().invoke(app, argv)
    assert first.exit_code == 0, first.output
    before = snapshot(out)
    assert_one_error_line(CliRunner().invoke(app, argv), "already exists", "--overwrite")
    assert snapshot(out) == before

    def disk_full(path, *args, **kwargs):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(outputs, "write_json_atomic", disk_full)  # summary.json, the last file written
    result = CliRunner().invoke(app, [*argv, "--overwrite", "--seed", "1"])
    assert result.exit_code == 1 and result.output.startswith("error: No space left on device"), result.output
    assert snapshot(out) == before  # the old folder whole: not one file of the failed run
    assert sorted(p.name for p in tmp_path.iterdir()) == ["filtered", "rules.yaml"]  # and no temporary left

    monkeypatch.undo()
    result = CliRunner().invoke(app, [*argv, "--overwrite", "--seed", "1"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "summary.json").read_text())["config"]["seed"] == 1


def test_writing_folder_never_replaces_a_folder_that_appeared_meanwhile(tmp_path):
    from synth.output_folder import FILTER, owned_output, writing_folder

    out = tmp_path / "out"
    with pytest.raises(UserError, match="not a `synth filter` output"):
        with writing_folder(out, FILTER) as tmp:
            (tmp / "kept.csv").write_text("new\n")
            user_folder(out)  # someone else's files land at --out while the command runs
    assert (out / "notes.txt").read_text() == "my notes\n" and not (out / "kept.csv").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert owned_output(tmp_path / "absent", FILTER) is False


# ---------------------------------------------------------------- ablation name


@pytest.mark.parametrize("name", ["..", ".", "a/b", "", "a\\b"])
def test_ablation_name_must_be_one_folder_name(name, tmp_path):
    """Fails on the old code for "..", "." and "a\\b" (only "" and "/" were refused): ".." wrote into the output
    root itself."""
    from ablation_fakes import write_config

    from synth.ablation.config import load_ablation_config

    with pytest.raises(UserError) as err:
        load_ablation_config(write_config(tmp_path, name=name))
    message = str(err.value)
    assert "name" in message and "one folder name" in message and "\n" not in message


# ---------------------------------------------------------------- rich markup in user strings


@pytest.mark.parametrize("name", ["data [old]", "d[/]x", "run [bold]1[/bold] :smile:"])
def test_paths_are_printed_as_given(name, tmp_path):
    """Fails on the old code: "data [old]" printed as "data ", "d[/]x" crashed after the dataset was written."""
    out = tmp_path / name
    result = invoke("phantom", "--out", out, *PHANTOM_ARGS)
    assert result.exit_code == 0, result.output
    flat = result.output.replace("\n", "")
    assert f"labels: {out / 'labels.csv'}" in flat


# ---------------------------------------------------------------- synth predict: stale image caches


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_predict_caches_are_removed_live_ones_kept(tmp_path):
    """Fails on the old code: the caches of a killed predict (``.OUT.csv.*.tmp``) stayed forever."""
    out = tmp_path / "sub.csv"
    stale = tmp_path / f".sub.csv.{_dead_pid()}.k2j4.tmp"
    live = tmp_path / f".sub.csv.{os.getppid()}.a8x1.tmp"
    other = tmp_path / f".other.csv.{_dead_pid()}.zz9.tmp"
    for folder in (stale, live, other):
        (folder / "images").mkdir(parents=True)
        (folder / "images" / "00000000.png").write_bytes(b"png")
    result = invoke("predict", "--model", tmp_path / "none", "--images", tmp_path, "--out", out)
    assert_one_error_line(result, "ensemble.json")
    assert not stale.exists() and live.exists() and other.exists()
    from synth.output_folder import remove_stale_temporaries

    remove_stale_temporaries(out)
    assert live.exists()  # a running process's cache is never touched


# ---------------------------------------------------------------- classify train on a full disk


@pytest.mark.parametrize(
    "library_error",
    [
        # what safetensors raises on a full disk (seen on a 16 KiB tmpfs)
        "SafetensorError:Error while serializing: I/O error: No space left on device (os error 28)",
        # what torch.save raises there: no errno in it, so the free space decides
        "RuntimeError:[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534",
    ],
)
def test_classify_train_on_a_full_disk_is_one_error_line(library_error, tmp_path, monkeypatch):
    """Fails on the old code: the library's own exception reached the user as a traceback."""
    import shutil

    import safetensors.torch
    from filter_fixtures import make_real as real_set

    kind, text = library_error.split(":", 1)
    error = {"SafetensorError": safetensors.SafetensorError, "RuntimeError": RuntimeError}[kind]

    def full(*args, **kwargs):
        raise error(text)

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9 - 4096, 4096))
    data = real_set(tmp_path / "real", {"train": 4, "val": 2, "test": 1})
    config = tmp_path / "classifier.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "members": [{"arch": "convnext_atto", "image_size": 32}],
                "train": {"epochs": 1, "batch_size": 8, "lr": 0.002, "eval_batch_size": 64},
                "data": {"manifest": str(data), "output_dir": str(tmp_path / "model")},
            }
        )
    )
    result = CliRunner().invoke(app, ["classify", "train", "--config", str(config)])
    assert result.exit_code == 1, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip() and not ln.startswith("[classifier]")]
    assert len(lines) == 1 and lines[-1].startswith("error: No space left on device: "), result.output
    assert "free disk space" in lines[-1] and "Traceback" not in result.output


def test_a_checkpoint_save_on_a_full_disk_is_an_os_error_and_leaves_no_partial_folder(tmp_path, monkeypatch):
    """torch.save's own error on a full disk ("unexpected pos") inside accelerate's save_state: an OSError naming
    the folder (one error line in the CLI), the previous checkpoint intact and the half-written temp folder gone.
    Fails on the old code: the RuntimeError propagated and the partial folder stayed, taking the space."""
    import errno
    import shutil

    import torch
    from accelerate import Accelerator

    from synth.training import save_state_atomically

    accelerator = Accelerator(cpu=True)
    accelerator.prepare(torch.nn.Linear(3, 2))  # something for save_state to save
    final = save_state_atomically(accelerator, tmp_path / "state", lambda d: (d / "own.json").write_text("1"))

    def disk_fills(folder):
        (Path(folder) / "optimizer.bin").write_bytes(b"\0" * 1024)
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 13649216 vs 13649108")

    monkeypatch.setattr(accelerator, "save_state", lambda folder, **kw: disk_fills(folder))
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9, 0))
    with pytest.raises(OSError) as err:
        save_state_atomically(accelerator, final, lambda d: (d / "own.json").write_text("2"))
    assert err.value.errno == errno.ENOSPC and ".state.tmp" in err.value.filename
    assert (final / "own.json").read_text() == "1" and not (tmp_path / ".state.tmp").exists()


def test_an_ablation_rerun_reuses_its_phantom_beside_the_heldout_rows_it_wrote(tmp_path):
    """The ablation writes heldout.csv into the phantom folder it rendered (and a kill can leave an atomic write's
    temporary there): a rerun of that step reuses the folder instead of refusing it as foreign."""
    from synth.phantom import render_dataset

    labels = render_dataset(4, 32, 0, tmp_path / "phantom", workers=1)
    (labels.parent / "heldout.csv").write_text("dicom_id\n")
    (labels.parent / ".heldout.csv.x1y2.tmp").write_text("half")
    assert render_dataset(4, 32, 0, tmp_path / "phantom", workers=1) == labels
    (labels.parent / "mine.txt").write_text("mine")
    assert render_dataset(4, 32, 0, tmp_path / "phantom", workers=1) == labels  # reused: nothing is deleted
    with pytest.raises(UserError, match="mine.txt"):
        render_dataset(4, 32, 1, tmp_path / "phantom", workers=1, overwrite=True)
    assert (labels.parent / "mine.txt").read_text() == "mine"


def test_predict_overwrite_replaces_its_own_submission_and_clears_a_killed_runs_cache(tmp_path):
    import numpy as np
    from PIL import Image
    from test_predict import make_ensemble

    model = make_ensemble(tmp_path / "model", sizes=(32,))
    for i in range(2):
        (tmp_path / "images").mkdir(exist_ok=True)
        Image.fromarray(np.full((40, 36), 40 * i, dtype=np.uint8)).save(tmp_path / "images" / f"img{i}.png")
    out = tmp_path / "sub.csv"
    args = ("predict", "--model", model, "--images", tmp_path / "images", "--out", out, "--size", "32")
    assert invoke(*args).exit_code == 0
    killed = tmp_path / f".sub.csv.{_dead_pid()}.q7w8.tmp"  # what a kill -9 during the decode leaves
    (killed / "images").mkdir(parents=True)
    result = invoke(*args, "--overwrite")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "model", "sub.csv"]
    assert out.read_text().startswith("dicom_id,")


def test_evaluate_refuses_then_replaces_its_output_whole(tmp_path, monkeypatch):
    """Fails on the old code: the second evaluation overwrote the first without asking (and had no --overwrite),
    file by file."""
    from data_fixtures import make_cxrlt, prepare_args
    from test_predict import make_ensemble

    import classifier.evaluation as evaluation

    csv = make_cxrlt(tmp_path, patients=6, per_patient=2)
    prepared = invoke(*prepare_args(csv, tmp_path / "mimic", tmp_path / "ext", "--size", "32", "--split", "test"))
    assert prepared.exit_code == 0, prepared.output
    model = make_ensemble(tmp_path / "model", sizes=(32,))
    out = tmp_path / "eval"
    args = ["evaluate", "--model", str(model), "--data", str(tmp_path / "ext" / "manifest.csv"), "--out", str(out)]
    assert CliRunner().invoke(app, [*args, "--n-boot", "0"]).exit_code == 0
    before = snapshot(out)
    assert_one_error_line(CliRunner().invoke(app, [*args, "--n-boot", "0"]), "already exists", "--overwrite")

    def disk_full(path, *a, **k):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(evaluation, "write_json_atomic", disk_full)  # metrics.json, written last
    result = CliRunner().invoke(app, [*args, "--n-boot", "20", "--overwrite"])
    assert result.exit_code == 1 and result.output.startswith("error: No space left on device"), result.output
    assert snapshot(out) == before and not [p for p in tmp_path.iterdir() if p.name.startswith(".eval")]
    monkeypatch.undo()
    result = CliRunner().invoke(app, [*args, "--n-boot", "20", "--overwrite"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "metrics.json").read_text())["bootstrap_seed"] == 0 and snapshot(out) != before
