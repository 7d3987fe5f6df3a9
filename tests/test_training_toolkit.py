"""synth.training: the one atomic checkpoint, pruning, resume, EMA file and schedules of every training loop."""

from __future__ import annotations

import math

import pytest
import torch

from synth.training import (
    first_step_warmup_cosine,
    load_ema_shadow,
    load_state,
    lr_scheduler,
    make_accelerator,
    pickled_custom_state,
    prune_oldest,
    save_ema_shadow,
    save_state_atomically,
)


def _prepared(seed: int = 0):
    torch.manual_seed(seed)
    accelerator, _ = make_accelerator("no")
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model, optimizer = accelerator.prepare(model, optimizer)
    return accelerator, model, optimizer


def _step(model, optimizer) -> None:
    model(torch.ones(4, 3)).sum().backward()
    optimizer.step()
    optimizer.zero_grad()


def test_save_then_load_restores_weights_and_own_state(tmp_path):
    accelerator, model, optimizer = _prepared()
    _step(model, optimizer)
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    final = save_state_atomically(accelerator, tmp_path / "state", lambda d: (d / "own.json").write_text("{}"))
    assert (final / "own.json").exists() and not (tmp_path / ".state.tmp").exists()
    _step(model, optimizer)
    seen = []
    load_state(accelerator, final, seen.append)
    assert seen == [final]
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())


def test_a_kill_during_the_save_keeps_the_previous_folder(tmp_path, monkeypatch):
    accelerator, model, optimizer = _prepared()
    final = save_state_atomically(accelerator, tmp_path / "state", lambda d: (d / "own.json").write_text("1"))

    def killed(folder):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        save_state_atomically(accelerator, final, killed)
    assert (final / "own.json").read_text() == "1"  # the previous checkpoint is intact
    save_state_atomically(accelerator, final, lambda d: (d / "own.json").write_text("2"))  # stale temp folder replaced
    assert (final / "own.json").read_text() == "2" and not list(tmp_path.glob(".state*"))
    assert not (tmp_path / "state.old").exists()


def test_prune_oldest_keeps_the_newest(tmp_path):
    folders = [tmp_path / f"checkpoint-{i}" for i in (2, 4, 6)]
    for f in folders:
        f.mkdir()
    assert prune_oldest(folders, None) == [] and all(f.exists() for f in folders)
    assert prune_oldest(folders, 1) == folders[:2]
    assert [f.exists() for f in folders] == [False, False, True]


def test_pickled_custom_state_names_register_for_checkpointing_files(tmp_path):
    (tmp_path / "custom_checkpoint_0.pkl").write_bytes(b"x")
    (tmp_path / "model.safetensors").write_bytes(b"x")
    assert pickled_custom_state(tmp_path) == ["custom_checkpoint_0.pkl"]


def test_ema_shadow_round_trip(tmp_path):
    from diffusers.training_utils import EMAModel

    model = torch.nn.Linear(3, 2)
    ema = EMAModel(model.parameters(), decay=0.9)
    for _ in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)
        ema.step(model.parameters())
    save_ema_shadow(tmp_path / "ema.safetensors", ema)
    other = EMAModel(torch.nn.Linear(3, 2).parameters(), decay=0.9)
    load_ema_shadow(tmp_path / "ema.safetensors", other)
    assert other.optimization_step == ema.optimization_step == 3
    assert all(torch.equal(a, b) for a, b in zip(ema.shadow_params, other.shadow_params))


def test_lr_scheduler_is_diffusers_get_scheduler_per_process():
    from diffusers.optimization import get_scheduler

    def rates(make):
        optimizer = torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=1.0)
        scheduler = make(optimizer)
        out = []
        for _ in range(20):
            out.append(scheduler.get_last_lr()[0])
            optimizer.step()
            scheduler.step()
        return out

    ours = rates(lambda o: lr_scheduler(o, 2, 10, "cosine", num_processes=2))
    assert ours == rates(lambda o: get_scheduler("cosine", o, num_warmup_steps=4, num_training_steps=20))


def test_first_step_warmup_cosine_starts_its_ramp_at_one_step():
    optimizer = torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=1.0)
    scheduler = first_step_warmup_cosine(optimizer, 4, 12)
    rates = []
    for _ in range(12):
        rates.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert rates[:4] == [0.25, 0.5, 0.75, 1.0]
    assert rates[4] == 1.0 and rates[8] == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert scheduler.state_dict()["lr_lambdas"] == [None]  # nothing but numbers: saved as JSON, never pickled


def test_accumulate_gives_the_gradients_of_the_manual_loss_division():
    """What generator and classifier switched to: ``accumulate`` + ``backward(loss)`` == ``backward(loss / steps)``."""
    grads = []
    for use_accumulate in (False, True):
        torch.manual_seed(0)
        accelerator, _ = make_accelerator("no", gradient_accumulation_steps=3 if use_accumulate else 1)
        model = accelerator.prepare(torch.nn.Linear(3, 2))
        for micro in range(3):
            loss = model(torch.full((2, 3), float(micro + 1))).pow(2).mean()
            if use_accumulate:
                with accelerator.accumulate(model):
                    accelerator.backward(loss)
                assert accelerator.sync_gradients == (micro == 2)
            else:
                accelerator.backward(loss / 3)
        grads.append([p.grad.clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*grads))
