"""synth ablate: cached stages, arm/seed resume and what each stage is handed and scores (stages faked)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from ablation_fakes import CLASSES, FakeStages, nih_sample_data, ran_once, tiny_manifest, write_config

from synth.ablation import stages
from synth.ablation.config import load_ablation_config
from synth.ablation.runner import plan, run_ablation
from synth.errors import UserError
from synth.manifest import image_paths, read_manifest
from synth.taxonomy import CXR_LT_CLASSES

REAL_PREPARE = stages.prepare_data  # before any test swaps in the fakes
REPO = Path(__file__).resolve().parents[1]


def test_crash_then_resume_recomputes_only_unfinished_work(tmp_path: Path, monkeypatch):
    fake = FakeStages(monkeypatch)
    cfg = load_ablation_config(write_config(tmp_path))
    fake.fail_at = ("synthetic_filtered", 1)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_ablation(cfg, log=lambda m: None)
    first = list(fake.calls)
    assert first[:4] == ["data", "generator", "generate", "filter"]
    assert "synthetic_filtered/1" in first and "synthetic_pretrain/0" not in first
    done = {s.name for s in plan(cfg) if s.done}
    assert "synthetic_filtered/seed-0" in done and "synthetic_filtered/seed-1" not in done

    fake.calls.clear()
    fake.fail_at = None
    report_dir = run_ablation(cfg, log=lambda m: None)
    assert fake.calls == ["synthetic_filtered/1", "synthetic_pretrain/0", "synthetic_pretrain/1"]
    assert all(s.done for s in plan(cfg))

    results = json.loads((report_dir / "results.json").read_text())
    assert [a["name"] for a in results["arms"]] == [
        "real_only",
        "real_resampled",
        "synthetic_unfiltered",
        "synthetic_filtered",
        "synthetic_pretrain",
    ]
    assert results["generated_classes"] == ["Rib Fracture"] and results["filter"]["extractor"] == "fake"
    assert results["grids"]["Rib Fracture"]["kept"] and len(results["grids"]["Rib Fracture"]["rejected"]) == 2
    assert "synth ablate --config" in results["provenance"]["commands"][0]
    # resumed = uninterrupted: a fresh run from an empty output root writes the same numbers
    import shutil

    shutil.rmtree(cfg.output_root)
    again = json.loads((run_ablation(cfg, log=lambda m: None) / "results.json").read_text())
    assert json.dumps(again["arms"], sort_keys=True) == json.dumps(results["arms"], sort_keys=True)
    md = (report_dir / "report.md").read_text()
    for arm in results["arms"]:
        assert f"| {arm['label']} | 0.500 ± 0.000 [0.400, 0.600] |" in md  # the group table, from the (fake) numbers

    fake.calls.clear()
    run_ablation(cfg, log=lambda m: None)  # everything finished: nothing is recomputed
    assert fake.calls == []


@pytest.mark.parametrize("which", ["filtered", "unfiltered"])
def test_resampled_mix_arms_mix_their_set_under_the_resampled_plan(tmp_path: Path, monkeypatch, which: str):
    """The opt-in arms train on the filtered / unfiltered mix with real_resampled's repeat plan, and are paired with
    both baselines; without real_resampled in the config they still get the plan."""
    fake = FakeStages(monkeypatch)
    mixed = f"synthetic_{which}_resampled"
    arms = ["real_only", "real_resampled", f"synthetic_{which}", mixed]
    cfg = load_ablation_config(write_config(tmp_path, seeds=[0], arms=arms))
    results = json.loads((run_ablation(cfg, log=lambda m: None) / "results.json").read_text())
    assert fake.calls[-4:] == [f"{a}/0" for a in arms]  # FakeStages names a mix arm by its rows (46 = unfiltered)
    plan_repeats = fake.repeats["real_resampled"]
    assert plan_repeats and max(plan_repeats.values()) > 1
    assert fake.repeats[mixed] == plan_repeats and fake.repeats[f"synthetic_{which}"] is None
    arm = next(a for a in results["arms"] if a["name"] == mixed)
    assert "paired_vs_resampled" in arm and arm["resampling"]
    assert arm["label"] == f"+ synthetic, {which}, tail re-sampled"

    fake2 = FakeStages(monkeypatch)
    (tmp_path / "no-baseline").mkdir()
    cfg2 = load_ablation_config(write_config(tmp_path / "no-baseline", seeds=[0], arms=["real_only", mixed]))
    run_ablation(cfg2, log=lambda m: None)
    repeats = fake2.repeats[mixed]
    assert repeats and max(repeats.values()) > 1


def test_changed_classifier_config_retrains_arms_but_reuses_generator(tmp_path: Path, monkeypatch):
    fake, cfg = ran_once(tmp_path, monkeypatch)
    (tmp_path / "classifier.yaml").write_text("train: {epochs: 2}\n")  # stage keys hash the referenced YAML's content
    run_ablation(cfg, log=lambda m: None)
    assert fake.calls == ["real_only/0", "synthetic_filtered/0"]


def test_synthetic_mixing_edit_retrains_only_the_arms_that_mix(tmp_path: Path, monkeypatch):
    fake = FakeStages(monkeypatch)
    cfg = load_ablation_config(write_config(tmp_path, seeds=[0], arms=["real_only", "synthetic_filtered"]))
    (tmp_path / "classifier.yaml").write_text("synthetic: {labels: target}\n")
    run_ablation(cfg, log=lambda m: None)
    fake.calls.clear()
    (tmp_path / "classifier.yaml").write_text("synthetic: {labels: target_only}\n")
    run_ablation(cfg, log=lambda m: None)
    assert fake.calls == ["synthetic_filtered/0"]  # the real-only baseline never reads the synthetic section


def test_comment_only_config_edit_reuses_every_stage(tmp_path: Path, monkeypatch):
    fake, cfg = ran_once(tmp_path, monkeypatch)
    classifier = tmp_path / "classifier.yaml"
    classifier.write_text("# budget measured on 2 cores\n" + classifier.read_text() + "\n")
    run_ablation(cfg, log=lambda m: None)
    assert fake.calls == []


def test_changed_phantom_renderer_rerenders_and_retrains_everything(tmp_path: Path, monkeypatch):
    """Cached stages were built on the old renderer's images: none of them may be reused."""
    import synth.phantom.render as render

    fake, cfg = ran_once(tmp_path, monkeypatch)
    monkeypatch.setattr(render, "RENDERER_VERSION", render.RENDERER_VERSION + 1)
    run_ablation(cfg, log=lambda m: None)
    assert fake.calls[:4] == ["data", "generator", "generate", "filter"]
    assert {"real_only/0", "synthetic_filtered/0"} <= set(fake.calls)


