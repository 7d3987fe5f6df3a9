"""A saved timm classifier folder (an ensemble member, the filter's verifier) and ``ensemble.json``, checked on load.

Why here and not in each loader: a member and a verifier are the same thing on disk (a JSON record with
``arch``, ``image_size`` and ``classes`` beside ``model.safetensors``), and both must refuse the same broken
files in one line instead of loading a model that predicts nothing, NaN, or probabilities above 1. The
ensemble's own record adds the member list and weights, whose sum is 1 (a weighted *mean*: :func:`choose_weights`
writes equal weights or a point of the simplex), so the ensemble's probabilities stay in [0, 1].
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from classifier.models import build_model
from synth.errors import UserError
from synth.model_files import class_list, finite_number, load_weights, positive_int, read_json_object

#: How far the member weights of ``ensemble.json`` may sum from 1 (a grid of tenths written as floats).
WEIGHT_SUM_TOLERANCE = 1e-6


@dataclass
class SavedModel:
    """A timm classifier read from its folder: the model (weights loaded, eval mode), its record and settings."""

    model: nn.Module
    meta: dict[str, Any]
    arch: str
    image_size: int
    classes: list[str]


def load_saved_model(folder: Path, meta_file: str, weights_file: str, fix: str) -> SavedModel:
    """``folder/meta_file`` + ``folder/weights_file`` -> the model, each broken piece one ``UserError`` naming its
    file: malformed JSON, an unknown arch, image_size <= 0, no classes, unreadable or mismatched weights."""
    import timm

    meta_path = folder / meta_file
    meta = read_json_object(meta_path, fix)
    arch = meta.get("arch")
    if not isinstance(arch, str) or not timm.is_model(arch):
        raise UserError(f"{meta_path}: arch {arch!r} is not a timm model; {fix}")
    image_size = positive_int(meta, "image_size", meta_path, fix)
    classes = class_list(meta, meta_path, fix)
    model = build_model(arch, len(classes))
    load_weights(model, folder / weights_file, f"{arch} with {len(classes)} classes", fix)
    return SavedModel(model.eval(), meta, arch, image_size, classes)


def check_ensemble_spec(spec: dict[str, Any], path: Path, fix: str) -> dict[str, Any]:
    """``ensemble.json`` as :func:`classifier.ensemble.predict` reads it: classes, at least one member, each with a
    folder name and a finite, non-negative weight, the weights summing to 1; ``tta_flip`` a boolean."""
    class_list(spec, path, fix)
    members = spec.get("members")
    if not isinstance(members, list) or not members:
        raise UserError(f"{path}: members is {members!r}, expected a non-empty list of member folders; {fix}")
    weights = []
    for k, entry in enumerate(members):
        if not isinstance(entry, dict) or not isinstance(entry.get("dir"), str) or not entry["dir"]:
            raise UserError(f"{path}: members[{k}] needs a 'dir' naming its member folder; {fix}")
        weight = finite_number(entry.get("weight"), f"{path}: members[{k}].weight", fix)
        if weight < 0:
            raise UserError(f"{path}: members[{k}].weight is {weight!r}, expected >= 0; {fix}")
        weights.append(weight)
    total = math.fsum(weights)
    if abs(total - 1.0) > WEIGHT_SUM_TOLERANCE:
        raise UserError(
            f"{path}: the member weights sum to {total:g}, expected 1 (the ensemble is their weighted mean); {fix}"
        )
    if not isinstance(spec.get("tta_flip", False), bool):
        raise UserError(f"{path}: tta_flip is {spec['tta_flip']!r}, expected true or false; {fix}")
    return spec


def check_probabilities(probs: np.ndarray, source: Path, fix: str) -> np.ndarray:
    """The last guard before probabilities reach a metric, a submission or the filter: finite and within [0, 1]."""
    if probs.size and not (np.isfinite(probs).all() and probs.min() >= 0.0 and probs.max() <= 1.0 + 1e-5):
        bad = probs[~np.isfinite(probs) | (probs < 0) | (probs > 1.0 + 1e-5)]
        raise UserError(f"{source}: the model gave probabilities outside [0, 1] (e.g. {float(bad[0])!r}); {fix}")
    return probs
