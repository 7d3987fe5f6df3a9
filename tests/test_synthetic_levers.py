"""The classifier's synthetic-data levers (#36): ``synthetic.loss_weight`` and ``synthetic.mode = mix_then_head``."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import torch

from classifier.config import EnsembleConfig, MemberConfig, SyntheticMixConfig
from classifier.losses import AsymmetricLoss, MaskedBCE
from classifier.resume import results_only
from synth.errors import UserError


@pytest.mark.parametrize("loss_cls", [AsymmetricLoss, MaskedBCE])
def test_binary_mask_loss_unchanged_and_weight_scales_rows(loss_cls):
    g = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(6, 5, generator=g), (torch.rand(6, 5, generator=g) > 0.7).float()
    mask = (torch.rand(6, 5, generator=g) > 0.2).float()
    w = torch.rand(5, generator=g) + 0.5
    fn = loss_cls(class_weights=w)
    full = fn(logits, labels, mask)
    # a binary mask gives the old mean over annotated cells
    cells = torch.stack([fn(logits[i : i + 1], labels[i : i + 1], mask[i : i + 1]) for i in range(6)])
    counts = mask.sum(1)
    assert torch.allclose(full, (cells * counts).sum() / counts.sum(), atol=1e-6)
    # rows 3..5 down-weighted by 0.25: their share of the sum is a quarter, the denominator still counts cells
    weighted = mask.clone()
    weighted[3:] *= 0.25
    expect = (cells[:3] * counts[:3]).sum() + 0.25 * (cells[3:] * counts[3:]).sum()
    assert torch.allclose(fn(logits, labels, weighted), expect / counts.sum(), atol=1e-6)
    # an all-synthetic batch is down-weighted too (not renormalised back to full weight)
    assert torch.allclose(fn(logits, labels, mask * 0.25), 0.25 * full, atol=1e-6)


def test_new_synthetic_options_keep_default_fingerprints():
    """A config that leaves the new options at their defaults fingerprints as before: no member retrains."""
    keys = set(results_only(dataclasses.asdict(SyntheticMixConfig())))
    assert keys == {"mode", "ratio", "per_class_cap", "pretrain_epochs", "pretrain_with_real", "labels", "seed"}
    changed = results_only(dataclasses.asdict(SyntheticMixConfig(loss_weight=0.5)))
    assert changed["loss_weight"] == 0.5


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_loss_weight_must_be_finite_positive(bad):
    cfg = EnsembleConfig(members=[MemberConfig()])
    with pytest.raises(UserError, match="synthetic.loss_weight"):
        replace(cfg, synthetic=replace(cfg.synthetic, loss_weight=bad)).validated()


# ---------------------------------------------------------------- training on the real NIH sample


@pytest.fixture(scope="module")
def tiny_mix(nih_sample: Path, tmp_path_factory) -> pd.DataFrame:
    from synth.manifest import concat_manifests, read_manifest
    from synth.prepare import prepare_dataset

    out = tmp_path_factory.mktemp("levers")
    df = read_manifest(
        prepare_dataset("nih", nih_sample / "Data_Entry_2017_v2020.csv", nih_sample / "images", out / "d", size=32)
    )
    parts = [df[df["split"] == s].head(n) for s, n in (("train", 32), ("val", 16), ("test", 8))]
    real = pd.concat(parts)
    real.attrs.update(df.attrs)
    syn = real[real["split"] == "train"].head(16).copy()
    syn["source"], syn["target_class"] = "synthetic", "Hernia"
    syn["dicom_id"] = "syn-" + syn["dicom_id"]
    return concat_manifests([real, syn], df.attrs["root"])


def _cfg(**synthetic) -> EnsembleConfig:
    cfg = EnsembleConfig(members=[MemberConfig(image_size=32)])
    cfg = replace(cfg, train=replace(cfg.train, epochs=1, batch_size=16, ema_decay=None))
    return replace(cfg, synthetic=replace(cfg.synthetic, **synthetic))


def test_mix_then_head_retrains_only_the_head_on_real_rows(tiny_mix: pd.DataFrame, tmp_path: Path):
    from safetensors.torch import load_file

    from classifier.train import train_ensemble

    out = train_ensemble(_cfg(mode="mix_then_head", head_epochs=1), tiny_mix, tmp_path / "m")
    member = out / "member-0"
    stages = json.loads((member / "member.json").read_text())["stages"]
    assert [s["name"] for s in stages] == ["train", "head"]
    assert stages[0]["sources"] == {"real": 32, "synthetic": 16}
    assert stages[1]["sources"] == {"real": 32}  # the decision boundary: real rows only
    mixed, final = load_file(str(member / "train.safetensors")), load_file(str(member / "model.safetensors"))
    changed = {k for k in final if not torch.equal(mixed[k], final[k])}
    assert changed and all(k.startswith("head.fc") for k in changed), changed


def test_loss_weight_changes_training_and_its_fingerprint(tiny_mix: pd.DataFrame, tmp_path: Path):
    from safetensors.torch import load_file

    from classifier.train import train_ensemble

    full = train_ensemble(_cfg(mode="mix"), tiny_mix, tmp_path / "w1")
    down = train_ensemble(_cfg(mode="mix", loss_weight=0.25), tiny_mix, tmp_path / "w025")
    a = load_file(str(full / "member-0" / "model.safetensors"))
    b = load_file(str(down / "member-0" / "model.safetensors"))
    assert any(not torch.equal(a[k], b[k]) for k in a)
    fp = [json.loads((d / "member-0" / "member.json").read_text())["fingerprint"] for d in (full, down)]
    assert fp[0] != fp[1]


# ---------------------------------------------------------------- the generator's own randomness in the interval


def _two_generators(gain_a: float, gain_b: float):
    import numpy as np

    rng = np.random.default_rng(3)
    n = 240
    y = (rng.random((n, 4)) < 0.3).astype(float)
    p = np.clip(0.3 + 0.2 * (y - 0.5) + 0.15 * rng.standard_normal(y.shape), 0, 1)
    bases = [np.clip(p + 0.05 * rng.standard_normal(p.shape), 0, 1) for _ in range(4)]
    gains = (gain_a, gain_a, gain_b, gain_b)  # runs 0, 1 on generator A; runs 2, 3 on generator B
    arms = [np.clip(b + g * (y - 0.5), 0, 1) for b, g in zip(bases, gains)]
    classes, groups = ["a", "b", "c", "d"], {"a": "head", "b": "head", "c": "medium", "d": "tail"}
    return y, bases, arms, classes, groups, np.arange(n) // 2


def test_one_generator_gives_todays_interval_exactly():
    from classifier import metrics

    y, bases, arms, classes, groups, pats = _two_generators(0.1, 0.1)
    plain = metrics.paired_bootstrap_runs(y, bases, arms, classes, groups, pats, n_boot=200, seed=0)
    one = metrics.paired_bootstrap_runs(
        y, bases, arms, classes, groups, pats, n_boot=200, seed=0, generators=[7, 7, 7, 7]
    )
    assert one == plain


def test_generators_that_differ_widen_the_interval_by_rubins_rules():
    import numpy as np
    from scipy import stats

    from classifier import metrics

    y, bases, arms, classes, groups, pats = _two_generators(0.02, 0.3)
    gens = ["A", "A", "B", "B"]
    both = metrics.paired_bootstrap_runs(y, bases, arms, classes, groups, pats, n_boot=300, seed=0, generators=gens)
    per_gen = [
        metrics.paired_bootstrap_runs(y, bases[i : i + 2], arms[i : i + 2], classes, groups, pats, 300, 0)
        for i in (0, 2)
    ]
    row = both["map"]
    q = np.array([g["map"]["diff"] for g in per_gen])
    between = q.var(ddof=1)
    assert row["generators"]["between"] == pytest.approx(between)
    assert row["generators"]["k"] == 2 and row["diff"] == pytest.approx(q.mean())
    within = row["generators"]["within"]
    total = within + 1.5 * between  # T = W̄ + (1 + 1/K) B, K = 2
    df = (2 - 1) * (1 + within / (1.5 * between)) ** 2
    half = stats.t.ppf(0.975, df) * np.sqrt(total)
    assert row["ci"] == pytest.approx((q.mean() - half, q.mean() + half))
    lo_w, hi_w = row["ci_within"]
    assert row["ci"][1] - row["ci"][0] > 3 * (hi_w - lo_w)  # generators 0.28 apart: bootstrap alone is too sure
    assert (row["ci"][0] > 0 or row["ci"][1] < 0) == (row["p"] < 0.05)


def test_identical_generators_add_no_width():
    from classifier import metrics

    y, bases, arms, classes, groups, pats = _two_generators(0.1, 0.1)
    same = [arms[0], arms[1], arms[0], arms[1]]
    base = [bases[0], bases[1], bases[0], bases[1]]
    row = metrics.paired_bootstrap_runs(
        y, base, same, classes, groups, pats, n_boot=300, seed=0, generators=[0, 0, 1, 1]
    )["map"]
    assert row["generators"]["between"] == pytest.approx(0.0, abs=1e-15)
    lo, hi = row["ci"]
    lo_w, hi_w = row["ci_within"]
    assert (hi - lo) == pytest.approx(hi_w - lo_w, rel=0.15)  # normal interval on the bootstrap variance


# ---------------------------------------------------------------- prompt style (lever 4)


def test_single_finding_prompts_keep_seed_and_view_and_drop_cooccurring_findings(tmp_path):
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from tiny_pipeline import build_tiny_pipeline

    import synth.inference as inference
    from synth.cooccurrence import TrainingLabels
    from synth.manifest import read_manifest
    from synth.prompts import PromptTemplates

    model = build_tiny_pipeline(tmp_path / "tiny")
    labels = TrainingLabels(read_manifest(inference.load_generator_info(model).train_manifest))
    plan = {
        style: inference.Planner(
            labels, PromptTemplates.load(), inference.GenerateConfig(seed=3, prompt_style=style).validated()
        ).jobs({"Pneumothorax": 40})
        for style in ("cooccurring", "single")
    }
    co, single = plan["cooccurring"], plan["single"]
    assert any(len(j.findings) > 1 for j in co)  # the tiny set has co-occurring label sets
    assert all(j.findings == ("Pneumothorax",) for j in single)
    assert [(j.seed, j.view) for j in co] == [(j.seed, j.view) for j in single]
    assert all(j.prompt.endswith(": pneumothorax") for j in single)
    with pytest.raises(UserError, match="prompt_style"):
        inference.GenerateConfig(prompt_style="many").validated()


# ---------------------------------------------------------------- counterfactual pairs (lever 1)


def test_generate_controls_renders_pairs_that_differ_only_by_the_class_and_resume(tmp_path):
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from tiny_pipeline import build_tiny_pipeline

    import synth.inference as inference
    from synth.manifest import read_manifest

    model = build_tiny_pipeline(tmp_path / "tiny")
    fast = dict(steps=2, guidance_scale=3.0, progress=False, seed=5, batch_size=3)
    manifest = inference.generate(model, ["Pneumothorax"], 4, tmp_path / "out", controls=True, **fast)
    df = read_manifest(manifest)
    images, controls = df[df["pair_role"] == "image"], df[df["pair_role"] == "control"]
    assert len(images) == len(controls) == 4
    pairs = images.set_index("pair_id").join(controls.set_index("pair_id"), rsuffix="_c")
    assert (pairs["seed"] == pairs["seed_c"]).all() and (pairs["ViewPosition"] == pairs["ViewPosition_c"]).all()
    assert (pairs["Pneumothorax"] == 1).all() and (pairs["Pneumothorax_c"] == 0).all()
    assert not pairs["prompt_c"].str.contains("pneumothorax").any()
    assert all(f.startswith("controls/") for f in controls["fpath"])
    assert (images["dicom_id"] == images["pair_id"]).all()
    # a control lost (killed before it was written) is re-rendered alone by a plain re-run
    lost = tmp_path / "out" / controls["fpath"].iloc[1]
    before = (tmp_path / "out" / controls["fpath"].iloc[0]).read_bytes()
    lost.unlink()
    again = read_manifest(inference.generate(model, ["Pneumothorax"], 4, tmp_path / "out", controls=True, **fast))
    assert lost.exists() and len(again) == 8
    assert (tmp_path / "out" / controls["fpath"].iloc[0]).read_bytes() == before
    # the folder's settings are pinned: the same folder without controls is refused
    with pytest.raises(UserError, match="controls"):
        inference.generate(model, ["Pneumothorax"], 4, tmp_path / "out", **fast)


def _pairs(n_pairs: int = 10) -> pd.DataFrame:
    import numpy as np

    from synth.taxonomy import CXR_LT_CLASSES

    rows = []
    for i in range(n_pairs):
        target = "Pneumothorax" if i % 2 else "Rib Fracture"
        for role in ("image", "control"):
            row = {c: 0.0 for c in CXR_LT_CLASSES}
            row.update({"Pleural Effusion": 1.0, target: float(role == "image")})
            if target == "Rib Fracture" and role == "image":
                row["Fracture"] = 1.0
            pid = f"synth-{i}"
            row.update(
                dicom_id=pid if role == "image" else f"{pid}-control",
                fpath=f"{role}s/{i}.png",
                split="train",
                source="synthetic",
                target_class=target,
                pair_id=pid,
                pair_role=role,
            )
            rows.append(row)
    df = pd.DataFrame(rows)
    df.index = np.arange(100, 100 + len(df))
    return df


def test_pairs_are_sampled_whole_and_controls_are_negatives_for_their_class():
    from classifier.data import synthetic_rows

    df = _pairs()
    off = synthetic_rows(df, SyntheticMixConfig(mode="mix"), 1000)
    assert set(off["pair_role"]) == {"image"} and len(off) == 10  # controls only when asked for
    on = SyntheticMixConfig(mode="mix", controls=True, per_class_cap=3, ratio=0.01, labels="target")
    rows = synthetic_rows(df, on, 1000)  # cap 3 pairs per class, ratio: at most 10 rows
    counts = rows.groupby("pair_id")["pair_role"].apply(sorted)
    assert all(roles == ["control", "image"] for roles in counts)  # never half a pair
    assert len(rows) <= 10 and rows.groupby("target_class")["pair_id"].nunique().max() <= 3
    for _, row in rows.iterrows():
        target = row["target_class"]
        if row["pair_role"] == "control":
            assert row[target] == 0.0  # the counterfactual: negative for its class
            assert target != "Rib Fracture" or pd.isna(row["Fracture"])  # its parent was never asked about
        else:
            assert row[target] == 1.0
        assert pd.isna(row["Pleural Effusion"])  # co-occurring prompt findings are not verified: unknown
