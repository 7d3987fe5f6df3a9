"""One typed config loader for every stage: YAML file -> dataclass, dotted overrides, one error per bad key or value.

Every stage keeps its settings in a dataclass (nested dataclasses allowed: the classifier's ``train:`` section, the
ablation's ``data:`` section, ...) and loads it through :func:`load_config`:

* **defaults <- YAML <- overrides.** Overrides are a mapping of dotted keys (``train.epochs``) or nested mappings
  (``{"train": {"epochs": 2}}``, merged into the YAML's section). They come from the stage's own flags, from
  ``--set KEY=VALUE`` (the same option on every ``synth`` command that takes ``--config``) and from the ``overrides:``
  maps of an ablation YAML, so all three spell a setting the same way.
* **One type rule.** Each value is checked and converted against its field's annotation, wherever it came from. A
  value typed on a command line (``--set``, finetune's flags) is read with YAML's scalar rules (``2``, ``0.1``,
  ``true``, ``[48,64]``, ``null``), except that a ``str`` field keeps the text as typed (``--set
  train.mixed_precision=no`` is ``"no"``, not YAML's ``False``). In a YAML file a quoted number is text and an int or
  bool field refuses it (``n_boot: "200"`` is a mistake worth one error); a float field reads text (PyYAML reads
  ``1e-4`` as text). YAML ints are accepted where a float is expected and kept as ints (the classifier and ablation
  caches hash the JSON of these values, so converting them would change cache keys).
* **One range rule.** Every number of every config is a count, size, rate, fraction, seed or threshold, so a
  number that is NaN, infinite or negative (``--set train.lr=-0.1``, ``lr: .nan``, ``seeds: [-1]``) is refused here,
  for every stage and every source of values; each stage's ``validated()`` adds the bounds of its own fields (a
  learning rate > 0, a batch size >= 1).
* **One error.** An unknown key (YAML or override), a value of the wrong type or out of range is one
  :class:`UserError` naming the key, a close match and the valid keys, raised before any work starts.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from synth.config_errors import BadNumberError, bad_number, bad_type, type_name, unknown_key
from synth.errors import UserError
from synth.io import read_yaml_mapping

T = TypeVar("T")

#: Largest seed a stage config takes: ``accelerate.set_seed`` seeds numpy's legacy generator (< 2**32) with the seed
#: plus a process index, so a larger seed is a traceback after the stages before it ran.
MAX_SEED = 2**31 - 1

#: The help text of every ``--set`` option.
SET_HELP = "Override one setting of the config: KEY=VALUE, dotted for sections (e.g. train.epochs=2); repeatable."


class RawText(str):
    """A ``--set`` value as typed on the command line: read by YAML rules against the field's type at load time."""


@dataclasses.dataclass(frozen=True)
class Style:
    """How one stage's messages name things: ``where`` (the file or stage) and a prefix for keys (``--`` for
    flag-style configs such as finetune, whose keys are also its command-line flags)."""

    where: str
    key_prefix: str = ""
    valid_hint: str | None = None
    int_to_float: bool = False

    def at(self, key: str) -> str:
        return f"{self.where}: {self.key_prefix}{key}" if self.where else f"{self.key_prefix}{key}"


def parse_sets(items: Iterable[str] | None) -> dict[str, RawText]:
    """``["train.epochs=2", "synthetic.mode=mix"]`` -> ``{"train.epochs": "2", ...}`` (typed when the config loads)."""
    out: dict[str, RawText] = {}
    for item in items or ():
        key, sep, value = str(item).partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set {item!r}: expected KEY=VALUE, e.g. train.epochs=2")
        out[key.strip()] = RawText(value.strip())
    return out


def as_typed_text(value: Any) -> Any:
    """An argparse value (text, or a list of texts for ``nargs``) marked as typed on a command line."""
    if isinstance(value, str):
        return RawText(value)
    if isinstance(value, list):
        return [as_typed_text(v) for v in value]
    return value


