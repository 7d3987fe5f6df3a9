"""The ``synth`` command line.

Each stage owns its commands in ``synth/commands/<stage>.py`` and exposes
``register(app)``; this module only assembles them, so stages stay
independent and heavy imports (torch, diffusers) happen inside commands.
"""

from __future__ import annotations

import functools
import importlib
import os

import typer

from synth.errors import one_line_errors


class _SynthTyper(typer.Typer):
    """A Typer whose commands turn ``UserError`` into one ``error:`` line and exit 2, and a permission or
    disk error (``OSError``) into one ``error:`` line with the fix and exit 1 — the CLI's one error handler.

    Done per command (not only in ``main``) so ``typer.testing.CliRunner`` and
    sub-apps added by stages behave exactly like the installed ``synth`` script.
    """

    def command(self, *args, **kwargs):
        register = super().command(*args, **kwargs)

        def decorator(fn):
            resumes = getattr(fn, "resumes_on_rerun", False)  # set by synth.errors.resumable

            @functools.wraps(fn)
            def wrapper(*a, **kw):
                with one_line_errors(typer.Exit, resumes=resumes):
                    return fn(*a, **kw)

            register(wrapper)
            return fn

        return decorator


app = _SynthTyper(
    name="synth",
    help="Synthetic tail-class augmentation for long-tailed chest X-ray classification (CXR-LT).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

#: Stage modules under synth.commands, in pipeline order.
COMMAND_MODULES: tuple[str, ...] = (
    "data",
    "phantom",
    "finetune",
    "classify",
    "predict",
    "generate",
    "filter",
    "ablate",
    "results",
)


@app.callback()
def _root(
    threads: int = typer.Option(
        None,
        "--threads",
        min=1,
        help="CPU threads per process (torch intra-op, OpenMP/MKL, "
        "inherited by child processes). Default: OMP_NUM_THREADS, else every core. On a shared "
        "machine give each job its share: N jobs on C cores -> --threads C/N.",
    ),
) -> None:
    """Synthetic tail-class augmentation for long-tailed chest X-ray classification (CXR-LT)."""
    if threads is not None:
        set_threads(threads)


def set_threads(n: int) -> None:
    """Use ``n`` CPU threads in this process and in every process it starts.

    Two cores shared by five jobs each using both made one VAE step 35x slower (0.31 s -> 10.7 s): threads
    spin-wait for each other. The environment variables reach child processes (``accelerate launch``
    workers, the phantom renderer's pool); DataLoader workers already run single-threaded.
    """
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(n)
    import torch

    torch.set_num_threads(n)


for _name in COMMAND_MODULES:
    importlib.import_module(f"synth.commands.{_name}").register(app)


def main() -> None:
    """Entry point: bad input becomes one ``error:`` line and exit status 2 (a disk/permission error: exit 1)."""
    with one_line_errors():
        app()


if __name__ == "__main__":
    main()
