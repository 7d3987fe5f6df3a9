"""External test sets in an ablation (issue #38): every arm and seed scored on a test-only manifest from another
site, with predictions cached beside each trained model, so adding a set to a finished run retrains nothing.

Training stages are faked; the evaluation and the paired bootstrap are the real ones.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from ablation_fakes import model_predict, real_metrics, tiny_manifest, write_config
from sklearn.metrics import average_precision_score
from typer.testing import CliRunner

from synth.ablation import stages
from synth.ablation.config import load_ablation_config
from synth.ablation.runner import plan, run_ablation
from synth.cli import app
from synth.errors import UserError
from synth.manifest import label_matrix, read_manifest

ARMS = ["real_only", "real_resampled", "synthetic_filtered"]


def _external(folder: Path, n: int = 24, split: str = "test") -> Path:
    """A site's test-only manifest that does not annotate Rib Fracture (an empty column)."""
    return tiny_manifest(folder, n, lambda i: split, extra=lambda i: {"Rib Fracture": math.nan})


def test_adding_an_external_set_to_a_finished_ablation_only_predicts(tmp_path: Path, monkeypatch):
    fake = real_metrics(monkeypatch)

    def prepare(cfg, out):  # the fake data, with a Rib Fracture training positive for real_resampled to repeat
        fake.calls.append("data")
        rib = lambda i: {"Rib Fracture": 1.0} if i in (0, 4) else {}  # noqa: E731
        return tiny_manifest(out, 40, lambda i: ("train", "val", "test", "test")[i % 4], extra=rib)

    monkeypatch.setattr(stages, "prepare_data", prepare)
    run_ablation(load_ablation_config(write_config(tmp_path, arms=ARMS)), log=lambda m: None)
    manifest = _external(tmp_path / "siteb")
    predicted: list[int] = []

    def predict(cfg, model_dir, df):
        predicted.append(len(df))
        return model_predict(cfg, model_dir, df)

    monkeypatch.setattr(stages, "predict", predict)
    fake.calls.clear()
    external = [{"name": "siteb", "manifest": str(manifest)}]
    cfg = load_ablation_config(write_config(tmp_path, arms=ARMS, evaluation__external=external))
    report_dir = run_ablation(cfg, log=lambda m: None)
    assert fake.calls == []  # no data, generator, filter or arm step ran again
    assert predicted == [24] * len(ARMS) * len(cfg.seeds)  # each trained model predicted the set once

    results = json.loads((report_dir / "results.json").read_text())
    (ext,) = results["external"]
    assert ext["name"] == "siteb" and ext["dataset"] == {"n_test": 24, "n_test_patients": 12}
    assert ext["not_scored"] == ["Rib Fracture"] and [a["name"] for a in ext["arms"]] == ARMS
    # scored as the test split is: the same classes and training-prevalence groups, every seed; numbers recomputed
    rows = read_manifest(manifest)
    y = label_matrix(rows, results["classes"])
    steps = {s.name: s.folder for s in plan(cfg)}
    for arm in ext["arms"]:
        for seed in cfg.seeds:
            (cache,) = steps[f"{arm['name']}/seed-{seed}"].glob("external-*_probs.npy")
            probs = np.load(cache)
            aps = [
                average_precision_score(y[:, j], probs[:, j])
                for j, c in enumerate(results["classes"])
                if c != "Rib Fracture" and y[:, j].sum() > 0
            ]
            assert arm["seeds"][str(seed)]["groups"]["overall"]["value"] == pytest.approx(np.mean(aps), abs=1e-6)
            assert arm["seeds"][str(seed)]["per_class"]["Rib Fracture"]["ap"] is None
    synthetic = ext["arms"][2]
    assert {"paired_over_seeds", "paired_vs_resampled", "per_class_paired", "harmed"} <= set(synthetic)
    assert synthetic["per_class_paired"]["Rib Fracture"]["diff"] is None
    assert ext["evidence"]["test_positives"]["Rib Fracture"] is None
    md = (report_dir / "report.md").read_text()
    section = md[md.index("## External test set: siteb") :]
    assert "- Not scored (the set does not annotate them): Rib Fracture." in section
    for title in ("mAP per frequency group", "Paired differences vs real, tail re-sampled", "Per-class ΔAP"):
        assert f"### {title}" in section
    assert "External test set: siteb" in (report_dir / "report.html").read_text()

    predicted.clear()
    run_ablation(cfg, log=lambda m: None)  # cached per (model, manifest content)
    assert predicted == [] and fake.calls == []
    _external(tmp_path / "siteb", n=22)  # the set changed: its content hash too, so every model predicts it again
    run_ablation(cfg, log=lambda m: None)
    assert predicted == [22] * len(ARMS) * len(cfg.seeds) and fake.calls == []


