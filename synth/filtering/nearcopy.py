"""Near-copy (memorisation) check: is a synthetic image a copy of a training image?

Two similarities to ALL real training images, nearest neighbour each:

* feature space — cosine of pooled CXR features;
* pixel space — normalised correlation of small grey thumbnails, flip-aware
  (max over the image and its horizontal mirror), which catches copies a
  label-trained feature space is invariant to.

Each threshold is calibrated on the training data itself: real training
images are copied with light perturbations (noise, mirror, small shift) —
"what a copy scores" — and compared with the nearest real image of a
DIFFERENT patient — "what a non-copy scores". The threshold sits midway
between the low end of copies and the high end of distinct patients. A space
in which the two overlap cannot tell a copy from a look-alike and is not used
for flagging; if neither space separates them, the pixel space is used at the
copy end (erring towards flagging: under the MIMIC-CXR data-use agreement a
near-copy is a leak).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F


def unit_rows(x: np.ndarray, center: bool) -> torch.Tensor:
    t = torch.as_tensor(x, dtype=torch.float32)
    if center:
        t = t - t.mean(dim=1, keepdim=True)
    return F.normalize(t, dim=1, eps=1e-8)


def mirror_thumbnails(pixels: np.ndarray, size: int) -> np.ndarray:
    return pixels.reshape(-1, size, size)[:, :, ::-1].reshape(len(pixels), -1).copy()


def nearest(
    query: torch.Tensor, ref: torch.Tensor, exclude: np.ndarray | None = None, chunk: int = 4096
) -> tuple[np.ndarray, np.ndarray]:
    """Max dot product of each (unit) query row over (unit) ref rows and its index; ``exclude`` (Nq, Nr) bool masks
    pairs."""
    best = torch.full((len(query),), -float("inf"))
    idx = torch.zeros(len(query), dtype=torch.long)
    for start in range(0, len(ref), chunk):
        sim = query @ ref[start : start + chunk].T
        if exclude is not None:
            sim[torch.as_tensor(exclude[:, start : start + chunk])] = -float("inf")
        val, arg = sim.max(dim=1)
        better = val > best
        best[better], idx[better] = val[better], arg[better] + start
    return best.numpy(), idx.numpy()


@dataclass
class SpaceThreshold:
    threshold: float
    copy_low: float  #: low percentile of copy similarities
    distinct_high: float  #: high percentile of distinct-patient NN similarities
    separates: bool
    used: bool

    def as_dict(self) -> dict:
        return asdict(self)


def calibrate(
    copy_sims: np.ndarray, distinct_sims: np.ndarray, copy_pct: float, distinct_pct: float
) -> SpaceThreshold:
    copy_low = float(np.percentile(copy_sims, copy_pct))
    distinct_high = float(np.percentile(distinct_sims, distinct_pct)) if len(distinct_sims) else -1.0
    separates = copy_low > distinct_high
    # Overlap (patients that look alike, heavy perturbations): flag only what is closer to a training image than
    # distinct real patients ever are. Exact and light copies still exceed it; ordinary variation does not.
    threshold = (copy_low + distinct_high) / 2 if separates else distinct_high
    return SpaceThreshold(threshold, copy_low, distinct_high, separates, used=separates or distinct_high < 1.0 - 1e-6)


@dataclass
class NearCopyIndex:
    """All real training images, unit-normalised, in both spaces."""

    features: torch.Tensor
    pixels: torch.Tensor
    pixel_size: int

    @classmethod
    def build(cls, features: np.ndarray, pixels: np.ndarray, pixel_size: int) -> "NearCopyIndex":
        return cls(unit_rows(features, center=False), unit_rows(pixels, center=True), pixel_size)

    def feature_similarity(
        self, features: np.ndarray, exclude: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        return nearest(unit_rows(features, center=False), self.features, exclude)

    def pixel_similarity(self, pixels: np.ndarray, exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Flip-aware: a mirrored copy is still a copy."""
        direct, i_direct = nearest(unit_rows(pixels, center=True), self.pixels, exclude)
        mirrored, i_mirror = nearest(
            unit_rows(mirror_thumbnails(pixels, self.pixel_size), center=True), self.pixels, exclude
        )
        return np.maximum(direct, mirrored), np.where(mirrored > direct, i_mirror, i_direct)


def perturbed_copies(
    images: torch.Tensor, noise_std: float, shift_px: int, generator: torch.Generator
) -> dict[str, torch.Tensor]:
    """Lightly changed copies of (N, 1, H, W) images in [0, 1]: what a memorising generator could emit."""
    noisy = (images + noise_std * torch.randn(images.shape, generator=generator)).clamp(0, 1)
    s = max(shift_px, 1)
    shifted = F.pad(images, (s, 0, s, 0), mode="replicate")[..., : images.shape[-2], : images.shape[-1]]
    return {
        "noise": noisy,
        "mirror": torch.flip(images, dims=[-1]),
        "shift": shifted,
        "noise+mirror": torch.flip(noisy, dims=[-1]),
    }
