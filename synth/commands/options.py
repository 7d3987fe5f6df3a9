"""Typer options that several ``synth`` commands share, declared once.

A flag that means the same thing in every command (``--out``, ``--config``, ``--set``, ``--seed``,
``--workers``, ``--overwrite``, ``--no-progress``) gets its spelling and type here, so the commands built on
these factories (prepare, phantom, generate, filter, verifier/oracle train, predict, ablate's ``--set``) cannot
drift apart on them; ``classify train``, ``evaluate`` and ``ablate --config`` still declare theirs with
``typer.Option`` (a required ``--config``, a ``--set`` without an example). A command passes only what is its
own (what ``--out`` holds, which YAML ``--config`` reads, an example ``--set``). Each factory returns an
``Annotated`` type (:func:`option`, which the commands also use for their own flags): the default stays in the
command's signature, where a reader looks for it.

A command that mirrors many config fields as flags (``--batch-size`` for ``batch_size``) lists them as
:class:`ConfigFlag` s in one table (``GENERATE_FLAGS``, ``PREPARE_FLAGS``), added to the command by
:func:`with_config_flags`: the flag, its type and help are written once, and its value reaches
:func:`synth.config.command_overrides` without a hand-kept dict. ``synth/finetune.py`` builds its argparse flags
from its dataclass the same way (:mod:`synth.generator.config`); ``filter``, ``verifier train`` and
``oracle train`` pass their two to five flags in a dict.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Callable, List, Mapping, Optional

import typer

from synth.config import SET_HELP


def option(kind: Any, flag: str, help: Optional[str] = None) -> Any:
    """``Annotated[kind, typer.Option(flag, help=help)]``: a command's flag declared in one line where it fits.

    The help is escaped for Rich, which renders typer's ``--help``: a ``[default: 8]`` is otherwise read as a markup
    tag and silently dropped.
    """
    from rich.markup import escape

    return Annotated[kind, typer.Option(flag, help=escape(help) if help else help)]


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


@dataclass(frozen=True)
class ConfigFlag:
    """A command flag that sets the config field of its name: ``batch_size`` is ``--batch-size``."""

    kind: Any  #: the flag's type as typer reads it (``Optional[int]``; ``bool`` for an on-switch)
    help: str


def with_config_flags(flags: Mapping[str, ConfigFlag]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Add one option per config field in ``flags`` to a command, handing it the values as ``flags=``.

    A flag that mirrors a config field used to be written three times (an option, a signature entry, a dict entry
    for :func:`synth.config.command_overrides`), and a field could lose its flag unnoticed (``generate``'s
    ``compile``). Declared once here, the flag's spelling is its field's name. The command gets ``None`` for a flag
    not given, so the YAML's value stays; a ``bool`` flag is an on-switch (off = not given), a path is passed as
    text like the YAML's. In ``--help`` the options come after the command's own inputs and outputs, before
    ``--config``.
    """

    def add_flags(command: Callable[..., Any]) -> Callable[..., Any]:
        own = [p for p in inspect.signature(command, eval_str=True).parameters.values() if p.name != "flags"]
        added = [
            inspect.Parameter(
                name,
                inspect.Parameter.KEYWORD_ONLY,
                default=False if flag.kind is bool else None,
                annotation=option(flag.kind, "--" + name.replace("_", "-"), flag.help),
            )
            for name, flag in flags.items()
        ]

        @functools.wraps(command)
        def with_flags(**values: Any) -> Any:
            given = {name: _as_override(values.pop(name)) for name in flags}
            return command(**values, flags=given)

        at = next((i for i, p in enumerate(own) if p.name == "config"), len(own))  # settings, then --config / --set
        with_flags.__signature__ = inspect.Signature([*own[:at], *added, *own[at:]])
        with_flags.__annotations__ = {p.name: p.annotation for p in with_flags.__signature__.parameters.values()}
        return with_flags

    return add_flags


def _as_override(value: Any) -> Any:
    if value is False:
        return None
    return str(value) if isinstance(value, Path) else value
