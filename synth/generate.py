"""Synthetic images for target classes, with co-occurrence-aware prompts and a manifest.

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

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import re
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np
import pandas as pd

from synth.cooccurrence import TrainingLabels, derive_seed
from synth.errors import UserError
from synth.io import read_yaml_mapping, save_image_atomic, write_json_atomic
from synth.manifest import GENERATION_COLUMNS, read_manifest, write_manifest
from synth.prompts import PromptTemplates
from synth.taxonomy import CXR_LT_CLASSES, GROUPS, class_slug, resolve_class

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from diffusers import StableDiffusionPipeline
    from PIL import Image

MANIFEST_NAME = "manifest.csv"
RUN_SETTINGS_NAME = "generate_run.json"
META_NAME = "synth_meta.json"

#: ``--scheduler`` name -> (diffusers class, config overrides); built from the pipeline's own scheduler config.
SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "dpm++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "use_karras_sigmas": False}),
    "dpm++-karras": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "use_karras_sigmas": True}),
    "unipc": ("UniPCMultistepScheduler", {}),
    "ddim": ("DDIMScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler-a": ("EulerAncestralDiscreteScheduler", {}),
    "pndm": ("PNDMScheduler", {}),
    "ddpm": ("DDPMScheduler", {}),
}
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "fp16", "bf16")


@dataclass
class GenerateConfig:
    """Sampling settings (``configs/generate/*.yaml``; CLI flags override)."""

    n: int | str = 100  # images per class, or "auto": top up to target_count positives
    target_count: int | None = None
    seed: int = 0
    batch_size: int = 8
    steps: int = 25
    guidance_scale: float = 4.0
    scheduler: str = "dpm++"
    temperature: float = 1.0
    negative_prompt: str | None = None  # None: the prompt templates' negative prompt
    precision: str = "auto"  # auto = fp16 on CUDA, fp32 on CPU
    enable_xformers: bool = False
    compile: bool = False  # CUDA only: channels_last + torch.compile(unet); a warning elsewhere
    device: str | None = None  # None: the Accelerate process's device
    train_manifest: str | None = None  # for pipelines without synth_meta.json (or to override it)
    prompt_templates: str | None = None
    progress: bool = True

    @classmethod
    def from_yaml(cls, path: str | Path | None = None, **overrides: Any) -> "GenerateConfig":
        data: dict[str, Any] = {}
        if path is not None:
            data = read_yaml_mapping(path, missing_hint="see configs/generate/default.yaml",
                                     known={f.name for f in dataclasses.fields(cls)})
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**data).validated()

    def validated(self) -> "GenerateConfig":
        """Check every option that can be checked without the model; return self."""
        if isinstance(self.n, str):
            if self.n.strip().lower() == "auto":
                self.n = "auto"
            elif self.n.strip().isdigit():
                self.n = int(self.n)
            else:
                raise UserError(f"--n must be a number or 'auto', got {self.n!r}")
        if self.n == "auto" and (self.target_count is None or self.target_count < 1):
            raise UserError("--n auto needs --target-count (positives in train + generated to reach per class)")
        if isinstance(self.n, int) and self.n < 0:
            raise UserError(f"--n must be >= 0, got {self.n}")
        if self.scheduler not in SCHEDULERS:
            raise UserError(f"unknown --scheduler {self.scheduler!r}; choose one of {', '.join(SCHEDULERS)}")
        if self.precision not in PRECISIONS:
            raise UserError(f"unknown --precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}")
        if self.batch_size < 1 or self.steps < 1:
            raise UserError("--batch-size and --steps must be >= 1")
        if self.temperature <= 0:
            raise UserError(f"--temperature must be > 0, got {self.temperature}")
        return self


# --------------------------------------------------------------------------- model folder


@dataclass(frozen=True)
class GeneratorInfo:
    """What generate needs to know about a model folder, read without loading weights."""

    model_dir: Path
    train_manifest: Path
    templates: PromptTemplates
    resolution: int | None
    fingerprint: str


def load_generator_info(model_dir: str | Path, train_manifest: str | Path | None = None, prompt_templates: str | Path | None = None) -> GeneratorInfo:
    """Read ``synth_meta.json`` (or the explicit overrides, for a user's own SD folder)."""
    model_dir = Path(model_dir)
    if not (model_dir / "model_index.json").exists():
        raise UserError(f"--model {model_dir}: not a diffusers pipeline folder (no model_index.json); pass the folder written by `synth finetune`")
    meta_path = model_dir / META_NAME
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    manifest = train_manifest or meta.get("train_manifest")
    if not manifest:
        raise UserError(f"--model {model_dir}: no {META_NAME} naming its training manifest; pass --train-manifest")
    templates_path = prompt_templates or meta.get("prompt_templates")
    templates = PromptTemplates.load(templates_path)
    trained_with = meta.get("prompt_templates_name")
    if trained_with is not None and trained_with != templates.name:
        raise UserError(f"prompt templates {templates.name!r} ({templates_path}) differ from the {trained_with!r} the model was trained with; pass --prompt-templates with the training file")
    return GeneratorInfo(
        model_dir=model_dir,
        train_manifest=Path(manifest),
        templates=templates,
        resolution=meta.get("resolution"),
        fingerprint=model_fingerprint(model_dir),
    )


def model_fingerprint(model_dir: Path) -> str:
    """Hash of the UNet weights and the generator metadata: which model made an image."""
    digest = hashlib.sha256()
    weights = sorted(p for p in (model_dir / "unet").glob("*") if p.suffix in {".safetensors", ".bin", ".pt", ".pth"})
    if not weights:
        raise UserError(f"--model {model_dir}: no UNet weights under {model_dir / 'unet'}")
    for path in weights + [p for p in [model_dir / META_NAME] if p.exists()]:
        digest.update(path.name.encode())
        with open(path, "rb") as f:
            digest.update(hashlib.file_digest(f, "sha256").digest())
    return digest.hexdigest()[:16]


# --------------------------------------------------------------------------- planning (no torch)


_CLASS_BY_SLUG = {class_slug(c): c for c in CXR_LT_CLASSES}


def validate_class_names(names: Sequence[str]) -> list[str]:
    """Canonical class names / lower-cased group names; unknown => ``UnknownClassError`` with suggestions."""
    out = []
    for name in names:
        key = name.strip().lower()
        out.append(key if key in GROUPS else resolve_class(name, allowed=CXR_LT_CLASSES))
    if not out:
        raise UserError("no class given; pass --class NAME (repeatable) or --classes tail|medium|head")
    return out


def resolve_targets(names: Sequence[str], labels: TrainingLabels) -> list[str]:
    """Expand groups (from train-split prevalence) and de-duplicate, keeping the given order."""
    groups = labels.groups()
    positives = labels.positives()
    targets: list[str] = []
    for name in validate_class_names(names):
        if name in GROUPS:
            members = [c for c in labels.classes if groups.get(c) == name and c != "Normal"]
            unseen = [c for c in members if positives[c] == 0]
            if unseen:  # nothing to learn co-occurrence (or the class itself) from
                warnings.warn(f"--classes {name}: skipping {', '.join(unseen)} (no positive train image)", stacklevel=2)
            members = [c for c in members if positives[c] > 0]
        else:
            members = [name]
        if name in GROUPS and not members:
            raise UserError(f"--classes {name}: no class of {labels.source} is in the {name} group (train prevalence {'> 10 %' if name == 'head' else '< 1 %' if name == 'tail' else '1-10 %'})")
        targets += [c for c in members if c not in targets]
    return targets


@dataclass(frozen=True)
class ImageJob:
    """One synthetic image: everything needed to render it and to write its manifest row."""

    target_class: str
    index: int
    seed: int
    findings: tuple[str, ...]
    view: str
    prompt: str
    negative_prompt: str

    @property
    def fpath(self) -> str:
        slug = class_slug(self.target_class)
        return f"images/{slug}/{slug}_{self.index:06d}.png"

    @property
    def dicom_id(self) -> str:
        return f"synth-{class_slug(self.target_class)}-{self.seed:016x}"


class Planner:
    """Deterministic ``(class, index) -> ImageJob``; shared by planning, resuming and regeneration."""

    def __init__(self, labels: TrainingLabels, templates: PromptTemplates, cfg: GenerateConfig) -> None:
        self.labels = labels
        self.templates = templates
        self.cfg = cfg
        self.negative_prompt = cfg.negative_prompt if cfg.negative_prompt is not None else templates.negative_prompt
        self._samplers: dict[str, Any] = {}

    def counts(self, targets: Sequence[str]) -> dict[str, int]:
        """Images per class: flat ``n``, or (``auto``) what tops train positives up to ``target_count``."""
        if self.cfg.n == "auto":
            positives = self.labels.positives()
            return {c: max(0, int(self.cfg.target_count) - positives[c]) for c in targets}
        return {c: int(self.cfg.n) for c in targets}

    def job(self, target: str, index: int) -> ImageJob:
        sampler = self._samplers.get(target)
        if sampler is None:
            sampler = self._samplers[target] = self.labels.sampler(target, self.cfg.temperature)
        draw = sampler.draw(np.random.default_rng(derive_seed(self.cfg.seed, target, index, "labels")))
        return ImageJob(
            target_class=target,
            index=index,
            seed=derive_seed(self.cfg.seed, target, index),
            findings=draw.findings,
            view=draw.view,
            prompt=self.templates.render(draw.findings, draw.view),
            negative_prompt=self.negative_prompt,
        )

    def jobs(self, counts: dict[str, int]) -> list[ImageJob]:
        return [self.job(c, i) for c, n in counts.items() for i in range(n)]

    def row(self, job: ImageJob, fingerprint: str) -> dict[str, Any]:
        row: dict[str, Any] = {c: np.nan for c in CXR_LT_CLASSES}
        row.update(self.labels.label_vector(job.findings))
        row.update({
            "dicom_id": job.dicom_id, "subject_id": job.dicom_id, "study_id": job.dicom_id,
            "ViewPosition": job.view, "fpath": job.fpath, "split": "train", "source": "synthetic",
            "target_class": job.target_class, "prompt": job.prompt, "negative_prompt": job.negative_prompt,
            "seed": job.seed, "guidance_scale": self.cfg.guidance_scale, "num_inference_steps": self.cfg.steps,
            "scheduler": self.cfg.scheduler, "model_fingerprint": fingerprint,
        })
        return row

    def frame(self, jobs: Sequence[ImageJob], fingerprint: str = "") -> pd.DataFrame:
        return self.frame_from_rows([self.row(j, fingerprint) for j in jobs])

    @staticmethod
    def frame_from_rows(rows: Sequence[dict[str, Any]]) -> pd.DataFrame:
        df = pd.DataFrame(list(rows))
        if df.empty:
            df = pd.DataFrame(columns=list(CXR_LT_CLASSES) + ["dicom_id", "subject_id", "study_id", "ViewPosition", "fpath", "split", "source", *GENERATION_COLUMNS])
        return df


def run_settings(cfg: GenerateConfig, info: GeneratorInfo, planner: Planner, dtype: str) -> dict[str, Any]:
    """Everything that changes an image's pixels or labels; pinned per output folder."""
    return {
        "seed": cfg.seed, "temperature": cfg.temperature, "steps": cfg.steps, "guidance_scale": cfg.guidance_scale,
        "scheduler": cfg.scheduler, "negative_prompt": planner.negative_prompt, "dtype": dtype,
        "model_fingerprint": info.fingerprint, "prompt_templates_name": info.templates.name,
        "train_manifest": str(info.train_manifest.resolve()),
        "model_dir": str(info.model_dir.resolve()),
    }


def check_run_settings(out_dir: Path, settings: dict[str, Any]) -> None:
    path = out_dir / RUN_SETTINGS_NAME
    if not path.exists():
        return
    previous = json.loads(path.read_text())
    changed = [k for k, v in settings.items() if k != "model_dir" and previous.get(k) != v]
    if changed:
        diffs = "; ".join(f"{k}: {previous.get(k)!r} -> {settings[k]!r}" for k in changed)
        raise UserError(f"--out {out_dir} holds images made with other settings ({diffs}); use a new --out folder or the same settings to resume")


# --------------------------------------------------------------------------- on-disk state


def finished_images(out_dir: Path) -> dict[tuple[str, int], Path]:
    """``(class, index) -> path`` of every completed PNG; stray temp files of killed writes are removed."""
    done: dict[tuple[str, int], Path] = {}
    images = out_dir / "images"
    if not images.exists():
        return done
    for stray in images.glob("*/.*.tmp"):
        stray.unlink(missing_ok=True)
    for path in images.glob("*/*.png"):
        match = re.fullmatch(r"(.+)_(\d{6})\.png", path.name)
        target = _CLASS_BY_SLUG.get(path.parent.name)
        if match and target and match.group(1) == path.parent.name:
            done[(target, int(match.group(2)))] = path
    return done


def _note_kept(out_dir: Path, done: dict[tuple[str, int], Path], counts: dict[str, int]) -> None:
    """Say what an existing ``--out`` keeps beyond this run's request (nothing is deleted, and the manifest
    lists every image in the folder): other classes' images and more images of a class than ``--n`` asks."""
    per_class: dict[str, int] = {}
    for c, _ in done:
        per_class[c] = per_class.get(c, 0) + 1
    other = {c: k for c, k in sorted(per_class.items()) if c not in counts}
    beyond = {c: k for c, k in per_class.items() if c in counts and k > counts[c]}
    if other:
        listed = ", ".join(f"{c} {k}" for c, k in other.items())
        print(f"note: --out {out_dir} already holds {sum(other.values())} image(s) of classes this run does not ask for "
              f"({listed}); they are kept and stay in its manifest.csv. Use another --out for a separate set.", file=sys.stderr)
    for c, k in beyond.items():
        print(f"note: --out {out_dir} already holds {k} {c} image(s), {counts[c]} asked: all {k} are kept "
              "(a smaller --n deletes nothing)", file=sys.stderr)


def _shard_path(out_dir: Path, rank: int) -> Path:
    return out_dir / f"manifest.rank{rank}.csv"


def _write_merged_manifest(out_dir: Path, frames: Sequence[pd.DataFrame], class_order: Sequence[str]) -> Path:
    """In-memory rows + every shard on disk, restricted to files that exist, one row per file."""
    parts = [f for f in [*frames, *(read_manifest(p) for p in sorted(out_dir.glob("manifest.rank*.csv")))] if not f.empty]
    df = pd.concat(parts, ignore_index=True) if parts else frames[0]
    df = df.drop_duplicates("fpath", keep="last")
    df = df.loc[np.array([(out_dir / f).exists() for f in df["fpath"]], dtype=bool)]
    order = {c: i for i, c in enumerate(class_order)}
    df = df.assign(_o=df["target_class"].map(lambda c: order.get(c, len(order)))).sort_values(["_o", "fpath"]).drop(columns="_o")
    return write_manifest(df.reset_index(drop=True), out_dir / MANIFEST_NAME)


class ManifestSync:
    """Keeps the on-disk manifest in step with the PNGs while costing at most ~5 % of the run.

    The main process rewrites ``manifest.csv`` (its rows + the other ranks' shards);
    other ranks rewrite their shard. A write happens after a batch unless the last
    one was less than ``20 x its own duration`` ago, so a 10k-row manifest does not
    throttle a fast GPU; at a crash the manifest can lag the PNGs by those batches,
    which the reconciliation on restart recovers from the files.
    """

    def __init__(self, out_dir: Path, planner: Planner, fingerprint: str, base: pd.DataFrame, class_order: Sequence[str], rank: int) -> None:
        self.out_dir, self.planner, self.fingerprint = out_dir, planner, fingerprint
        self.base, self.class_order, self.rank = base, class_order, rank
        self.rows: list[dict[str, Any]] = []
        self._last_end = self._last_cost = 0.0

    def add(self, jobs: Sequence[ImageJob], force: bool = False) -> None:
        self.rows += [self.planner.row(j, self.fingerprint) for j in jobs]
        start = time.perf_counter()
        if not force and start - self._last_end < 20 * self._last_cost:
            return
        own = self.planner.frame_from_rows(self.rows)
        if self.rank == 0:
            _write_merged_manifest(self.out_dir, [self.base, own], self.class_order)
        else:
            write_manifest(own, _shard_path(self.out_dir, self.rank))
        self._last_end = time.perf_counter()
        self._last_cost = self._last_end - start


# --------------------------------------------------------------------------- sampling (torch)


def _dtype(precision: str, device: "torch.device") -> "torch.dtype":
    import torch

    if precision == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


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


def load_pipeline(model_dir: Path, scheduler: str, dtype: "torch.dtype", device: "torch.device", enable_xformers: bool = False) -> "StableDiffusionPipeline":
    """The diffusers pipeline with the requested scheduler (built from the folder's scheduler config)."""
    import diffusers
    import torch
    from diffusers import StableDiffusionPipeline

    # a dtype always, fp32 too: transformers >= 5 otherwise loads the text encoder in its saved dtype
    # (a bf16-saved pipeline gave a bf16 text encoder beside an fp32 UNet); diffusers keeps its fp32-only modules right
    from synth.generator.models import diffusers_dtype

    cast = diffusers_dtype(dtype)
    with _quiet_loading():
        pipe = StableDiffusionPipeline.from_pretrained(model_dir, local_files_only=True, safety_checker=None, requires_safety_checker=False, **cast)
    class_name, overrides = SCHEDULERS[scheduler]
    pipe.scheduler = getattr(diffusers, class_name).from_config(pipe.scheduler.config, **overrides)
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    if enable_xformers:
        try:
            pipe.enable_xformers_memory_efficient_attention()
        except (ImportError, ValueError, NotImplementedError) as err:
            warnings.warn(f"--enable-xformers: xformers unavailable ({err}); using PyTorch SDPA attention", stacklevel=2)
    return pipe


def initial_latents(pipe: "StableDiffusionPipeline", jobs: Sequence[ImageJob], resolution: int) -> tuple[list["torch.Generator"], "torch.Tensor"]:
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


def render(pipe: "StableDiffusionPipeline", jobs: Sequence[ImageJob], resolution: int, steps: int, guidance_scale: float,
           embeddings: PromptEmbeddings | None = None) -> list["Image.Image"]:
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


# --------------------------------------------------------------------------- orchestration


def _batches(items: Sequence[ImageJob], size: int) -> Iterator[list[ImageJob]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def _progress(enabled: bool, total: int):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    progress = Progress(
        TextColumn("[bold]generate"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(), TimeRemainingColumn(), disable=not enabled,
    )
    task = progress.add_task("generate", total=total, rate="")
    return progress, task


def generate(
    model_dir: str | Path,
    classes: Sequence[str],
    n: int | str,
    out_dir: str | Path,
    seed: int = 0,
    batch_size: int = 8,
    steps: int = 25,
    guidance_scale: float = 4.0,
    scheduler: str = "dpm++",
    temperature: float = 1.0,
    target_count: int | None = None,
    device: str | None = None,
    **options: Any,
) -> Path:
    """Generate ``n`` images per class (or top up to ``target_count``) into ``out_dir``; return the manifest path.

    ``classes`` holds class names (any case) and/or ``head`` / ``medium`` / ``tail``.
    Further ``options`` are :class:`GenerateConfig` fields (``precision``,
    ``negative_prompt``, ``enable_xformers``, ``train_manifest``, ...).
    """
    cfg = GenerateConfig(n=n, seed=seed, batch_size=batch_size, steps=steps, guidance_scale=guidance_scale,
                         scheduler=scheduler, temperature=temperature, target_count=target_count, device=device, **options)
    return run(model_dir, classes, out_dir, cfg.validated())


def run(model_dir: str | Path, classes: Sequence[str], out_dir: str | Path, cfg: GenerateConfig) -> Path:
    """:func:`generate` with a config object (the CLI's entry)."""
    names = validate_class_names(classes)  # before touching the model folder
    info = load_generator_info(model_dir, cfg.train_manifest, cfg.prompt_templates)
    labels = TrainingLabels(read_manifest(info.train_manifest), source=str(info.train_manifest))
    targets = resolve_targets(names, labels)
    planner = Planner(labels, info.templates, cfg)
    counts = planner.counts(targets)
    planned = planner.jobs(counts)  # also checks every target has training positives

    import torch
    from synth.distributed import process_state

    state = process_state()
    device = torch.device(cfg.device) if cfg.device else state.device
    dtype = _dtype(cfg.precision, device)
    settings = run_settings(cfg, info, planner, str(dtype).removeprefix("torch."))
    out_dir = Path(out_dir)
    check_run_settings(out_dir, settings)

    base = planner.frame([])
    if state.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out_dir / RUN_SETTINGS_NAME, settings)
        for shard in out_dir.glob("manifest.rank*.csv"):  # left by a killed run; the files on disk are the truth
            shard.unlink()
        for stray in out_dir.glob(".*.tmp"):  # a manifest / settings write a kill interrupted (issue 20, defect 9)
            if stray.is_file():
                stray.unlink(missing_ok=True)
        done = finished_images(out_dir)
        _note_kept(out_dir, done, counts)
        base = planner.frame([planner.job(c, i) for (c, i) in sorted(done) if c in labels.classes], info.fingerprint)
        _write_merged_manifest(out_dir, [base], targets)
    state.wait_for_everyone()

    done = finished_images(out_dir)
    todo = [j for j in planned if (j.target_class, j.index) not in done]
    with state.split_between_processes(todo) as mine:
        mine = list(mine)
    sync = ManifestSync(out_dir, planner, info.fingerprint, base, targets, state.process_index)
    if mine:
        pipe = load_pipeline(info.model_dir, cfg.scheduler, dtype, device, cfg.enable_xformers)
        resolution = pipeline_resolution(pipe, info)
        if cfg.compile:
            speed_up_cuda(pipe)
        embeddings = PromptEmbeddings(pipe)
        progress, task = _progress(cfg.progress and state.is_main_process, len(mine))
        finished, start = 0, time.perf_counter()
        with progress:
            for batch in _batches(mine, cfg.batch_size):
                for job, image in zip(batch, render(pipe, batch, resolution, cfg.steps, cfg.guidance_scale, embeddings)):
                    save_image_atomic(out_dir / job.fpath, image)
                sync.add(batch)
                finished += len(batch)
                progress.update(task, advance=len(batch), rate=f"{finished / (time.perf_counter() - start):.2f} img/s")
        if not state.is_main_process:  # the main process's rows go into the final merge below
            sync.add([], force=True)
    state.wait_for_everyone()

    manifest = out_dir / MANIFEST_NAME
    if state.is_main_process:
        _write_merged_manifest(out_dir, [base, planner.frame_from_rows(sync.rows)], targets)
        for shard in out_dir.glob("manifest.rank*.csv"):
            shard.unlink()
    state.wait_for_everyone()
    return manifest


def regenerate(manifest_path: str | Path, dicom_id: str, model_dir: str | Path | None = None, device: str | None = None) -> "Image.Image":
    """Re-render one synthetic image alone from its manifest row (seed, prompt, sampler, model)."""
    import torch

    manifest_path = Path(manifest_path)
    df = read_manifest(manifest_path)
    rows = df[df["dicom_id"] == dicom_id]
    if rows.empty:
        raise UserError(f"{manifest_path}: no row with dicom_id {dicom_id!r}")
    row = rows.iloc[0]
    settings = json.loads((manifest_path.parent / RUN_SETTINGS_NAME).read_text())
    info = load_generator_info(model_dir or settings["model_dir"], settings["train_manifest"])
    if info.fingerprint != row["model_fingerprint"]:
        raise UserError(f"--model {info.model_dir} has fingerprint {info.fingerprint}, the image was made by {row['model_fingerprint']}; pass the model it was generated with")
    job = ImageJob(target_class=row["target_class"], index=-1, seed=int(row["seed"]), findings=(), view=row["ViewPosition"],
                   prompt=row["prompt"], negative_prompt="" if pd.isna(row["negative_prompt"]) else row["negative_prompt"])
    target = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    pipe = load_pipeline(info.model_dir, row["scheduler"], getattr(torch, settings["dtype"]), target)
    return render(pipe, [job], pipeline_resolution(pipe, info), int(row["num_inference_steps"]), float(row["guidance_scale"]))[0]


if __name__ == "__main__":
    from synth.commands.generate import main

    main()
