"""Typed configs of the filter stage, loaded from ``configs/filter/*.yaml``.

Two configs because they have different lives: the verifier is trained once
per dataset (``VerifierConfig``, also used for the phantom oracle) and then
reused by many filter runs (``FilterConfig``) with different thresholds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from synth.config import MAX_SEED, load_config
from synth.errors import UserError


@dataclass
class VerifierConfig:
    """A small multi-label classifier, deliberately *not* the downstream ensemble.

    Its own architecture, resolution and seed keep the filter from selecting
    images that merely please the classifier it is meant to help.
    """

    arch: str = "convnext_atto"  #: any timm model name (random init; nothing is downloaded)
    image_size: int = 128
    epochs: int = 10
    max_steps: int | None = None  #: stop after this many optimiser steps (tests, smoke runs)
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.05
    hflip: bool = True  #: random horizontal flips while training
    seed: int = 1234
    num_workers: int = 0
    eval_batch_size: int = 64

    def validated(self) -> "VerifierConfig":
        import timm

        if not timm.is_model(self.arch):
            raise UserError(
                f"verifier arch {self.arch!r} is not a timm model; e.g. convnext_atto, resnet10t, efficientnet_b0"
            )
        for name in ("image_size", "epochs", "batch_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise UserError(f"verifier {name} must be >= 1, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps < 1:
            raise UserError(f"verifier max_steps must be >= 1 or null, got {self.max_steps}")
        if self.lr <= 0:
            raise UserError(f"verifier lr must be > 0, got {self.lr}")
        if self.seed > MAX_SEED:
            raise UserError(f"verifier seed must be <= {MAX_SEED}, got {self.seed}")
        return self


@dataclass
class FilterConfig:
    """Decision rules of ``synth filter``; every threshold is fitted on real train/val, never test."""

    # label-verifier ------------------------------------------------------------------------
    threshold_quantile: float = 0.2  #: per-class threshold = this quantile of real VAL positives' P(class)
    min_val_positives: int = 5  #: fewer val positives => fallback rule below
    fallback_specificity: float = 0.95  #: fallback threshold = this quantile of real VAL negatives' P(class)
    co_label_min_agreement: float = 0.0  #: reject when fewer than this fraction of co-labels clear their thresholds
    # set-level realism -----------------------------------------------------------------------
    extractor: str = "verifier"  #: "verifier" (its backbone) or a folder with model.safetensors + extractor.yaml
    fid_reject_factor: float = 3.0  #: a class set with FID > factor x real-vs-real floor is rejected whole
    min_fid_images: int = 10  #: below this (synthetic or half the real positives) FID is not computed
    max_fid_images: int = 2000  #: subsample larger sets (FID cost grows with n)
    kid_subset_size: int = 50
    kid_subsets: int = 50
    bootstrap: int = 100  #: resamples for the FID interval
    ci_level: float = 0.95
    # per-image outliers ----------------------------------------------------------------------
    outlier_knn: int = 5  #: distance = mean distance to the k nearest real training images
    outlier_percentile: float = 99.0  #: outlier beyond this percentile of real images' own kNN distances
    outlier_reference_max: int = 5000  #: real training images used as the outlier reference
    #: False: outliers are flagged in scores.csv and the summary but kept. On phantom-cpu the generator
    #: over-draws the findings it learned best (Hydropneumothorax, Pneumothorax), and rejecting outliers
    #: removed the images the oracle saw the finding in most often (87 % of rejected vs 75 % of kept).
    outlier_rejects: bool = False
    # near-copy -------------------------------------------------------------------------------
    nearcopy_pixel_size: int = 32  #: downsampled resolution of the pixel-space check
    nearcopy_calibration_images: int = 200  #: real training images copied/perturbed for calibration
    nearcopy_copy_quantile: float = 5.0  #: percentile of copy similarities taken as "still a copy"
    nearcopy_distinct_quantile: float = 99.9  #: percentile of distinct-patient NN similarities ("not a copy")
    nearcopy_noise_std: float = 0.03  #: perturbations used to make calibration copies
    nearcopy_shift_px: int = 2
    # per-class transfer gate (synth/filtering/transfer.py): real train+val rows only ------------
    transfer_gate: bool = (
        False  #: configs/filter/default.yaml turns it on; off here so a bare FilterConfig tests one rule
    )
    transfer_min_auroc: float = (
        0.5  #: a class passes when its probe AUROC interval's lower bound is above this (chance)
    )
    transfer_min_real_positives: int = 3  #: fewer real train+val positives: the class is not judged
    transfer_min_synthetic: int = 5  #: fewer generated positives or negatives: the class is not judged
    transfer_unjudged: str = "keep"  #: keep | reject: what happens to a class the gate cannot judge
    transfer_bootstrap: int = 200  #: patient resamples for the AUROC interval
    transfer_probe_c: float = 1.0  #: inverse L2 strength of the logistic probe
    #: features the probe sees: "extractor" (the filter's FID/outlier features: the verifier's by default) or a folder
    #: like ``extractor``'s. The verifier's features were fitted to these labels, which lets a set showing "none of the
    #: other generated findings" pass (see transfer.py); a generic encoder does not have that shortcut
    transfer_extractor: str = "extractor"
    # misc ------------------------------------------------------------------------------------
    batch_size: int = 64
    seed: int = 0
    oracle: str | None = None  #: phantom only: oracle folder from `synth oracle train`

    def validated(self) -> "FilterConfig":
        if not 0.0 <= self.threshold_quantile < 1.0:
            raise UserError(f"threshold_quantile must be in [0, 1), got {self.threshold_quantile}")
        if not 0.0 < self.fallback_specificity < 1.0:
            raise UserError(f"fallback_specificity must be in (0, 1), got {self.fallback_specificity}")
        if not 0.0 <= self.co_label_min_agreement <= 1.0:
            raise UserError(f"co_label_min_agreement must be in [0, 1], got {self.co_label_min_agreement}")
        if self.fid_reject_factor <= 1.0:
            raise UserError(
                f"fid_reject_factor must be > 1 (a multiple of the real-vs-real floor), got {self.fid_reject_factor}"
            )
        if self.min_fid_images < 2:
            raise UserError(f"min_fid_images must be >= 2, got {self.min_fid_images}")
        if self.max_fid_images < self.min_fid_images:
            raise UserError(
                f"max_fid_images must be >= min_fid_images ({self.min_fid_images}), got {self.max_fid_images}"
            )
        for name in (
            "kid_subset_size",
            "kid_subsets",
            "bootstrap",
            "outlier_knn",
            "outlier_reference_max",
            "nearcopy_pixel_size",
            "nearcopy_calibration_images",
            "batch_size",
        ):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("outlier_percentile", "nearcopy_copy_quantile", "nearcopy_distinct_quantile"):
            if not 0.0 < getattr(self, name) <= 100.0:
                raise UserError(f"{name} is a percentile in (0, 100], got {getattr(self, name)}")
        if not 0.5 < self.ci_level < 1.0:
            raise UserError(f"ci_level must be in (0.5, 1), got {self.ci_level}")
        folders = [("extractor", self.extractor)] if self.extractor != "verifier" else []
        if self.transfer_extractor not in ("extractor", "verifier", self.extractor):
            folders.append(("transfer_extractor", self.transfer_extractor))
        for key, folder in folders:  # read by the filter only after the verifier trained (an ablation: hours in)
            from synth.filtering.extractor import check_extractor_spec

            check_extractor_spec(folder, key)
        if self.transfer_unjudged not in ("keep", "reject"):
            raise UserError(f"transfer_unjudged must be keep or reject, got {self.transfer_unjudged!r}")
        if not 0.0 <= self.transfer_min_auroc < 1.0:
            raise UserError(f"transfer_min_auroc must be in [0, 1), got {self.transfer_min_auroc}")
        if self.transfer_bootstrap < 20 or self.transfer_probe_c <= 0 or self.transfer_min_synthetic < 1:
            raise UserError("transfer_bootstrap must be >= 20, transfer_probe_c > 0 and transfer_min_synthetic >= 1")
        return self


def load_verifier_config(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> VerifierConfig:
    """Defaults <- YAML file <- overrides (None values ignored; ``--set`` texts typed), via
    :func:`synth.config.load_config`."""
    return load_config(VerifierConfig, path, overrides, missing_hint="see configs/filter/verifier.yaml").validated()


def load_filter_config(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> FilterConfig:
    """Defaults <- YAML file <- overrides (None values ignored; ``--set`` texts typed), via
    :func:`synth.config.load_config`."""
    return load_config(FilterConfig, path, overrides, missing_hint="see configs/filter/default.yaml").validated()
