"""Issue 20 defect 7: a classifier checkpoint is resumed without unpickling anything that could run code.

Accelerate pickles objects registered with ``register_for_checkpointing`` to
``custom_checkpoint_*.pkl`` and loads them with ``weights_only=False``; the classifier now keeps
its scheduler and progress in JSON and its EMA in safetensors, and never resumes a checkpoint
folder that holds such a pickle.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import torch
from filter_fixtures import make_real, member_weights


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> pd.DataFrame:
    from synth.manifest import read_manifest

    root = tmp_path_factory.mktemp("tiny-ckpt")
    return read_manifest(make_real(root, {"train": 8, "val": 4, "test": 1}))


def _config():
    from classifier.config import EnsembleConfig, MemberConfig

    cfg = EnsembleConfig(members=[MemberConfig(image_size=32)])
    return replace(cfg, train=replace(cfg.train, epochs=2, batch_size=8, ema_decay=0.9))


class _Crafted:
    """Unpickling this creates ``path`` (a stand-in for arbitrary code)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


class _Stop(Exception):
    pass


def _interrupt_after_epoch_1(monkeypatch, tiny, out: Path) -> Path:
    import classifier.stage as stage
    import classifier.train as train

    def stop(stage, epoch):
        if epoch == 1:
            raise _Stop

    monkeypatch.setattr(stage, "EPOCH_END_HOOK", stop)
    with pytest.raises(_Stop):
        train.train_ensemble(_config(), tiny, out)
    monkeypatch.setattr(stage, "EPOCH_END_HOOK", None)
    state = out / "member-0" / "ckpt-train" / "state"
    assert state.is_dir()
    return state


def test_crafted_custom_checkpoint_pickle_is_never_unpickled(tiny, tmp_path, monkeypatch, capsys):
    from classifier.train import train_ensemble

    state = _interrupt_after_epoch_1(monkeypatch, tiny, tmp_path / "model")
    assert not list(state.glob("custom_checkpoint_*")), "nothing of the project's own state is pickled"
    marker = tmp_path / "PWNED"
    for i in range(3):  # where Accelerate looks for registered objects (the old code had up to 3)
        (state / f"custom_checkpoint_{i}.pkl").write_bytes(pickle.dumps(_Crafted(str(marker))))
    out = train_ensemble(_config(), tiny, tmp_path / "model")
    assert not marker.exists(), "resuming unpickled a crafted custom_checkpoint_*.pkl"
    assert "never unpickled" in capsys.readouterr().out
    meta = json.loads((out / "member-0" / "member.json").read_text())
    assert [h["epoch"] for h in meta["stages"][0]["history"]] == [1, 2]  # retrained from scratch, to the end


def test_resume_from_json_and_safetensors_state_matches_uninterrupted(tiny, tmp_path, monkeypatch):
    """Scheduler, progress and EMA restored from progress.json / ema.safetensors: same weights as one run."""

    from classifier.train import train_ensemble

    full = train_ensemble(_config(), tiny, tmp_path / "full")
    state = _interrupt_after_epoch_1(monkeypatch, tiny, tmp_path / "resumed")
    saved = json.loads((state / "progress.json").read_text())
    assert saved["progress"]["epoch"] == 1 and saved["scheduler"]["last_epoch"] == saved["progress"]["step"]
    assert (state / "ema.safetensors").exists()
    resumed = train_ensemble(_config(), tiny, tmp_path / "resumed")
    meta = json.loads((resumed / "member-0" / "member.json").read_text())
    assert [h["epoch"] for h in meta["stages"][0]["history"]] == [1, 2]
    a, b = member_weights(full), member_weights(resumed)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_no_pickle_loaded_without_weights_only(tiny, tmp_path, monkeypatch):
    """Every torch.load during a resume is weights-only (optimizer, RNG): nothing else is unpickled."""
    from classifier.train import train_ensemble

    _interrupt_after_epoch_1(monkeypatch, tiny, tmp_path / "model")
    calls = []
    original = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return original(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    train_ensemble(_config(), tiny, tmp_path / "model")
    assert calls and all(w is True for w in calls), calls
