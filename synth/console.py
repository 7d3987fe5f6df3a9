"""The one rich console every ``synth`` command prints through: text shown as given, never read as markup.

Why: paths, class names and run names are the user's, and rich reads ``[...]`` in them as markup tags —
``--out 'data [old]'`` printed as ``data `` and ``'d[/]x'`` crashed after the files were written (#35). Escaping at
each call site misses one sooner or later; a console with markup (and emoji codes) off cannot. Colour is given as
``style=`` instead of ``[yellow]`` tags; rich is imported only when a console is made.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from rich.console import Console


def rich_console(stderr: bool = False) -> "Console":
    """A rich ``Console`` (tables, ``print``, ``log``) that prints every string literally."""
    from rich.console import Console

    return Console(stderr=stderr, markup=False, emoji=False)
