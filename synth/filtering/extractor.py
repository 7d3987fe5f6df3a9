"""Which CXR feature space FID/KID, outliers and near-copy search use.

Default: the label-verifier's own backbone (trained on the real training
split of the same data). Users with a better local chest X-ray encoder point
``extractor`` at a folder holding

    model.safetensors   the timm model's state dict (a classifier head, if any, is ignored)
    extractor.yaml      arch: <timm name>, image_size: <int>, in_chans: 1 | 3,
                        pixel_mean: <float>, pixel_std: <float>, name: <label for reports>

Nothing is ever fetched from a hub; the model is built with random init and
the local weights loaded on top.
"""

from __future__ import annotations

from pathlib import Path

import torch
import yaml
from torch import nn

from synth.errors import UserError
from synth.filtering.verifier import FeatureExtractor, Verifier

EXTRACTOR_FILE = "extractor.yaml"


class _ToChannels(nn.Module):
    """Grey -> the channel count an encoder was trained with (forward_features/forward_head pass through)."""

    def __init__(self, model: nn.Module, in_chans: int) -> None:
        super().__init__()
        self.inner, self.in_chans = model, in_chans
        self.num_features = model.num_features

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner.forward_features(x.expand(-1, self.in_chans, -1, -1) if self.in_chans != 1 else x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.inner.forward_head(x, pre_logits=pre_logits)


def check_extractor_spec(spec: str, key: str = "extractor") -> Path:
    """A folder ``spec`` (not ``"verifier"``) holds the files :func:`load_extractor` reads, or one error naming
    ``key``; :meth:`FilterConfig.validated` calls it so a wrong path fails when the config loads."""
    folder = Path(spec)
    if not (folder / EXTRACTOR_FILE).exists() or not (folder / "model.safetensors").exists():
        raise UserError(
            f"{key} {spec!r}: expected 'verifier' or a folder with {EXTRACTOR_FILE} and model.safetensors (see "
            "synth/filtering/extractor.py)"
        )
    return folder


def load_extractor(spec: str, verifier: Verifier, device: str | torch.device = "cpu") -> FeatureExtractor:
    """``"verifier"`` -> the verifier's backbone; otherwise a local encoder folder (see module doc)."""
    if spec == "verifier":
        return FeatureExtractor(
            verifier.model, verifier.image_size, verifier.pixel_mean, verifier.pixel_std, verifier.name
        )
    import timm
    from safetensors.torch import load_file

    folder = check_extractor_spec(spec)
    meta = yaml.safe_load((folder / EXTRACTOR_FILE).read_text()) or {}
    if "arch" not in meta or not timm.is_model(str(meta["arch"])):
        raise UserError(f"{folder / EXTRACTOR_FILE}: 'arch' must name a timm model, got {meta.get('arch')!r}")
    in_chans = int(meta.get("in_chans", 1))
    model = timm.create_model(meta["arch"], pretrained=False, num_classes=0, in_chans=in_chans)
    state = load_file(str(folder / "model.safetensors"))
    missing, _unexpected_head = model.load_state_dict(state, strict=False)
    if missing:
        raise UserError(
            f"{folder / 'model.safetensors'}: weights do not fit {meta['arch']} (missing {missing[:3]}...); check "
            f"'arch' in {EXTRACTOR_FILE}"
        )
    wrapped = _ToChannels(model, in_chans).to(device).eval()
    return FeatureExtractor(
        wrapped,
        int(meta.get("image_size", 224)),
        float(meta.get("pixel_mean", 0.5)),
        float(meta.get("pixel_std", 0.25)),
        str(meta.get("name", f"{meta['arch']} ({folder.name})")),
    )


def save_extractor(folder: str | Path, model: nn.Module, meta: dict) -> Path:
    """Write ``model`` and its ``extractor.yaml`` (``meta``: the keys in the module doc) as a folder
    :func:`load_extractor` reads; returns the folder.

    Why: a label-free feature space for the transfer gate (``transfer_extractor``) or FID is a folder on disk, so
    the benches and tests that compare feature spaces (e.g. a random-init encoder against the verifier's) build it
    the way a user's own encoder would be laid out.
    """
    from safetensors.torch import save_file

    from synth.io import atomic_path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / "model.safetensors") as tmp:
        save_file(model.state_dict(), str(tmp))
    with atomic_path(folder / EXTRACTOR_FILE) as tmp:
        Path(tmp).write_text(yaml.safe_dump(dict(meta)))
    return folder


def random_resnet10t(folder: str | Path, image_size: int, name: str = "random resnet10t", seed: int = 0) -> Path:
    """A random-init resnet10t extractor folder: features never fitted to any label (a generic-encoder baseline)."""
    import timm

    torch.manual_seed(seed)
    model = timm.create_model("resnet10t", pretrained=False, num_classes=0, in_chans=1)
    meta = {"arch": "resnet10t", "image_size": image_size, "in_chans": 1, "pixel_mean": 0.5, "pixel_std": 0.25}
    return save_extractor(folder, model, {**meta, "name": name})
