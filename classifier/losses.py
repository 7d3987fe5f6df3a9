"""Multi-label losses that ignore un-annotated labels.

An NIH image is not a negative for a class NIH never labels, so every loss
takes a ``mask`` (> 0 = annotated, its value the cell's weight) and averages over annotated cells only.

The weighted asymmetric loss (Ridnik et al., ICCV 2021) is what the CXR-LT
2023/2024 winners trained with: it down-weights easy negatives (γ− = 4,
plus a probability margin ``clip`` that discards very easy ones) more than
positives (γ+ = 1) — the right bias when nearly every cell is a negative —
and per-class weights from training prevalence lift the tail classes.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

EPS = 1e-8


def class_weights_from_prevalence(prevalence: np.ndarray, power: float = 0.5, max_weight: float = 10.0) -> np.ndarray:
    """weight_c ∝ (1 / prevalence_c) ** power, capped at ``max_weight`` × the mean, normalised to mean 1.

    Prevalence comes from the REAL training rows; classes with no positives get the cap.
    """
    p = np.asarray(prevalence, dtype=np.float64)
    if power == 0:
        return np.ones_like(p, dtype=np.float32)
    with np.errstate(divide="ignore"):
        w = np.where(p > 0, (1.0 / np.maximum(p, 1e-12)) ** power, np.inf)
    finite = w[np.isfinite(w)]
    base = finite.mean() if finite.size else 1.0
    w = np.minimum(w / base, max_weight)
    return (w / w.mean()).astype(np.float32)


class AsymmetricLoss(nn.Module):
    """Weighted ASL on logits; mean over annotated cells.

    Not timm's ``AsymmetricLossMultiLabel`` (same focusing terms, clip margin and eps clamp, per-class
    ``weight``) because that loss has no mask: every cell counts, so an un-annotated (NaN / masked) label would
    have to be filled in as a negative or positive, and its reductions run over all cells, not over the
    annotated ones. Masking is the reason this class exists; the rest follows Ridnik et al. as timm does.
    """

    def __init__(
        self,
        gamma_neg: float = 4.0,
        gamma_pos: float = 1.0,
        clip: float = 0.05,
        class_weights: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.gamma_neg, self.gamma_pos, self.clip = gamma_neg, gamma_pos, clip
        self.register_buffer(
            "class_weights", class_weights if class_weights is not None else torch.ones(0), persistent=False
        )

    def forward(self, logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        labels, mask = _clean(labels, mask)
        p = torch.sigmoid(logits.float())
        p_neg = (p - self.clip).clamp(min=0) if self.clip > 0 else p  # shifted probability for negatives
        loss_pos = labels * torch.log(p.clamp(min=EPS)) * (1 - p).pow(self.gamma_pos)
        loss_neg = (1 - labels) * torch.log((1 - p_neg).clamp(min=EPS)) * p_neg.pow(self.gamma_neg)
        loss = -(loss_pos + loss_neg)
        return _reduce(loss, mask, self.class_weights)


class MaskedBCE(nn.Module):
    """Weighted binary cross-entropy on logits; mean over annotated cells."""

    def __init__(self, class_weights: torch.Tensor | None = None) -> None:
        super().__init__()
        self.register_buffer(
            "class_weights", class_weights if class_weights is not None else torch.ones(0), persistent=False
        )

    def forward(self, logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        labels, mask = _clean(labels, mask)
        loss = F.binary_cross_entropy_with_logits(logits.float(), labels, reduction="none")
        return _reduce(loss, mask, self.class_weights)


def _clean(labels: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """NaN labels (= not annotated) become masked zeros, so they carry neither loss nor gradient."""
    known = ~torch.isnan(labels)
    mask = known.to(labels.dtype) if mask is None else mask * known
    return torch.where(known, labels, torch.zeros_like(labels)), mask


def _reduce(loss: torch.Tensor, mask: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Mean over annotated cells, each weighted by its mask value (1 for a real row; a synthetic row's
    ``synthetic.loss_weight``): the denominator counts cells, not weights, so a down-weighted row costs less
    instead of being renormalised back to full weight in a batch of its own kind."""
    if weights.numel():
        loss = loss * weights
    annotated = mask > 0
    loss = torch.where(annotated, loss * mask, torch.zeros_like(loss))  # NaN-safe: masked cells contribute exactly 0
    return loss.sum() / annotated.sum().clamp(min=1).to(loss.dtype)


def build_loss(name: str, class_weights: torch.Tensor | None = None, **kwargs) -> nn.Module:
    if name == "asl":
        return AsymmetricLoss(class_weights=class_weights, **kwargs)
    return MaskedBCE(class_weights=class_weights)
