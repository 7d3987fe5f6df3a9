"""Every ``synth`` command runs at least once through the real command path (typer's CliRunner), at tiny sizes.

Commands covered elsewhere: ``classes`` (test_core), ``prepare`` / ``phantom`` (test_data, test_phantom),
``generate`` (test_generate), ``filter`` (test_filter), ``evaluate`` / ``predict`` (test_classifier,
test_predict), ``ablate`` (test_ablate_e2e), ``report`` (test_report). Here: ``verifier train``,
``oracle train``, ``classify train``, ``finetune`` and ``demo`` — each asserts what the command wrote, not
only its exit status. :func:`test_every_command_is_exercised_by_some_test` keeps the list honest.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
import yaml
from filter_fixtures import CLASSES, make_real
from tiny_configs import TINY_VERIFIER, tiny_generator
from typer.testing import CliRunner

from synth.cli import app

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent


def _invoke(*args: object):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


def _write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def tiny_real(tmp_path_factory) -> Path:
    """3 classes x (train 8 / val 4 / test 1) one-patient images at 32 px."""
    return make_real(tmp_path_factory.mktemp("real"), {"train": 8, "val": 4, "test": 1})


def _verifier_yaml(tmp: Path) -> Path:
    return _write(
        tmp / "verifier.yaml",
        {
            "arch": "resnet10t",
            "image_size": 16,
            "epochs": 1,
            "batch_size": 8,
            "lr": 0.002,
            "seed": 0,
            "num_workers": 0,
            "eval_batch_size": 64,
        },
    )


def test_verifier_train_command(tiny_real: Path, tmp_path: Path):
    from synth.filtering.verifier import load_verifier

    out = tmp_path / "verifier"
    _invoke(
        "verifier",
        "train",
        "--data",
        tiny_real,
        "--out",
        out,
        "--config",
        _verifier_yaml(tmp_path),
        "--max-steps",
        2,
        "--seed",
        3,
    )
    meta = json.loads((out / "verifier.json").read_text())
    assert meta["trained_on"]["rows"] == 8 * len(CLASSES) and meta["trained_on"]["split"] == "train"
    assert meta["steps"] == 2 and meta["config"]["seed"] == 3 and meta["config"]["image_size"] == 16  # flags over YAML
    assert set(load_verifier(out).classes) == set(CLASSES)


def test_oracle_train_command(tiny_real: Path, tmp_path: Path):
    out = tmp_path / "oracle"
    result = _invoke(
        "oracle", "train", "--data", tiny_real, "--out", out, "--config", _verifier_yaml(tmp_path), "--max-steps", 2
    )
    oracle = json.loads((out / "oracle.json").read_text())
    assert set(oracle["classes"]) == set(CLASSES)
    for cls, entry in oracle["classes"].items():
        assert entry["val_positives"] == 4, cls  # thresholds chosen on the val split (4 positives per class)
        assert 0.0 <= entry["threshold"] <= 1.0 and 0.0 < entry["val_ap"] <= 1.0
    assert json.loads((out / "verifier.json").read_text())["steps"] == 2
    assert "Pneumothorax" in result.output  # the per-class table is printed


def test_classify_train_command(tiny_real: Path, tmp_path: Path):
    config = _write(
        tmp_path / "classifier.yaml",
        {
            "members": [{"arch": "convnext_atto", "image_size": 32}],
            "train": {"epochs": 3, "batch_size": 8, "lr": 0.002, "ema_decay": 0.9, "eval_batch_size": 64},
            "data": {"manifest": str(tiny_real), "output_dir": str(tmp_path / "from-config")},
        },
    )
    out = tmp_path / "model"
    result = _invoke("classify", "train", "--config", config, "--set", "train.epochs=1", "--out", out)
    assert result.output.strip().splitlines()[-1] == str(out)  # --out wins over data.output_dir
    assert not (tmp_path / "from-config").exists()
    spec = json.loads((out / "ensemble.json").read_text())
    assert set(spec["classes"]) == set(CLASSES) and spec["rows"] == {"real_train": 24, "val": 12, "synthetic": 0}
    member = json.loads((out / "member-0" / "member.json").read_text())
    assert [h["epoch"] for h in member["stages"][-1]["history"]] == [1]  # --set train.epochs=1 over the YAML's 3
    assert (out / "member-0" / "model.safetensors").exists()


def test_finetune_command(tmp_path: Path):
    """``synth finetune`` takes the script's flags; a 1-step VAE + 1-step UNet run writes a loadable pipeline."""
    import sys

    sys.path.insert(0, str(TESTS))
    from tiny_pipeline import write_tiny_manifest

    manifest = write_tiny_manifest(tmp_path / "data")
    out = tmp_path / "generator"
    _invoke(
        "finetune",
        "--config",
        REPO / "configs/finetune/demo.yaml",
        "--train_manifest",
        manifest,
        "--output_dir",
        out,
        "--resolution",
        16,
        "--vae_block_out_channels",
        8,
        16,
        "--vae_max_train_steps",
        1,
        "--vae_batch_size",
        4,
        "--unet_block_out_channels",
        8,
        16,
        "--unet_attention_head_dim",
        4,
        "--norm_num_groups",
        4,
        "--max_train_steps",
        1,
        "--train_batch_size",
        4,
        "--lr_warmup_steps",
        0,
        "--checkpointing_steps",
        100,
        "--num_validation_images",
        1,
        "--validation_inference_steps",
        1,
        "--cache_latents",
        "false",
    )
    assert (out / "model_index.json").exists() and (out / "synth_meta.json").exists()
    assert len(pd.read_csv(out / "loss.csv")) >= 1
    help_text = CliRunner().invoke(app, ["finetune", "--help"])
    assert help_text.exit_code == 0 and "--max_train_steps" in help_text.output


