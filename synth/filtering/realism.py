"""Set-level realism: FID and KID on chest X-ray features, with a real-vs-real floor.

FID is strongly biased upwards for small sets (the covariance of n images in
D dimensions is poorly estimated when n is not >> D), so an absolute value
means little. Every synthetic-vs-real FID is therefore computed at the SAME
set size m as its floor, two disjoint real subsets of size m, and a class set
is judged by the ratio FID / floor. The interval is a percentile bootstrap
over both sets (resampling images with replacement).

The statistics themselves are torchmetrics' ``FrechetInceptionDistance`` /
``KernelInceptionDistance``; they are fed pre-computed features through an
identity ``feature=`` module so that the images are embedded once and the
bootstrap only repeats the cheap statistics.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


class PrecomputedFeatures(nn.Module):
    """Identity 'feature extractor' for torchmetrics: inputs already are (N, D) features."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def fid(real: np.ndarray, fake: np.ndarray) -> float:
    """torchmetrics FID between two (N, D) feature sets (N >= 2 each)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    metric = FrechetInceptionDistance(feature=PrecomputedFeatures(real.shape[1]))
    metric.update(torch.as_tensor(real, dtype=torch.float64), real=True)
    metric.update(torch.as_tensor(fake, dtype=torch.float64), real=False)
    return max(float(metric.compute()), 0.0)


def kid(real: np.ndarray, fake: np.ndarray, subset_size: int, subsets: int, seed: int = 0) -> tuple[float, float]:
    """torchmetrics KID (mean, std over subsets); ``subset_size`` is capped at the smaller set."""
    from torchmetrics.image.kid import KernelInceptionDistance

    size = min(subset_size, len(real), len(fake))
    with warnings.catch_warnings():  # "will save all extracted features in buffer": the features are ours, a few MB
        warnings.filterwarnings("ignore", message=".*will save all extracted features in buffer.*")
        metric = KernelInceptionDistance(feature=PrecomputedFeatures(real.shape[1]), subset_size=size, subsets=subsets)
    metric.update(torch.as_tensor(real, dtype=torch.float64), real=True)
    metric.update(torch.as_tensor(fake, dtype=torch.float64), real=False)
    with torch.random.fork_rng():
        torch.manual_seed(seed)  # KID draws its subsets from torch's global RNG
        mean, std = metric.compute()
    return float(mean), float(std)


@dataclass
class SetRealism:
    """FID/KID of one class's synthetic set against real training positives of that class."""

    m: int  #: images per set actually compared (synthetic = each real subset)
    fid: float
    fid_ci: tuple[float, float]
    fid_floor: float
    fid_floor_ci: tuple[float, float]
    kid: float
    kid_std: float
    kid_floor: float

    @property
    def ratio(self) -> float:
        return self.fid / self.fid_floor if self.fid_floor > 0 else float("inf")


def set_realism(
    synthetic: np.ndarray,
    real: np.ndarray,
    *,
    max_images: int,
    min_images: int,
    kid_subset_size: int,
    kid_subsets: int,
    bootstrap: int,
    ci_level: float,
    rng: np.random.Generator,
) -> SetRealism | None:
    """Compare at equal size m = min(#synthetic, #real // 2, max_images); None when m < ``min_images``."""
    m = min(len(synthetic), len(real) // 2, max_images)
    if m < min_images:
        return None
    perm = rng.permutation(len(real))
    ref_a, ref_b = real[perm[:m]], real[perm[m : 2 * m]]
    syn = synthetic[rng.choice(len(synthetic), size=m, replace=False)]
    lo, hi = (1 - ci_level) / 2, 1 - (1 - ci_level) / 2

    def interval(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
        if bootstrap < 1:
            return (float("nan"), float("nan"))
        vals = [fid(a[rng.integers(0, m, m)], b[rng.integers(0, m, m)]) for _ in range(bootstrap)]
        return (float(np.quantile(vals, lo)), float(np.quantile(vals, hi)))

    seed = int(rng.integers(2**31))
    kid_mean, kid_std = kid(ref_b, syn, kid_subset_size, kid_subsets, seed)
    return SetRealism(
        m=m,
        fid=fid(ref_b, syn),
        fid_ci=interval(ref_b, syn),
        fid_floor=fid(ref_a, ref_b),
        fid_floor_ci=interval(ref_a, ref_b),
        kid=kid_mean,
        kid_std=kid_std,
        kid_floor=kid(ref_a, ref_b, kid_subset_size, kid_subsets, seed)[0],
    )


@dataclass
class OutlierModel:
    """kNN distance to real training features (standardised), with the real images' own range as limit."""

    reference: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    k: int
    limit: float

    def distances(self, features: np.ndarray) -> np.ndarray:
        return _knn_mean_distance(self._standardise(features), self.reference, self.k, exclude_self=False)

    def _standardise(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mean) / self.std


def fit_outlier_model(
    real_features: np.ndarray, k: int, percentile: float, max_reference: int, rng: np.random.Generator
) -> OutlierModel:
    """Limit = ``percentile`` of each reference image's distance to its k nearest OTHER reference images."""
    if len(real_features) > max_reference:
        real_features = real_features[rng.choice(len(real_features), size=max_reference, replace=False)]
    k = max(1, min(k, len(real_features) - 1))
    mean, std = real_features.mean(0), real_features.std(0) + 1e-6
    ref = (real_features - mean) / std
    own = _knn_mean_distance(ref, ref, k, exclude_self=True)
    return OutlierModel(ref, mean, std, k, float(np.percentile(own, percentile)))


def _knn_mean_distance(x: np.ndarray, ref: np.ndarray, k: int, exclude_self: bool, chunk: int = 1024) -> np.ndarray:
    refs = torch.as_tensor(ref, dtype=torch.float32)
    out = []
    for start in range(0, len(x), chunk):
        d = torch.cdist(torch.as_tensor(x[start : start + chunk], dtype=torch.float32), refs)
        if exclude_self:
            d[torch.arange(d.shape[0]), torch.arange(start, start + d.shape[0])] = float("inf")
        out.append(d.topk(k, dim=1, largest=False).values.mean(1))
    return torch.cat(out).numpy() if out else np.zeros(0, np.float32)
