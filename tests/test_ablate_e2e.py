"""`synth ablate` end to end through the REAL stages (no fakes) on a tiny phantom.

Phantom render -> prepare -> generator (VAE + UNet, a few steps) -> generate -> verifier + filter ->
every registered arm x 2 seeds of a one-member 32 px classifier -> predictions -> bootstrap -> results.json -> report.
The models learn nearly nothing at this size; the test checks that the numbers are the numbers:

- every synthetic arm trained on synthetic rows, and as many as its set holds (results.json ``train_rows``);
- results.json's per-seed group mAPs equal an independent recomputation (scikit-learn AP) from the saved
  test predictions, and the seed-averaged paired differences equal the mean of per-seed differences;
- the report's group table prints the mean over ALL seeds of those values.

About a minute on one idle core (classifier ~40 %, generator + generate ~25 %, filter ~15 %).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from sklearn.metrics import average_precision_score
from tiny_configs import TINY_CLASSIFIER, TINY_FILTER_OVERRIDES, TINY_VERIFIER, tiny_generator
from typer.testing import CliRunner

from synth.ablation.arms import ARMS
from synth.ablation.config import load_ablation_config
from synth.ablation.runner import plan
from synth.cli import app
from synth.manifest import label_matrix, read_manifest

REPO = Path(__file__).resolve().parents[1]
GROUPS = ("overall", "head", "medium", "tail")
SEEDS = (0, 1)
GENERATED = ["Hernia", "Nodule"]  # ~8 and ~7 training positives in a 400-image phantom (seed 0)
N_PER_CLASS = 4


def _write(path: Path, data: dict) -> str:
    path.write_text(yaml.safe_dump(data))
    return str(path)


def _config(tmp: Path) -> Path:
    classifier = _write(tmp / "classifier.yaml", TINY_CLASSIFIER)
    verifier = _write(tmp / "verifier.yaml", dict(TINY_VERIFIER))
    cfg = {
        "name": "e2e",
        "seeds": list(SEEDS),
        "arms": list(ARMS),
        "output_root": str(tmp / "outputs"),
        "data": {"source": "phantom", "phantom_n": 400, "phantom_seed": 0, "size": 32, "val": 0.15, "test": 0.2},
        "generator": {
            "config": str(REPO / "configs/finetune/demo.yaml"),
            "overrides": tiny_generator(steps=2),
        },
        "generate": {
            "config": str(REPO / "configs/generate/default.yaml"),
            "classes": GENERATED,
            "n": N_PER_CLASS,
            "overrides": {"batch_size": 8, "steps": 2, "progress": False},
        },
        "filter": {
            "verifier_config": verifier,
            "config": str(REPO / "configs/filter/default.yaml"),
            "overrides": dict(TINY_FILTER_OVERRIDES),
        },
        "classifier": {"config": classifier, "batch_size": 256},
        "evaluation": {"n_boot": 100, "grid_examples": 2},
    }
    return Path(_write(tmp / "e2e.yaml", cfg))


def _fmt_est(values: list[float], lows: list[float], highs: list[float]) -> str:
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    return f"{mean:.3f} ± {std:.3f} [{sum(lows) / len(lows):.3f}, {sum(highs) / len(highs):.3f}]"


@pytest.fixture(scope="module")
def ablation(tmp_path_factory) -> tuple[Path, dict]:
    tmp = tmp_path_factory.mktemp("e2e")
    config = _config(tmp)
    res = CliRunner().invoke(app, ["ablate", "--config", str(config)])
    assert res.exit_code == 0, res.output
    assert "stage wall times" in res.output and "synthetic_pretrain/seed-1" in res.output  # the per-stage summary
    cfg = load_ablation_config(config)
    return config, json.loads((cfg.report_dir / "results.json").read_text())


def test_every_synthetic_arm_trained_on_its_synthetic_rows(ablation):
    config, results = ablation
    cfg = load_ablation_config(config)
    steps = {s.name: s.folder for s in plan(cfg)}
    generated = read_manifest(Path(json.loads((steps["generate"] / "done.json").read_text())["output"]))
    kept = read_manifest(steps["filter"] / "filtered" / "kept.csv")
    assert len(generated) == N_PER_CLASS * len(GENERATED) and sorted(set(generated["target_class"])) == GENERATED
    assert len(kept) > 0
    expected = {
        "real_only": 0,
        "real_resampled": 0,
        "synthetic_unfiltered": len(generated),
        "synthetic_filtered": len(kept),
        "synthetic_filtered_resampled": len(kept),
        "synthetic_unfiltered_resampled": len(generated),
        "synthetic_pretrain": len(kept),
    }
    for arm in results["arms"]:
        for seed, entry in arm["seeds"].items():
            rows = entry["train_rows"]
            assert rows["synthetic"] == rows["synthetic_offered"] == expected[arm["name"]], (arm["name"], seed, rows)
            assert rows["real_train"] == results["dataset"]["n_train"]
    resampling = next(a for a in results["arms"] if a["name"] == "real_resampled")["resampling"]
    assert resampling["n_presented"] > resampling["n_rows"] == results["dataset"]["n_train"]
    assert set(resampling["per_class"]) == set(GENERATED)
    for seed in SEEDS:  # the classifier really trained on the repeated rows, the baseline on the plain ones
        for arm, rows in (("real_resampled", resampling["n_presented"]), ("real_only", resampling["n_rows"])):
            member = json.loads((steps[f"{arm}/seed-{seed}"] / "model" / "member-0" / "member.json").read_text())
            assert member["stages"][0]["rows"] == rows, (arm, seed)
        # the opt-in arms: the filtered / unfiltered mix, its real rows repeated by the same plan
        for which in ("filtered", "unfiltered"):
            mix, mix_resampled = (
                json.loads((steps[f"{arm}/seed-{seed}"] / "model/member-0/member.json").read_text())["stages"][0]
                for arm in (f"synthetic_{which}", f"synthetic_{which}_resampled")
            )
            assert mix_resampled["rows"] - mix["rows"] == resampling["n_presented"] - resampling["n_rows"] > 0, seed
    # the filter's transfer gate ran (configs/filter/default.yaml) and says why it could not judge 4 images per class
    for cls in GENERATED:
        gate = results["filter"]["classes"][cls]["transfer"]
        assert gate["judged"] is False and gate["passed"] is True and "generated positives" in gate["reason"]


def test_results_equal_an_independent_recomputation_from_the_saved_predictions(ablation):
    config, results = ablation
    cfg = load_ablation_config(config)
    steps = {s.name: s.folder for s in plan(cfg)}
    data = read_manifest(Path(json.loads((steps["data"] / "done.json").read_text())["output"]))
    test = data[data["split"] == "test"].reset_index(drop=True)
    classes, groups = results["classes"], results["groups"]
    y = label_matrix(test, classes)
    assert len(test) == results["dataset"]["n_test"]

    def group_maps(probs: np.ndarray) -> dict[str, float]:
        ap = {}
        for j, c in enumerate(classes):
            known = ~np.isnan(y[:, j])
            if (y[known, j] == 1).any():
                ap[c] = average_precision_score(y[known, j], probs[known, j])
        out = {"overall": float(np.mean(list(ap.values())))}
        for g in ("head", "medium", "tail"):
            vals = [v for c, v in ap.items() if groups[c] == g]
            out[g] = float(np.mean(vals)) if vals else math.nan
        return out

    recomputed = {
        (arm, s): group_maps(np.load(steps[f"{arm}/seed-{s}"] / "test_probs.npy")) for arm in ARMS for s in SEEDS
    }
    distinct = set()
    for arm in results["arms"]:
        for s in SEEDS:
            for g in GROUPS:
                value = arm["seeds"][str(s)]["groups"][g]["value"]
                want = recomputed[arm["name"], s][g]
                assert (value is None and math.isnan(want)) or value == pytest.approx(want, abs=1e-6), (
                    arm["name"],
                    s,
                    g,
                )
                distinct.add(round(want, 6))
        if arm["name"] != "real_only":
            for g in ("overall", "tail"):
                diffs = [recomputed[arm["name"], s][g] - recomputed["real_only", s][g] for s in SEEDS]
                assert arm["paired_over_seeds"][g]["diff"] == pytest.approx(np.mean(diffs), abs=1e-6)
    assert len(distinct) > len(ARMS)  # groups and seeds really differ: a copied value cannot pass


def test_report_group_table_prints_the_mean_over_all_seeds(ablation):
    config, results = ablation
    md = (load_ablation_config(config).report_dir / "report.md").read_text()
    for arm in results["arms"]:
        entries = [arm["seeds"][str(s)]["groups"] for s in SEEDS]
        cells = [
            _fmt_est(
                [e[g]["value"] for e in entries], [e[g]["ci"][0] for e in entries], [e[g]["ci"][1] for e in entries]
            )
            for g in GROUPS
        ]
        assert f"| {arm['label']} | " + " | ".join(cells) + f" | {len(SEEDS)} |" in md
    assert "## Stage wall times" in md and results["timings"]["steps"]
    assert {r["step"] for r in results["timings"]["steps"]} >= {
        "data",
        "generator",
        "generate",
        "filter",
        "synthetic_filtered/seed-1",
    }
    if results["evidence"]["groups"]["tail"]["judged"]:
        assert re.search(r"- \+ synthetic, filtered .* the tail vs real, tail re-sampled: ΔmAP", md)
    else:  # a tiny phantom's tail classes have few test positives: the evidence rule judges none of them
        assert re.search(r"- \+ synthetic, filtered: tail not judged — .* ΔmAP vs real, tail re-sampled [+-]", md)
    assert "Do no harm:" in md
    for arm in results["arms"][1:]:  # harm is called only on classes with enough test positives, and only below 0
        for cls in arm["harmed"]:
            row = arm["per_class_paired"][cls]
            assert row["n_pos"] >= 5 and row["ci"][1] < 0
        assert all(0 < arm["per_class_paired"][c]["n_pos"] < 5 for c in arm["harm_not_judged"])
