"""Reading the files of a saved model folder, refusing a broken one in one line.

Every model the project loads (a classifier member, the filter's verifier, a generator pipeline, a training
checkpoint) is a folder of JSON records and safetensors weights. A truncated copy, a hand edit or a disk that
filled up mid-write must be one ``error:`` line naming the file and what is wrong with it -- never a traceback
from ``json`` / ``safetensors`` / ``torch``, and never a model that loads and then predicts NaN. The readers
here turn each such failure into a :class:`~synth.errors.UserError`; ``fix`` is the caller's advice (which
command rewrites the file).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from synth.errors import UserError

if TYPE_CHECKING:
    import torch
    from torch import nn


def first_line(err: BaseException, limit: int = 160) -> str:
    """An exception's first message line, shortened: what goes inside one ``error:`` line."""
    text = str(err).strip()
    return text.splitlines()[0][:limit] if text else type(err).__name__


def read_json_object(path: str | Path, fix: str) -> dict[str, Any]:
    """The JSON object in ``path``; missing, unreadable as text, malformed / truncated or not an object is one
    ``UserError`` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found; {fix}")
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{path}: not valid JSON, truncated or corrupt ({first_line(err)}); {fix}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object, found {type(data).__name__}; {fix}")
    return data


def check_safetensors(path: str | Path, fix: str) -> None:
    """Read the header of a safetensors file (cheap: no tensor is read); a truncated or garbage file is one
    ``UserError``. safetensors checks that the header's tensors cover the file exactly, so a cut-off file fails."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "pt"):
            pass
    except (SafetensorError, OSError, ValueError) as err:
        raise UserError(
            f"{path}: not a readable safetensors file, truncated or corrupt ({first_line(err)}); {fix}"
        ) from None


def check_folder_files(folder: str | Path, fix: str) -> None:
    """Every ``*.json`` record and ``*.safetensors`` header directly in ``folder`` (a diffusers / transformers model
    folder): cheap, and it names a broken file before a library reports only that the model could not be loaded."""
    for path in sorted(Path(folder).iterdir()):
        if path.suffix == ".json":
            read_json_object(path, fix)
        elif path.suffix == ".safetensors":
            check_safetensors(path, fix)


def load_safetensors(path: str | Path, fix: str) -> dict[str, "torch.Tensor"]:
    """Every tensor of a safetensors file, on the CPU; an unreadable file is one ``UserError`` naming it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found; {fix}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise UserError(
            f"{path}: not a readable safetensors file, truncated or corrupt ({first_line(err)}); {fix}"
        ) from None


def load_weights(model: "nn.Module", path: str | Path, what: str, fix: str) -> None:
    """Load ``path`` into ``model`` strictly: every tensor present, of the shape ``what`` (e.g. ``convnext_atto
    with 4 classes``) has, and finite -- a NaN weight would turn every prediction into NaN."""
    import torch

    tensors = load_safetensors(path, fix)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        name = (missing or unexpected)[0]
        how = f"lacks {len(missing)} tensor(s) of" if missing else f"has {len(unexpected)} tensor(s) not in"
        raise UserError(f"{path}: {how} {what} (e.g. {name!r}); the weights belong to another model; {fix}")
    for name, tensor in tensors.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise UserError(
                f"{path}: tensor {name!r} has shape {list(tensor.shape)}, {what} needs "
                f"{list(expected[name].shape)}; {fix}"
            )
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise UserError(f"{path}: tensor {name!r} holds NaN or infinite values; {fix}")
    model.load_state_dict(tensors)


def positive_int(meta: Mapping[str, Any], key: str, path: Path, fix: str) -> int:
    """``meta[key]`` as an int >= 1 (a bool or a float with a fraction is refused)."""
    value = meta.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) or int(value) < 1:
        raise UserError(f"{path}: {key} is {value!r}, expected a whole number >= 1; {fix}")
    return int(value)


def finite_number(value: Any, where: str, fix: str) -> float:
    """``value`` as a finite float (a bool, string, NaN or infinity is refused naming ``where``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UserError(f"{where} is {value!r}, expected a finite number; {fix}")
    return float(value)


def class_list(meta: Mapping[str, Any], path: Path, fix: str) -> list[str]:
    """``meta["classes"]``: a non-empty list of distinct class names."""
    classes = meta.get("classes")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) and c for c in classes):
        raise UserError(f"{path}: classes must be a non-empty list of class names, found {classes!r}; {fix}")
    if len(set(classes)) != len(classes):
        raise UserError(f"{path}: a class appears twice in classes; {fix}")
    return list(classes)
