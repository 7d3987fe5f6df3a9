"""Typer options that several ``synth`` commands share, declared once.

A flag that means the same thing in every command (``--out``, ``--config``, ``--set``, ``--seed``,
``--workers``, ``--overwrite``, ``--no-progress``) gets its spelling and type here, so two commands cannot
drift apart on them; a command passes only what is its own (what ``--out`` holds, which YAML ``--config``
reads, an example ``--set``). Each factory returns an ``Annotated`` type: the default stays in the command's
signature, where a reader of the command looks for it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, List, Optional

import typer

from synth.config import SET_HELP

NoProgress = Annotated[bool, typer.Option("--no-progress", help="Hide the progress bar.")]


def out_option(help: str) -> Any:
    """``--out``: the folder (or file) a command writes."""
    return Annotated[Path, typer.Option("--out", help=help)]


def config_option(help: str) -> Any:
    """``--config``: the YAML a command reads its settings from (flags override it)."""
    return Annotated[Optional[Path], typer.Option("--config", help=help)]


def set_option(example: str) -> Any:
    """``--set KEY=VALUE``: one setting of ``--config`` overridden; ``example`` shows a key of this command."""
    return Annotated[Optional[List[str]], typer.Option("--set", help=f"{SET_HELP} E.g. --set {example}.")]


def seed_option(help: Optional[str] = None, kind: Any = Optional[int]) -> Any:
    return Annotated[kind, typer.Option("--seed", help=help)]


def workers_option(help: str, kind: Any = Optional[int]) -> Any:
    return Annotated[kind, typer.Option("--workers", help=help)]


def overwrite_option(help: str) -> Any:
    return Annotated[bool, typer.Option("--overwrite", help=help)]
