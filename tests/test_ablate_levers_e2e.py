"""Issue #36's levers through the REAL stages on a tiny phantom: two generators (generator.seeds), counterfactual
controls rendered once and used by one variant only, and a head-re-trained (cRT) variant.

Checks the wiring, not the science: each generator has its own generate/filter stages, every synthetic arm seed
trains on its generator's kept images (the controls variant on the images AND their controls, every other arm on
the images alone), and the synthetic arms' intervals are Rubin's rules over the two generators.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from tiny_configs import TINY_FILTER_OVERRIDES, TINY_VERIFIER, tiny_generator
from typer.testing import CliRunner

from synth.ablation.config import load_ablation_config
from synth.ablation.runner import plan
from synth.cli import app
from synth.manifest import read_manifest

REPO = Path(__file__).resolve().parents[1]


def _write(path: Path, data: dict) -> str:
    path.write_text(yaml.safe_dump(data))
    return str(path)


@pytest.fixture(scope="module")
def levers(tmp_path_factory) -> tuple[Path, dict]:
    tmp = tmp_path_factory.mktemp("levers")
    classifier = {
        "members": [{"arch": "convnext_atto", "image_size": 32}],
        "train": {"epochs": 1, "batch_size": 32, "lr": 0.002, "select": "last", "eval_batch_size": 256},
        "synthetic": {"mode": "none", "labels": "target", "head_epochs": 1},
    }
    cfg = {
        "name": "levers",
        "seeds": [0, 1],
        "arms": ["real_only", "real_resampled", "synthetic_filtered_resampled", "controls", "crt"],
        "variants": [
            {"name": "controls", "arm": "synthetic_filtered_resampled", "classifier": {"synthetic.controls": True}},
            {"name": "crt", "arm": "synthetic_filtered_resampled", "classifier": {"synthetic.mode": "mix_then_head"}},
        ],
        "output_root": str(tmp / "outputs"),
        "data": {"source": "phantom", "phantom_n": 400, "phantom_seed": 0, "size": 32, "val": 0.15, "test": 0.2},
        "generator": {
            "config": str(REPO / "configs/finetune/demo.yaml"),
            "overrides": tiny_generator(steps=2),
            "seeds": [0, 1],
        },
        "generate": {
            "config": str(REPO / "configs/generate/default.yaml"),
            "classes": ["Hernia", "Nodule"],
            "n": 4,
            "overrides": {"batch_size": 8, "steps": 2, "progress": False, "controls": True},
        },
        "filter": {
            "verifier_config": _write(tmp / "verifier.yaml", dict(TINY_VERIFIER)),
            "config": str(REPO / "configs/filter/default.yaml"),
            "overrides": dict(TINY_FILTER_OVERRIDES),
        },
        "classifier": {"config": _write(tmp / "classifier.yaml", classifier), "batch_size": 256},
        "evaluation": {"n_boot": 100, "grid_examples": 2},
        "target": {"arm": "controls"},
    }
    config = Path(_write(tmp / "levers.yaml", cfg))
    res = CliRunner().invoke(app, ["ablate", "--config", str(config)])
    assert res.exit_code == 0, res.output
    return config, json.loads((load_ablation_config(config).report_dir / "results.json").read_text())


def test_each_generator_feeds_its_seeds_and_controls_reach_only_their_variant(levers):
    config, results = levers
    steps = {s.name: s.folder for s in plan(load_ablation_config(config))}
    kept = {}
    for k, suffix in enumerate(("", "@1")):
        rows = read_manifest(steps["filter" + suffix] / "filtered" / "kept.csv")
        images = rows[rows["pair_role"] != "control"] if "pair_role" in rows else rows
        assert len(images) > 0, f"generator {k} kept nothing"
        kept[k] = (len(images), len(rows))
    assert steps["generator"] != steps["generator@1"]
    arms = {a["name"]: a for a in results["arms"]}
    for seed, generator in (("0", 0), ("1", 1)):
        images, with_controls = kept[generator]
        for name in ("synthetic_filtered_resampled", "crt"):
            rows = arms[name]["seeds"][seed]["train_rows"]
            assert rows["generator"] == generator and rows["synthetic"] == images, (name, seed, rows)
        rows = arms["controls"]["seeds"][seed]["train_rows"]
        assert rows["synthetic"] == with_controls > images, rows


def test_synthetic_intervals_include_both_generators(levers):
    _, results = levers
    assert results["generators"]["k"] == 2 and results["generators"]["interval"] == "rubin"
    for arm in results["arms"]:
        if arm.get("synthetic"):
            tail = arm["paired_vs_resampled"]["tail"]
            assert tail["generators"]["k"] == 2 and "ci_within" in tail, arm["name"]
        else:
            assert "ci_within" not in arm.get("paired_over_seeds", {}).get("tail", {}), arm["name"]
