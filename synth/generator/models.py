"""Where the generator's networks come from: a small random-init model, or a LOCAL pretrained folder.

Nothing here reaches the network: the from-scratch model uses the MiniLM text
encoder shipped in a wheel, and a pretrained folder is read with
``local_files_only=True`` after checking it is complete, so an incomplete copy
of Stable Diffusion is one clear error instead of a hub download attempt.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synth.diffusion import diffusers_dtype
from synth.errors import UserError
from synth.generator.config import FinetuneConfig

#: sub-folder -> the file that must be in it for the component to load.
PIPELINE_PARTS: dict[str, tuple[str, ...]] = {
    "vae": ("config.json",),
    "unet": ("config.json",),
    "text_encoder": ("config.json",),
    "tokenizer": ("tokenizer_config.json", "tokenizer.json", "vocab.txt", "vocab.json"),  # any one
    "scheduler": ("scheduler_config.json",),
}
WEIGHT_SUFFIXES = (".safetensors", ".bin")


@dataclass
class Components:
    """The five parts of a Stable-Diffusion-style pipeline (the training noise scheduler separately)."""

    vae: Any
    unet: Any
    text_encoder: Any
    tokenizer: Any
    noise_scheduler: Any


def check_pretrained_folder(path: str | Path) -> Path:
    """A local SD-style folder with every part, or one UserError naming what is missing."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(
            f"--pretrained_model_name_or_path {path}: folder not found (only LOCAL folders are used, never the hub); "
            "copy a Stable-Diffusion-style pipeline there (model_index.json, vae/, unet/, text_encoder/, tokenizer/, "
            "scheduler/)"
        )
    missing = []
    if not (path / "model_index.json").exists():
        missing.append("model_index.json")
    for part, needs in PIPELINE_PARTS.items():
        sub = path / part
        if not sub.is_dir() or not any((sub / n).exists() for n in needs):
            missing.append(f"{part}/")
        elif part in ("vae", "unet", "text_encoder") and not any(p.suffix in WEIGHT_SUFFIXES for p in sub.iterdir()):
            missing.append(f"{part}/ weights")
    if missing:
        raise UserError(
            f"--pretrained_model_name_or_path {path}: incomplete pipeline folder, missing {', '.join(missing)}; "
            "copy the complete folder (e.g. stable-diffusion-2-1-base with all sub-folders)"
        )
    return path


def load_pretrained(path: str | Path) -> Components:
    """Load every part of a local folder in fp32; the text encoder's class comes from its model_index.json.

    fp32 whatever the files hold: folders are often saved in fp16 (``save_pretrained`` after
    ``torch_dtype=torch.float16``) and transformers >= 5 loads a model in its saved dtype by default;
    training fp16 weights with AdamW (eps 1e-8 underflows) gives a NaN loss within steps. Mixed
    precision is autocast over these fp32 masters.
    """
    import torch
    import transformers
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    from synth.diffusion import check_pipeline_files

    path = check_pretrained_folder(path)
    check_pipeline_files(path, "give --pretrained_model_name_or_path an intact diffusers folder (or restore it)")
    index = json.loads((path / "model_index.json").read_text())
    library, class_name = index.get("text_encoder", ["transformers", "AutoModel"])
    text_cls = (
        getattr(transformers, class_name, transformers.AutoModel)
        if library == "transformers"
        else transformers.AutoModel
    )
    kw = {"local_files_only": True}
    return Components(
        vae=AutoencoderKL.from_pretrained(path, subfolder="vae", **diffusers_dtype(torch.float32), **kw),
        unet=UNet2DConditionModel.from_pretrained(path, subfolder="unet", **diffusers_dtype(torch.float32), **kw),
        text_encoder=text_cls.from_pretrained(path, subfolder="text_encoder", dtype=torch.float32, **kw),
        tokenizer=transformers.AutoTokenizer.from_pretrained(path, subfolder="tokenizer", **kw),
        noise_scheduler=DDPMScheduler.from_pretrained(path, subfolder="scheduler", **kw),
    )


def build_vae(cfg: FinetuneConfig):
    """Small AutoencoderKL: len(channels) blocks -> downsampling by 2**(len - 1) (3 blocks: 64 px -> 16x16)."""
    from diffusers import AutoencoderKL

    n = len(cfg.vae_block_out_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=tuple(cfg.vae_block_out_channels),
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        layers_per_block=cfg.vae_layers_per_block,
        latent_channels=cfg.latent_channels,
        norm_num_groups=cfg.norm_num_groups,
        sample_size=cfg.resolution,
    )


def build_unet(cfg: FinetuneConfig, cross_attention_dim: int):
    """Small UNet2DConditionModel on the latents; cross-attention everywhere but the full-resolution block."""
    from diffusers import UNet2DConditionModel

    n = len(cfg.unet_block_out_channels)
    latent = cfg.resolution // 2 ** (len(cfg.vae_block_out_channels) - 1)
    return UNet2DConditionModel(
        sample_size=latent,
        in_channels=cfg.latent_channels,
        out_channels=cfg.latent_channels,
        layers_per_block=cfg.unet_layers_per_block,
        block_out_channels=tuple(cfg.unet_block_out_channels),
        norm_num_groups=cfg.norm_num_groups,
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (n - 1) + ("UpBlock2D",),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=cfg.unet_attention_head_dim,
    )


def scratch_components(cfg: FinetuneConfig, vae) -> Components:
    """The from-scratch pipeline around ``vae``: a UNet seeded by ``cfg.seed`` on the frozen MiniLM text encoder."""
    import torch

    from synth.text_encoder import load_minilm

    tokenizer, text_encoder = load_minilm(cfg.text_max_length)
    torch.manual_seed(cfg.seed)
    unet = build_unet(cfg, text_encoder.config.hidden_size)
    return Components(
        vae=vae,
        unet=unet,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        noise_scheduler=build_noise_scheduler(cfg),
    )


def build_noise_scheduler(cfg: FinetuneConfig):
    """DDPM training scheduler with SD's beta schedule; its config is saved as the pipeline's scheduler."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=cfg.num_train_timesteps,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule=cfg.beta_schedule,
        prediction_type=cfg.prediction_type,
        clip_sample=False,
        steps_offset=1,
    )


def load_vae(path: str | Path):
    from diffusers import AutoencoderKL

    path = Path(path)
    if not (path / "config.json").exists():
        raise UserError(
            f"--vae_model_path {path}: no trained VAE there (config.json missing); run the vae stage first (--stage "
            "vae)"
        )
    from synth.model_files import check_folder_files

    check_folder_files(path, "give --vae_model_path an intact VAE folder, or delete it to train the vae stage again")
    return AutoencoderKL.from_pretrained(path, local_files_only=True, **diffusers_dtype(__import__("torch").float32))


def enable_xformers(unet) -> None:
    """xformers where it works (CUDA + package), else PyTorch SDPA with exactly one warning."""
    import torch

    reason = None
    if not torch.cuda.is_available():
        reason = "no CUDA device"
    else:
        try:
            unet.enable_xformers_memory_efficient_attention()
            return
        except (ImportError, ModuleNotFoundError, ValueError, NotImplementedError, RuntimeError) as err:
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
    warnings.warn(
        f"--enable_xformers_memory_efficient_attention: xformers unavailable ({reason}); using PyTorch SDPA attention",
        stacklevel=2,
    )