def command_overrides(sets: Iterable[str] | None, flags: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A command's overrides: its ``--set KEY=VALUE`` items, then its specific flags (aliases such as ``--batch-size``;
    ``None`` = not given), so a flag given explicitly wins over a ``--set`` of the same key."""
    return {**parse_sets(sets), **{k: v for k, v in (flags or {}).items() if v is not None}}


def load_config(
    cls: type[T],
    path: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    *,
    where: str | None = None,
    missing_hint: str | None = None,
    drop_none: bool = True,
    key_prefix: str = "",
    valid_hint: str | None = None,
    int_to_float: bool = False,
    internal: Sequence[str] = (),
    base: Mapping[str, Any] | None = None,
) -> T:
    """Defaults <- ``base`` <- YAML file ``path`` <- ``overrides`` -> an instance of the dataclass ``cls`` (not yet
    ``validated()``).

    ``drop_none``: an override whose value is ``None`` means "flag not given" and is skipped (a ``--set KEY=null``
    still sets null). ``internal``: top-level fields set by code, never by a YAML or an override. ``base``: defaults
    the caller derives (an ablation's name from its file name).
    """
    data: dict[str, Any] = dict(base or {})
    if path is not None:
        data.update(read_yaml_mapping(path, missing_hint=missing_hint))
    style = Style(
        where if where is not None else (str(path) if path is not None else cls.__name__),
        key_prefix,
        valid_hint,
        int_to_float,
    )
    data = merge_overrides(cls, data, overrides or {}, style, drop_none=drop_none, internal=internal)
    return build(cls, data, style, internal=internal)


def from_mapping(cls: type[T], data: Any, *, where: str, int_to_float: bool = False) -> T:
    """An already parsed mapping (a YAML file's content) -> ``cls``, with :func:`load_config`'s checks for a file."""
    return build(cls, data, Style(where, int_to_float=int_to_float))


def merge_overrides(
    cls: type,
    data: Mapping[str, Any],
    overrides: Mapping[str, Any],
    style: Style,
    *,
    drop_none: bool = True,
    internal: Sequence[str] = (),
) -> dict[str, Any]:
    """``data`` with each dotted override written into its section; an unknown key is one error naming it."""
    data = _copy_tree(data)
    for key, value in overrides.items():
        if value is None and drop_none:
            continue
        _put(cls, data, str(key), value, style, internal)
    return data


def _put(cls: type, data: dict[str, Any], key: str, value: Any, style: Style, internal: Sequence[str]) -> None:
    parts = key.split(".")
    node, owner = data, cls
    for i, part in enumerate(parts):
        known = _field_types(owner, internal if owner is cls else ())
        if part not in known:
            unknown_key(style, parts, i, list(known), override=True, leaves=lambda: _leaf_paths(cls))
        hint = _strip_optional(known[part])
        last = i == len(parts) - 1
        if last and _is_dataclass(hint):
            value = _plain(value)  # ``--set "train={epochs: 2}"`` merges into the section like a mapping override
        if last and isinstance(value, Mapping) and _is_dataclass(hint) and isinstance(node.get(part), Mapping):
            node[part] = _merge_mappings(node[part], value)
            return
        if last:
            node[part] = value
            return
        if _is_dataclass(hint):
            child = node.get(part)
            node[part] = child = dict(child) if isinstance(child, Mapping) else {}
            node, owner = child, hint
            continue
        if hint is Any or typing.get_origin(hint) is dict or hint is dict:
            child = node.get(part)
            node[part] = child = dict(child) if isinstance(child, Mapping) else {}
            child[".".join(parts[i + 1 :])] = _plain(
                value
            )  # a free-form map (an ablation's ``overrides:``) takes the rest
            return
        raise UserError(
            f"{style.at(key)}: {'.'.join(parts[: i + 1])} is a single value, not a section; "
            f"set it as {style.key_prefix}{'.'.join(parts[: i + 1])}=VALUE"
        )


def build(cls: type[T], data: Any, style: Style, *, path: Sequence[str] = (), internal: Sequence[str] = ()) -> T:
    """A mapping -> ``cls`` with every value checked against its field's type (nested dataclasses recursively)."""
    section = ".".join(path)
    if not isinstance(data, Mapping):
        what = f"{section} must be" if section else "expected"
        raise UserError(f"{style.where}: {what} a mapping of option: value, got {type(data).__name__}")
    known = _field_types(cls, internal if not path else ())
    for key in data:
        if key not in known:
            unknown_key(
                style, [*path, str(key)], len(path), list(known), override=False, leaves=lambda: _leaf_paths(cls)
            )
    kwargs = {key: coerce(value, known[key], [*path, key], style) for key, value in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as err:  # a field without default (e.g. an ablation's name) not given
        raise UserError(f"{style.where}: {section + ': ' if section else ''}{err}") from None


def coerce(value: Any, hint: Any, path: Sequence[str], style: Style, cli: bool = False) -> Any:
    """One value -> the field's type (the one type rule of the module docstring), or one error naming the key.

    ``cli``: the value was typed on a command line (a :class:`RawText`, or an item of one), so text may become a
    number or a boolean; in a YAML file a quoted number is text, and a number field refuses it.
    """
    cli = cli or isinstance(value, RawText)
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(value, typing.get_args(hint), path, style, cli)
    if isinstance(value, RawText) and hint is not str:
        value = _plain(value)
    if hint is Any:
        return value
    if value is None:
        if _is_dataclass(hint):
            return hint()
        raise UserError(f"{style.at('.'.join(path))} is null; expected {type_name(hint)}")
    if _is_dataclass(hint):
        return build(hint, value, style, path=path)
    if origin is list or hint is list:
        (item,) = typing.get_args(hint) or (Any,)
        if isinstance(value, str):
            value = [value]  # one list item may be written without brackets (``--validation_prompts "a prompt"``)
        if not isinstance(value, (list, tuple)):
            bad_type(value, hint, path, style)
        return [coerce(v, item, [*path[:-1], f"{path[-1]}[{i}]"], style, cli) for i, v in enumerate(value)]
    if origin is dict or hint is dict:
        if not isinstance(value, Mapping):
            bad_type(value, hint, path, style)
        return dict(value)
    if hint in (bool, int, float, str):
        return _scalar(value, hint, path, style, cli)
    return value


def _coerce_union(value: Any, args: Sequence[Any], path: Sequence[str], style: Style, cli: bool) -> Any:
    options = [a for a in args if a is not type(None)]
    parsed = _plain(value) if isinstance(value, RawText) else value
    if parsed is None and len(options) < len(args):
        return None
    if isinstance(value, RawText) and str in options and not any(_fits(parsed, a) for a in options if a is not str):
        return str(value)  # text as typed: ``--set negative_prompt=no`` is "no"
    for option in sorted(options, key=lambda a: not _fits(parsed, a)):  # an exact fit first, then conversions
        try:
            return coerce(parsed, option, path, style, cli)
        except BadNumberError:
            raise
        except UserError:
            continue
    bad_type(parsed, args, path, style)


def _scalar(value: Any, hint: type, path: Sequence[str], style: Style, cli: bool) -> Any:
    number = _convert_scalar(value, hint, path, style, cli)
    if hint in (int, float) and not (0 <= number < math.inf):  # NaN fails both comparisons
        bad_number(number, path, style)
    return number


def _convert_scalar(value: Any, hint: type, path: Sequence[str], style: Style, cli: bool) -> Any:
    if isinstance(value, str) and not cli and hint in (bool, int):
        bad_type(value, hint, path, style, quoted=True)
    try:
        if hint is str:
            if isinstance(value, (list, tuple, dict)):
                raise TypeError(value)
            return str(value)
        if hint is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise TypeError(value)
        if hint is int:
            if isinstance(value, float):
                if not value.is_integer():
                    raise ValueError(value)
                return int(value)
            return int(value)
        if isinstance(value, int) and not style.int_to_float:
            return value
        return float(value)
    except (TypeError, ValueError):
        bad_type(value, hint, path, style)


def _fits(value: Any, hint: Any) -> bool:
    """Whether ``value`` already is of type ``hint`` (no conversion needed)."""
    origin = typing.get_origin(hint) or hint
    if origin is bool:
        return isinstance(value, bool)
    if origin is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(origin, type):
        return isinstance(value, origin)
    return False


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _field_types(cls: type, internal: Sequence[str] = ()) -> dict[str, Any]:
    hints = _hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.name not in internal}


def _leaf_paths(cls: type, prefix: str = "", depth: int = 0) -> list[str]:
    out = []
    for name, hint in _field_types(cls).items():
        inner = _strip_optional(hint)
        if _is_dataclass(inner) and depth < 3:
            out += _leaf_paths(inner, f"{prefix}{name}.", depth + 1)
        else:
            out.append(prefix + name)
    return out


def _strip_optional(hint: Any) -> Any:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0] if len(args) == 1 else hint
    return hint


def _is_dataclass(hint: Any) -> bool:
    return isinstance(hint, type) and dataclasses.is_dataclass(hint)


def _plain(value: Any) -> Any:
    """A ``--set`` text read by YAML's scalar rules (``2`` -> 2, ``[48,64]`` -> [48, 64], ``null`` -> None)."""
    if not isinstance(value, RawText):
        return value
    import yaml

    try:
        return yaml.safe_load(str(value)) if str(value) else None
    except yaml.YAMLError:
        return str(value)


def _merge_mappings(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge_mappings(merged[key], value)
        else:
            merged[key] = value
    return merged


def _copy_tree(data: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _copy_tree(v) if isinstance(v, Mapping) else v for k, v in data.items()}
