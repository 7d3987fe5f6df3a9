"""synth ablate: config validation and dry-run errors (nothing runs)."""

from __future__ import annotations

from pathlib import Path

import pytest
from ablation_fakes import write_config
from typer.testing import CliRunner

from synth.ablation.config import load_ablation_config
from synth.cli import app
from synth.errors import UserError
from synth.generator.models import PIPELINE_PARTS

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- config validation


@pytest.mark.parametrize(
    "change, message",
    [
        ({"bogus": 1}, "unknown key 'bogus'"),
        ({"data__bogus": 1}, r"unknown key\(s\) \['bogus'\] in 'data'"),
        ({"arms": ["real_only", "synthetic_magic"]}, r"unknown arm\(s\) \['synthetic_magic'\]"),
        ({"arms": ["synthetic_filtered"]}, "must include real_only"),
        ({"target": {"arm": "real_resampled"}}, "target.arm 'real_resampled' must be a synthetic arm"),
        ({"seeds": []}, "seeds must be a non-empty list"),
        ({"seeds": [0, 0]}, "distinct integers"),
        ({"generate__classes": ["Rib Fractur"]}, "Rib Fracture"),
        ({"data__source": "dicom"}, "data.source 'dicom'"),
        (
            {"data": {"source": "prepare", "format": "chexpert", "labels": "x", "images": "y"}},
            "data.format 'chexpert'",
        ),
        ({"evaluation__n_boot": 10}, "too small"),
        ({"evaluation__heldout_phantom_n": -1}, "must be >= 0"),
        (
            {"evaluation__heldout_phantom_n": 5, "data": {"source": "manifest", "manifest": "m.csv"}},
            "needs data.source phantom",
        ),
        (
            {"evaluation__heldout_phantom_n": 5, "evaluation__heldout_phantom_seed": 0},
            "would repeat the training patients",
        ),
        ({"evaluation__heldout_phantom_n": 5, "evaluation__split": "val"}, "needs evaluation.split test"),
    ],
)
def test_config_errors_name_the_key(tmp_path: Path, change, message):
    with pytest.raises(UserError, match=message):
        load_ablation_config(write_config(tmp_path, **change))


@pytest.mark.parametrize("name", ["phantom-cpu", "nih-sample", "mimic-cxr-lt", "demo"])
def test_shipped_configs_are_valid(name):
    cfg = load_ablation_config(REPO / "configs" / "ablation" / f"{name}.yaml")
    assert cfg.name == name and "real_only" in cfg.arms and "real_resampled" in cfg.arms
    if name != "demo":  # the verdicts: the target arm runs, against both real baselines
        assert len(cfg.seeds) >= 3 and cfg.target.arm in cfg.arms
        assert {"synthetic_filtered", "synthetic_filtered_resampled"} <= set(cfg.arms)


def test_dry_run_missing_path_is_one_error_line(tmp_path: Path):
    res = CliRunner().invoke(
        app,
        [
            "ablate",
            "--config",
            str(REPO / "configs/ablation/mimic-cxr-lt.yaml"),
            "--dry-run",
            "--output-root",
            str(tmp_path),
        ],
    )
    assert res.exit_code == 2
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "data.labels /data/cxr-lt-2024/train_labeled.csv not found" in lines[0]
    assert not (tmp_path / "ablations").exists()


def test_dry_run_pretrained_folder_must_hold_a_pipeline(tmp_path: Path):
    (tmp_path / "sd").mkdir()
    path = write_config(tmp_path, generator__pretrained=str(tmp_path / "sd"))
    res = CliRunner().invoke(app, ["ablate", "--config", str(path), "--dry-run"])
    assert res.exit_code == 2 and "generator.pretrained" in res.output and "model_index.json not found" in res.output
    (tmp_path / "sd" / "model_index.json").write_text("{}")
    res = CliRunner().invoke(app, ["ablate", "--config", str(path), "--dry-run"])  # finetune's own folder check
    assert res.exit_code == 2 and "incomplete pipeline folder, missing vae/" in res.output
    for part, needs in PIPELINE_PARTS.items():
        (tmp_path / "sd" / part).mkdir()
        (tmp_path / "sd" / part / needs[0]).write_text("{}")
        (tmp_path / "sd" / part / "model.safetensors").write_bytes(b"")
    res = CliRunner().invoke(app, ["ablate", "--config", str(path), "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "dry run: all paths found" in res.output and "synthetic_pretrain/seed-1" in res.output
    assert not (tmp_path / "outputs").exists()


def test_default_arms_leave_out_the_opt_in_arm(tmp_path: Path):
    cfg = load_ablation_config(write_config(tmp_path))
    assert "synthetic_filtered_resampled" not in cfg.arms and len(cfg.arms) == 5
