"""The torch side of ``synth generate``: load the diffusers pipeline, draw per-image initial latents, encode
prompts once, render a batch.

torch and diffusers are imported inside the functions, so importing :mod:`synth.inference` (and
``python -m synth.inference``) stays cheap and option errors come before any model load.
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from synth.diffusion import diffusers_dtype
from synth.errors import UserError
from synth.inference.config import SCHEDULERS
from synth.inference.model_folder import GeneratorInfo
from synth.inference.planning import ImageJob

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from diffusers import StableDiffusionPipeline
    from PIL import Image


@contextlib.contextmanager
def _quiet_loading():
    """Hide two expected load-time warnings of the CPU-scale generator.

    Its text encoder is MiniLM (a ``BertModel``), not CLIP, so diffusers warns about the type, and
    transformers reports the unused BERT pooler as "newly initialized" — neither matters here
    (the UNet reads the encoder's hidden states). Real errors still raise.
    """
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    before = diffusers_logging.get_verbosity(), transformers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(before[0])
        transformers_logging.set_verbosity(before[1])


def load_pipeline(
    model_dir: Path, scheduler: str, dtype: "torch.dtype", device: "torch.device", enable_xformers: bool = False
) -> "StableDiffusionPipeline":
    """The diffusers pipeline with the requested scheduler (built from the folder's scheduler config)."""
    import diffusers
    from diffusers import StableDiffusionPipeline

    # a dtype always, fp32 too: transformers >= 5 otherwise loads the text encoder in its saved dtype
    # (a bf16-saved pipeline gave a bf16 text encoder beside an fp32 UNet); diffusers keeps its fp32-only modules right
    cast = diffusers_dtype(dtype)
    from synth.diffusion import REEXPORT
    from synth.model_files import first_line

    try:
        with _quiet_loading():
            pipe = StableDiffusionPipeline.from_pretrained(
                model_dir, local_files_only=True, safety_checker=None, requires_safety_checker=False, **cast
            )
    except (OSError, ValueError, KeyError, RuntimeError) as err:  # a file the pre-check cannot read (.bin weights)
        raise UserError(f"--model {model_dir}: diffusers cannot load it ({first_line(err)}); {REEXPORT}") from None
    class_name, overrides = SCHEDULERS[scheduler]
    pipe.scheduler = getattr(diffusers, class_name).from_config(pipe.scheduler.config, **overrides)
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    if enable_xformers:
        try:
            pipe.enable_xformers_memory_efficient_attention()
        except (ImportError, ValueError, NotImplementedError) as err:
            warnings.warn(
                f"--enable-xformers: xformers unavailable ({err}); using PyTorch SDPA attention", stacklevel=2
            )
    return pipe


def initial_latents(
    pipe: "StableDiffusionPipeline", jobs: Sequence[ImageJob], resolution: int
) -> tuple[list["torch.Generator"], "torch.Tensor"]:
    """Per-image CPU generators and the latents they draw: independent of batch composition and device."""
    import torch

    generators = [torch.Generator("cpu").manual_seed(job.seed) for job in jobs]
    shape = (1, pipe.unet.config.in_channels, resolution // pipe.vae_scale_factor, resolution // pipe.vae_scale_factor)
    latents = torch.cat([torch.randn(shape, generator=g, dtype=torch.float32) for g in generators])
    return generators, latents.to(pipe.device, pipe.unet.dtype)


class PromptEmbeddings:
    """Text-encoder states per prompt string, computed once per distinct prompt and kept (LRU).

    Why: a run's prompts come from a few hundred label sets and every image shares one negative
    prompt, yet ``StableDiffusionPipeline.__call__`` encodes 2 x batch prompts per batch. Passing
    ``prompt_embeds`` / ``negative_prompt_embeds`` from here skips that work; the pipeline then runs
    exactly its own batched classifier-free guidance. Each prompt is encoded alone (``encode_prompt``,
    padded to the tokenizer's max length as the pipeline does), so an image's conditioning never
    depends on which batch it was in, and :func:`regenerate` of one image uses the same numbers.
    """

    def __init__(self, pipe: "StableDiffusionPipeline", max_size: int = 8192) -> None:
        from collections import OrderedDict

        self.pipe, self.max_size, self.cache = pipe, max_size, OrderedDict()
        self.encoded = 0

    def __call__(self, prompts: Sequence[str]) -> "torch.Tensor":
        import torch

        for p in prompts:
            if p in self.cache:
                self.cache.move_to_end(p)
                continue
            with torch.inference_mode():
                self.cache[p] = self.pipe.encode_prompt(p, self.pipe.device, 1, False)[0]
            self.encoded += 1
        out = torch.cat([self.cache[p] for p in prompts])
        while len(self.cache) > self.max_size:
            self.cache.popitem(last=False)
        return out


def speed_up_cuda(pipe: "StableDiffusionPipeline") -> None:
    """``--compile`` on CUDA: channels_last UNet + VAE and ``torch.compile`` of the UNet (first batch compiles;
    pays on long runs). Never required; on other devices a warning and nothing else."""
    import torch

    if pipe.device.type != "cuda":
        warnings.warn(f"--compile: only used on CUDA (device {pipe.device}); sampling uncompiled", stacklevel=2)
        return
    pipe.unet.to(memory_format=torch.channels_last)
    pipe.vae.to(memory_format=torch.channels_last)
    pipe.unet = torch.compile(pipe.unet, mode="max-autotune-no-cudagraphs", fullgraph=False)


def render(
    pipe: "StableDiffusionPipeline",
    jobs: Sequence[ImageJob],
    resolution: int,
    steps: int,
    guidance_scale: float,
    embeddings: PromptEmbeddings | None = None,
) -> list["Image.Image"]:
    """Sample a batch and return 8-bit grayscale images (the 3 output channels averaged)."""
    import torch
    from PIL import Image

    generators, latents = initial_latents(pipe, jobs, resolution)
    embeddings = embeddings or PromptEmbeddings(pipe)
    text = {"prompt_embeds": embeddings([j.prompt for j in jobs])}
    if guidance_scale > 1.0:  # the pipeline's own test for classifier-free guidance
        text["negative_prompt_embeds"] = embeddings([j.negative_prompt or "" for j in jobs])
    with torch.inference_mode():
        out = pipe(
            **text,
            height=resolution,
            width=resolution,
            num_inference_steps=steps,
            guidance_scale=guidance_scale,
            generator=generators,
            latents=latents,
            output_type="np",
        )
    gray = np.clip(np.rint(out.images.mean(axis=-1) * 255.0), 0, 255).astype(np.uint8)
    return [Image.fromarray(g, mode="L") for g in gray]


def pipeline_resolution(pipe: "StableDiffusionPipeline", info: GeneratorInfo) -> int:
    return int(info.resolution or pipe.unet.config.sample_size * pipe.vae_scale_factor)
