"""``synth generate``: synthetic images of target classes, with a manifest.

Also the entry of ``python -m synth.generate`` / ``accelerate launch -m synth.generate``
(the same options, without the ``generate`` sub-command name).
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from synth.config import SET_HELP, command_overrides
from synth.errors import UserError


def generate_command(
    model: Path = typer.Option(
        ..., "--model", help="Generator folder written by `synth finetune` (diffusers StableDiffusionPipeline)."
    ),
    class_: List[str] = typer.Option([], "--class", help='Target class (any case; repeatable), e.g. "Rib Fracture".'),
    groups: List[str] = typer.Option(
        [], "--classes", help="Frequency group of the TRAINING data: tail | medium | head (repeatable)."
    ),
    out: Path = typer.Option(
        ..., "--out", help="Output folder: images/<class>/*.png + manifest.csv. Rerun to resume."
    ),
    n: Optional[str] = typer.Option(
        None, "--n", help="Images per class, or 'auto' to top up to --target-count. [default: 100]"
    ),
    target_count: Optional[int] = typer.Option(
        None, "--target-count", help="With --n auto: positives in train + generated per class."
    ),
    config: Optional[Path] = typer.Option(
        None, "--config", help="YAML of defaults (configs/generate/default.yaml); flags override."
    ),
    sets: Optional[List[str]] = typer.Option(None, "--set", help=SET_HELP + " E.g. --set guidance_scale=5."),
    seed: Optional[int] = typer.Option(
        None, "--seed", help="Run seed; each image's seed is derived from (seed, class, index). [default: 0]"
    ),
    batch_size: Optional[int] = typer.Option(
        None, "--batch-size", help="Images per forward pass (does not change the images). [default: 8]"
    ),
    steps: Optional[int] = typer.Option(None, "--steps", help="Sampling steps. [default: 25]"),
    guidance_scale: Optional[float] = typer.Option(
        None, "--guidance-scale", help="Classifier-free guidance scale. [default: 4.0]"
    ),
    scheduler: Optional[str] = typer.Option(
        None,
        "--scheduler",
        help="dpm++ | dpm++-karras | unipc | ddim | euler | euler-a | pndm | ddpm. [default: dpm++]",
    ),
    temperature: Optional[float] = typer.Option(
        None, "--temperature", help="Label-set sampling temperature: p ∝ count^(1/T); >1 flattens. [default: 1.0]"
    ),
    negative_prompt: Optional[str] = typer.Option(
        None, "--negative-prompt", help="Override the prompt templates' negative prompt."
    ),
    precision: Optional[str] = typer.Option(
        None, "--precision", help="auto (fp16 on CUDA, fp32 on CPU) | fp32 | fp16 | bf16."
    ),
    device: Optional[str] = typer.Option(
        None, "--device", help="Torch device; default: the Accelerate process's device."
    ),
    enable_xformers: bool = typer.Option(
        False, "--enable-xformers", help="xformers attention on GPU (falls back to PyTorch SDPA with a warning)."
    ),
    train_manifest: Optional[Path] = typer.Option(
        None, "--train-manifest", help="Training manifest (needed for a pipeline without synth_meta.json)."
    ),
    prompt_templates: Optional[Path] = typer.Option(
        None, "--prompt-templates", help="Prompt templates YAML (must match the training ones by name)."
    ),
    no_progress: bool = typer.Option(False, "--no-progress", help="Hide the progress bar."),
) -> None:
    """Generate synthetic X-rays of target classes, prompts drawn from real label co-occurrence."""
    from synth.generate import GenerateConfig, run, validate_class_names

    for g in groups:
        if g.strip().lower() not in ("tail", "medium", "head"):
            raise UserError(f"--classes {g!r}: expected tail, medium or head (use --class for a single class)")
    names = validate_class_names([*class_, *groups])  # unknown names fail here, before any model I/O
    flags = dict(
        n=n,
        target_count=target_count,
        seed=seed,
        batch_size=batch_size,
        steps=steps,
        guidance_scale=guidance_scale,
        scheduler=scheduler,
        temperature=temperature,
        negative_prompt=negative_prompt,
        precision=precision,
        device=device,
        enable_xformers=enable_xformers or None,
        progress=False if no_progress else None,
        train_manifest=str(train_manifest) if train_manifest else None,
        prompt_templates=str(prompt_templates) if prompt_templates else None,
    )
    cfg = GenerateConfig.from_yaml(config, **command_overrides(sets, flags))
    _quiet_library_logs()
    manifest = run(model, names, out, cfg)
    _summary(manifest)


def _quiet_library_logs() -> None:
    """Our progress bar replaces diffusers' per-component / per-step bars and load reports."""
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def _summary(manifest: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    from synth.distributed import process_state
    from synth.manifest import read_manifest

    state = process_state()
    if not state.is_main_process:
        return
    df = read_manifest(manifest)
    table = Table(
        "class",
        "images",
        "distinct prompts",
        title=str(manifest),
        caption=f"sharded over {state.num_processes} process(es)",
    )
    for target, rows in df.groupby("target_class", sort=False):
        table.add_row(str(target), str(len(rows)), str(rows["prompt"].nunique()))
    Console(stderr=True).print(table)


def register(app: typer.Typer) -> None:
    """Add this stage's commands to the synth app."""
    app.command("generate")(generate_command)


def main() -> None:
    """``python -m synth.generate`` / ``accelerate launch -m synth.generate``: the command alone."""
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(generate_command)
    from synth.errors import one_line_errors

    with one_line_errors():
        app()