def test_an_external_set_must_be_a_test_only_manifest(tmp_path: Path, monkeypatch):
    real_metrics(monkeypatch)
    mixed = tiny_manifest(tmp_path / "mixed", 8, lambda i: ("train", "test")[i % 2])
    cfg = load_ablation_config(
        write_config(tmp_path, arms=["real_only"], evaluation__external=[{"name": "x", "manifest": str(mixed)}])
    )
    with pytest.raises(UserError, match=r"external set is test-only, this manifest has train rows; .*--split test"):
        run_ablation(cfg, log=lambda m: None)
    assert not any(s.done for s in plan(cfg))  # refused before any work

    res = CliRunner().invoke(app, ["ablate", "--config", str(cfg.source_path), "--dry-run"])  # the preflight too
    assert res.exit_code != 0 and "error:" in res.output and "an external set is test-only" in res.output

    missing = [{"name": "x", "manifest": str(tmp_path / "nope.csv")}]
    cfg = load_ablation_config(write_config(tmp_path, arms=["real_only"], evaluation__external=missing))
    with pytest.raises(UserError, match=r"evaluation.external\[0\].manifest .*nope.csv not found; prepare it with"):
        run_ablation(cfg, log=lambda m: None)
    twice = [{"name": "x", "manifest": "a.csv"}, {"name": "x", "manifest": "b.csv"}]
    with pytest.raises(UserError, match=r"external\[0\].name 'x' must be a distinct"):
        load_ablation_config(write_config(tmp_path, evaluation__external=twice))


def test_a_rendered_site_b_cohort_is_an_external_set_with_known_truth(tmp_path: Path, monkeypatch):
    """data.source phantom: ``phantom: {site: B}`` renders new patients through site B's acquisition, test-only,
    once (a re-run and an added arm reuse it); every arm/seed is scored on it like a prepared set."""
    real_metrics(monkeypatch)
    external = [{"name": "site-b", "phantom": {"site": "B", "n": 30, "seed": 11}}]
    cfg = load_ablation_config(write_config(tmp_path, arms=ARMS, evaluation__external=external))
    report_dir = run_ablation(cfg, log=lambda m: None)
    folder = {s.name: s.folder for s in plan(cfg)}["external:site-b"]
    rows = read_manifest(folder / "phantom" / "external.csv")
    assert len(rows) == 30 and set(rows["split"]) == {"test"} and rows["subject_id"].str.startswith("siteB11-").all()
    meta = json.loads((folder / "phantom" / "phantom.json").read_text())
    assert meta["arguments"]["site"] == "B"
    (ext,) = json.loads((report_dir / "results.json").read_text())["external"]
    assert ext["name"] == "site-b" and ext["dataset"]["n_test"] == 30
    before = (folder / "done.json").read_text()
    run_ablation(cfg, log=lambda m: None)
    assert (folder / "done.json").read_text() == before  # rendered once


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"name": "x", "phantom": {"site": "A"}}, "training data's own acquisition"),
        ({"name": "x", "phantom": {"site": "Z"}}, "expected one of"),
        ({"name": "x", "phantom": {"seed": 0}}, "repeats another phantom seed"),
        ({"name": "x", "phantom": {"n": 0}}, "at least 1"),
        ({"name": "x", "manifest": "m.csv", "phantom": {}}, "one of the two"),
    ],
)
def test_a_bad_rendered_cohort_is_one_error_at_load(tmp_path: Path, entry: dict, message: str):
    with pytest.raises(UserError, match=message):
        load_ablation_config(write_config(tmp_path, arms=ARMS, evaluation__external=[entry]))
