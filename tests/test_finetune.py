"""The generator trainer: tiny models at 16 px, a few steps each (the whole file is ~1 min on 2 cores)."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny_pipeline import build_tiny_pipeline, write_tiny_manifest

from synth import finetune
from synth.errors import UserError
from synth.generator import train as train_mod

REPO = Path(__file__).resolve().parents[1]

TINY = {
    "resolution": 16,
    "vae_block_out_channels": [8, 16],
    "unet_block_out_channels": [16, 32],
    "unet_attention_head_dim": 4,
    "norm_num_groups": 4,
    "vae_max_train_steps": 4,
    "vae_batch_size": 8,
    "train_batch_size": 4,
    "max_train_steps": 6,
    "checkpointing_steps": 3,
    "lr_scheduler": "cosine",  # step-dependent LR: a resumed run must restore the scheduler too
    "lr_warmup_steps": 2,
    "use_ema": True,
    "snr_gamma": 5.0,
    "prompt_dropout": 0.2,
    "prompt_orders": 2,  # bounded prompt set + prefilled text cache
    "validation_inference_steps": 2,
    "num_validation_images": 1,
    "text_max_length": 16,
    "logging_steps": 100,
}


def _losses(out: Path) -> list[float]:
    with open(out / "loss.csv", newline="") as f:
        return [float(r["loss"]) for r in csv.DictReader(f)]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    return write_tiny_manifest(tmp_path_factory.mktemp("ftdata"))


@pytest.fixture(scope="module")
def scratch_run(tiny_data, tmp_path_factory) -> Path:
    """vae + unet stages from scratch, uninterrupted: the reference run."""
    out = tmp_path_factory.mktemp("ft") / "pipe"
    cfg = finetune.load_finetune_config(None, {**TINY, "train_manifest": str(tiny_data), "output_dir": str(out)})
    assert finetune.run_finetune(cfg) == out
    return out


def test_scratch_run_writes_a_generate_ready_pipeline(scratch_run, tiny_data):
    from diffusers import DiffusionPipeline

    from synth.inference import load_generator_info

    out = scratch_run
    assert len(_losses(out)) == 6
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-6"]
    assert sorted(p.name for p in (out / "validation").glob("*.png")) == ["step-000003.png", "step-000006.png"]
    assert not list(out.rglob("*.bin")) or all(
        p.parent.name.startswith("checkpoint-") for p in out.rglob("*.bin")
    )  # pipeline: safetensors only
    info = load_generator_info(out)
    assert info.train_manifest == tiny_data.resolve() and info.resolution == 16 and info.templates.name == "cxr-v1"
    pipe = DiffusionPipeline.from_pretrained(out, local_files_only=True)
    assert pipe.vae.config.scaling_factor != 1.0  # measured 1 / latent std, not the library default
    assert pipe.scheduler.config.prediction_type == "epsilon"
    image = pipe(
        "chest x-ray, PA view: rib fracture",
        num_inference_steps=2,
        height=16,
        width=16,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).images
    assert image.shape == (1, 16, 16, 3) and torch.isfinite(torch.from_numpy(image)).all()


def _on_scratch_vae(scratch_run: Path, tiny_data: Path, out: Path, **extra) -> dict:
    """TINY UNet training into ``out`` on the scratch run's trained VAE stage, without validation images."""
    return {
        **TINY,
        "train_manifest": str(tiny_data),
        "output_dir": str(out),
        "num_validation_images": 0,
        "vae_model_path": str(scratch_run / "vae_stage"),
        **extra,
    }


class _Crash(Exception):
    pass


