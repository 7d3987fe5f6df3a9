"""``synth finetune --dry_run``'s plan: what the configured run would do, and every problem found before training.

Kept apart from the training run (:mod:`synth.finetune`) because it must stay cheap: it checks paths and
folders without loading a model, so a wrong flag costs a second, not a model load.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from synth.errors import UserError
from synth.generator.config import FinetuneConfig


def plan(cfg: FinetuneConfig, data: bool = True) -> tuple[list[str], list[str]]:
    """(lines describing what would run, problems found) — checks paths without loading models.

    ``data=False``: leave the training manifest out (``synth ablate``'s preflight: its data stage writes it later).
    """
    from synth.prompts import PromptTemplates

    out = Path(cfg.output_dir)
    lines, problems = _plan_data(cfg) if data else ([], [])

    def check(fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except UserError as err:
            problems.append(str(err))
            return None

    templates = check(lambda: PromptTemplates.load(cfg.prompt_templates))
    if templates is not None:
        lines.append(
            f"prompts   {templates.name}: e.g. {templates.render(('Rib Fracture', 'Pleural Effusion'), 'PA')!r}, "
            f"dropout {cfg.prompt_dropout}"
        )
    lines += _plan_models(cfg, out, problems, check)
    if cfg.stage != "vae":
        lines += _plan_training(cfg, out)
    problem = _check_tracker(cfg)
    if problem:
        problems.append(problem)
    lines.append(f"output    {out}/ (diffusers pipeline + synth_meta.json, loss.csv, validation/)")
    return lines, problems


def _plan_data(cfg: FinetuneConfig) -> tuple[list[str], list[str]]:
    """The plan's data and latent-cache lines, and a missing manifest as a problem."""
    lines, problems = [], []
    if not cfg.train_manifest:
        problems.append("--train_manifest is required (a manifest from `synth prepare` / `synth phantom`)")
        return lines, problems
    from synth.manifest import ManifestError

    manifest = Path(cfg.train_manifest)
    if not (manifest if manifest.suffix == ".csv" else manifest / "manifest.csv").exists():
        problems.append(
            str(
                ManifestError(
                    f"--train_manifest {manifest}: not found; run `synth prepare` (or `synth phantom`) first"
                )
            )
        )
    lines.append(
        f"data      {cfg.train_manifest} (split=train, source=real), {cfg.resolution} px, sampling={cfg.sampling}"
    )
    if cfg.cache_latents == "false":
        lines.append("latents   encoded by the VAE every step (--cache_latents false)")
    else:
        from synth.generator.latent_cache import default_cache_root

        where = cfg.latent_cache_dir or default_cache_root(
            manifest if manifest.suffix == ".csv" else manifest / "manifest.csv", cfg.output_dir
        )
        lines.append(
            f"latents   VAE posteriors cached once under {where}/ (reused while VAE, resolution and images are "
            "unchanged); "
            f"in RAM up to {cfg.latent_cache_max_ram_gb:g} GB per process, else memory-mapped"
        )
    return lines, problems


def _plan_models(
    cfg: FinetuneConfig, out: Path, problems: list[str], check: Callable[[Callable[[], Any]], Any]
) -> list[str]:
    """The plan's model lines (pretrained folder, or the VAE and UNet built from scratch); problems are appended."""
    from synth.generator.models import check_pretrained_folder
    from synth.generator.vae_train import VAE_STAGE_DIR, vae_stage_complete

    lines = []
    if cfg.pretrained_model_name_or_path:
        if cfg.stage == "vae":
            problems.append(
                "--stage vae trains the from-scratch VAE; with --pretrained_model_name_or_path the VAE is the "
                "folder's (use --stage unet or all)"
            )
        check(lambda: check_pretrained_folder(cfg.pretrained_model_name_or_path))
        text_encoder = f", text encoder trained at lr {cfg.text_encoder_lr or cfg.learning_rate}"
        lines.append(
            f"model     local pretrained {cfg.pretrained_model_name_or_path} (VAE frozen, UNet trained"
            f"{text_encoder if cfg.train_text_encoder else ''})"
        )
        return lines
    if cfg.vae_model_path:
        if not vae_stage_complete(Path(cfg.vae_model_path)):
            problems.append(
                f"--vae_model_path {cfg.vae_model_path}: no trained VAE there (config.json + safetensors); run "
                "--stage vae first"
            )
        lines.append(f"vae       from {cfg.vae_model_path}")
    elif cfg.stage in ("all", "vae"):
        done = vae_stage_complete(out / VAE_STAGE_DIR)
        lines.append(
            f"vae       AutoencoderKL {cfg.vae_block_out_channels} -> "
            f"{cfg.latent_channels}x{cfg.resolution // 2 ** (len(cfg.vae_block_out_channels) - 1)}^2 latents, "
            + ("already trained (reused)" if done else f"{cfg.vae_max_train_steps} steps x {cfg.vae_batch_size}")
        )
    elif not vae_stage_complete(out / VAE_STAGE_DIR):
        problems.append(
            f"--stage unet needs a trained VAE: {out / VAE_STAGE_DIR} is missing; run --stage vae (or all), or pass "
            "--vae_model_path"
        )
    if cfg.stage != "vae":
        lines.append(
            f"unet      UNet2DConditionModel {cfg.unet_block_out_channels}, cross-attention on frozen MiniLM (384-d)"
        )
    return lines


def _plan_training(cfg: FinetuneConfig, out: Path) -> list[str]:
    """The plan's UNet training, checkpoint (where it starts) and tracker lines."""
    from synth.training.checkpoint import list_checkpoints

    lines = []
    prediction = cfg.prediction_type
    if cfg.pretrained_model_name_or_path:  # training uses the folder's scheduler, not the config's key
        prediction = (
            f"{_folder_prediction_type(cfg.pretrained_model_name_or_path) or '?'} (from the folder's scheduler)"
        )
    lines.append(
        f"train     {cfg.max_train_steps} steps x batch {cfg.train_batch_size} x accum "
        f"{cfg.gradient_accumulation_steps}, lr {cfg.learning_rate} "
        f"({cfg.lr_scheduler}, warmup {cfg.lr_warmup_steps}), {prediction}, snr_gamma={cfg.snr_gamma}, "
        f"ema={cfg.use_ema}, "
        f"mixed_precision={cfg.mixed_precision}"
    )
    ckpts = list_checkpoints(out)
    if starts_over(cfg):
        start = (
            "start over at step 0 (--resume_from_checkpoint "
            f"none{'; removes ' + str(len(ckpts)) + ' old checkpoint(s)' if ckpts else ''})"
        )
    elif cfg.resume_from_checkpoint in (None, "latest"):
        start = (
            f"resume from {ckpts[-1][1].name}"
            if ckpts
            else "fresh (no checkpoint yet; a re-run resumes from the latest)"
        )
    else:
        start = f"resume from {cfg.resume_from_checkpoint}"
    lines.append(
        f"ckpt      every {cfg.checkpointing_steps} steps (keep {cfg.checkpoints_total_limit or 'all'}); {start}"
    )
    if cfg.report_to != "none":
        lines.append(f"log       {cfg.report_to} event files in {out / 'logs'}")
    return lines


def starts_over(cfg: FinetuneConfig) -> bool:
    """``--resume_from_checkpoint none``: the plan and the run both read it so the dry run says what the run does."""
    return (cfg.resume_from_checkpoint or "").strip().lower() == "none"


def _check_tracker(cfg: FinetuneConfig) -> str | None:
    """A problem line when ``--report_to`` names a tracker whose package is not installed."""
    if cfg.report_to == "tensorboard":
        from accelerate.utils import is_tensorboard_available

        if not is_tensorboard_available():
            return (
                "--report_to tensorboard: the tensorboard package is not installed; pip install "
                "'cxr-synth[tensorboard]' (or drop --report_to)"
            )
    return None


def _folder_prediction_type(folder: str) -> str | None:
    """``prediction_type`` of a pretrained folder's scheduler (what training will use), None if unreadable."""
    import json

    try:
        return json.loads((Path(folder) / "scheduler" / "scheduler_config.json").read_text()).get(
            "prediction_type", "epsilon"
        )
    except (OSError, ValueError):
        return None
