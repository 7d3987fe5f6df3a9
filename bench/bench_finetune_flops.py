"""What precomputed latents save on Stable Diffusion 2.1-base, in FLOPs (no GPU, no weights: meta tensors).

    python bench/bench_finetune_flops.py

Counts (``torch.utils.flop_counter``) the VAE encode of one image and one UNet training step on its
latent (forward + backward, and the extra forward that gradient checkpointing recomputes) for SD 2.1-base
at 512 px (VAE (128, 256, 512, 512), UNet (320, 640, 1280, 1280), 1024-d text states) and for the 1/8-width
copy that ``bench/bench_finetune_vs_reference.py`` trains at 64 px. Encoding on the fly, as diffusers'
train_text_to_image.py does, adds the encode to every step; with ``cache_latents`` a step is the UNet only,
so a compute-bound GPU step is ``1 + encode / unet_step`` times cheaper (text encoder frozen; the text
encoder's own share, small for SD, is left out).
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from torch.utils.flop_counter import FlopCounterMode


def sd21_models(width: int, size: int, hidden: int) -> tuple[AutoencoderKL, UNet2DConditionModel]:
    return sd21_vae(width, size), sd21_unet(width, size, hidden)


def sd21_vae(width: int, size: int, **extra) -> AutoencoderKL:
    """SD 2.1-base's VAE at 1/``width`` of its channels for ``size`` px images (``extra``: more config keys)."""
    ch = [c // width for c in (128, 256, 512, 512)]
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=ch,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2,
        latent_channels=4,
        norm_num_groups=min(32, ch[0] // 2),
        sample_size=size,
        **extra,
    )


def sd21_unet(width: int, size: int, hidden: int) -> UNet2DConditionModel:
    """SD 2.1-base's UNet at 1/``width`` of its channels, latents of ``size // 8``, ``hidden``-d text states."""
    uch = [c // width for c in (320, 640, 1280, 1280)]
    return UNet2DConditionModel(
        sample_size=size // 8,
        in_channels=4,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=uch,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        norm_num_groups=min(32, uch[0] // 2),
        cross_attention_dim=hidden,
        attention_head_dim=[5, 10, 20, 20],
        use_linear_projection=True,
    )


def flops(width: int, size: int, hidden: int) -> dict[str, float]:
    with torch.device("meta"):
        vae, unet = sd21_models(width, size, hidden)
        x, z = torch.randn(1, 3, size, size), torch.randn(1, 4, size // 8, size // 8)
        h, t = torch.randn(1, 77, hidden), torch.tensor([10])
        with FlopCounterMode(display=False) as enc, torch.no_grad():
            vae.encode(x)
        with FlopCounterMode(display=False) as fwd, torch.no_grad():
            unet(z, t, h)
        with FlopCounterMode(display=False) as step:
            unet(z, t, h).sample.sum().backward()
    return {"encode": enc.get_total_flops(), "unet_fwd": fwd.get_total_flops(), "unet_step": step.get_total_flops()}


def main() -> None:
    for name, (width, size, hidden) in {
        "SD 2.1-base, 512 px": (1, 512, 1024),
        "bench copy (1/8 width), 64 px": (8, 64, 32),
    }.items():
        f = flops(width, size, hidden)
        plain, ckpt = f["unet_step"], f["unet_step"] + f["unet_fwd"]
        print(
            f"{name}: VAE encode {f['encode'] / 1e9:.1f} GFLOP/image, UNet step {plain / 1e9:.1f} "
            f"(+{f['unet_fwd'] / 1e9:.1f} recomputed "
            f"with gradient checkpointing); cached-latent step cheaper by {1 + f['encode'] / plain:.2f}x "
            f"({1 + f['encode'] / ckpt:.2f}x with gradient checkpointing)"
        )


if __name__ == "__main__":
    main()
