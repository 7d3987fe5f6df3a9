"""Typer options that several ``synth`` commands share, declared once.

A flag that means the same thing in every command (``--out``, ``--config``, ``--set``, ``--seed``,
``--workers``, ``--overwrite``, ``--no-progress``) gets its spelling and type here, so the commands built on
these factories (prepare, phantom, generate, filter, verifier/oracle train, predict, ablate's ``--set``) cannot
drift apart on them; ``classify train``, ``evaluate`` and ``ablate --config`` still declare theirs with
``typer.Option`` (a required ``--config``, a ``--set`` without an example). A command passes only what is its
own (what ``--out`` holds, which YAML ``--config`` reads, an example ``--set``). Each factory returns an
``Annotated`` type (:func:`option`, which the commands also use for their own flags): the default stays in the
command's signature, where a reader looks for it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, List, Optional

import typer

from synth.config import SET_HELP


def option(kind: Any, flag: str, help: Optional[str] = None) -> Any:
    """``Annotated[kind, typer.Option(flag, help=help)]``: a command's flag declared in one line where it fits."""
    return Annotated[kind, typer.Option(flag, help=help)]


NoProgress = option(bool, "--no-progress", "Hide the progress bar.")


def out_option(help: str) -> Any:
    """``--out``: the folder (or file) a command writes."""
    return option(Path, "--out", help)


def config_option(help: str) -> Any:
    """``--config``: the YAML a command reads its settings from (flags override it)."""
    return option(Optional[Path], "--config", help)


def set_option(example: str) -> Any:
    """``--set KEY=VALUE``: one setting of ``--config`` overridden; ``example`` shows a key of this command."""
    return option(Optional[List[str]], "--set", f"{SET_HELP} E.g. --set {example}.")


def seed_option(help: Optional[str] = None, kind: Any = Optional[int]) -> Any:
    return option(kind, "--seed", help)


def workers_option(help: str, kind: Any = Optional[int]) -> Any:
    return option(kind, "--workers", help)


def overwrite_option(help: str) -> Any:
    return option(bool, "--overwrite", help)
