"""Validation grids and the final export of a :class:`synth.generator.train.UNetTrainer` (EMA weights swapped in).

Both build a diffusers ``StableDiffusionPipeline`` over the trainer's unwrapped models; the export writes it
next to the checkpoints with ``synth_meta.json`` last, the marker that the folder is a complete model.
"""

from __future__ import annotations

import os
import shutil
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch

from synth.diffusion import META_NAME, assemble_pipeline
from synth.io import write_json_atomic
from synth.model_card import generator_card


def ema_weights(trainer):
    """Context: the UNet temporarily holds the EMA weights (validation / export use them)."""
    import contextlib

    if trainer.ema is None:
        return nullcontext()
    unet = trainer.accelerator.unwrap_model(trainer.unet)

    @contextlib.contextmanager
    def swap():
        trainer.ema.store(unet.parameters())
        trainer.ema.copy_to(unet.parameters())
        try:
            yield
        finally:
            trainer.ema.restore(unet.parameters())

    return swap()


def training_pipeline(trainer):
    """A ``StableDiffusionPipeline`` over the trainer's unwrapped models (DPM-Solver++ from its noise schedule)."""
    from diffusers import DPMSolverMultistepScheduler

    acc = trainer.accelerator
    return assemble_pipeline(
        vae=trainer.comps.vae,
        text_encoder=acc.unwrap_model(trainer.text_encoder),
        tokenizer=trainer.comps.tokenizer,
        unet=acc.unwrap_model(trainer.unet),
        scheduler=DPMSolverMultistepScheduler.from_config(trainer.noise_scheduler.config),
    )


@torch.no_grad()
def save_validation_grid(trainer) -> Path | None:
    """Grid PNG (rows: prompts, columns: seeds) of the current (EMA) model; main process only."""
    cfg = trainer.cfg
    if not trainer.accelerator.is_main_process or cfg.num_validation_images == 0 or not trainer.validation_prompts:
        return None
    from PIL import Image

    from synth.io import save_image_atomic

    unet = trainer.accelerator.unwrap_model(trainer.unet)
    was_training = unet.training
    with ema_weights(trainer):
        unet.eval()
        pipe = training_pipeline(trainer)
        pipe.set_progress_bar_config(disable=True)
        k = cfg.num_validation_images
        prompts = [p for p in trainer.validation_prompts for _ in range(k)]
        gens = [torch.Generator().manual_seed(cfg.seed + j) for _ in trainer.validation_prompts for j in range(k)]
        with trainer.accelerator.autocast():
            images = pipe(
                prompt=prompts,
                height=cfg.resolution,
                width=cfg.resolution,
                num_inference_steps=cfg.validation_inference_steps,
                guidance_scale=cfg.validation_guidance_scale,
                generator=gens,
                output_type="np",
            ).images
    unet.train(was_training)
    gray = np.clip(np.rint(images.mean(axis=-1) * 255.0), 0, 255).astype(np.uint8)
    r = cfg.resolution
    grid = np.zeros((len(trainer.validation_prompts) * r, k * r), dtype=np.uint8)
    for n, g in enumerate(gray):
        row, col = divmod(n, k)
        grid[row * r : (row + 1) * r, col * r : (col + 1) * r] = g
    path = trainer.out / "validation" / f"step-{trainer.global_step:06d}.png"
    save_image_atomic(path, Image.fromarray(grid, mode="L"))
    write_json_atomic(
        trainer.out / "validation" / "prompts.json",
        {"rows": trainer.validation_prompts, "columns_seeds": [cfg.seed + j for j in range(k)]},
    )
    return path


def export_pipeline(trainer, meta: dict[str, Any]) -> Path:
    """The final diffusers pipeline (EMA weights if --use_ema) + synth_meta.json, written into output_dir."""
    acc = trainer.accelerator
    acc.wait_for_everyone()
    if acc.is_main_process:
        tmp = trainer.out / ".pipeline.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        with ema_weights(trainer):
            pipe = training_pipeline(trainer)
            for name in (
                "vae",
                "text_encoder",
                "unet",
            ):  # no-op for fp32 masters; upcasts e.g. an fp16 --vae_model_path
                getattr(pipe, name).to(torch.float32)
            pipe.save_pretrained(tmp, safe_serialization=True)
        (trainer.out / META_NAME).unlink(missing_ok=True)  # the metadata is the "complete" marker: written last
        for item in sorted(tmp.iterdir(), key=lambda p: p.name == "model_index.json"):
            dest = trainer.out / item.name
            if dest.is_dir():
                shutil.rmtree(dest)
            os.replace(item, dest)
        tmp.rmdir()
        generator_card(trainer.out, meta)  # README.md, before the metadata marks the folder complete
        write_json_atomic(trainer.out / META_NAME, meta)
    acc.wait_for_everyone()
    return trainer.out
