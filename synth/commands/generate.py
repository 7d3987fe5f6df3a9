"""``synth generate``: synthetic images of target classes, with a manifest.

Also the entry of ``python -m synth.inference`` / ``accelerate launch -m synth.inference``
(the same options, without the ``generate`` sub-command name).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional

import typer

from synth.commands.options import (
    ConfigFlag,
    NoProgress,
    config_option,
    option,
    out_option,
    set_option,
    with_config_flags,
)
from synth.config import command_overrides
from synth.errors import UserError, resumable

Model = option(Path, "--model", "Generator folder written by `synth finetune` (diffusers StableDiffusionPipeline).")
Classes = option(List[str], "--class", 'Target class (any case; repeatable), e.g. "Rib Fracture".')
Groups = option(List[str], "--classes", "Frequency group of the TRAINING data: tail | medium | head (repeatable).")

#: Flags that set the :class:`~synth.inference.config.GenerateConfig` field of their name (``progress`` is
#: ``--no-progress``); tests/test_generate.py checks that every field has one.
GENERATE_FLAGS = {
    "n": ConfigFlag(Optional[str], "Images per class, or 'auto' to top up to --target-count. [default: 100]"),
    "target_count": ConfigFlag(Optional[int], "With --n auto: positives in train + generated per class."),
    "seed": ConfigFlag(
        Optional[int], "Run seed; each image's seed is derived from (seed, class, index). [default: 0]"
    ),
    "batch_size": ConfigFlag(Optional[int], "Images per forward pass (does not change the images). [default: 8]"),
    "steps": ConfigFlag(Optional[int], "Sampling steps. [default: 25]"),
    "guidance_scale": ConfigFlag(Optional[float], "Classifier-free guidance scale. [default: 4.0]"),
    "scheduler": ConfigFlag(
        Optional[str], "dpm++ | dpm++-karras | unipc | ddim | euler | euler-a | pndm | ddpm. [default: dpm++]"
    ),
    "temperature": ConfigFlag(
        Optional[float], "Label-set sampling temperature: p ∝ count^(1/T); >1 flattens. [default: 1.0]"
    ),
    "controls": ConfigFlag(
        bool,
        "Also render each image's counterfactual control: the same seed, view and co-occurring findings, the target "
        "class left out of the prompt (controls/, pair_id + pair_role columns).",
    ),
    "prompt_style": ConfigFlag(
        Optional[str],
        "cooccurring (the target + a real co-occurring label set) | single (the target finding alone). "
        "[default: cooccurring]",
    ),
    "negative_prompt": ConfigFlag(Optional[str], "Override the prompt templates' negative prompt."),
    "precision": ConfigFlag(Optional[str], "auto (fp16 on CUDA, fp32 on CPU) | fp32 | fp16 | bf16."),
    "device": ConfigFlag(Optional[str], "Torch device; default: the Accelerate process's device."),
    "enable_xformers": ConfigFlag(bool, "xformers attention on GPU (falls back to PyTorch SDPA with a warning)."),
    "compile": ConfigFlag(bool, "CUDA: channels_last + torch.compile of the UNet (pays on long runs)."),
    "train_manifest": ConfigFlag(Optional[Path], "Training manifest (needed for a pipeline without synth_meta.json)."),
    "prompt_templates": ConfigFlag(Optional[Path], "Prompt templates YAML (must match the training ones by name)."),
}


@resumable
@with_config_flags(GENERATE_FLAGS)
def generate_command(
    *,  # keyword-only: the options keep their --help order, required ones included
    model: Model,
    class_: Classes = [],
    groups: Groups = [],
    out: out_option("Output folder: images/<class>/*.png + manifest.csv. Rerun to resume."),
    config: config_option("YAML of defaults (configs/generate/default.yaml); flags override.") = None,
    sets: set_option("guidance_scale=5") = None,
    no_progress: NoProgress = False,
    flags: dict[str, Any],
) -> None:
    """Generate synthetic X-rays of target classes, prompts drawn from real label co-occurrence."""
    from synth.inference import GenerateConfig, run

    names = _target_names(class_, groups)
    flags["progress"] = False if no_progress else None
    cfg = GenerateConfig.from_yaml(config, **command_overrides(sets, flags))
    _quiet_library_logs()
    manifest = run(model, names, out, cfg)
    _summary(manifest)


def _target_names(class_: list[str], groups: list[str]) -> list[str]:
    """``--class`` and ``--classes`` checked together, so an unknown name fails before any model I/O."""
    from synth.inference import validate_class_names

    for g in groups:
        if g.strip().lower() not in ("tail", "medium", "head"):
            raise UserError(f"--classes {g!r}: expected tail, medium or head (use --class for a single class)")
    return validate_class_names([*class_, *groups])


def _quiet_library_logs() -> None:
    """Our progress bar replaces diffusers' per-component / per-step bars and load reports."""
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def _summary(manifest: Path) -> None:
    from rich.table import Table

    from synth.console import rich_console
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
    rich_console(stderr=True).print(table)


def register(app: typer.Typer) -> None:
    """Add this stage's commands to the synth app."""
    app.command("generate")(generate_command)


def main() -> None:
    """``python -m synth.inference`` / ``accelerate launch -m synth.inference``: the command alone."""
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(generate_command)
    from synth.errors import one_line_errors

    with one_line_errors(resumes=True):
        app()
