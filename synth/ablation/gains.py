"""A synthetic arm's per-class gain over re-sampling, and where a line through those gains reaches 0.

Shared by the report's gain-by-positives table (one run, across its classes) and the regime curve
(:mod:`synth.ablation.regime`, several runs of one recipe at different data sizes, within each class), so both
read the same number for "class c gained ΔAP with n real positives".
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

RESAMPLED = "real_resampled"


def resampled_positives(results: dict[str, Any]) -> tuple[dict[str, Any] | None, dict[str, int]]:
    """The re-sampling arm of a results.json and each generated class's real training positives (its re-sampling
    plan's count); (None, {}) for a run without that arm."""
    resampled = next((a for a in results["arms"] if a["name"] == RESAMPLED), None)
    per_class = ((resampled or {}).get("resampling") or {}).get("per_class", {})
    return resampled, {c: int(v["n_pos"]) for c, v in per_class.items()}


def class_gains(arm: dict[str, Any], resampled: dict[str, Any], n_pos: dict[str, int]) -> dict[str, float]:
    """Per generated class with an AP in both arms: mean AP over the seeds both ran, arm minus re-sampled. Same
    seeds, so a seed only one arm finished does not shift the difference."""
    seeds = [s for s in arm["seeds"] if s in resampled["seeds"]]
    gains = {}
    for cls in n_pos:
        delta = mean_class_ap(arm, cls, seeds) - mean_class_ap(resampled, cls, seeds)
        if not math.isnan(delta):
            gains[cls] = delta
    return gains


def mean_class_ap(arm: dict[str, Any], cls: str, seeds: list[str]) -> float:
    """Mean test AP of one class over ``seeds``; NaN where it was not scored (no test positives)."""
    vals = [(arm["seeds"][s].get("per_class") or {}).get(cls, {}).get("ap") for s in seeds]
    vals = [float(v) for v in vals if v is not None and not math.isnan(float(v))]
    return float(np.mean(vals)) if vals else math.nan


def break_even(slope: float, intercept: float, counts: list[int] | np.ndarray) -> float | None:
    """The count where ΔAP = intercept + slope·log10(count) crosses 0: the count above which re-sampling alone
    would do as well. None for a rising (or flat) line, or for a crossing outside half the smallest to twice the
    largest observed count (an extrapolation the classes cannot support)."""
    if slope >= 0:
        return None
    x_star = -intercept / slope  # compared in log10 space: a line that barely falls crosses beyond any float
    in_range = math.log10(min(counts) / 2) <= x_star <= math.log10(2 * max(counts))
    return 10**x_star if in_range else None
