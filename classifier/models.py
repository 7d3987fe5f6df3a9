"""timm models for the ensemble: built by name, 1-channel input, never downloaded.

Radiographs are grayscale, so the stem takes one channel (timm sums a
pretrained RGB stem over its input channels when ``in_chans=1``). Pretrained
weights come only from a LOCAL file through timm's
``pretrained_cfg_overlay=dict(file=...)`` (safetensors, or a state dict read with
``weights_only=True``: nothing is unpickled); there is no hub access anywhere.
The classifier head is always new (``num_classes`` differs from ImageNet's 1000).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
import torch.nn as nn

from synth.errors import UserError

#: Pixel normalisation after scaling uint8 to [0, 1] (radiographs: mid-grey, wide spread).
PIXEL_MEAN = 0.5
PIXEL_STD = 0.25


def build_model(
    arch: str, num_classes: int, pretrained_file: str | None = None, drop_path_rate: float = 0.0
) -> nn.Module:
    """A timm classifier with ``num_classes`` logits and a 1-channel stem."""
    import timm

    if not timm.is_model(arch):
        raise UserError(f"classifier arch {arch!r} is not a timm model; e.g. convnext_atto, convnext_small")
    kwargs = {"num_classes": num_classes, "in_chans": 1}
    if drop_path_rate:
        kwargs["drop_path_rate"] = drop_path_rate
    if pretrained_file:
        path = Path(pretrained_file)
        if not path.is_file():
            raise UserError(
                f"pretrained_file {path} not found; give a local timm weights file (.safetensors/.pth) or null"
            )
        try:  # timm reads .safetensors with safetensors and anything else with torch.load(weights_only=True)
            return timm.create_model(
                arch, pretrained=True, pretrained_cfg_overlay={"file": str(path.resolve())}, **kwargs
            )
        except (RuntimeError, KeyError, ValueError, pickle.UnpicklingError) as err:
            first = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
            raise UserError(
                f"pretrained_file {path} cannot be loaded into {arch} ({first}); give the {arch} ImageNet weights "
                "as .safetensors (e.g. timm's model.safetensors) or a plain state-dict file"
            ) from None
    return timm.create_model(arch, pretrained=False, **kwargs)


def check_input_size(model: nn.Module, arch: str, image_size: int) -> None:
    """One dummy forward, so a too-small resolution fails with the option to fix, not a conv error mid-run."""
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 1, image_size, image_size))
    except RuntimeError as err:
        raise UserError(
            f"classifier member {arch}@{image_size}px: input too small for this arch "
            f"({str(err).splitlines()[0][:80]}); use image_size >= 32 for ConvNeXt"
        ) from None
    finally:
        model.train()