def test_test_probabilities_are_stored_in_the_manifest_class_order(tmp_path: Path, monkeypatch):
    FakeStages(monkeypatch)
    cfg = load_ablation_config(write_config(tmp_path, seeds=[0], arms=["real_only"]))
    run_ablation(cfg, log=lambda m: None)
    step = next(s for s in plan(cfg) if s.name == "real_only/seed-0")
    stored = np.load(step.folder / "test_probs.npy")
    predicted = np.random.default_rng(0).random((20, len(CLASSES)))  # FakeStages.predict, classes reversed
    np.testing.assert_allclose(stored, predicted[:, ::-1].astype(np.float32))


def test_real_nih_sample_prepared_once_and_scored_on_its_annotated_classes(
    tmp_path: Path, monkeypatch, nih_sample: Path
):
    """The data step calls the real `synth prepare`; classifier stages are faked."""
    fake = FakeStages(monkeypatch)
    monkeypatch.setattr(stages, "prepare_data", REAL_PREPARE)
    seen = {}

    def predict(cfg, model_dir, df):
        seen["test_rows"] = len(df)
        return np.full((len(df), 40), 0.5), list(CXR_LT_CLASSES)

    def evaluate(cfg, y, p, classes, groups, patients):
        seen["classes"], seen["groups"] = classes, groups
        return FakeStages.evaluate(fake, cfg, y[:20], p[:20], classes, groups, patients[:20])

    monkeypatch.setattr(stages, "predict", predict)
    monkeypatch.setattr(stages, "evaluate", evaluate)
    path = write_config(
        tmp_path,
        seeds=[0],
        arms=["real_only"],
        data=nih_sample_data(nih_sample),
    )
    report_dir = run_ablation(load_ablation_config(path), log=lambda m: None)
    results = json.loads((report_dir / "results.json").read_text())
    assert len(seen["classes"]) == 15 and "Hernia" in seen["classes"] and "Rib Fracture" not in seen["classes"]
    assert results["dataset"]["n_test"] == seen["test_rows"] > 100
    assert set(results["groups"].values()) <= {"head", "medium", "tail"} and fake.calls == ["real_only/0"]


