"""synth ablate: config validation, dry-run errors, cached stages and arm/seed resume (stages faked)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image
from tiny_configs import unit_ablation
from typer.testing import CliRunner

from synth.ablation import stages
from synth.ablation.config import load_ablation_config
from synth.ablation.runner import plan, run_ablation
from synth.cli import app
from synth.errors import UserError
from synth.manifest import image_paths, read_manifest, write_manifest
from synth.taxonomy import CXR_LT_CLASSES

REAL_PREPARE = stages.prepare_data  # before any test swaps in the fakes
REPO = Path(__file__).resolve().parents[1]
CLASSES = ["Atelectasis", "Cardiomegaly", "Pleural Effusion", "Pneumothorax", "Rib Fracture"]
PREVALENCE = {
    "Atelectasis": 0.3,
    "Cardiomegaly": 0.2,
    "Pleural Effusion": 0.05,
    "Pneumothorax": 0.03,
    "Rib Fracture": 0.005,
}


def _write_config(tmp_path: Path, **changes) -> Path:
    cfg = unit_ablation(tmp_path)
    cfg["seeds"] = [0, 1]
    cfg["evaluation"]["grid_examples"] = 2
    for key, value in changes.items():
        section, _, field = key.partition("__")
        if field:
            cfg[section][field] = value
        else:
            cfg[section] = value
    path = tmp_path / "ablation.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


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
        load_ablation_config(_write_config(tmp_path, **change))


@pytest.mark.parametrize("name", ["phantom-cpu", "nih-sample", "mimic-cxr-lt", "demo"])
def test_shipped_configs_are_valid(name):
    cfg = load_ablation_config(REPO / "configs" / "ablation" / f"{name}.yaml")
    assert cfg.name == name and "real_only" in cfg.arms and "real_resampled" in cfg.arms
    if name != "demo":  # the verdicts: the target arm runs, against both real baselines
        assert len(cfg.seeds) >= 3 and len(cfg.arms) >= 5 and cfg.target.arm in cfg.arms


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
    path = _write_config(tmp_path, generator__pretrained=str(tmp_path / "sd"))
    res = CliRunner().invoke(app, ["ablate", "--config", str(path), "--dry-run"])
    assert res.exit_code == 2 and "generator.pretrained" in res.output and "model_index.json not found" in res.output
    (tmp_path / "sd" / "model_index.json").write_text("{}")
    res = CliRunner().invoke(app, ["ablate", "--config", str(path), "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "dry run: all paths found" in res.output and "synthetic_pretrain/seed-1" in res.output
    assert not (tmp_path / "outputs").exists()


# ---------------------------------------------------------------- resume with fake stages


def _tiny_manifest(folder: Path, n: int, split_of, source="real", extra=None) -> Path:
    rng = np.random.default_rng(len(str(folder)))
    rows = []
    (folder / "images").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).save(folder / "images" / f"{i}.png")
        row = {
            "dicom_id": f"{source}{i}",
            "subject_id": f"p{i // 2}",
            "study_id": f"s{i}",
            "ViewPosition": "PA",
            "fpath": f"images/{i}.png",
            "split": split_of(i),
            "source": source,
        }
        row.update({c: float(rng.random() < max(PREVALENCE[c], 0.1)) for c in CLASSES})
        row.update(extra(i) if extra else {})
        rows.append(row)
    return write_manifest(pd.DataFrame(rows), folder / "manifest.csv")


class FakeStages:
    """Cheap stand-ins that record every call; `fail_at` raises inside one arm/seed (a crash)."""

    def __init__(self, monkeypatch):
        self.calls: list[str] = []
        self.fail_at: tuple[str, int] | None = None
        self.repeats: dict[str, dict[str, int] | None] = {}  #: arm -> the row_repeats its train_arm call got
        for name in (
            "prepare_data",
            "train_generator",
            "generate_images",
            "filter_images",
            "train_arm",
            "predict",
            "evaluate",
            "paired",
        ):
            monkeypatch.setattr(stages, name, getattr(self, name))

    def prepare_data(self, cfg, out):
        self.calls.append("data")
        return _tiny_manifest(out, 40, lambda i: ("train", "val", "test", "test")[i % 4])

    def train_generator(self, cfg, manifest, out):
        self.calls.append("generator")
        return out

    def generate_images(self, cfg, model_dir, out):
        self.calls.append("generate")
        return _tiny_manifest(
            out, 6, lambda i: "train", "synthetic", lambda i: {"target_class": "Rib Fracture", "Rib Fracture": 1.0}
        )

    def filter_images(self, cfg, synthetic_manifest, data_manifest, out):
        self.calls.append("filter")
        df = pd.read_csv(synthetic_manifest, dtype=str)
        df["fpath"] = [str(Path(synthetic_manifest).parent / f) for f in df["fpath"]]
        write_manifest(df.iloc[:4], out / "kept.csv")
        write_manifest(df.iloc[4:].assign(reject_reason="verifier"), out / "rejected.csv")
        (out / "summary.json").write_text(
            json.dumps(
                {
                    "extractor": "fake",
                    "classes": {
                        "Rib Fracture": {
                            "n": 6,
                            "kept": 4,
                            "rejected": {"verifier": 2},
                            "fid": 3.0,
                            "kid": 0.01,
                            "fid_floor": 2.0,
                        }
                    },
                }
            )
        )
        return out

    def train_arm(self, cfg, mode, seed, train_df, classes, out, row_repeats=None):
        arm = {
            "none": "real_resampled" if row_repeats else "real_only",
            "pretrain_finetune": "synthetic_pretrain",
        }.get(mode, "mix")
        if mode == "mix":
            arm = "synthetic_unfiltered" if len(train_df) == 46 else "synthetic_filtered"
            arm += "_resampled" if row_repeats else ""
        self.calls.append(f"{arm}/{seed}")
        self.repeats[arm] = row_repeats
        if self.fail_at == (arm, seed):
            raise RuntimeError("simulated crash")
        out.mkdir(parents=True, exist_ok=True)
        assert (train_df["source"] == "synthetic").any() == (mode != "none")
        return out

    def predict(self, cfg, model_dir, df):
        rng = np.random.default_rng(0)
        return rng.random((len(df), len(CLASSES))), list(reversed(CLASSES))

    def evaluate(self, cfg, y, p, classes, groups, patients):
        assert p.shape == (20, len(classes)) and len(patients) == 20
        return {
            "groups": {g: {"value": 0.5, "ci": [0.4, 0.6]} for g in ("overall", "head", "medium", "tail")},
            "per_class": {c: {"ap": 0.5, "auroc": 0.6, "f1": 0.4, "fnr": 0.3, "n_pos": 3} for c in classes},
        }

    def paired(self, cfg, y, pa, pb, classes, groups, patients):
        return {
            g: {"diff": 0.01, "ci": [-0.01, 0.03], "p": 0.4, "run_diffs": [0.01] * len(pa)}
            for g in ("overall", "head", "medium", "tail")
        }


def test_crash_then_resume_recomputes_only_unfinished_work(tmp_path: Path, monkeypatch):
    fake = FakeStages(monkeypatch)
    cfg = load_ablation_config(_write_config(tmp_path))
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
    cfg = load_ablation_config(_write_config(tmp_path, seeds=[0], arms=arms))
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
    cfg2 = load_ablation_config(_write_config(tmp_path / "no-baseline", seeds=[0], arms=["real_only", mixed]))
    run_ablation(cfg2, log=lambda m: None)
    repeats = fake2.repeats[mixed]
    assert repeats and max(repeats.values()) > 1


def test_default_arms_leave_out_the_opt_in_arm(tmp_path: Path):
    cfg = load_ablation_config(_write_config(tmp_path))
    assert "synthetic_filtered_resampled" not in cfg.arms and len(cfg.arms) == 5


def _ran_once(tmp_path: Path, monkeypatch) -> tuple[FakeStages, object]:
    """real_only + synthetic_filtered (seed 0) run once on fake stages, calls cleared: a rerun's calls are what it
    recomputed."""
    fake = FakeStages(monkeypatch)
    cfg = load_ablation_config(_write_config(tmp_path, seeds=[0], arms=["real_only", "synthetic_filtered"]))
    run_ablation(cfg, log=lambda m: None)
    fake.calls.clear()
    return fake, cfg


def test_changed_classifier_config_retrains_arms_but_reuses_generator(tmp_path: Path, monkeypatch):
    fake, cfg = _ran_once(tmp_path, monkeypatch)
    (tmp_path / "classifier.yaml").write_text("train: {epochs: 2}\n")  # stage keys hash the referenced YAML's content
    run_ablation(cfg, log=lambda m: None)
    assert fake.calls == ["real_only/0", "synthetic_filtered/0"]


def test_synthetic_mixing_edit_retrains_only_the_arms_that_mix(tmp_path: Path, monkeypatch):
    fake = FakeStages(monkeypatch)
    cfg = load_ablation_config(_write_config(tmp_path, seeds=[0], arms=["real_only", "synthetic_filtered"]))
    (tmp_path / "classifier.yaml").write_text("synthetic: {labels: target}\n")
    run_ablation(cfg, log=lambda m: None)
    fake.calls.clear()
    (tmp_path / "classifier.yaml").write_text("synthetic: {labels: target_only}\n")
    run_ablation(cfg, log=lambda m: None)
    assert fake.calls == ["synthetic_filtered/0"]  # the real-only baseline never reads the synthetic section


def test_comment_only_config_edit_reuses_every_stage(tmp_path: Path, monkeypatch):
    fake, cfg = _ran_once(tmp_path, monkeypatch)
    classifier = tmp_path / "classifier.yaml"
    classifier.write_text("# budget measured on 2 cores\n" + classifier.read_text() + "\n")
    run_ablation(cfg, log=lambda m: None)
    assert fake.calls == []


def test_changed_phantom_renderer_rerenders_and_retrains_everything(tmp_path: Path, monkeypatch):
    """Cached stages were built on the old renderer's images: none of them may be reused."""
    import synth.phantom.render as render

    fake, cfg = _ran_once(tmp_path, monkeypatch)
    monkeypatch.setattr(render, "RENDERER_VERSION", render.RENDERER_VERSION + 1)
    run_ablation(cfg, log=lambda m: None)
    assert fake.calls[:4] == ["data", "generator", "generate", "filter"]
    assert {"real_only/0", "synthetic_filtered/0"} <= set(fake.calls)


