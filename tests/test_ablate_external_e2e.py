"""An external test set end to end through the REAL stages (issue #38): phantom render -> prepare -> two arms x two
seeds of a one-member 32 px classifier; then a second phantom site prepared test-only with `synth prepare --split
test` is added to the finished ablation, and the re-run predicts it with the trained models and retrains nothing.

Real-only arms keep it fast (no generator, four one-epoch classifiers): 87 s measured on a shared 2-core machine
at load average ~10, so a fraction of that on an idle core.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from sklearn.metrics import average_precision_score
from tiny_configs import TINY_CLASSIFIER
from typer.testing import CliRunner

from synth.ablation.config import load_ablation_config
from synth.ablation.runner import plan, run_ablation
from synth.cli import app
from synth.manifest import label_matrix, read_manifest

REPO = Path(__file__).resolve().parents[1]
ARMS = ["real_only", "real_resampled"]


def _config(tmp: Path, external: list[dict] | None = None) -> Path:
    (tmp / "classifier.yaml").write_text(yaml.safe_dump(TINY_CLASSIFIER))
    cfg = {
        "name": "external-e2e",
        "seeds": [0, 1],
        "arms": ARMS,
        "output_root": str(tmp / "outputs"),
        "data": {"source": "phantom", "phantom_n": 200, "phantom_seed": 0, "size": 32, "val": 0.15, "test": 0.2},
        "generate": {"config": str(REPO / "configs/generate/default.yaml"), "classes": ["tail"], "n": 4},
        "classifier": {"config": str(tmp / "classifier.yaml"), "batch_size": 256},
        "evaluation": {"n_boot": 100, "grid_examples": 1, "external": external or []},
    }
    path = tmp / "ablation.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _site_b(tmp: Path) -> Path:
    """Another phantom 'site' (its own seed: new patients), prepared as a test-only set by the real CLI."""
    runner = CliRunner()
    res = runner.invoke(app, ["phantom", "--out", str(tmp / "site-b-raw"), "--n", "80", "--size", "32", "--seed", "7"])
    assert res.exit_code == 0, res.output
    raw = tmp / "site-b-raw"
    args = ["prepare", "--format", "cxrlt", "--labels", str(raw / "labels.csv"), "--images", str(raw)]
    res = runner.invoke(app, [*args, "--out", str(tmp / "site-b"), "--size", "32", "--split", "test", "--no-progress"])
    assert res.exit_code == 0, res.output
    return tmp / "site-b" / "manifest.csv"


def test_external_set_added_to_a_finished_ablation_is_scored_without_retraining(tmp_path: Path):
    cfg = load_ablation_config(_config(tmp_path))
    run_ablation(cfg, log=lambda m: None)
    markers = {s.name: (s.folder / "done.json").read_text() for s in plan(cfg)}

    manifest = _site_b(tmp_path)
    cfg = load_ablation_config(_config(tmp_path, [{"name": "site-b", "manifest": str(manifest)}]))
    log: list[str] = []
    report_dir = run_ablation(cfg, log=log.append)
    ran = [line for line in log if line.startswith("[run]")]
    assert ran and all("predict 80 external set site-b images" in line for line in ran), ran
    assert len(ran) == len(ARMS) * len(cfg.seeds)
    assert {s.name: (s.folder / "done.json").read_text() for s in plan(cfg)} == markers  # every step reused

    results = json.loads((report_dir / "results.json").read_text())
    (ext,) = results["external"]
    assert ext["dataset"]["n_test"] == 80 and [a["name"] for a in ext["arms"]] == ARMS
    assert set(ext["evidence"]["test_positives"]) == set(results["classes"])
    rows = read_manifest(manifest)
    y = label_matrix(rows, results["classes"])
    groups = results["groups"]  # from the ablation's training prevalence, not the site's
    steps = {s.name: s.folder for s in plan(cfg)}
    for arm in ext["arms"]:
        for seed in cfg.seeds:
            probs = np.load(next(steps[f"{arm['name']}/seed-{seed}"].glob("external-*_probs.npy")))
            head = [
                average_precision_score(y[:, j], probs[:, j])
                for j, c in enumerate(results["classes"])
                if groups[c] == "head" and np.nansum(y[:, j]) > 0
            ]
            assert arm["seeds"][str(seed)]["groups"]["head"]["value"] == pytest.approx(np.mean(head), abs=1e-6)
    resampled = ext["arms"][1]
    diffs = [
        resampled["seeds"][s]["groups"]["overall"]["value"] - ext["arms"][0]["seeds"][s]["groups"]["overall"]["value"]
        for s in ("0", "1")
    ]
    assert resampled["paired_over_seeds"]["overall"]["diff"] == pytest.approx(np.mean(diffs), abs=1e-6)
    md = (report_dir / "report.md").read_text()
    assert "## External test set: site-b" in md and "### Per-class ΔAP vs real only" in md
