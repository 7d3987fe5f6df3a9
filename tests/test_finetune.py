"""The generator trainer: tiny models at 16 px, a few steps each (the whole file is ~1 min on 2 cores)."""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from synth import finetune
from synth.errors import UserError
from synth.generator import train as train_mod
from tiny_pipeline import build_tiny_pipeline, write_tiny_manifest

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

    from synth.generate import load_generator_info

    out = scratch_run
    assert len(_losses(out)) == 6
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-6"]
    assert sorted(p.name for p in (out / "validation").glob("*.png")) == ["step-000003.png", "step-000006.png"]
    assert not list(out.rglob("*.bin")) or all(p.parent.name.startswith("checkpoint-") for p in out.rglob("*.bin"))  # pipeline: safetensors only
    info = load_generator_info(out)
    assert info.train_manifest == tiny_data.resolve() and info.resolution == 16 and info.templates.name == "cxr-v1"
    pipe = DiffusionPipeline.from_pretrained(out, local_files_only=True)
    assert pipe.vae.config.scaling_factor != 1.0  # measured 1 / latent std, not the library default
    assert pipe.scheduler.config.prediction_type == "epsilon"
    image = pipe("chest x-ray, PA view: rib fracture", num_inference_steps=2, height=16, width=16,
                 generator=torch.Generator().manual_seed(0), output_type="np").images
    assert image.shape == (1, 16, 16, 3) and torch.isfinite(torch.from_numpy(image)).all()


class _Crash(Exception):
    pass


def test_crash_and_resume_reproduces_the_uninterrupted_run(scratch_run, tiny_data, tmp_path, monkeypatch):
    out = tmp_path / "pipe"
    overrides = {**TINY, "train_manifest": str(tiny_data), "output_dir": str(out), "num_validation_images": 0,
                 "vae_model_path": str(scratch_run / "vae_stage"), "resume_from_checkpoint": "latest"}

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


def test_fine_tune_a_local_pretrained_folder_with_text_encoder(tmp_path):
    src = build_tiny_pipeline(tmp_path / "src")
    te_before = load_file(src / "text_encoder" / "model.safetensors")
    out = tmp_path / "ft"
    cfg = finetune.load_finetune_config(None, {
        "pretrained_model_name_or_path": str(src), "train_manifest": str(tmp_path / "src" / "data" / "manifest.csv"),
        "output_dir": str(out), "resolution": 16, "train_batch_size": 2, "max_train_steps": 2, "checkpointing_steps": 2,
        "train_text_encoder": True, "text_encoder_lr": 1e-3, "learning_rate": 1e-3, "num_validation_images": 0,
        "mixed_precision": "bf16",  # no CUDA here: must fall back to fp32 with a note, not fail
    })
    finetune.run_finetune(cfg)
    te_after = load_file(out / "text_encoder" / "model.safetensors")
    assert any(not torch.equal(te_before[k], te_after[k]) for k in te_before)
    assert (out / "synth_meta.json").exists() and len(_losses(out)) == 2


def test_missing_or_incomplete_pretrained_folder_is_one_clear_error(tmp_path, tiny_data):
    base = {"train_manifest": str(tiny_data), "output_dir": str(tmp_path / "out")}
    with pytest.raises(UserError, match="folder not found"):
        finetune.run_finetune(finetune.load_finetune_config(None, {**base, "pretrained_model_name_or_path": str(tmp_path / "nope")}))
    src = build_tiny_pipeline(tmp_path / "src")
    shutil.rmtree(src / "unet")
    with pytest.raises(UserError, match=r"missing unet/") as err:
        finetune.run_finetune(finetune.load_finetune_config(None, {**base, "pretrained_model_name_or_path": str(src)}))
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_cli_flags_override_yaml_keys(tmp_path):
    from synth.generator.config import parse_args

    yaml_path = tmp_path / "c.yaml"
    yaml_path.write_text("max_train_steps: 5\nuse_ema: false\nlearning_rate: 0.001\nvalidation_prompts: [a]\n")
    cfg = parse_args(["--config", str(yaml_path), "--max_train_steps", "7", "--use_ema", "--validation_prompts", "x", "y",
                      "--snr_gamma", "5"])
    assert (cfg.max_train_steps, cfg.use_ema, cfg.learning_rate, cfg.validation_prompts, cfg.snr_gamma) == (7, True, 0.001, ["x", "y"], 5.0)
    assert parse_args(["--config", str(yaml_path), "--use_ema", "false"]).use_ema is False
    yaml_path.write_text("max_train_step: 5\n")
    with pytest.raises(UserError, match="unknown key"):
        parse_args(["--config", str(yaml_path)])
    with pytest.raises(UserError, match="--lr_scheduler"):
        finetune.load_finetune_config(None, {"lr_scheduler": "warp"})
    with pytest.raises(UserError, match="--max_train_steps"):
        parse_args(["--max_train_steps", "many"])


@pytest.mark.parametrize("name", ["demo", "phantom-cpu", "nih-sample", "mimic-sd21"])
def test_shipped_configs_load(name):
    cfg = finetune.load_finetune_config(REPO / "configs" / "finetune" / f"{name}.yaml")
    assert cfg.resolution in (64, 512)


def test_script_entry_dry_run_names_the_missing_local_model():
    """`python synth/finetune.py` as a script (synth/ on sys.path[0]) imports the package and fails in one line."""
    proc = subprocess.run([sys.executable, "synth/finetune.py", "--config", "configs/finetune/mimic-sd21.yaml", "--dry_run"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "finetune plan (dry run)" in proc.stdout
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "stable-diffusion-2-1-base" in errors[0] and "Traceback" not in proc.stderr