def test_test_probabilities_are_stored_in_the_manifest_class_order(tmp_path: Path, monkeypatch):
    FakeStages(monkeypatch)
    cfg = load_ablation_config(_write_config(tmp_path, seeds=[0], arms=["real_only"]))
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
    path = _write_config(
        tmp_path,
        seeds=[0],
        arms=["real_only"],
        data={
            "source": "prepare",
            "format": "nih",
            "labels": str(nih_sample / "Data_Entry_2017_v2020.csv"),
            "images": str(nih_sample / "images"),
            "size": 32,
        },
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
        load_ablation_config(_write_config(tmp_path, seeds=[0], arms=["real_only", "synthetic_filtered"])),
        log=lambda m: None,
    )
    seen: dict[str, list] = {"predict_rows": [], "eval_rows": []}

    def prepare_heldout(cfg, out):
        fake.calls.append("heldout")
        return _tiny_manifest(out, 8, lambda i: "test", extra=lambda i: {"subject_id": f"heldout1-{i}"})

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
        _write_config(tmp_path, seeds=[0], arms=["real_only", "synthetic_filtered"], evaluation__heldout_phantom_n=8)
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
    path = _write_config(
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
    cfg = load_ablation_config(_write_config(tmp_path, seeds=[0], arms=["real_only", "synthetic_filtered"]))
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
        _write_config(
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
            _write_config(
                tmp_path,
                data={"source": "manifest", "manifest": "m.csv"},
                oracle={"config": str(tmp_path / "oracle.yaml")},
            )
        )
    with pytest.raises(UserError, match="repeats another phantom seed"):
        load_ablation_config(
            _write_config(tmp_path, oracle={"config": str(tmp_path / "oracle.yaml"), "phantom_seed": 0})
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
