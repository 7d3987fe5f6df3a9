"""The config loader's errors: an unknown key or a value of the wrong type, each one line naming the key.

Apart from :mod:`synth.config` because the wording (close matches, valid keys, the type a value should have had)
is what users read and tests pin, and it changes for reasons of its own.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from synth.errors import UserError

if TYPE_CHECKING:
    from synth.config import Style


class UnknownKeyError(UserError):
    """An unknown key: ``section`` (dotted, "" at the top level), the bad ``name`` in it, and whether it came from an
    override. A subclass only so a stage whose tests pin an older wording can keep it."""

    def __init__(self, message: str, *, section: str, name: str, override: bool) -> None:
        super().__init__(message)
        self.section, self.name, self.override = section, name, override


class BadNumberError(UserError):
    """A number of the right type but outside every config's range (NaN, infinite or negative): the loader's union
    handling re-raises it instead of trying the next type (``-1`` must not become the text ``"-1"``)."""


def bad_number(value: Any, path: Sequence[str], style: Style) -> typing.NoReturn:
    """One error naming the key: every number a config holds is a count, size, rate, fraction, seed or threshold."""
    if value != value or value in (float("inf"), float("-inf")):
        what = "is not a finite number; give a number >= 0"
    else:
        what = "must be >= 0 (counts, sizes, rates, seeds and thresholds cannot be negative)"
    raise BadNumberError(f"{style.at('.'.join(path))}: {value!r} {what}")


def bad_type(value: Any, hint: Any, path: Sequence[str], style: Style, quoted: bool = False) -> typing.NoReturn:
    """One error naming the key, the value and the type it should have had."""
    hint_text = " (text in a YAML file: write a number or true/false without quotes)" if quoted else ""
    raise UserError(f"{style.at('.'.join(path))}: cannot read {value!r} as {type_name(hint)}{hint_text}")


def type_name(hint: Any) -> str:
    """``int``, ``list[int]``, ``float or null`` (a tuple of hints: the members of a union)."""
    if isinstance(hint, tuple) or typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(type_name(a) for a in (hint if isinstance(hint, tuple) else typing.get_args(hint)))
    if hint is type(None):
        return "null"
    origin = typing.get_origin(hint)
    if origin is not None:
        return f"{origin.__name__}[{', '.join(type_name(a) for a in typing.get_args(hint))}]"
    return getattr(hint, "__name__", str(hint))


def unknown_key(
    style: Style, parts: Sequence[str], i: int, valid: list[str], *, override: bool, leaves: Callable[[], list[str]]
) -> typing.NoReturn:
    """One error: the unknown key ``parts`` (``parts[i]`` is the bad one), the closest valid key (in its section,
    else anywhere) and the valid keys of that section."""
    key, section = ".".join(parts), ".".join(parts[:i])
    close = difflib.get_close_matches(parts[i], valid, n=1, cutoff=0.6)
    suggestion = ".".join([*parts[:i], close[0], *parts[i + 1 :]]) if close else None
    if suggestion is None:
        leaves = leaves()
        close = difflib.get_close_matches(key, leaves, n=1, cutoff=0.6) or [
            p for p in leaves if p.split(".")[-1] == parts[-1]
        ]
        suggestion = close[0] if close else None
    prefix = (
        style.key_prefix if override else ""
    )  # a flag-style config names its flags as flags, its YAML keys as keys
    did_you_mean = f" (did you mean {prefix + suggestion!r}?)" if suggestion else ""
    listing = style.valid_hint or f"valid keys{' in ' + section if section else ''}: {', '.join(sorted(valid))}"
    where = f"{style.where}: " if style.where else ""
    raise UnknownKeyError(
        f"{where}unknown {'override key' if override else 'key'} {prefix + key!r}{did_you_mean}; {listing}",
        section=section,
        name=parts[i],
        override=override,
    )