def test_crash_and_resume_reproduces_the_uninterrupted_run(scratch_run, tiny_data, tmp_path, monkeypatch):
    out = tmp_path / "pipe"
    overrides = _on_scratch_vae(scratch_run, tiny_data, out, resume_from_checkpoint="latest")

    def crash_after_4(step: int) -> None:
        if step == 4:
            raise _Crash  # like kill -9 after step 4: checkpoint-3 is the last one on disk

    monkeypatch.setattr(train_mod, "_after_step", crash_after_4)
    with pytest.raises(_Crash):
        finetune.run_finetune(finetune.load_finetune_config(None, overrides))
    assert not (out / "model_index.json").exists()
    monkeypatch.undo()
    finetune.run_finetune(finetune.load_finetune_config(None, overrides))
    assert _losses(out) == _losses(scratch_run)  # exact: same floats, step for step
    unet_ref = load_file(scratch_run / "unet" / "diffusion_pytorch_model.safetensors")
    unet_res = load_file(out / "unet" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(unet_ref[k], unet_res[k]) for k in unet_ref)  # EMA + optimizer state restored too


def _pretrained_overrides(tmp_path: Path, **extra) -> dict:
    src = build_tiny_pipeline(tmp_path / "src")
    return {
        "pretrained_model_name_or_path": str(src),
        "train_manifest": str(tmp_path / "src" / "data" / "manifest.csv"),
        "output_dir": str(tmp_path / "ft"),
        "resolution": 16,
        "train_batch_size": 2,
        "max_train_steps": 2,
        "checkpointing_steps": 2,
        "num_validation_images": 0,
        **extra,
    }


@pytest.mark.parametrize("cpu_autocast", [False, True], ids=["cpu-fallback", "bf16-autocast"])
def test_fine_tune_a_local_pretrained_folder_with_text_encoder(tmp_path, monkeypatch, cpu_autocast):
    """--mixed_precision bf16 on a CPU-only host: fp32 with a note (or bf16 autocast under the test opt-in);
    either way the text encoder trains and every exported weight is fp32."""
    import json

    from synth.distributed import CPU_AUTOCAST_ENV

    if cpu_autocast:
        monkeypatch.setenv(CPU_AUTOCAST_ENV, "1")
    else:
        monkeypatch.delenv(CPU_AUTOCAST_ENV, raising=False)
    overrides = _pretrained_overrides(
        tmp_path, train_text_encoder=True, text_encoder_lr=1e-3, learning_rate=1e-3, mixed_precision="bf16"
    )
    src, out = Path(overrides["pretrained_model_name_or_path"]), Path(overrides["output_dir"])
    te_before = load_file(src / "text_encoder" / "model.safetensors")
    cfg = finetune.load_finetune_config(None, overrides)
    lines: list[str] = []
    finetune.run_finetune(cfg, log=lines.append)
    notes = [line for line in lines if line.startswith("note: --mixed_precision bf16")]
    meta = json.loads((out / "synth_meta.json").read_text())
    if cpu_autocast:
        assert not notes and meta["mixed_precision"] == "bf16"
    else:
        assert len(notes) == 1 and "fp32" in notes[0] and meta["mixed_precision"] == "no"
    te_after = load_file(out / "text_encoder" / "model.safetensors")
    assert any(not torch.equal(te_before[k], te_after[k]) for k in te_before)
    for part in ("unet/diffusion_pytorch_model", "vae/diffusion_pytorch_model", "text_encoder/model"):
        assert {t.dtype for t in load_file(out / f"{part}.safetensors").values()} == {torch.float32}, part
    assert len(_losses(out)) == 2


def test_bf16_keeps_frozen_parts_unrounded(tmp_path, monkeypatch):
    """A frozen text encoder and VAE are exported bit-identical to the source, not rounded through bf16."""
    from synth.distributed import CPU_AUTOCAST_ENV

    monkeypatch.setenv(CPU_AUTOCAST_ENV, "1")
    overrides = _pretrained_overrides(
        tmp_path, num_validation_images=1, validation_inference_steps=2, cache_latents=False, mixed_precision="bf16"
    )
    src, out = Path(overrides["pretrained_model_name_or_path"]), Path(overrides["output_dir"])
    finetune.run_finetune(finetune.load_finetune_config(None, overrides))
    for part in ("text_encoder/model", "vae/diffusion_pytorch_model"):
        before, after = load_file(src / f"{part}.safetensors"), load_file(out / f"{part}.safetensors")
        assert all(torch.equal(before[k], after[k]) for k in before), part
    assert (out / "validation" / "step-000002.png").exists()


