"""Shared contracts: taxonomy, manifest round-trip, atomic writes, prompts, CLI errors."""

from __future__ import annotations

import os
import random
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from synth.io import atomic_path, write_json_atomic
from synth.manifest import (
    ManifestError,
    annotated_classes,
    label_sets,
    read_manifest,
    write_manifest,
)
from synth.prompts import PromptTemplates
from synth.taxonomy import (
    CXR_LT_CLASSES,
    ZERO_SHOT_CLASSES,
    UnknownClassError,
    expand_parents,
    frequency_groups,
    resolve_class,
)


def test_taxonomy_has_the_challenge_columns():
    assert len(CXR_LT_CLASSES) == 40 and len(set(CXR_LT_CLASSES)) == 40
    assert "Round(ed) Atelectasis" in CXR_LT_CLASSES and "Calcification of the Aorta" in CXR_LT_CLASSES
    assert set(ZERO_SHOT_CLASSES) == {"Bulla", "Cardiomyopathy", "Hilum", "Osteopenia", "Scoliosis"}


def test_resolve_class_is_case_insensitive_and_suggests():
    assert resolve_class("rib fracture") == "Rib Fracture"
    assert resolve_class("  ROUND(ED)   atelectasis ") == "Round(ed) Atelectasis"
    with pytest.raises(UnknownClassError, match="Rib Fracture"):
        resolve_class("rib fractur")
    with pytest.raises(UnknownClassError):
        resolve_class("Bulla", allowed=CXR_LT_CLASSES)


def test_frequency_groups_thresholds():
    groups = frequency_groups({"A": 0.2, "B": 0.05, "C": 0.005, "D": 0.10, "E": 0.01})
    assert groups == {"A": "head", "B": "medium", "C": "tail", "D": "medium", "E": "medium"}


def test_expand_parents():
    assert expand_parents({"Rib Fracture", "Nodule"}) == {"Rib Fracture", "Fracture", "Nodule", "Lung Lesion"}


def _tiny_manifest() -> pd.DataFrame:
    rows = []
    for i in range(4):
        row = {
            "dicom_id": f"d{i}",
            "subject_id": f"p{i}",
            "study_id": f"s{i}",
            "ViewPosition": "PA",
            "fpath": f"images/{i}.png",
            "split": "train",
            "source": "real",
        }
        row.update({c: np.nan for c in CXR_LT_CLASSES})
        row.update({"Pneumothorax": float(i % 2), "Normal": float(i % 2 == 0)})
        rows.append(row)
    return pd.DataFrame(rows)


def test_manifest_roundtrip_keeps_unannotated_empty(tmp_path):
    path = write_manifest(_tiny_manifest(), tmp_path / "manifest.csv")
    df = read_manifest(path)
    assert annotated_classes(df) == ["Normal", "Pneumothorax"]
    assert df["Edema"].isna().all()
    assert label_sets(df) == [("Normal",), ("Pneumothorax",), ("Normal",), ("Pneumothorax",)]
    assert df.attrs["root"] == str(tmp_path.resolve())
    assert ",," in path.read_text().splitlines()[1]  # empty cells, not zeros


def test_manifest_rejects_bad_labels_and_split(tmp_path):
    df = _tiny_manifest()
    df.loc[0, "Edema"] = 2
    with pytest.raises(ManifestError, match="Edema"):
        write_manifest(df, tmp_path / "m.csv")
    df = _tiny_manifest()
    df.loc[0, "split"] = "training"
    with pytest.raises(ManifestError, match="split"):
        write_manifest(df, tmp_path / "m.csv")
    assert not (tmp_path / "m.csv").exists()


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash")
    assert list(tmp_path.iterdir()) == []
    write_json_atomic(target, {"a": np.float32(1.5)})
    assert target.read_text().strip() == '{\n  "a": 1.5\n}'


def _config_loaders():
    from classifier.config import load_ensemble_config
    from synth.ablation.config import load_ablation_config
    from synth.filtering.config import load_filter_config
    from synth.generator.config import load_finetune_config
    from synth.inference import GenerateConfig
    from synth.prepare import PrepareConfig

    return {
        "finetune": load_finetune_config,
        "generate": GenerateConfig.from_yaml,
        "prepare": PrepareConfig.from_yaml,
        "filter": load_filter_config,
        "classifier": load_ensemble_config,
        "ablation": load_ablation_config,
        "prompts": PromptTemplates.load,
    }


@pytest.mark.parametrize("text", ["a: [1,\n", "- 1\n- 2\n"], ids=["bad-syntax", "not-a-mapping"])
@pytest.mark.parametrize("stage", sorted(_config_loaders()))
def test_every_config_loader_gives_one_error_for_a_broken_yaml(tmp_path, stage, text):
    from synth.errors import UserError

    path = tmp_path / "broken.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match="broken.yaml: (not valid YAML|expected a mapping)"):
        _config_loaders()[stage](path)


def test_prompt_rendering():
    templates = PromptTemplates.load()
    assert (
        templates.render(["Rib Fracture", "Pleural Effusion"], "PA")
        == "chest x-ray, PA view: pleural effusion and rib fracture"
    )
    assert templates.render(["Normal"], "AP").startswith("chest x-ray, AP view: normal")
    assert templates.render([], None) == "chest x-ray, frontal view"
    orders = {templates.render(["Edema", "Mass", "Nodule"], "PA", rng=random.Random(s)) for s in range(20)}
    assert len(orders) > 1  # shuffled at train time


def test_cli_classes_lists_every_class_name():
    proc = subprocess.run([sys.executable, "-m", "synth", "classes"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    missing = [c for c in (*CXR_LT_CLASSES, *ZERO_SHOT_CLASSES) if c not in proc.stdout]
    assert not missing, missing


def test_cli_unknown_class_is_one_error_line(tmp_path):
    """The installed entry point (``python -m synth``), a misspelt class: exit 2, ONE line naming the fix, nothing
    written."""
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "synth",
            "generate",
            "--model",
            str(tmp_path / "no-model"),
            "--class",
            "Rib Fractur",
            "--n",
            "2",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: unknown class 'Rib Fractur'") and "Did you mean: 'Rib Fracture'" in lines[0]
    assert "Traceback" not in proc.stderr and not out.exists()


def test_user_error_becomes_one_line_and_exit_2():
    from typer.testing import CliRunner

    from synth.cli import _SynthTyper
    from synth.errors import UserError

    app = _SynthTyper()

    @app.command("boom")
    def boom() -> None:
        raise UserError("bad thing; do X instead")

    @app.command("ok")
    def ok() -> None:
        pass

    result = CliRunner().invoke(app, ["boom"])
    assert result.exit_code == 2
    assert [ln for ln in result.output.splitlines() if ln.strip()] == ["error: bad thing; do X instead"]
    assert CliRunner().invoke(app, ["ok"]).exit_code == 0


def test_threads_option_sets_this_process_and_its_children(monkeypatch):
    """synth --threads N: torch uses N threads here, and processes it starts inherit N through the environment."""
    import torch
    from typer.testing import CliRunner

    from synth.cli import app

    before = torch.get_num_threads()
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        monkeypatch.delenv(var, raising=False)
    try:
        done = CliRunner().invoke(app, ["--threads", "1", "classes"])
        assert done.exit_code == 0, done.output
        assert torch.get_num_threads() == 1
        assert os.environ["OMP_NUM_THREADS"] == "1" and os.environ["MKL_NUM_THREADS"] == "1"
        assert CliRunner().invoke(app, ["--threads", "0", "classes"]).exit_code == 2  # at least one thread
    finally:
        torch.set_num_threads(before)
