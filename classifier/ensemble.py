"""Load a trained ensemble folder and predict: weighted mean of member probabilities.

Folder layout (written by :func:`classifier.train.train_ensemble`)::

    ensemble.json              classes, member list with weights, tta_flip, val mAP
    member-<k>/model.safetensors
    member-<k>/member.json     arch, image_size, classes, how it was trained

Members differ in input resolution (the CXR-LT recipe: 224 + 384 (+512) on
GPU, 64 + 96 (+128) here), so each member reads the images at its own size;
their sigmoid probabilities are averaged with the weights in ensemble.json
(equal, or chosen on the validation split — never on test; non-negative, summing to 1).
A folder that breaks any of this is refused on load (:mod:`classifier.saved_models`).
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn as nn

from classifier.data import load_images, to_input
from classifier.saved_models import check_ensemble_spec, check_probabilities, load_saved_model
from synth.errors import UserError
from synth.taxonomy import GroupThresholds, frequency_groups

if TYPE_CHECKING:
    from classifier.config import EnsembleConfig

ENSEMBLE_FILE = "ensemble.json"
MEMBER_FILE = "member.json"
WEIGHTS_FILE = "model.safetensors"


@dataclass
class Member:
    model: nn.Module
    arch: str
    image_size: int
    classes: list[str]


@torch.no_grad()
def predict_images(
    model: nn.Module,
    images: torch.Tensor,
    batch_size: int = 128,
    tta_flip: bool = False,
    device: torch.device | str = "cpu",
    channels_last: bool = False,
) -> np.ndarray:
    """Sigmoid probabilities (N, C) of a uint8 image tensor (N, 1, H, W)."""
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, images.shape[0], batch_size):
        x = to_input(images[start : start + batch_size].to(device))
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        p = torch.sigmoid(model(x).float())
        if tta_flip:
            p = (p + torch.sigmoid(model(torch.flip(x, dims=[-1])).float())) / 2
        out.append(p.cpu())
    model.train(was_training)
    n_classes = getattr(model, "num_classes", 0)
    return torch.cat(out).numpy() if out else np.zeros((0, n_classes), dtype=np.float32)


#: What to do about a broken ensemble folder (the advice of every refusal below).
RETRAIN = "retrain the ensemble with `synth classify train` (or restore the folder from a copy)"


def load_member(folder: str | Path, device: torch.device | str = "cpu") -> Member:
    """A member folder's model; a broken ``member.json`` or ``model.safetensors`` is one ``UserError`` naming it."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(
            f"{folder} is not a classifier member folder (needs {MEMBER_FILE} and {WEIGHTS_FILE}); {RETRAIN}"
        )
    saved = load_saved_model(folder, MEMBER_FILE, WEIGHTS_FILE, RETRAIN)
    return Member(saved.model.to(device).eval(), saved.arch, saved.image_size, saved.classes)


def read_ensemble(model_dir: str | Path) -> dict:
    """``ensemble.json`` of ``model_dir``, checked (:func:`classifier.saved_models.check_ensemble_spec`)."""
    from synth.model_files import read_json_object

    model_dir = Path(model_dir)
    path = model_dir / ENSEMBLE_FILE
    if not path.exists():
        raise UserError(
            f"{model_dir} is not a trained classifier ensemble (no {ENSEMBLE_FILE}); train one with `synth classify "
            "train`"
        )
    return check_ensemble_spec(read_json_object(path, RETRAIN), path, RETRAIN)


