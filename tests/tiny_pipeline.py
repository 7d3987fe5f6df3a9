"""A tiny random-init generator folder, shaped exactly like the finetune stage's output.

Tests of any stage that consumes a generator (generate, filter, ablate) can build
one in a second with :func:`build_tiny_pipeline`: a diffusers
``StableDiffusionPipeline`` folder (tiny UNet + tiny VAE, the real MiniLM text
encoder from the wheel) plus ``synth_meta.json`` pointing at a small training
manifest whose label sets have a known, long-tailed co-occurrence structure.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from synth.diffusion import assemble_pipeline
from synth.io import write_json_atomic
from synth.manifest import write_manifest
from synth.prompts import DEFAULT_TEMPLATES, PromptTemplates
from synth.taxonomy import CXR_LT_CLASSES

#: Classes the tiny training set annotates (all others are left empty = not annotated).
ANNOTATED = (
    "Atelectasis",
    "Cardiomegaly",
    "Edema",
    "Fracture",
    "Mass",
    "Normal",
    "Pleural Effusion",
    "Pneumothorax",
    "Rib Fracture",
    "Subcutaneous Emphysema",
)

#: (positive findings, number of train rows, view). Rib Fracture: 3 / 300 rows = 1 % -> medium;
#: Subcutaneous Emphysema 2 / 300 -> tail; Edema annotated but never positive; Mass only in val.
TRAIN_LABEL_SETS: tuple[tuple[tuple[str, ...], int, str], ...] = (
    (("Normal",), 150, "PA"),
    (("Cardiomegaly",), 60, "PA"),
    (("Cardiomegaly", "Pleural Effusion"), 30, "AP"),
    (("Atelectasis",), 40, "AP"),
    (("Pneumothorax",), 8, "AP"),
    (("Pneumothorax", "Pleural Effusion"), 4, "PA"),
    (("Fracture", "Pneumothorax", "Rib Fracture", "Subcutaneous Emphysema"), 2, "AP"),
    (("Fracture", "Rib Fracture"), 1, "PA"),
    (("Fracture",), 5, "PA"),
)
VAL_LABEL_SETS: tuple[tuple[tuple[str, ...], int, str], ...] = (
    (("Mass",), 2, "PA"),
    (("Fracture", "Rib Fracture", "Pleural Effusion"), 3, "PA"),
)

RESOLUTION = 16


def write_tiny_manifest(root: Path) -> Path:
    """~300-row manifest with 16 px PNGs under ``root``; returns the manifest path."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for split, spec in (("train", TRAIN_LABEL_SETS), ("val", VAL_LABEL_SETS)):
        for findings, count, view in spec:
            for _ in range(count):
                i = len(rows)
                fpath = f"images/{i:04d}.png"
                Image.fromarray(rng.integers(0, 256, (RESOLUTION, RESOLUTION), dtype=np.uint8), mode="L").save(
                    root / fpath
                )
                row = {
                    "dicom_id": f"d{i:04d}",
                    "subject_id": f"p{i:04d}",
                    "study_id": f"s{i:04d}",
                    "ViewPosition": view,
                    "fpath": fpath,
                    "split": split,
                    "source": "real",
                }
                row.update({c: (float(c in findings) if c in ANNOTATED else np.nan) for c in CXR_LT_CLASSES})
                rows.append(row)
    return write_manifest(pd.DataFrame(rows), root / "manifest.csv")


def build_tiny_pipeline(
    root: Path,
    templates: Path = DEFAULT_TEMPLATES,
    seed: int = 0,
    unet_channels: tuple[int, ...] = (8, 16),
    vae_channels: tuple[int, ...] = (8, 16),
    latent_size: int = RESOLUTION // 2,
) -> Path:
    """Write data/ (manifest) and model/ (pipeline folder) under ``root``; return the model folder.

    The defaults give a 16 px generator for tests; larger channels / latents give a
    realistic-size random model for benchmarks (e.g. 16x16 latents, 4 VAE blocks = 128 px).
    """
    import torch
    from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, UNet2DConditionModel

    from synth.text_encoder import MINILM_HIDDEN_SIZE, load_minilm

    manifest = write_tiny_manifest(root / "data")
    torch.manual_seed(seed)
    resolution = latent_size * 2 ** (len(vae_channels) - 1)
    n_unet = len(unet_channels)
    unet = UNet2DConditionModel(
        sample_size=latent_size,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=unet_channels,
        norm_num_groups=4,
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n_unet - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (n_unet - 1) + ("UpBlock2D",),
        cross_attention_dim=MINILM_HIDDEN_SIZE,
        attention_head_dim=4,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=vae_channels,
        down_block_types=("DownEncoderBlock2D",) * len(vae_channels),
        up_block_types=("UpDecoderBlock2D",) * len(vae_channels),
        latent_channels=4,
        norm_num_groups=4,
        sample_size=resolution,
    )
    tokenizer, text_encoder = load_minilm()
    scheduler = DPMSolverMultistepScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000, steps_offset=1
    )
    pipe = assemble_pipeline(vae, text_encoder, tokenizer, unet, scheduler)
    model_dir = root / "model"
    pipe.save_pretrained(model_dir, safe_serialization=True)
    write_json_atomic(
        model_dir / "synth_meta.json",
        {
            "train_manifest": str(manifest.resolve()),
            "prompt_templates": str(Path(templates).resolve()),
            "prompt_templates_name": PromptTemplates.load(templates).name,
            "resolution": resolution,
            "classes": list(ANNOTATED),
        },
    )
    return model_dir
