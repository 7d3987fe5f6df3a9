"""Inference: synthetic images for target classes, with co-occurrence-aware prompts and a manifest.

What ``synth generate`` (and ``python -m synth.inference``) runs; the generator is trained in
:mod:`synth.generator`. One module per layer, each importing only the ones above it:

* :mod:`~synth.inference.config` -- :class:`GenerateConfig`, scheduler and precision names;
* :mod:`~synth.inference.model_folder` -- what a model folder says about itself (no weights loaded);
* :mod:`~synth.inference.planning` -- targets and one :class:`ImageJob` per image (no torch);
* :mod:`~synth.inference.state` -- finished PNGs, manifest and shards on disk;
* :mod:`~synth.inference.pipeline` -- the diffusers pipeline, latents, prompt embeddings (torch);
* :mod:`~synth.inference.orchestration` -- :func:`generate`, :func:`run`, :func:`regenerate`.

Design constraints, and how they are met:

* **Fail before loading anything heavy.** Class names, groups, the scheduler
  name and the model folder's metadata are checked first; torch / diffusers are
  imported only once there is work to do.
* **Any image can be regenerated bit-for-bit.** Each image has its own seed,
  derived from ``(run seed, class, index)`` with a stable hash and recorded in
  the manifest; it seeds a per-image CPU ``torch.Generator`` that draws that
  image's initial latents, so the batch an image happened to be in does not
  change its noise.
* **Crash-safe and resumable.** File names are a function of ``(class, index)``
  and PNGs are written atomically, so on restart the files on disk say exactly
  what is done; the manifest is rebuilt from them and only missing indices are
  generated. Settings that change pixels are pinned in ``generate_run.json`` so
  a rerun cannot silently mix two configurations in one folder.
* **Multi-process.** Under ``accelerate launch`` the missing images are split
  with ``PartialState.split_between_processes``; every process writes its own
  shard manifest and the main process merges them after ``wait_for_everyone``.
"""

from synth.inference.config import PRECISIONS, SCHEDULERS, GenerateConfig
from synth.inference.model_folder import META_NAME, GeneratorInfo, load_generator_info, model_fingerprint
from synth.inference.orchestration import generate, regenerate, run
from synth.inference.pipeline import (
    PromptEmbeddings,
    initial_latents,
    load_pipeline,
    pipeline_resolution,
    render,
    speed_up_cuda,
)
from synth.inference.planning import *  # noqa: F403 (the names in planning.__all__)
from synth.inference.planning import __all__ as _planning_names
from synth.inference.state import MANIFEST_NAME, ManifestSync, finished_images

__all__ = [
    "MANIFEST_NAME",
    "META_NAME",
    "SCHEDULERS",
    "PRECISIONS",
    "GenerateConfig",
    "GeneratorInfo",
    "load_generator_info",
    "model_fingerprint",
    *_planning_names,
    "finished_images",
    "ManifestSync",
    "load_pipeline",
    "initial_latents",
    "PromptEmbeddings",
    "speed_up_cuda",
    "render",
    "pipeline_resolution",
    "generate",
    "run",
    "regenerate",
]
