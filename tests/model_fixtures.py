"""Saved models written by hand in the layouts the commands read, and ways to damage their files.

A classifier ensemble (ensemble.json + member-k/{member.json, model.safetensors}) and a verifier folder
(verifier.json + model.safetensors) of random-init ConvNeXt-atto models: the tests that use them check the
plumbing (files, rows, refusals), not accuracy, so they take seconds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import torch

from classifier.ensemble import group_record
from classifier.models import build_model
from synth.io import save_safetensors_atomic, write_json_atomic

#: deliberately not in taxonomy order: a submission must reorder them
CLASSES = ["Support Devices", "Fracture", "Rib Fracture", "Normal"]
PREVALENCE = {"Support Devices": 0.5, "Fracture": 0.05, "Rib Fracture": 0.005, "Normal": 0.4}


def make_ensemble(folder: Path, sizes=(32, 40), store_groups: bool = True, store_prevalence: bool = True) -> Path:
    """An ensemble of ``len(sizes)`` members with equal weights, one per input size."""
    members = []
    for k, size in enumerate(sizes):
        torch.manual_seed(k)
        model = build_model("convnext_atto", len(CLASSES))
        member = folder / f"member-{k}"
        save_safetensors_atomic(member / "model.safetensors", model.state_dict())
        write_json_atomic(member / "member.json", {"arch": "convnext_atto", "image_size": size, "classes": CLASSES})
        members.append({"dir": f"member-{k}", "arch": "convnext_atto", "image_size": size, "weight": 1 / len(sizes)})
    spec = {"classes": CLASSES, "tta_flip": False, "members": members}
    if store_prevalence:
        spec["train_prevalence"] = PREVALENCE
    if store_groups:
        spec.update(group_record(PREVALENCE))
    write_json_atomic(folder / "ensemble.json", spec)
    return folder


def make_verifier(folder: Path, classes: list[str], image_size: int = 32) -> Path:
    """A random-init verifier folder as ``synth verifier train`` writes it (the fields the loader reads)."""
    torch.manual_seed(0)
    model = build_model("convnext_atto", len(classes))
    save_safetensors_atomic(folder / "model.safetensors", model.state_dict())
    write_json_atomic(
        folder / "verifier.json",
        {"arch": "convnext_atto", "image_size": image_size, "classes": classes, "pixel_mean": 0.5, "pixel_std": 0.25},
    )
    return folder


# ---------------------------------------------------------------- damage


def truncate(path: Path, keep: float = 0.5) -> None:
    """Cut a file short, as a copy or a write interrupted by a full disk leaves it."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def garbage(path: Path) -> None:
    """Replace a file by bytes that are no format at all."""
    path.write_bytes(bytes(range(256)) * 4)


def edit_json(path: Path, change: Callable[[dict[str, Any]], None]) -> None:
    """Apply ``change`` to a JSON object file in place (NaN / Infinity written as Python's json writes them)."""
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def nan_weights(path: Path) -> None:
    """A weights file of the right shapes whose first floating tensor holds a NaN."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path))
    name = next(k for k, t in tensors.items() if t.is_floating_point())
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[0] = float("nan")
    save_file(tensors, str(path))


def other_model_weights(path: Path, n_classes: int) -> None:
    """ConvNeXt-atto weights with another number of classes: every tensor but the head's fits."""
    save_safetensors_atomic(path, build_model("convnext_atto", n_classes).state_dict())
