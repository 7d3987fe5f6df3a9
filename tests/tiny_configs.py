"""Stage configs small enough for a whole pipeline in a test: 32 px, one epoch (shared by the end-to-end tests)."""

from __future__ import annotations

from pathlib import Path

#: A 32 px convnext_atto label-verifier trained for one epoch.
TINY_VERIFIER = {
    "arch": "convnext_atto",
    "image_size": 32,
    "epochs": 1,
    "batch_size": 32,
    "lr": 0.002,
    "seed": 0,
    "num_workers": 0,
    "eval_batch_size": 256,
}

#: A one-member 32 px convnext_atto classifier ensemble trained for one epoch (synthetic mixing off unless an arm
#: sets its mode).
TINY_CLASSIFIER = {
    "members": [{"arch": "convnext_atto", "image_size": 32}],
    "train": {"epochs": 1, "batch_size": 32, "lr": 0.002, "ema_decay": 0.9, "select": "best", "eval_batch_size": 256},
    "synthetic": {"mode": "none", "pretrain_epochs": 1, "labels": "target"},
    "ensemble": {"weights": "mean", "tta_flip": False},
}


#: the filter stage's overrides for a few generated images per class: a lenient verifier and cheap statistics
TINY_FILTER_OVERRIDES = {
    "fallback_specificity": 0.05,
    "bootstrap": 10,
    "kid_subsets": 5,
    "nearcopy_calibration_images": 20,
}


def tiny_generator(steps: int) -> dict:
    """Generator overrides: a 32 px VAE + UNet of two 8/16-channel blocks, ``steps`` steps of each (and of
    validation sampling), one validation image, no latent cache."""
    return {
        "resolution": 32,
        "vae_block_out_channels": [8, 16],
        "vae_max_train_steps": steps,
        "vae_batch_size": 8,
        "unet_block_out_channels": [8, 16],
        "unet_attention_head_dim": 4,
        "norm_num_groups": 4,
        "max_train_steps": steps,
        "train_batch_size": 8,
        "lr_warmup_steps": 0,
        "checkpointing_steps": 100,
        "num_validation_images": 1,
        "validation_inference_steps": steps,
        "cache_latents": "false",
    }


def unit_ablation(folder: Path) -> dict:
    """An ablation config (one seed, tiny phantom) whose stage YAMLs, written into ``folder``, hold defaults.

    ``synth ablate`` loads every stage config before any work, so each must exist and be valid;
    ``generate.yaml`` is read for real (real_resampled derives its threshold from it).
    """
    for name in ("finetune.yaml", "verifier.yaml", "filter.yaml", "classifier.yaml"):
        (folder / name).write_text("{}\n")
    (folder / "generate.yaml").write_text("seed: 0\n")
    return {
        "name": "unit",
        "seeds": [0],
        "output_root": str(folder / "outputs"),
        "data": {"source": "phantom", "phantom_n": 10, "size": 16},
        "generator": {"config": str(folder / "finetune.yaml")},
        "generate": {"config": str(folder / "generate.yaml"), "classes": ["Rib Fracture"], "n": 3},
        "filter": {"verifier_config": str(folder / "verifier.yaml"), "config": str(folder / "filter.yaml")},
        "classifier": {"config": str(folder / "classifier.yaml")},
        "evaluation": {"n_boot": 100},
    }
