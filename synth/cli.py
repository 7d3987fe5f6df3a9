"""The ``synth`` command line.

Each stage owns its commands in ``synth/commands/<stage>.py`` and exposes
``register(app)``; this module only assembles them, so stages stay
independent and heavy imports (torch, diffusers) happen inside commands.
"""

from __future__ import annotations

import importlib

import click
import typer

from synth.errors import UserError

app = typer.Typer(
    name="synth",
    help="Synthetic tail-class augmentation for long-tailed chest X-ray classification (CXR-LT).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

#: Stage modules under synth.commands, in pipeline order.
COMMAND_MODULES: tuple[str, ...] = ("data", "phantom", "finetune", "classify", "generate", "filter", "ablate")

for _name in COMMAND_MODULES:
    importlib.import_module(f"synth.commands.{_name}").register(app)


def main() -> None:
    """Entry point: bad input becomes one ``error:`` line and exit status 2."""
    try:
        app(standalone_mode=False)
    except UserError as err:
        typer.echo(f"error: {err}", err=True)
        raise SystemExit(2) from None
    except click.exceptions.ClickException as err:
        err.show()
        raise SystemExit(err.exit_code) from None
    except click.exceptions.Abort:
        typer.echo("aborted", err=True)
        raise SystemExit(130) from None
    except click.exceptions.Exit as err:
        raise SystemExit(err.exit_code) from None


if __name__ == "__main__":
    main()