def predict(
    model_dir: str | Path,
    df: pd.DataFrame,
    batch_size: int = 64,
    device: str | None = None,
    chunk_rows: int = 4096,
    on_rows: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, list[str]]:
    """(probabilities (N, C), classes) of the ensemble in ``model_dir`` on the rows of ``df``.

    Rows are decoded ``chunk_rows`` at a time (each member's resolution once per chunk), so an unlabeled
    test set of any size fits in memory; ``on_rows(n)`` is called after each chunk (a progress bar).
    """
    model_dir = Path(model_dir)
    spec = read_ensemble(model_dir)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    classes = list(spec["classes"])
    members = []
    for entry in spec["members"]:
        member = load_member(model_dir / entry["dir"], device)
        if member.classes != classes:
            raise UserError(
                f"{model_dir / entry['dir']}: member classes differ from {ENSEMBLE_FILE}; retrain the ensemble"
            )
        members.append((float(entry["weight"]), member))
    total = np.zeros((len(df), len(classes)), dtype=np.float64)
    for start in range(0, len(df), max(1, chunk_rows)):
        part = df.iloc[start : start + chunk_rows]
        part.attrs.update(df.attrs)
        cache: dict[int, torch.Tensor] = {}
        for weight, member in members:
            if member.image_size not in cache:
                cache[member.image_size] = load_images(part, member.image_size)
            probs = predict_images(
                member.model, cache[member.image_size], batch_size, spec.get("tta_flip", False), device
            )
            total[start : start + len(part)] += weight * probs
        if on_rows is not None:
            on_rows(len(part))
    return check_probabilities(total.astype(np.float32), model_dir, RETRAIN), classes


def group_record(train_prevalence: Mapping[str, float], thresholds: GroupThresholds = GroupThresholds()) -> dict:
    """What ``ensemble.json`` stores so a model can be scored on a test-only set: its classes' head / medium /
    tail groups and the thresholds that made them (from the training prevalence it also stores)."""
    return {"groups": frequency_groups(train_prevalence, thresholds), "group_thresholds": asdict(thresholds)}


def ensemble_spec(
    ens: EnsembleConfig,
    classes: list[str],
    members: list[dict],
    val_map: float | None,
    prevalence: np.ndarray,
    weights: np.ndarray,
    rows: dict[str, int],
    ens_fp: str,
) -> dict[str, Any]:
    """``ensemble.json`` as :func:`classifier.train.train_ensemble` writes it (the layout in this module's
    docstring)."""
    return {
        "classes": classes,
        "tta_flip": ens.ensemble.tta_flip,
        "weights_mode": ens.ensemble.weights,
        "members": members,
        "val_map": val_map,
        "train_prevalence": dict(zip(classes, map(float, prevalence))),
        **group_record(
            dict(zip(classes, map(float, prevalence)))
        ),  # groups travel with the model (test-only evaluate)
        "class_weights": dict(zip(classes, map(float, weights))),
        "rows": rows,
        "synthetic_mode": ens.synthetic.mode,
        "config": ens.to_dict(),
        "fingerprint": ens_fp,
    }


def model_groups(spec: Mapping) -> tuple[dict[str, str], dict[str, float]] | None:
    """(groups, training prevalence) stored with an ensemble, or None for one that stores neither.

    Why from the model: head / medium / tail are defined by what the model was TRAINED on; an external
    or challenge test set has no training rows to define them. Ensembles saved before ``groups`` was
    stored still carry ``train_prevalence``, from which the default CXR-LT groups are derived.
    """
    prevalence = spec.get("train_prevalence")
    if not prevalence:
        return None
    prevalence = {c: float(v) for c, v in prevalence.items()}
    if spec.get("groups"):
        return dict(spec["groups"]), prevalence
    thresholds = GroupThresholds(**spec.get("group_thresholds", {}))
    return frequency_groups(prevalence, thresholds), prevalence


def choose_weights(
    y_val: np.ndarray, member_probs: Sequence[np.ndarray], mode: str = "mean", step: float = 0.1
) -> list[float]:
    """Equal weights, or the point of a ``step`` simplex grid with the best val mAP (ties -> closest to equal)."""
    from classifier.metrics import macro_ap

    k = len(member_probs)
    equal = [1.0 / k] * k
    if mode == "mean" or k == 1:
        return equal
    n = int(round(1 / step))
    best, best_key = equal, None
    for combo in itertools.product(range(n + 1), repeat=k - 1):
        if sum(combo) > n:
            continue
        w = [c / n for c in combo] + [(n - sum(combo)) / n]
        score = macro_ap(y_val, sum(wi * p for wi, p in zip(w, member_probs)))
        if score is None:
            return equal
        key = (round(score, 10), -float(np.abs(np.array(w) - 1.0 / k).sum()))
        if best_key is None or key > best_key:
            best, best_key = w, key
    return best
