"""``synth finetune``: train the generator in this process (the same code as ``accelerate launch synth/finetune.py``).

Every option of the script is accepted with the same spelling (``--max_train_steps 10``,
``--use_ema``, ``--resume_from_checkpoint latest`` ...); see ``python synth/finetune.py --help``.
For several GPUs use the accelerate entry point.
"""

from __future__ import annotations

import typer

from synth.errors import resumable


@resumable
def finetune_command(ctx: typer.Context) -> None:
    """Train the latent-diffusion generator: --config configs/finetune/X.yaml plus any script flag (see synth/finetune.py --help)."""  # noqa: E501 (--help text: a line break would show)
    from synth.generator.config import parse_args

    args = list(ctx.args)
    if any(a in ("-h", "--help") for a in args):
        from synth.generator.config import build_arg_parser

        build_arg_parser().print_help()
        return
    from synth.finetune import run_finetune

    run_finetune(parse_args(args))


def register(app: typer.Typer) -> None:
    """Add this stage's commands to the synth app."""
    app.command(
        "finetune",
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []},
    )(finetune_command)
