"""Train the latent-diffusion generator: ``accelerate launch synth/finetune.py --config configs/finetune/demo.yaml``.

Same flags as diffusers' ``train_text_to_image.py`` (``--learning_rate``,
``--max_train_steps``, ``--use_ema``, ``--snr_gamma``, ``--resume_from_checkpoint latest`` ...),
built for long-tailed multi-label chest X-rays: prompts from label sets, tail-aware sampling,
exact resume. Two model sources:

* **from scratch** (the CPU default): stage ``vae`` trains a small AutoencoderKL on the
  training images, stage ``unet`` a small UNet2DConditionModel on its (cached) latents,
  conditioned on the frozen MiniLM text encoder; ``--stage all`` does both.
* **local pretrained** (``--pretrained_model_name_or_path DIR``, GPU): a Stable-Diffusion-style
  folder; VAE frozen, UNet (and with ``--train_text_encoder`` the text encoder) trained.

The output folder is a diffusers ``StableDiffusionPipeline`` plus ``synth_meta.json`` — what
``synth generate`` consumes. Library API: :func:`load_finetune_config`, :func:`run_finetune`.
Also runs as ``python -m synth.finetune`` and ``synth finetune``.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__" and not __package__:  # `python synth/finetune.py` from a checkout that pip did not install
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # (synth/ shadows no package)

from pathlib import Path  # noqa: E402
from typing import Any, Callable, Sequence  # noqa: E402

from synth.errors import UserError, one_line_errors  # noqa: E402
from synth.generator.config import FinetuneConfig, load_finetune_config, parse_args  # noqa: E402
from synth.generator.finetune_plan import plan, starts_over  # noqa: E402

__all__ = ["FinetuneConfig", "load_finetune_config", "run_finetune", "plan", "main"]


def run_finetune(cfg: FinetuneConfig, log: Callable[[str], None] | None = None) -> Path:
    """Run the configured stage(s); return the final pipeline folder (the VAE folder for --stage vae)."""
    lines, problems = plan(cfg)
    if cfg.dry_run:
        print("finetune plan (dry run):\n  " + "\n  ".join(lines))
        if problems:
            raise UserError(
                problems[0] if len(problems) == 1 else f"{len(problems)} problems: " + " | ".join(problems)
            )
        print("dry run ok: every path exists; nothing was trained")
        return Path(cfg.output_dir)
    if problems:
        raise UserError(problems[0])
    return _run(cfg, log)


def _run(cfg: FinetuneConfig, log: Callable[[str], None] | None) -> Path:
    import torch
    from accelerate.utils import set_seed

    from synth.distributed import make_accelerator
    from synth.generator import models
    from synth.generator.data import TrainingSet, load_pixels
    from synth.generator.latent_cache import latent_cache_for
    from synth.generator.train import UNetTrainer
    from synth.generator.vae_train import VAE_STAGE_DIR, train_vae, vae_stage_complete
    from synth.io import write_json_atomic
    from synth.prompts import PromptTemplates

    quiet_libraries()
    out = Path(cfg.output_dir)
    accelerator, note = make_accelerator(cfg.mixed_precision, **_tracker_kwargs(cfg, out))
    say = log or (lambda msg: print(msg, flush=True))
    log_main = (lambda msg: say(msg)) if accelerator.is_main_process else (lambda msg: None)
    if note:
        log_main(f"note: {note}")
    set_seed(cfg.seed + accelerator.process_index)  # per-process seeds (model init below re-seeds identically)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / "finetune_config.json", cfg.to_dict())
    if cfg.report_to != "none":
        accelerator.init_trackers("synth-finetune", config=_flat_config(cfg))
    data = TrainingSet.load(cfg.train_manifest)
    templates = PromptTemplates.load(cfg.prompt_templates)
    log_main(f"finetune: {len(data)} real training images, {len(data.classes)} annotated classes, stage={cfg.stage}")

    latent_cache = None
    if cfg.pretrained_model_name_or_path:
        comps = models.load_pretrained(cfg.pretrained_model_name_or_path)
    else:
        pixels = load_pixels(data, cfg.resolution, cfg.dataloader_num_workers)
        stage_dir = out / VAE_STAGE_DIR
        if cfg.vae_model_path:
            vae = models.load_vae(cfg.vae_model_path)
        elif vae_stage_complete(stage_dir):
            vae = models.load_vae(stage_dir)
            log_main(f"vae: reusing {stage_dir}")
        else:
            torch.manual_seed(cfg.seed)  # same init on every process
            vae, latent_cache = train_vae(cfg, models.build_vae(cfg), pixels, accelerator, out, log_main)
            accelerator.free_memory()
        if cfg.stage == "vae":
            return stage_dir
        comps = models.scratch_components(cfg, vae)
    # latents: the VAE posterior of every image, once (synth/generator/latent_cache.py); reused across runs
    if cfg.cache_latents == "false":
        latent_cache = None
    else:  # a VAE trained just now: train_vae already encoded every image, stored instead of re-encoded
        latent_cache = latent_cache_for(cfg, comps.vae, data, accelerator, log_main, computed=latent_cache)
    log_main(
        f"latents: {latent_cache.describe()}" if latent_cache is not None else "latents: encoded on the fly every step"
    )
    trainer = UNetTrainer(cfg, accelerator, comps, data, templates, latent_cache, log_main)
    trainer.train(_resume_point(cfg, out, accelerator, log_main))
    path = trainer.export(_export_meta(cfg, data, templates, trainer, accelerator.mixed_precision))
    log_main(f"finetune: pipeline written to {path}")
    # Not accelerator.end_training(): it also destroys the process group, which `synth ablate` (and any caller
    # under `accelerate launch`) still needs for the next stage's barriers. Trackers are closed here.
    for tracker in accelerator.trackers:
        tracker.finish()
    return path


def _resume_point(cfg: FinetuneConfig, out: Path, accelerator, log_main: Callable[[str], None]) -> Path | None:
    """The checkpoint the UNet stage resumes from (None: step 0); ``--resume_from_checkpoint none`` clears the old
    run."""
    import shutil

    from synth.diffusion import META_NAME
    from synth.training.checkpoint import list_checkpoints, resolve_checkpoint

    resume = resolve_checkpoint(out, cfg.resume_from_checkpoint)
    if starts_over(cfg):
        old = list_checkpoints(out)
        if old and accelerator.is_main_process:
            log_main(
                f"--resume_from_checkpoint none: starting over at step 0, removing {len(old)} old checkpoint(s) of "
                f"{out}"
            )
            for _, p in old:
                shutil.rmtree(p)
            (out / META_NAME).unlink(missing_ok=True)  # the old export is no longer this run's result
        accelerator.wait_for_everyone()
    elif resume is not None:
        log_main(
            f"resuming from {resume} (a re-run continues the run in --output_dir; --resume_from_checkpoint none "
            "starts over)"
        )
    elif cfg.resume_from_checkpoint not in (None, "latest"):
        log_main(f"--resume_from_checkpoint {cfg.resume_from_checkpoint}: no checkpoint in {out} yet, starting fresh")
    return resume


def _export_meta(cfg: FinetuneConfig, data, templates, trainer, mixed_precision: str) -> dict[str, Any]:
    """``synth_meta.json`` of the exported pipeline: what it was trained on, how, and for how many steps."""
    return {
        "train_manifest": str(data.manifest),
        "prompt_templates": str(Path(cfg.prompt_templates).resolve())
        if cfg.prompt_templates
        else str(_default_templates()),
        "prompt_templates_name": templates.name,
        "resolution": cfg.resolution,
        "classes": data.classes,
        "source": cfg.pretrained_model_name_or_path or "scratch",
        "steps": trainer.global_step,
        "prediction_type": trainer.prediction_type,
        "mixed_precision": mixed_precision,  # what training computed in; the exported weights are fp32
    }


def _tracker_kwargs(cfg: FinetuneConfig, out: Path) -> dict[str, Any]:
    """Accelerator arguments for ``--report_to`` (event files under ``output_dir/logs``)."""
    if cfg.report_to == "none":
        return {}
    from accelerate.utils import ProjectConfiguration

    return {
        "log_with": cfg.report_to,
        "project_config": ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")),
    }


def _flat_config(cfg: FinetuneConfig) -> dict[str, Any]:
    """Hyper-parameters as tracker-friendly scalars (lists joined, None as "")."""
    return {
        k: (",".join(map(str, v)) if isinstance(v, list) else "" if v is None else v) for k, v in cfg.to_dict().items()
    }


def _default_templates() -> Path:
    from synth.prompts import DEFAULT_TEMPLATES

    return DEFAULT_TEMPLATES.resolve()


def quiet_libraries() -> None:
    """Silence diffusers' and transformers' info logs and progress bars (finetune prints its own)."""
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def main(argv: Sequence[str] | None = None) -> int:
    """Script entry: UserError -> one ``error:`` line, exit status 2; a disk/permission error -> one line, exit 1."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    with one_line_errors(resumes=True):  # raises SystemExit(2) / SystemExit(1) after its one error line
        run_finetune(parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
