"""The generator trainer's configuration: CLI flags over YAML keys, the shipped recipes, the script entry."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from synth import finetune
from synth.errors import UserError

REPO = Path(__file__).resolve().parents[1]


def test_cli_flags_override_yaml_keys(tmp_path):
    from synth.generator.config import parse_args

    yaml_path = tmp_path / "c.yaml"
    yaml_path.write_text("max_train_steps: 5\nuse_ema: false\nlearning_rate: 0.001\nvalidation_prompts: [a]\n")
    cfg = parse_args(
        [
            "--config",
            str(yaml_path),
            "--max_train_steps",
            "7",
            "--use_ema",
            "--validation_prompts",
            "x",
            "y",
            "--snr_gamma",
            "5",
        ]
    )
    assert (cfg.max_train_steps, cfg.use_ema, cfg.learning_rate, cfg.validation_prompts, cfg.snr_gamma) == (
        7,
        True,
        0.001,
        ["x", "y"],
        5.0,
    )
    assert parse_args(["--config", str(yaml_path), "--use_ema", "false"]).use_ema is False
    yaml_path.write_text("max_train_step: 5\n")
    with pytest.raises(UserError, match="unknown key"):
        parse_args(["--config", str(yaml_path)])
    with pytest.raises(UserError, match="--lr_scheduler"):
        finetune.load_finetune_config(None, {"lr_scheduler": "warp"})
    with pytest.raises(UserError, match="--max_train_steps"):
        parse_args(["--max_train_steps", "many"])


@pytest.mark.parametrize("name", ["demo", "phantom-cpu", "nih-sample", "mimic-sd21"])
def test_shipped_configs_load(name):
    """Every key of the shipped YAML reaches the config with its value (no key silently dropped or renamed)."""
    from synth.generator.config import _coerce
    from synth.io import read_yaml_mapping

    path = REPO / "configs" / "finetune" / f"{name}.yaml"
    raw = read_yaml_mapping(path)
    cfg = finetune.load_finetune_config(path)
    assert raw, path
    hints = __import__("typing").get_type_hints(finetune.FinetuneConfig)
    for key, value in raw.items():
        expected = _coerce(key, value, hints[key])
        got = getattr(cfg, key)
        if key == "cache_latents":  # normalised to auto | true | false
            expected, got = str(expected).lower(), str(got).lower()
        assert got == expected, (key, got, expected)
    assert cfg.resolution in (64, 512)


def test_script_entry_dry_run_names_the_missing_local_model():
    """`python synth/finetune.py` as a script (synth/ on sys.path[0]) imports the package and fails in one line."""
    proc = subprocess.run(
        [sys.executable, "synth/finetune.py", "--config", "configs/finetune/mimic-sd21.yaml", "--dry_run"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "finetune plan (dry run)" in proc.stdout
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "stable-diffusion-2-1-base" in errors[0] and "Traceback" not in proc.stderr
