"""How the report writes arms and numbers: labels, estimates with intervals, signed differences."""

from __future__ import annotations

import math
from typing import Any

from synth.ablation.arms import ARMS
from synth.ablation.evidence import degenerate_text
from synth.ablation.results import ARM_LABELS, Estimate


def arm_label(arm: dict[str, Any]) -> str:
    return arm.get("label") or ARM_LABELS.get(arm["name"], arm["name"])


def arm_short(arm: dict[str, Any]) -> str:
    if arm.get("short"):
        return arm["short"]
    return ARMS[arm["name"]].short if arm["name"] in ARMS else arm["name"]


def fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def fmt_count(n: float | None, missing: str = "none in range") -> str:
    """A fitted count (a break-even): whole numbers from 10 up, one decimal below."""
    if n is None:
        return missing
    return f"≈ {n:.0f}" if n >= 10 else f"≈ {n:.1f}"


def fmt_rho(value: float | None, missing: str = "– (fewer than 3 classes)") -> str:
    """A Spearman rho, or what stands in for one that could not be computed."""
    return missing if value is None else f"{value:+.2f}"


def fmt_est(est: Estimate) -> str:
    if est.n_seeds == 0:
        return "–"
    return f"{est.mean:.3f} ± {est.std:.3f} [{est.ci[0]:.3f}, {est.ci[1]:.3f}]"


def fmt_diff(est: Estimate) -> str:
    """Signed difference with interval; a trailing * marks an interval that excludes 0.

    A degenerate bootstrap (too few distinct resampled values: synth/ablation/evidence.py) gets no p and no *:
    its "p < 0.001" would be an artefact of the resampling.
    """
    if est.n_seeds == 0:
        return "–"
    if est.degenerate:
        return (
            f"{est.mean:+.3f} [{est.ci[0]:+.3f}, {est.ci[1]:+.3f}], "
            f"degenerate bootstrap ({degenerate_text(est.n_distinct, est.modal_share)}): no p"
        )
    p = "" if est.p is None else ", p<0.001" if est.p < 0.001 else f", p{'≤' if est.p_is_bound else '='}{est.p:.3f}"
    return f"{est.mean:+.3f} [{est.ci[0]:+.3f}, {est.ci[1]:+.3f}]{p}" + ("*" if est.excludes_zero else "")
