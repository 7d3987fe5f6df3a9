"""The filter's label-verifier: trained on real train rows only, and reproducible from its seed."""

from __future__ import annotations

import json
from pathlib import Path

from filter_fixtures import ReadRecorder, make_real, make_synthetic, render

from synth.filtering import VerifierConfig, train_verifier
from synth.manifest import read_manifest


def test_verifier_seed_decides_the_model(tmp_path):
    """Same seed, same verifier (a rerun of the filter stage keeps its thresholds); another seed, another one."""
    import torch
    from safetensors.torch import load_file

    real = make_real(tmp_path / "real", {"train": 4, "val": 2, "test": 1})
    weights = {}
    for name, seed in (("a", 0), ("again", 0), ("other", 1)):
        out = train_verifier(
            real,
            tmp_path / name,
            VerifierConfig(arch="resnet10t", image_size=16, max_steps=3, batch_size=4, seed=seed),
        )
        weights[name] = load_file(str(out / "model.safetensors"))
    assert all(torch.equal(weights["a"][k], weights["again"][k]) for k in weights["a"])
    assert not all(torch.equal(weights["a"][k], weights["other"][k]) for k in weights["a"])


def test_verifier_trains_on_real_train_rows_only(tmp_path, monkeypatch):
    real = read_manifest(make_real(tmp_path / "real", {"train": 4, "val": 2, "test": 2}))
    synthetic = read_manifest(make_synthetic(tmp_path / "syn", [("Pneumothorax", render("Pneumothorax", 7))]))
    from synth.manifest import concat_manifests

    both = concat_manifests([real, synthetic], tmp_path)
    recorder = ReadRecorder(monkeypatch)
    out = train_verifier(
        both, tmp_path / "v", VerifierConfig(arch="resnet10t", image_size=16, max_steps=2, batch_size=4)
    )
    allowed = {
        str(Path(p).resolve()) for p in both.loc[(both["split"] == "train") & (both["source"] == "real"), "fpath"]
    }
    assert recorder.paths and set(recorder.paths) <= allowed
    assert json.loads((out / "verifier.json").read_text())["trained_on"] == {
        "rows": len(allowed),
        "split": "train",
        "source": "real",
        "manifest": str(Path(tmp_path).resolve()),
    }
