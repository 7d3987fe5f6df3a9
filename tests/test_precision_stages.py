"""Issue 17 item 5: a stage computes in the same precision whether it runs alone or after other stages.

``synth ablate`` runs the generator, the verifier and the classifier in ONE process; Accelerate
keeps its state in process-wide singletons. Before ``synth.distributed.make_accelerator`` the
verifier inherited the generator's bf16 in a fresh ablation but got fp32 in a resumed one (generator
cached), and a bf16 classifier after an fp32 verifier raised ValueError. These tests run the real
stage functions in one process with ``SYNTH_CPU_AUTOCAST=1`` (the test-only opt-in that keeps bf16
autocast on CPU) and look at the dtype the model really produced inside each stage's loss.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import torch
from filter_fixtures import make_real

from synth.distributed import CPU_AUTOCAST_ENV, make_accelerator


@pytest.fixture()
def autocast_on_cpu(monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("tests the CPU opt-in; on a GPU host bf16 is the plain default")
    monkeypatch.setenv(CPU_AUTOCAST_ENV, "1")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> pd.DataFrame:
    from synth.manifest import read_manifest

    root = tmp_path_factory.mktemp("tiny-precision")
    return read_manifest(make_real(root, {"train": 8, "val": 4, "test": 1}))


def test_bf16_then_fp32_then_bf16_in_one_process(autocast_on_cpu):
    """The raw Accelerator refuses the second precision (ValueError); make_accelerator gives each its own."""
    seen = []
    for precision in ("bf16", "no", "bf16"):
        accelerator, _ = make_accelerator(precision)
        with accelerator.autocast():
            out = torch.nn.Linear(4, 4)(torch.ones(2, 4))
        seen.append((accelerator.mixed_precision, out.dtype))
    assert seen == [("bf16", torch.bfloat16), ("no", torch.float32), ("bf16", torch.bfloat16)]


def _spy(monkeypatch, module, stage: str, seen: list) -> None:
    """Wrap ``module.build_model``: record the dtype the model's last Linear computes in, at every forward.

    (Accelerate's prepared forward converts the logits back to fp32, so the loss never sees bf16.)
    """
    original = module.build_model

    def build_model(*args, **kwargs):
        model = original(*args, **kwargs)
        last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
        last.register_forward_hook(lambda mod, inp, out: seen.append((stage, out.dtype)) if mod.training else None)
        return model

    monkeypatch.setattr(module, "build_model", build_model)


def _spy_classifier(monkeypatch, seen: list):
    import classifier.stage as stage  # builds the model of every classifier stage

    _spy(monkeypatch, stage, "classifier", seen)


def _spy_verifier(monkeypatch, seen: list):
    import synth.filtering.verifier as verifier

    _spy(monkeypatch, verifier, "verifier", seen)


def test_verifier_then_classifier_order_keeps_each_stage_precision(autocast_on_cpu, tiny, tmp_path, monkeypatch):
    """verifier (fp32) -> classifier (bf16) -> verifier -> classifier (fp32) -> classifier (bf16), one process.

    Old code: the classifier ignored bf16 on CPU (fp32 logits) and, on a GPU, raised ValueError after
    the verifier had created the state in fp32; a verifier after a bf16 stage inherited its autocast.
    """
    from classifier.config import EnsembleConfig, MemberConfig
    from classifier.train import train_ensemble
    from synth.filtering.config import VerifierConfig
    from synth.filtering.verifier import train_verifier

    seen: list = []
    _spy_classifier(monkeypatch, seen)
    _spy_verifier(monkeypatch, seen)
    vcfg = VerifierConfig(arch="resnet10t", image_size=16, max_steps=1, batch_size=8)
    base = EnsembleConfig(members=[MemberConfig(image_size=32)])

    def classifier(precision: str, out: str) -> str:
        cfg = replace(
            base,
            train=replace(
                base.train, epochs=1, max_steps=1, batch_size=8, mixed_precision=precision, checkpoint=False
            ),
        )
        model = train_ensemble(cfg, tiny, tmp_path / out)
        return json.loads((model / "member-0" / "member.json").read_text())["stages"][0]["mixed_precision"]

    def verifier(out: str) -> str:
        return json.loads((train_verifier(tiny, tmp_path / out, vcfg) / "verifier.json").read_text())[
            "mixed_precision"
        ]

    recorded = [
        verifier("v1"),
        classifier("bf16", "c1"),
        verifier("v2"),
        classifier("no", "c2"),
        classifier("bf16", "c3"),
    ]
    assert recorded == ["no", "bf16", "no", "no", "bf16"]
    stages = []
    for stage, dtype in seen:  # one entry per stage run (each ran one step; several forwards for the verifier's batch)
        if not stages or stages[-1][0] != stage or stage == "classifier":
            stages.append((stage, dtype))
    assert stages == [
        ("verifier", torch.float32),
        ("classifier", torch.bfloat16),
        ("verifier", torch.float32),
        ("classifier", torch.float32),
        ("classifier", torch.bfloat16),
    ]


def test_verifier_after_a_bf16_stage_is_fp32(autocast_on_cpu, tiny, tmp_path, monkeypatch):
    """A fresh ablation (generator made a bf16 state first) gives the verifier the same fp32 as a resumed one."""
    from synth.filtering.config import VerifierConfig
    from synth.filtering.verifier import train_verifier

    seen: list = []
    _spy_verifier(monkeypatch, seen)
    make_accelerator("bf16")  # what the generator stage leaves behind in a fresh `synth ablate`
    train_verifier(tiny, tmp_path / "v", VerifierConfig(arch="resnet10t", image_size=16, max_steps=1, batch_size=8))
    assert {dtype for _, dtype in seen} == {torch.float32}


def test_verifier_short_runs_train_with_warmup_cosine(tiny, tmp_path):
    """Issue 17 item 7: 10 optimiser steps (OneCycleLR's pct_start 0.1 divided by zero there) train and write a
    model."""
    from synth.filtering.config import VerifierConfig
    from synth.filtering.verifier import train_verifier

    for steps in (1, 10):
        out = train_verifier(
            tiny,
            tmp_path / f"v{steps}",
            VerifierConfig(arch="resnet10t", image_size=16, max_steps=steps, batch_size=8),
        )
        assert json.loads((Path(out) / "verifier.json").read_text())["steps"] == steps