def _tiny_demo_config(tmp_path: Path) -> Path:
    """configs/ablation/demo.yaml shrunk to seconds (300 phantom images at 32 px, 1-step stages), written to
    tmp_path."""
    classifier = _write(
        tmp_path / "classifier.yaml",
        {
            "members": [{"arch": "convnext_atto", "image_size": 32}],
            "train": {"epochs": 1, "batch_size": 32, "lr": 0.002, "ema_decay": 0.9, "eval_batch_size": 256},
            "synthetic": {"mode": "none", "pretrain_epochs": 1, "labels": "target"},
            "ensemble": {"weights": "mean", "tta_flip": False},
        },
    )
    verifier = _write(tmp_path / "verifier.yaml", dict(TINY_VERIFIER))
    demo = yaml.safe_load((REPO / "configs/ablation/demo.yaml").read_text())
    demo.update(
        {
            "name": "tiny-demo",
            "seeds": [0],
            "arms": ["real_only", "synthetic_filtered"],
            "data": {**demo["data"], "phantom_n": 300, "size": 32},
        }
    )
    demo["generator"]["overrides"] = tiny_generator(steps=1)
    demo["generate"].update(
        {"classes": ["Hernia"], "n": 3, "overrides": {"batch_size": 8, "steps": 1, "progress": False}}
    )
    demo["filter"].update(
        {
            "verifier_config": str(verifier),
            # lenient on purpose (1-step generator): every class on the 1 % negative-specificity rule
            "overrides": {
                "min_val_positives": 100000,
                "fallback_specificity": 0.01,
                "bootstrap": 5,
                "kid_subsets": 5,
                "nearcopy_calibration_images": 10,
            },
        }
    )
    demo["classifier"] = {"config": str(classifier), "batch_size": 256}
    demo["evaluation"] = {"n_boot": 100, "grid_examples": 1}
    # the repository-relative stage configs of the shipped demo stay relative: the command must resolve them
    assert not Path(demo["generator"]["config"]).is_absolute() and not Path(demo["filter"]["config"]).is_absolute()
    config = _write(tmp_path / "tiny-demo.yaml", demo)
    return config


def test_demo_command_runs_the_whole_pipeline(tmp_path: Path, monkeypatch):
    """The real ``synth demo`` path on a tiny demo YAML (SYNTH_DEMO_CONFIG), from a folder outside the repository.

    Stage configs named relative to the repository (as configs/ablation/demo.yaml names them) must be found from
    any working directory; the report must be written under --output-root.
    """
    config = _tiny_demo_config(tmp_path)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv("SYNTH_DEMO_CONFIG", str(config))
    result = _invoke("demo", "--output-root", tmp_path / "outputs")
    report = Path(re.search(r"report: (\S+report\.html)", result.output).group(1))
    assert report == tmp_path / "outputs" / "reports" / "tiny-demo" / "report.html" and report.exists()
    results = json.loads((report.parent / "results.json").read_text())
    arms = {arm["name"]: arm["seeds"]["0"] for arm in results["arms"]}
    assert set(arms) == {"real_only", "synthetic_filtered"}
    assert arms["real_only"]["train_rows"]["synthetic"] == 0
    from synth.manifest import read_manifest

    kept_files = list((tmp_path / "outputs" / "ablations" / "tiny-demo").glob("filter-*/filtered/kept.csv"))
    assert len(kept_files) == 1, kept_files
    kept = read_manifest(kept_files[0])
    assert 0 < len(kept) <= 3 and set(kept["target_class"]) == {"Hernia"}
    assert arms["synthetic_filtered"]["train_rows"]["synthetic"] == len(kept)  # the arm trained on the kept images
    assert (report.parent / "report.md").exists()
    assert not list(elsewhere.iterdir())  # nothing written into the working directory


@pytest.mark.parametrize(
    "command, shown",
    [
        ("generate", "[default: 25]"),
        ("prepare", "[default: 256]"),
        ("ablate", "[default: outputs]"),
        ("phantom", "[default: 20000; with"),
    ],
)
def test_help_shows_the_defaults_its_options_name(command: str, shown: str):
    """Rich renders --help and reads a ``[default: 25]`` as a markup tag: unescaped, every default vanished."""
    result = CliRunner().invoke(app, [command, "--help"], terminal_width=240, env={"COLUMNS": "240"})
    assert result.exit_code == 0 and shown in result.output, result.output


def test_every_command_is_exercised_by_some_test():
    """Each command of ``synth --help`` (and each sub-command) is invoked by name in some test file."""
    import typer.main

    click_app = typer.main.get_command(app)
    names = []
    for name, command in click_app.commands.items():
        subs = getattr(command, "commands", None)
        names += [f"{name} {sub}" for sub in subs] if subs else [name]
    sources = "\n".join(p.read_text() for p in TESTS.glob("test_*.py"))
    missing = []
    for name in names:
        words = name.split()
        as_list = ", ".join(
            f'"{w}"' for w in words
        )  # invoke(app, ["verifier", "train", ...]) or _invoke("verifier", "train", ...)
        if as_list not in sources:
            missing.append(name)
    assert not missing, f"commands no test invokes: {missing}"