def test_missing_or_incomplete_pretrained_folder_is_one_clear_error(tmp_path, tiny_data):
    base = {"train_manifest": str(tiny_data), "output_dir": str(tmp_path / "out")}
    with pytest.raises(UserError, match="folder not found"):
        finetune.run_finetune(
            finetune.load_finetune_config(None, {**base, "pretrained_model_name_or_path": str(tmp_path / "nope")})
        )
    src = build_tiny_pipeline(tmp_path / "src")
    shutil.rmtree(src / "unet")
    with pytest.raises(UserError, match=r"missing unet/") as err:
        finetune.run_finetune(finetune.load_finetune_config(None, {**base, "pretrained_model_name_or_path": str(src)}))
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_non_finite_loss_stops_at_once_and_keeps_the_last_checkpoint(scratch_run, tiny_data, tmp_path, monkeypatch):
    out = tmp_path / "pipe"
    overrides = _on_scratch_vae(scratch_run, tiny_data, out, checkpoints_total_limit=1)
    real_loss = train_mod.UNetTrainer.loss

    def nan_at_step_5(self, indices, step, micro, pixels=None):
        loss = real_loss(self, indices, step, micro, pixels)
        return loss * float("nan") if step == 4 else loss  # step index 4 = the 5th optimizer step

    monkeypatch.setattr(train_mod.UNetTrainer, "loss", nan_at_step_5)
    with pytest.raises(UserError) as err:
        finetune.run_finetune(finetune.load_finetune_config(None, overrides))
    message = str(err.value)
    assert "step 5" in message and "nan" in message and "--learning_rate" in message and "checkpoint-3" in message
    assert "\n" not in message
    assert [p.name for p in out.glob("checkpoint-*")] == ["checkpoint-3"]
    assert (out / "checkpoint-3" / train_mod.TRAINER_STATE).exists() and not (out / "model_index.json").exists()
    assert len(_losses(out)) == 3  # nothing after the last good checkpoint was recorded as a result
    monkeypatch.undo()
    lines: list[str] = []
    finetune.run_finetune(finetune.load_finetune_config(None, overrides), log=lines.append)  # a re-run resumes there
    assert any(line.startswith("resuming from") and "checkpoint-3" in line for line in lines), lines
    assert len(_losses(out)) == 6 and (out / "model_index.json").exists()


def test_finetune_leaves_the_process_group_alive(tmp_path, monkeypatch):
    """`synth ablate` runs finetune in-process and still needs the group for its barriers afterwards."""
    from accelerate.state import PartialState

    destroyed = []
    monkeypatch.setattr(PartialState, "destroy_process_group", lambda self, group=None: destroyed.append(group))
    finetune.run_finetune(finetune.load_finetune_config(None, _pretrained_overrides(tmp_path)))
    assert destroyed == []


class _SaveKilled(Exception):
    pass


def test_a_kill_while_saving_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    from accelerate import Accelerator

    overrides = _pretrained_overrides(tmp_path, max_train_steps=4, checkpoints_total_limit=1)
    out = Path(overrides["output_dir"])
    real_save = Accelerator.save_state

    def killed_on_second_save(self, output_dir=None, **kw):
        if "checkpoint-4" in str(output_dir):
            raise _SaveKilled
        return real_save(self, output_dir, **kw)

    monkeypatch.setattr(Accelerator, "save_state", killed_on_second_save)
    with pytest.raises(_SaveKilled):
        finetune.run_finetune(finetune.load_finetune_config(None, overrides))
    assert [p.name for p in out.glob("checkpoint-*")] == ["checkpoint-2"]
    assert (out / "checkpoint-2" / train_mod.TRAINER_STATE).exists()
    monkeypatch.undo()
    lines: list[str] = []
    finetune.run_finetune(finetune.load_finetune_config(None, overrides), log=lines.append)
    assert any(line.startswith("resuming from") and line.split()[2].endswith("checkpoint-2") for line in lines), lines
    assert [p.name for p in out.glob("checkpoint-*")] == ["checkpoint-4"]  # pruned to the limit once complete
    assert not list(out.glob(".checkpoint-*.tmp"))