def test_heldout_phantom_rows_are_scored_with_the_test_split_without_retraining(tmp_path: Path, monkeypatch):
    """Adding held-out test patients to a finished ablation predicts them with the cached models only."""
    fake = FakeStages(monkeypatch)
    run_ablation(
        load_ablation_config(write_config(tmp_path, seeds=[0], arms=["real_only", "synthetic_filtered"])),
        log=lambda m: None,
    )
    seen: dict[str, list] = {"predict_rows": [], "eval_rows": []}

    def prepare_heldout(cfg, out):
        fake.calls.append("heldout")
        return tiny_manifest(out, 8, lambda i: "test", extra=lambda i: {"subject_id": f"heldout1-{i}"})

    def predict(cfg, model_dir, df):
        seen["predict_rows"].append(len(df))
        return FakeStages.predict(fake, cfg, model_dir, df)

    def evaluate(cfg, y, p, classes, groups, patients):
        seen["eval_rows"].append(len(p))
        seen["patients"] = list(patients)
        return FakeStages.evaluate(fake, cfg, y[:20], p[:20], classes, groups, patients[:20])

    monkeypatch.setattr(stages, "prepare_heldout", prepare_heldout, raising=False)
    monkeypatch.setattr(stages, "predict", predict)
    monkeypatch.setattr(stages, "evaluate", evaluate)
    fake.calls.clear()
    cfg = load_ablation_config(
        write_config(tmp_path, seeds=[0], arms=["real_only", "synthetic_filtered"], evaluation__heldout_phantom_n=8)
    )
    report_dir = run_ablation(cfg, log=lambda m: None)
    assert fake.calls == ["heldout"]  # no arm retrained
    assert seen["predict_rows"] == [8, 8] and seen["eval_rows"] == [28, 28]
    assert sum(p.startswith("heldout1-") for p in seen["patients"]) == 8
    step = next(s for s in plan(cfg) if s.name == "real_only/seed-0")
    held = np.load(next(step.folder.glob("heldout-*_probs.npy")))
    np.testing.assert_allclose(held, np.random.default_rng(0).random((8, len(CLASSES)))[:, ::-1].astype(np.float32))
    results = json.loads((report_dir / "results.json").read_text())
    assert results["dataset"]["n_test"] == 28 and results["dataset"]["n_heldout"] == 8

    fake.calls.clear()
    seen["predict_rows"].clear()
    run_ablation(cfg, log=lambda m: None)  # held-out probabilities are cached beside each arm's model
    assert fake.calls == [] and seen["predict_rows"] == []


def test_heldout_phantom_patients_are_new_and_all_in_test(tmp_path: Path):
    path = write_config(
        tmp_path,
        data={"source": "phantom", "phantom_n": 60, "size": 32, "phantom_seed": 0},
        evaluation__heldout_phantom_n=12,
    )
    cfg = load_ablation_config(path)
    heldout = read_manifest(stages.prepare_heldout(cfg, tmp_path / "heldout"))
    main = read_manifest(REAL_PREPARE(cfg, tmp_path / "data"))
    assert len(heldout) == 12 and (heldout["split"] == "test").all()
    assert not set(heldout["subject_id"]) & set(main["subject_id"])
    assert not set(heldout["dicom_id"]) & set(main["dicom_id"])
    assert all(p.is_file() for p in image_paths(heldout))


