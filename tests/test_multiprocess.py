"""Issue 17 item 4: `synth ablate` through EVERY stage under 2 processes (gloo on CPU), as on 8 GPUs.

What this covers: one `accelerate launch --multi_gpu --num_processes 2` run of `python -m synth ablate`
on a tiny phantom config -- data, held-out phantom rows, generator (VAE + UNet, a few steps), generate, verifier +
filter,
oracle + fidelity, all four classifier arms, report -- so every barrier, every main-process-only step
and every Accelerator made in between must work with a live process group (the generator used to
destroy it with ``end_training()``; stages used to leak precision into each other). It says nothing
about the quality of anything: every model trains for a handful of steps.

Cost: ~1-2 minutes per process on one core. ``--multi_gpu`` on a CPU-only host gives torchrun
workers with the gloo backend (synth.distributed.process_state); ``--cpu`` would start ONE process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from two_processes import TWO_CPU_PROCESSES

REPO = Path(__file__).resolve().parents[1]


def tiny_ablation(tmp_path: Path, cache_latents: str = "auto") -> Path:
    """The smallest config that still runs every stage of `synth ablate` (phantom at 32 px)."""
    finetune = yaml.safe_load((REPO / "configs/finetune/demo.yaml").read_text())
    finetune.update(
        resolution=32,
        vae_block_out_channels=[8, 16],
        vae_max_train_steps=2,
        vae_batch_size=4,
        unet_block_out_channels=[16, 32],
        unet_attention_head_dim=8,
        norm_num_groups=8,
        train_batch_size=4,
        max_train_steps=2,
        lr_warmup_steps=1,
        checkpointing_steps=2,
        validation_inference_steps=2,
        num_validation_images=1,
        logging_steps=1,
        cache_latents=cache_latents,
    )
    verifier = {"arch": "resnet10t", "image_size": 32, "epochs": 1, "max_steps": 2, "batch_size": 8, "num_workers": 0}
    classifier = {
        "members": [{"arch": "convnext_atto", "image_size": 32}],
        "train": {"epochs": 1, "max_steps": 2, "batch_size": 8, "ema_decay": 0.9},
        "synthetic": {"mode": "none", "pretrain_epochs": 1},
    }
    files = {
        "finetune.yaml": finetune,
        "verifier.yaml": verifier,
        "oracle.yaml": verifier,
        "classifier.yaml": classifier,
    }
    for name, content in files.items():
        (tmp_path / name).write_text(yaml.safe_dump(content))
    cfg = {
        "name": "tiny-2proc",
        "seeds": [0],
        "arms": ["real_only", "synthetic_unfiltered", "synthetic_filtered", "synthetic_pretrain"],
        "data": {"source": "phantom", "phantom_n": 240, "phantom_seed": 0, "size": 32},
        "generator": {"config": str(tmp_path / "finetune.yaml")},
        "generate": {
            "config": str(REPO / "configs/generate/default.yaml"),
            "classes": ["tail"],
            "n": 2,
            "overrides": {"batch_size": 2, "steps": 2},
        },
        "filter": {
            "verifier_config": str(tmp_path / "verifier.yaml"),
            "config": str(REPO / "configs/filter/default.yaml"),
            "overrides": {"nearcopy_calibration_images": 20, "bootstrap": 5, "kid_subsets": 2},
        },
        "classifier": {"config": str(tmp_path / "classifier.yaml"), "batch_size": 16},
        "oracle": {"config": str(tmp_path / "oracle.yaml"), "phantom_n": 240, "phantom_seed": 2},
        "evaluation": {"n_boot": 100, "grid_examples": 1, "heldout_phantom_n": 40, "heldout_phantom_seed": 1},
    }
    path = tmp_path / "ablation.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize("cache_latents", ["false", "auto"])  # the mimic recipe's setting, and the default
def test_synth_ablate_every_stage_under_two_processes(tmp_path: Path, cache_latents: str):
    config = tiny_ablation(tmp_path, cache_latents)
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        *TWO_CPU_PROCESSES,
        "-m",
        "synth",
        "ablate",
        "--config",
        str(config),
        "--output-root",
        str(tmp_path / "out"),
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=420, cwd=REPO)
    errors = [line for line in (done.stdout + done.stderr).splitlines() if "error" in line.lower()][:8]
    assert done.returncode == 0, "\n".join(errors) or done.stderr[-4000:]
    # DDP keeps one VAE: every rank must hash it to the same latent-cache key (the main process's VAE, once saved,
    # carried "_class_name" in its config and hashed differently)
    assert "differs from process 0" not in done.stdout + done.stderr
    results = json.loads((tmp_path / "out" / "reports" / "tiny-2proc" / "results.json").read_text())
    assert [a["name"] for a in results["arms"]] == [
        "real_only",
        "synthetic_unfiltered",
        "synthetic_filtered",
        "synthetic_pretrain",
    ]
    assert "fidelity" in results and "filter" in results and results["dataset"]["n_heldout"] == 40
    ablation = tmp_path / "out" / "ablations" / "tiny-2proc"
    assert len(list(ablation.rglob("ensemble.json"))) == 4
    assert not list((tmp_path / "out").rglob("*.tmp"))
