"""Fake ablation stages and the unit ablation config, shared by the ``synth ablate`` tests."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from PIL import Image
from tiny_configs import unit_ablation

from synth.ablation import stages
from synth.ablation.config import load_ablation_config
from synth.ablation.runner import run_ablation
from synth.manifest import write_manifest
from synth.taxonomy import CXR_LT_CLASSES

CLASSES = ["Atelectasis", "Cardiomegaly", "Pleural Effusion", "Pneumothorax", "Rib Fracture"]
PREVALENCE = {
    "Atelectasis": 0.3,
    "Cardiomegaly": 0.2,
    "Pleural Effusion": 0.05,
    "Pneumothorax": 0.03,
    "Rib Fracture": 0.005,
}


def write_config(tmp_path: Path, **changes) -> Path:
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


def tiny_manifest(folder: Path, n: int, split_of, source="real", extra=None) -> Path:
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


REAL_EVALUATE, REAL_PAIRED = stages.evaluate, stages.paired  # before any test swaps in the fakes


class FakeStages:
    """Cheap stand-ins that record every call; `fail_at` raises inside one arm/seed (a crash)."""

    def __init__(self, monkeypatch):
        self.calls: list[str] = []
        self.fail_at: tuple[str, int] | None = None
        self.repeats: dict[str, dict[str, int] | None] = {}  #: arm -> the row_repeats its train_arm call got
        self.overrides: list[dict] = []  #: the classifier overrides of every train_arm call, in call order
        self.modes: list[str] = []  #: the synthetic mode of every train_arm call
        self.generator_seeds: list = []  #: the finetune seed override of every train_generator call
        self.generate_overrides: list[dict] = []  #: the generate overrides of every generate_images call
        self.generators: list = []  #: the generators= of every paired call
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
        return tiny_manifest(out, 40, lambda i: ("train", "val", "test", "test")[i % 4])

    def train_generator(self, cfg, manifest, out):
        self.calls.append("generator")
        self.generator_seeds.append(cfg.generator.overrides.get("seed"))
        return out

    def generate_images(self, cfg, model_dir, out):
        self.calls.append("generate")
        self.generate_overrides.append(dict(cfg.generate.overrides, n=cfg.generate.n))
        return tiny_manifest(
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
        if mode in ("mix", "mix_then_head"):
            arm = "synthetic_unfiltered" if len(train_df) == 46 else "synthetic_filtered"
            arm += "_resampled" if row_repeats else ""
        self.calls.append(f"{arm}/{seed}")
        self.repeats[arm] = row_repeats
        self.overrides.append(dict(cfg.classifier.overrides))
        self.modes.append(mode)
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

    def paired(self, cfg, y, pa, pb, classes, groups, patients, generators=None):
        self.generators.append(generators)
        return {
            g: {"diff": 0.01, "ci": [-0.01, 0.03], "p": 0.4, "run_diffs": [0.01] * len(pa)}
            for g in ("overall", "head", "medium", "tail")
        }


def ran_once(tmp_path: Path, monkeypatch) -> tuple[FakeStages, object]:
    """real_only + synthetic_filtered (seed 0) run once on fake stages, calls cleared: a rerun's calls are what it
    recomputed."""
    fake = FakeStages(monkeypatch)
    cfg = load_ablation_config(write_config(tmp_path, seeds=[0], arms=["real_only", "synthetic_filtered"]))
    run_ablation(cfg, log=lambda m: None)
    fake.calls.clear()
    return fake, cfg


def model_predict(cfg, model_dir, df):
    """Probabilities of all 40 classes, seeded by the trained model's folder: different per arm/seed, the same for
    every call on one model."""
    rng = np.random.default_rng(zlib.crc32(str(Path(model_dir).parent).encode()))
    return rng.random((len(df), len(CXR_LT_CLASSES))), list(CXR_LT_CLASSES)


def real_metrics(monkeypatch) -> FakeStages:
    """Fake training stages, the real evaluation and paired bootstrap, and :func:`model_predict`."""
    fake = FakeStages(monkeypatch)
    monkeypatch.setattr(stages, "evaluate", REAL_EVALUATE)
    monkeypatch.setattr(stages, "paired", REAL_PAIRED)
    monkeypatch.setattr(stages, "predict", model_predict)
    return fake
