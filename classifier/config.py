"""Typed configs of the downstream classifier ensemble, loaded from ``configs/classifier/*.yaml``.

One YAML describes a whole ensemble: the members (which differ in input
resolution, and optionally arch / seed), the training recipe they share, the
loss, the augmentation, how synthetic rows are mixed in, and how member
probabilities are combined. Unknown keys are refused (a typo must not
silently fall back to a default and change an ablation arm).

Overrides (from the CLI ``--set train.epochs=2`` or the ablation config's
``classifier.overrides``) are a mapping of dotted keys (``train.epochs``) or
nested mappings (``{"train": {"epochs": 2}}``); ``members`` is replaced whole.
Loading, overrides and type checks are :func:`synth.config.load_config`'s.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from synth.config import MAX_SEED, from_mapping, load_config
from synth.errors import UserError

SYNTHETIC_MODES = ("none", "mix", "pretrain_finetune", "mix_then_head")
SYNTHETIC_LABELS = ("prompt", "target", "target_only")
LOSSES = ("asl", "bce")
MIXED_PRECISION = ("no", "bf16", "fp16")
REPORT_TO = ("none", "tensorboard")
#: classifier/stage.py seeds a stage with ``seed * 1000 + stage``: that must stay a seed numpy takes (see MAX_SEED)
MEMBER_MAX_SEED = (MAX_SEED - 1) // 1000


@dataclass
class MemberConfig:
    """One ensemble member: a timm model at one input resolution."""

    arch: str = "convnext_atto"  #: any timm model name; random init unless pretrained_file is given
    image_size: int = 64  #: square input resolution (images are cached in memory at this size)
    seed: int = 0
    pretrained_file: str | None = None  #: LOCAL timm weights file (pretrained_cfg_overlay=dict(file=...)); never a hub
    drop_path_rate: float = 0.0
    batch_size: int | None = None  #: per-process batch; None = train.batch_size
    lr: float | None = None  #: None = train.lr
    epochs: int | None = None  #: None = train.epochs (a cheaper low-resolution member can train longer)


@dataclass
class TrainConfig:
    """The recipe every member shares (AdamW, warm-up + cosine, EMA, accumulation)."""

    epochs: int = 3
    max_steps: int | None = None  #: cap optimiser steps per stage (smoke runs, tests)
    batch_size: int = 64  #: per process, per micro-step
    grad_accum: int = 1  #: micro-batches per optimiser step
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_frac: float = 0.05  #: linear warm-up over this fraction of the optimiser steps, then cosine to 0
    ema_decay: float | None = 0.998  #: timm ModelEmaV3 decay (with warm-up); null = no EMA
    select: str = "best"  #: "best" = the epoch with the best val mAP (EMA weights), "last" = the final epoch
    mixed_precision: str = "no"  #: bf16 / fp16 on GPU; always fp32 on CPU (bf16 autocast is ~6x slower there)
    checkpoint: bool = True  #: accelerate save_state after every epoch (resume on re-run)
    eval_batch_size: int = 128
    channels_last: bool = False  #: GPU speed-up for ConvNeXt; off on CPU
    #: where the decoded uint8 images (one file per set and resolution) go; null = image-cache/ beside the manifest
    #: (shared by an ablation's arms), or in the output folder when that is read-only. Not part of any fingerprint.
    image_cache_dir: str | None = None
    #: "tensorboard": per-epoch loss, val mAP, lr and images/s through Accelerate's trackers, event files in
    #: <output>/logs/member-<k>-<stage>/ (diffusers' --report_to). Not part of any fingerprint.
    report_to: str = "none"


@dataclass
class LossConfig:
    """Weighted asymmetric loss (Ridnik et al. 2021), as used by the CXR-LT 2023/2024 winners; or BCE."""

    name: str = "asl"
    gamma_neg: float = 4.0
    gamma_pos: float = 1.0
    clip: float = 0.05
    class_weight_power: float = 0.5  #: weight_c ∝ (1 / train prevalence_c) ** power, mean 1; 0 = unweighted
    max_class_weight: float = 10.0  #: cap, so a class with 2 positives does not dominate the loss


@dataclass
class AugmentConfig:
    """Radiograph-safe augmentation, applied to whole batches (cheap next to the model step)."""

    degrees: float = 5.0
    translate: float = 0.05  #: fraction of the image size
    scale: float = 0.05  #: zoom in [1 - scale, 1 + scale]
    brightness: float = 0.1
    contrast: float = 0.1
    hflip: bool = False  #: off by default: the heart (and its findings) sit on one side


@dataclass
class SyntheticMixConfig:
    """How ``source == synthetic`` rows enter training.

    * ``none``: synthetic rows are ignored.
    * ``mix``: the kept synthetic rows join the real training rows every epoch.
    * ``pretrain_finetune``: stage 1 trains on synthetic rows only (``pretrain_with_real``
      adds the real rows), stage 2 fine-tunes on REAL training rows only — RoentGen-v2
      found this better than naive mixing (+6.5 % vs +2.7 %).
    * ``mix_then_head``: ``mix``, then only the classification head re-trained (re-initialised) on the REAL
      training rows for ``head_epochs`` — classifier re-training (cRT, Kang et al., ICLR 2020; SYNAuG): the
      features may learn from synthetic images while the decision boundary is set by real ones only. Under the
      ablation's re-sampling arms the real rows carry the re-sampling plan in this stage too.

    ``loss_weight`` scales every synthetic row's loss (its annotated cells count ``loss_weight`` times a real
    cell's; the mean stays over annotated cells): DiffuLT (2024) down-weights generated samples so label noise
    from unfaithful images costs less than it teaches.
    """

    mode: str = "none"
    ratio: float | None = None  #: at most ratio × (real training rows) synthetic rows; null = all
    per_class_cap: int | None = None  #: at most this many synthetic rows per target_class; null = no cap
    pretrain_epochs: int = 3
    pretrain_with_real: bool = False
    #: "prompt": every finding named in the image's prompt is a positive, the others negatives;
    #: "target": the verified target class (and parents) positive, the prompt's co-occurring findings unknown
    #: (the filter checks the target finding only, so their labels stay out of the loss), the rest negatives;
    #: "target_only": the target class (and parents) positive, every other class unknown — for generators that
    #: draw look-alike findings the prompt did not ask for (a "negative" there teaches the wrong thing).
    labels: str = "prompt"
    #: counterfactual pairs (``synth generate --controls``): true = train on each kept image AND its control (the
    #: control negative for the image's class); false = control rows are left out
    controls: bool = False
    loss_weight: float = 1.0  #: weight of a synthetic row's loss relative to a real row's (0 < w <= 1 down-weights)
    head_epochs: int = 2  #: epochs of the head-only stage of ``mix_then_head``
    seed: int = 0  #: which synthetic rows survive ratio/cap (fixed across member seeds, so arms compare the same rows)


@dataclass
class EnsembleOptions:
    weights: str = "mean"  #: "mean" or "val" (weights on a 0.1 simplex grid maximising val mAP)
    tta_flip: bool = False  #: average with the horizontally flipped image


@dataclass
class DataConfig:
    """Used only by the script / CLI entry (the ablation passes its DataFrame directly)."""

    manifest: str | None = None  #: prepared manifest.csv (real rows, all splits)
    synthetic_manifest: str | None = None  #: optional synthetic manifest (source=synthetic)
    output_dir: str | None = None


@dataclass
class EnsembleConfig:
    members: list[MemberConfig] = field(default_factory=lambda: [MemberConfig()])
    train: TrainConfig = field(default_factory=TrainConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    synthetic: SyntheticMixConfig = field(default_factory=SyntheticMixConfig)
    ensemble: EnsembleOptions = field(default_factory=EnsembleOptions)
    data: DataConfig = field(default_factory=DataConfig)

    def validated(self) -> "EnsembleConfig":
        import timm

        if not self.members:
            raise UserError("classifier config: members is empty; list at least one {arch, image_size}")
        for i, m in enumerate(self.members):
            if not timm.is_model(m.arch):
                raise UserError(
                    f"classifier members[{i}].arch {m.arch!r} is not a timm model; e.g. convnext_atto, convnext_small"
                )
            if not 8 <= m.image_size <= 2048:
                raise UserError(f"classifier members[{i}].image_size must be in [8, 2048], got {m.image_size}")
            for name in ("epochs", "batch_size"):
                if getattr(m, name) is not None and getattr(m, name) < 1:
                    raise UserError(f"classifier members[{i}].{name} must be >= 1 or null, got {getattr(m, name)}")
            if m.lr is not None and m.lr <= 0:
                raise UserError(f"classifier members[{i}].lr must be > 0 or null, got {m.lr}")
            if m.seed > MEMBER_MAX_SEED:
                raise UserError(
                    f"classifier members[{i}].seed must be <= {MEMBER_MAX_SEED} (a stage is seeded with seed * 1000 "
                    f"+ stage), got {m.seed}"
                )
            if not 0.0 <= m.drop_path_rate < 1.0:
                raise UserError(f"classifier members[{i}].drop_path_rate must be in [0, 1), got {m.drop_path_rate}")
            if m.pretrained_file is not None and not Path(m.pretrained_file).is_file():
                raise UserError(
                    f"classifier members[{i}].pretrained_file {m.pretrained_file} not found; give a local timm "
                    "weights file or null"
                )
        t = self.train
        for name in ("epochs", "batch_size", "grad_accum", "eval_batch_size"):
            if getattr(t, name) < 1:
                raise UserError(f"classifier train.{name} must be >= 1, got {getattr(t, name)}")
        if t.lr <= 0:
            raise UserError(f"classifier train.lr must be > 0, got {t.lr}")
        if t.max_steps is not None and t.max_steps < 1:
            raise UserError(f"classifier train.max_steps must be >= 1 or null, got {t.max_steps}")
        if t.select not in ("best", "last"):
            raise UserError(f"classifier train.select must be 'best' or 'last', got {t.select!r}")
        if t.mixed_precision not in MIXED_PRECISION:
            raise UserError(
                f"classifier train.mixed_precision must be one of {MIXED_PRECISION}, got {t.mixed_precision!r}"
            )
        if t.report_to not in REPORT_TO:
            raise UserError(f"classifier train.report_to must be one of {REPORT_TO}, got {t.report_to!r}")
        if t.report_to == "tensorboard":
            from accelerate.utils import is_tensorboard_available

            if not is_tensorboard_available():
                raise UserError(
                    "--report_to tensorboard: the tensorboard package is not installed; "
                    "pip install tensorboard (or drop --report_to)"
                )
        if t.ema_decay is not None and not 0.0 < t.ema_decay < 1.0:
            raise UserError(f"classifier train.ema_decay must be in (0, 1) or null, got {t.ema_decay}")
        if not 0.0 <= t.warmup_frac < 1.0:
            raise UserError(f"classifier train.warmup_frac must be in [0, 1), got {t.warmup_frac}")
        if self.loss.name not in LOSSES:
            raise UserError(f"classifier loss.name must be one of {LOSSES}, got {self.loss.name!r}")
        if not 0.0 <= self.loss.clip < 1.0:
            raise UserError(f"classifier loss.clip must be in [0, 1), got {self.loss.clip}")
        if self.loss.max_class_weight <= 0:
            raise UserError(f"classifier loss.max_class_weight must be > 0, got {self.loss.max_class_weight}")
        for name in ("translate", "scale"):
            if not 0.0 <= getattr(self.augment, name) < 1.0:
                raise UserError(f"classifier augment.{name} must be in [0, 1), got {getattr(self.augment, name)}")
        s = self.synthetic
        if s.mode not in SYNTHETIC_MODES:
            raise UserError(f"classifier synthetic.mode must be one of {SYNTHETIC_MODES}, got {s.mode!r}")
        if s.labels not in SYNTHETIC_LABELS:
            raise UserError(f"classifier synthetic.labels must be one of {SYNTHETIC_LABELS}, got {s.labels!r}")
        if s.ratio is not None and s.ratio < 0:
            raise UserError(f"classifier synthetic.ratio must be >= 0 or null, got {s.ratio}")
        if s.per_class_cap is not None and s.per_class_cap < 0:
            raise UserError(f"classifier synthetic.per_class_cap must be >= 0 or null, got {s.per_class_cap}")
        if s.pretrain_epochs < 1:
            raise UserError(f"classifier synthetic.pretrain_epochs must be >= 1, got {s.pretrain_epochs}")
        if not (isinstance(s.loss_weight, (int, float)) and math.isfinite(s.loss_weight) and s.loss_weight > 0):
            raise UserError(f"classifier synthetic.loss_weight must be a finite number > 0, got {s.loss_weight!r}")
        if s.head_epochs < 1:
            raise UserError(f"classifier synthetic.head_epochs must be >= 1, got {s.head_epochs}")
        if self.ensemble.weights not in ("mean", "val"):
            raise UserError(f"classifier ensemble.weights must be 'mean' or 'val', got {self.ensemble.weights!r}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def ensemble_from_dict(data: Mapping[str, Any], where: str = "classifier config") -> EnsembleConfig:
    """A parsed YAML mapping -> validated config (unknown keys and wrong types: one error naming the key)."""
    return from_mapping(EnsembleConfig, data, where=where).validated()


def load_ensemble_config(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> EnsembleConfig:
    """Defaults <- YAML file <- overrides; raise UserError naming the file/key on bad input."""
    if path is not None and not Path(path).is_file():
        raise UserError(f"classifier config not found: {path}; see configs/classifier/demo.yaml")
    where = str(path) if path is not None else "classifier config"
    return load_config(EnsembleConfig, path, overrides, where=where, drop_none=False).validated()