def test_resume_from_checkpoint_none_starts_over(tmp_path):
    overrides = _pretrained_overrides(tmp_path)
    out = Path(overrides["output_dir"])
    finetune.run_finetune(finetune.load_finetune_config(None, overrides))
    first = _losses(out)
    lines: list[str] = []
    cfg = finetune.load_finetune_config(None, {**overrides, "resume_from_checkpoint": "none", "dry_run": True})
    finetune.run_finetune(cfg)
    plan_lines, _ = finetune.plan(cfg)
    assert any("start over at step 0" in line and "removes 1 old checkpoint" in line for line in plan_lines), (
        plan_lines
    )
    finetune.run_finetune(
        finetune.load_finetune_config(None, {**overrides, "resume_from_checkpoint": "none"}), log=lines.append
    )
    assert any("starting over at step 0" in line for line in lines) and not any(
        line.startswith("resuming") for line in lines
    )
    assert _losses(out) == first  # trained again from step 0 (same seed: same losses), not resumed at step 2
    plan_lines, _ = finetune.plan(finetune.load_finetune_config(None, overrides))
    assert any("resume from checkpoint-2" in line for line in plan_lines), plan_lines


def test_plan_prints_the_source_folders_prediction_type(tmp_path, tiny_data):
    from sd_folders import build_sd_folder

    src = build_sd_folder(tmp_path / "sd21v", "sd21-v")
    cfg = finetune.load_finetune_config(
        None,
        {
            "pretrained_model_name_or_path": str(src),
            "train_manifest": str(tiny_data),
            "output_dir": str(tmp_path / "out"),
            "prediction_type": "epsilon",
            "resolution": 32,
        },
    )
    lines, problems = finetune.plan(cfg)
    train_line = next(line for line in lines if line.startswith("train"))
    assert "v_prediction" in train_line and "epsilon" not in train_line and not problems


def test_report_to_tensorboard_writes_event_files(tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard not installed (pip install 'cxr-synth[tensorboard]')")
    overrides = _pretrained_overrides(tmp_path, report_to="tensorboard", logging_steps=1)
    finetune.run_finetune(finetune.load_finetune_config(None, overrides))
    events = list((Path(overrides["output_dir"]) / "logs").rglob("events.out.tfevents.*"))
    assert events and all(p.stat().st_size > 0 for p in events)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2]


def test_report_to_tensorboard_without_the_package_is_one_clear_error(tmp_path, tiny_data, monkeypatch):
    import accelerate.utils

    monkeypatch.setattr(accelerate.utils, "is_tensorboard_available", lambda: False)
    cfg = finetune.load_finetune_config(
        None,
        {**TINY, "train_manifest": str(tiny_data), "output_dir": str(tmp_path / "out"), "report_to": "tensorboard"},
    )
    with pytest.raises(UserError, match=r"pip install 'cxr-synth\[tensorboard\]'"):
        finetune.run_finetune(cfg)
    assert not (tmp_path / "out").exists()
    with pytest.raises(UserError, match="--report_to"):
        finetune.load_finetune_config(None, {"report_to": "wandb"})


def test_vae_stage_reports_progress_with_an_eta(tiny_data, tmp_path):
    lines: list[str] = []
    cfg = finetune.load_finetune_config(
        None,
        {
            **TINY,
            "train_manifest": str(tiny_data),
            "output_dir": str(tmp_path / "out"),
            "stage": "vae",
            "logging_steps": 100,
        },
    )
    finetune.run_finetune(cfg, log=lines.append)
    progress = [line for line in lines if line.startswith("vae step")]
    assert [line.split()[2] for line in progress] == ["1/4", "4/4"]  # the first step already, not only every 100
    assert all("ETA" in line for line in progress)


def test_exported_pipeline_carries_its_card(scratch_run, tiny_data):
    from card_checks import check_card

    text = check_card(scratch_run, "generator", "steps trained: 6", grid=True)
    assert str(tiny_data) in text and "validation/step-" in text
