"""Classifier stage: config, synthetic mixing, and real training runs (metrics and losses: test_classifier_metrics).

The training tests use the real NIH sample at 16–32 px and a few epochs so the
whole file stays well under a minute of CPU.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from classifier import metrics
from classifier.config import EnsembleConfig, MemberConfig, load_ensemble_config
from synth.errors import UserError

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- config and data selection


def test_config_yaml_overrides_and_unknown_keys(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text("members:\n  - {arch: convnext_atto, image_size: 32}\ntrain: {epochs: 2}\n")
    cfg = load_ensemble_config(path, {"train.epochs": 5, "synthetic": {"mode": "mix", "ratio": 0.5}})
    assert cfg.train.epochs == 5 and cfg.synthetic.mode == "mix" and cfg.synthetic.ratio == 0.5
    assert cfg.members[0].image_size == 32 and cfg.members[0].seed == 0
    for bad in (
        "trian: {epochs: 2}\n",
        "train: {epoch: 2}\n",
        "members:\n  - {arch: not_a_model}\n",
        "synthetic: {mode: sometimes}\n",
    ):
        path.write_text(bad)
        with pytest.raises(UserError):
            load_ensemble_config(path)
    with pytest.raises(UserError, match="not found"):
        load_ensemble_config(tmp_path / "missing.yaml")
    for name in ("demo", "phantom-cpu", "nih-sample"):
        load_ensemble_config(REPO / "configs" / "classifier" / f"{name}.yaml")
    # mimic-cxr-lt names local ImageNet weights (a placeholder path): it loads where they exist, else one clear error
    import yaml

    mimic = REPO / "configs" / "classifier" / "mimic-cxr-lt.yaml"
    weights = {m.get("pretrained_file") for m in yaml.safe_load(mimic.read_text())["members"]} - {None}
    if all(Path(w).is_file() for w in weights):
        load_ensemble_config(mimic)
    else:
        with pytest.raises(UserError, match="pretrained_file .* not found"):
            load_ensemble_config(mimic)


def _synthetic_frame(n_per_class: dict[str, int]) -> pd.DataFrame:
    rows = []
    for cls, n in n_per_class.items():
        rows += [
            {
                "dicom_id": f"s-{cls}-{i}",
                "subject_id": f"s-{cls}-{i}",
                "fpath": f"/x/{cls}{i}.png",
                "split": "train",
                "source": "synthetic",
                "target_class": cls,
                cls: 1.0,
            }
            for i in range(n)
        ]
    real = [
        {"dicom_id": f"r{i}", "subject_id": f"r{i}", "fpath": f"r{i}.png", "split": "train", "source": "real"}
        for i in range(100)
    ]
    return pd.DataFrame(real + rows)


def test_synthetic_mixing_honours_cap_and_ratio():
    from classifier.config import SyntheticMixConfig
    from classifier.data import synthetic_rows

    df = _synthetic_frame({"Hernia": 30, "Mass": 10})
    assert synthetic_rows(df, SyntheticMixConfig(mode="none"), 100).empty
    assert len(synthetic_rows(df, SyntheticMixConfig(mode="mix"), 100)) == 40
    capped = synthetic_rows(df, SyntheticMixConfig(mode="mix", per_class_cap=12), 100)
    assert capped["target_class"].value_counts().to_dict() == {"Hernia": 12, "Mass": 10}
    ratio = synthetic_rows(df, SyntheticMixConfig(mode="mix", per_class_cap=12, ratio=0.15), 100)
    assert len(ratio) == 15 and set(ratio["source"]) == {"synthetic"}
    again = synthetic_rows(df, SyntheticMixConfig(mode="mix", per_class_cap=12, ratio=0.15), 100)
    assert list(again["dicom_id"]) == list(ratio["dicom_id"])  # deterministic: every arm/seed gets the same rows


def test_synthetic_target_labels_drop_unverified_prompt_findings():
    from classifier.config import SyntheticMixConfig
    from classifier.data import synthetic_rows

    df = _synthetic_frame({"Rib Fracture": 3, "Mass": 2})
    df["Pleural Effusion"] = np.where(df["source"] == "synthetic", 1.0, 0.0)  # a co-occurring prompt finding
    df["Cardiomegaly"] = 0.0
    prompt = synthetic_rows(df, SyntheticMixConfig(mode="mix"), 100)
    assert (prompt["Pleural Effusion"] == 1).all() and (prompt["Cardiomegaly"] == 0).all()
    target = synthetic_rows(df, SyntheticMixConfig(mode="mix", labels="target"), 100)
    rib = target[target["target_class"] == "Rib Fracture"]
    assert (rib["Rib Fracture"] == 1).all() and (rib["Fracture"] == 1).all() and rib["Mass"].isna().all()
    mass = target[target["target_class"] == "Mass"]
    assert (mass["Mass"] == 1).all() and (mass["Lung Lesion"] == 1).all()
    assert target["Pleural Effusion"].isna().all()  # named in the prompt but unverified: out of the loss
    assert (target["Cardiomegaly"] == 0).all()  # not asked for: still a negative (pretraining needs negatives)
    only = synthetic_rows(df, SyntheticMixConfig(mode="mix", labels="target_only"), 100)
    rib = only[only["target_class"] == "Rib Fracture"]
    assert (rib["Rib Fracture"] == 1).all() and (rib["Fracture"] == 1).all()
    assert only["Pleural Effusion"].isna().all() and only["Cardiomegaly"].isna().all()  # nothing else is taught
    assert (df.loc[df["source"] == "real", "Cardiomegaly"] == 0).all()  # real rows untouched


def test_epoch_batches_are_deterministic_and_sharded():
    from classifier.data import epoch_batches

    a = epoch_batches(103, 10, epoch=1, seed=0)
    assert len(a) == 10 and all(len(b) == 10 for b in a)
    assert all(torch.equal(x, y) for x, y in zip(a, epoch_batches(103, 10, epoch=1, seed=0)))
    r0, r1 = epoch_batches(103, 10, 1, 0, rank=0, world=2), epoch_batches(103, 10, 1, 0, rank=1, world=2)
    assert len(r0) == len(r1) == 5
    assert not set(torch.cat(r0).tolist()) & set(torch.cat(r1).tolist())


# ---------------------------------------------------------------- training on the real NIH sample


@pytest.fixture(scope="module")
def nih32(nih_sample: Path, tmp_path_factory) -> pd.DataFrame:
    from synth.manifest import read_manifest
    from synth.prepare import prepare_dataset

    out = tmp_path_factory.mktemp("nih32")
    manifest = prepare_dataset(
        "nih", nih_sample / "Data_Entry_2017_v2020.csv", nih_sample / "images", out / "data", size=32
    )
    return read_manifest(manifest)


def _tiny(df: pd.DataFrame, n_train: int = 96, n_val: int = 40, n_test: int = 20) -> pd.DataFrame:
    parts = [df[df["split"] == s].head(n) for s, n in (("train", n_train), ("val", n_val), ("test", n_test))]
    out = pd.concat(parts)
    out.attrs.update(df.attrs)
    return out


def _config(sizes=(32,), epochs=2, batch_size=16, **train) -> EnsembleConfig:
    cfg = EnsembleConfig(members=[MemberConfig(image_size=s) for s in sizes])
    return replace(cfg, train=replace(cfg.train, epochs=epochs, batch_size=batch_size, ema_decay=0.9, **train))


def test_train_evaluate_two_resolutions_beats_prevalence(nih32: pd.DataFrame, tmp_path: Path, monkeypatch):
    """End to end on real NIH images: train a 32+40 px ensemble, `synth evaluate` it; test rows never read in
    training."""
    from typer.testing import CliRunner

    import classifier.data as data
    from classifier.train import train_ensemble
    from synth.cli import app

    read = []
    original = data.read_image
    monkeypatch.setattr(data, "read_image", lambda path, size: (read.append(str(path)), original(path, size))[1])
    cfg = _config(sizes=(32, 40), epochs=2, batch_size=32, lr=3e-3)
    cfg = replace(cfg, ensemble=replace(cfg.ensemble, weights="val"))
    train = nih32[nih32["split"] == "train"]
    df = nih32.drop(train.index[320:])  # 320 of the 642 training rows keep the test quick; val/test untouched
    df.attrs.update(nih32.attrs)
    model_dir = train_ensemble(cfg, df, tmp_path / "model")
    test_paths = {
        str(p)
        for p in __import__("synth.manifest", fromlist=["image_paths"]).image_paths(nih32[nih32["split"] == "test"])
    }
    assert read and not set(read) & test_paths

    spec = json.loads((model_dir / "ensemble.json").read_text())
    assert [m["image_size"] for m in spec["members"]] == [32, 40] and sum(
        m["weight"] for m in spec["members"]
    ) == pytest.approx(1)
    manifest = Path(nih32.attrs["root"]) / "manifest.csv"
    result = CliRunner().invoke(
        app,
        [
            "evaluate",
            "--model",
            str(model_dir),
            "--data",
            str(manifest),
            "--split",
            "test",
            "--out",
            str(tmp_path / "eval"),
            "--n-boot",
            "100",
        ],
    )
    assert result.exit_code == 0, result.output
    ev = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert {"map", "head_map", "medium_map", "tail_map", "mauroc", "mf1", "ece", "ci", "per_class"} <= set(ev)
    assert len(pd.read_csv(tmp_path / "eval" / "submission.csv").columns) == 41

    # prevalence baseline: every image gets the training prevalence (AP = the class's positive rate)
    test = nih32[nih32["split"] == "test"]
    from synth.manifest import label_matrix

    classes = spec["classes"]
    y = label_matrix(test, classes)
    prevalence = np.array([spec["train_prevalence"][c] for c in classes])
    baseline = metrics.evaluate(y, np.tile(prevalence, (len(test), 1)), classes, {}, n_boot=0)["map"]
    print(f"test mAP {ev['map']:.4f} vs prevalence baseline {baseline:.4f}")
    assert ev["map"] > baseline + 0.01, (ev["map"], baseline)


def test_resume_from_checkpoint_matches_uninterrupted(nih32: pd.DataFrame, tmp_path: Path, monkeypatch):
    from filter_fixtures import member_weights

    import classifier.stage as stage
    import classifier.train as train

    df = _tiny(nih32, n_train=48, n_val=24, n_test=8)
    cfg = _config(sizes=(32,), epochs=2)
    full = train.train_ensemble(cfg, df, tmp_path / "full")

    class Stop(Exception):
        pass

    def stop(stage, epoch):
        if epoch == 1:
            raise Stop

    monkeypatch.setattr(stage, "EPOCH_END_HOOK", stop)
    with pytest.raises(Stop):
        train.train_ensemble(cfg, df, tmp_path / "resumed")
    assert (tmp_path / "resumed" / "member-0" / "ckpt-train" / "state").is_dir()
    assert not (tmp_path / "resumed" / "ensemble.json").exists()
    monkeypatch.setattr(stage, "EPOCH_END_HOOK", None)
    resumed = train.train_ensemble(cfg, df, tmp_path / "resumed")
    meta = json.loads((resumed / "member-0" / "member.json").read_text())
    assert [h["epoch"] for h in meta["stages"][0]["history"]] == [1, 2]
    a, b = member_weights(full), member_weights(resumed)
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    probs_a, _ = __import__("classifier.ensemble", fromlist=["predict"]).predict(full, df[df["split"] == "val"])
    assert probs_a.shape == (int((df["split"] == "val").sum()), len(meta["classes"]))


def test_two_process_launch_shards_batches_and_writes_one_ensemble(nih32: pd.DataFrame, tmp_path: Path):
    """`accelerate launch --multi_gpu --num_processes 2` on CPU (gloo DDP): each rank takes half the batches."""
    import os
    import subprocess

    import yaml

    from synth.manifest import write_manifest

    manifest = write_manifest(
        _tiny(nih32, n_train=128, n_val=32, n_test=8), Path(nih32.attrs["root"]) / "tiny-ddp.csv"
    )
    config = tmp_path / "ddp.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "members": [{"arch": "convnext_atto", "image_size": 32}],
                "train": {"epochs": 1, "batch_size": 16, "ema_decay": 0.9, "checkpoint": True},
                "data": {"manifest": str(manifest), "output_dir": str(tmp_path / "model")},
            }
        )
    )
    from two_processes import LAUNCH_TWO_CPU_PROCESSES

    cmd = [
        *LAUNCH_TWO_CPU_PROCESSES,
        str(REPO / "classifier" / "train.py"),
        "--config",
        str(config),
    ]
    done = subprocess.run(
        cmd,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    member = json.loads((tmp_path / "model" / "member-0" / "member.json").read_text())
    # 128 rows, batch 16 per process, 2 processes: 4 optimiser steps per epoch (one process alone takes 8)
    assert member["stages"][0]["steps"] == 4, member["stages"][0]
    spec = json.loads((tmp_path / "model" / "ensemble.json").read_text())
    assert [m["image_size"] for m in spec["members"]] == [32]
    assert not list((tmp_path / "model").rglob("*.tmp*"))  # main-process-only, atomic writes


def test_pretrain_finetune_never_trains_final_stage_on_synthetic(nih32: pd.DataFrame, tmp_path: Path):
    from classifier.train import train_ensemble
    from synth.manifest import concat_manifests

    df = _tiny(nih32, n_train=32, n_val=16, n_test=8)
    syn = df[df["split"] == "train"].head(24).copy()
    syn["source"], syn["target_class"] = "synthetic", "Hernia"
    syn["dicom_id"] = "syn-" + syn["dicom_id"]
    both = concat_manifests([df, syn], df.attrs["root"])
    cfg = _config(sizes=(32,), epochs=1)
    cfg = replace(cfg, synthetic=replace(cfg.synthetic, mode="pretrain_finetune", pretrain_epochs=1, per_class_cap=20))
    out = train_ensemble(cfg, both, tmp_path / "pf")
    stages = json.loads((out / "member-0" / "member.json").read_text())["stages"]
    assert [s["name"] for s in stages] == ["pretrain", "finetune"]
    assert stages[0]["sources"] == {"synthetic": 20}  # capped, synthetic only
    assert stages[1]["sources"] == {"real": 32}  # the final stage: real rows only
    mixed = train_ensemble(
        replace(cfg, synthetic=replace(cfg.synthetic, mode="mix", ratio=0.25)), both, tmp_path / "mix"
    )
    stages = json.loads((mixed / "member-0" / "member.json").read_text())["stages"]
    assert stages[0]["sources"] == {"real": 32, "synthetic": 8}


def test_script_entry_reports_bad_config(tmp_path: Path):
    proc = subprocess.run(
        [sys.executable, str(REPO / "classifier" / "train.py"), "--config", str(tmp_path / "nope.yaml")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    # the CLI's one error handler: the `error:` line goes to stderr, as every synth command's does
    assert proc.returncode == 2 and "classifier config not found" in proc.stderr and "Traceback" not in proc.stderr


def test_augment_identity_and_flip():
    from classifier.config import AugmentConfig
    from classifier.data import augment

    x, g = torch.rand(8, 1, 32, 32), torch.Generator().manual_seed(0)
    off = AugmentConfig(degrees=0, translate=0, scale=0, brightness=0, contrast=0, hflip=False)
    assert torch.allclose(augment(x, off, g), x, atol=1e-5)
    y = augment(x, replace(off, hflip=True), g)
    flipped = [torch.allclose(y[i], x[i].flip(-1), atol=1e-5) for i in range(8)]
    assert any(flipped) and all(f or torch.allclose(y[i], x[i], atol=1e-5) for i, f in enumerate(flipped))
    z = augment(x, AugmentConfig(), g)
    assert z.shape == x.shape and not torch.allclose(z, x)