def test_oracle_fidelity_is_reported_and_never_retrains_filter_or_arms(tmp_path: Path, monkeypatch):
    fake = FakeStages(monkeypatch)
    cfg = load_ablation_config(write_config(tmp_path, seeds=[0], arms=["real_only", "synthetic_filtered"]))
    run_ablation(cfg, log=lambda m: None)

    def train_oracle(cfg, out):
        fake.calls.append("oracle")
        return out

    def oracle_fidelity(oracle_dir, real_train, generated, kept, out):
        fake.calls.append("fidelity")
        assert (real_train["split"] == "train").all() and len(generated) == 6 and len(kept) == 4
        path = out / "fidelity.json"
        path.write_text(
            json.dumps(
                {
                    "rule": "r",
                    "classes": {
                        "Rib Fracture": {
                            "oracle_val_ap": 0.9,
                            "real": 0.8,
                            "generated": 0.25,
                            "kept": 0.5,
                            "rejected": 0.0,
                            "n_real": 3,
                            "n_generated": 6,
                        }
                    },
                }
            )
        )
        return path

    monkeypatch.setattr(stages, "train_oracle", train_oracle)
    monkeypatch.setattr(stages, "oracle_fidelity", oracle_fidelity)
    (tmp_path / "oracle.yaml").write_text("epochs: 1\n")
    cfg = load_ablation_config(
        write_config(
            tmp_path,
            seeds=[0],
            arms=["real_only", "synthetic_filtered"],
            oracle={"config": str(tmp_path / "oracle.yaml"), "phantom_n": 80},
        )
    )
    fake.calls.clear()
    report_dir = run_ablation(cfg, log=lambda m: None)
    assert fake.calls == ["oracle", "fidelity"]  # a judge: the filter and the arms are reused
    results = json.loads((report_dir / "results.json").read_text())
    assert results["fidelity"]["classes"]["Rib Fracture"]["kept"] == 0.5
    md = (report_dir / "report.md").read_text()
    assert (
        "## Generator fidelity (phantom oracle)" in md
        and "| Rib Fracture | 0.900 | 0.800 | 0.250 | 0.500 | 0.000 | 3 | 6 |" in md
    )
    assert (
        "- Generator fidelity (phantom oracle, 1 judgeable class(es)): the prompted finding is detected in 25% of "
        "generated and 50% of kept images on average, vs 80% of real training positives."
    ) in md
    with pytest.raises(UserError, match="oracle needs data.source phantom"):
        load_ablation_config(
            write_config(
                tmp_path,
                data={"source": "manifest", "manifest": "m.csv"},
                oracle={"config": str(tmp_path / "oracle.yaml")},
            )
        )
    with pytest.raises(UserError, match="repeats another phantom seed"):
        load_ablation_config(
            write_config(tmp_path, oracle={"config": str(tmp_path / "oracle.yaml"), "phantom_seed": 0})
        )


def test_train_arm_hands_the_arm_mode_and_repeats_to_the_classifier(tmp_path: Path, monkeypatch):
    """The fast twin of the end-to-end check: a dropped ``mode`` would train every synthetic arm on real rows only."""
    import classifier.train as train_mod

    seen = []
    monkeypatch.setattr(
        train_mod,
        "train_ensemble",
        lambda ens, df, out, classes=None, row_repeats=None: (
            seen.append((ens.synthetic.mode, [m.seed for m in ens.members], row_repeats)) or out
        ),
    )
    cfg = load_ablation_config(REPO / "configs" / "ablation" / "demo.yaml")
    for mode in ("none", "mix", "pretrain_finetune"):
        stages.train_arm(cfg, mode, 7, pd.DataFrame(), CLASSES, tmp_path)
    stages.train_arm(cfg, "none", 3, pd.DataFrame(), CLASSES, tmp_path, row_repeats={"d1": 4})
    assert seen == [
        ("none", [7, 7], None),
        ("mix", [7, 7], None),
        ("pretrain_finetune", [7, 7], None),
        ("none", [3, 3], {"d1": 4}),
    ]


def test_evaluate_adapter_reports_each_group_its_own_map():
    """results.json's group values come from stages.evaluate: each group is the mean AP of its own classes."""
    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(0)
    y = (rng.random((120, len(CLASSES))) < [0.5, 0.4, 0.2, 0.1, 0.05]).astype(float)
    p = np.clip(y * rng.uniform(0.0, 0.6, y.shape) + rng.random(y.shape) * 0.6, 0, 1)
    groups = {
        "Atelectasis": "head",
        "Cardiomegaly": "head",
        "Pleural Effusion": "medium",
        "Pneumothorax": "tail",
        "Rib Fracture": "tail",
    }
    cfg = load_ablation_config(REPO / "configs" / "ablation" / "demo.yaml")
    out = stages.evaluate(cfg, y, p, CLASSES, groups, np.arange(120).astype(str))
    ap = {c: average_precision_score(y[:, j], p[:, j]) for j, c in enumerate(CLASSES)}
    for g in ("head", "medium", "tail"):
        want = np.mean([v for c, v in ap.items() if groups[c] == g])
        assert out["groups"][g]["value"] == pytest.approx(want)
        assert out["groups"][g]["ci"][0] <= want <= out["groups"][g]["ci"][1]
    assert out["groups"]["overall"]["value"] == pytest.approx(np.mean(list(ap.values())))
    assert len({round(out["groups"][g]["value"], 6) for g in ("overall", "head", "medium", "tail")}) == 4
