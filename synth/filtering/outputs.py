"""What ``synth filter`` writes: ``summary.json`` / ``summary.csv`` (per class and the rules in words), ``scores.csv``,
and the ``kept.csv`` / ``rejected.csv`` manifests (``reject_reason`` = the first of :data:`REASONS` that applies).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd

from synth.io import atomic_path, write_json_atomic
from synth.manifest import image_paths, write_manifest
from synth.model_card import filter_card

REASONS: tuple[str, ...] = (
    "near_copy",
    "class_set_fid",
    "no_transfer",
    "no_threshold",
    "verifier",
    "co_labels",
    "outlier",
)


@dataclasses.dataclass(frozen=True)
class RuleFindings:
    """What each rule found for this run: the per-class and per-run inputs of ``summary.json`` besides the scores."""

    thresholds: dict  #: class -> the verifier threshold fitted on real val (synth.filtering.thresholds)
    realism: dict  #: class -> set-level FID/KID against the real positives, or None when too few images
    set_rejected: dict  #: class -> the whole set fails the FID rule
    transfer: dict  #: class -> TransferResult of the transfer gate (empty when the gate is off)
    calibration: dict  #: feature space -> the near-copy threshold's calibration
    outlier_limit: float
    oracle: dict | None  #: class -> phantom oracle fidelity (evaluation only), None without an oracle


def filter_summary(
    target: pd.Series,
    scores: pd.DataFrame,
    flags: dict[str, np.ndarray],
    found: RuleFindings,
    extractor_name: str,
    verifier_dir,
    cfg,
) -> dict:
    thresholds, realism, set_rejected = found.thresholds, found.realism, found.set_rejected
    transfer, oracle = found.transfer, found.oracle
    classes = {}
    primary = scores["reasons"].str.split("|").str[0]
    for cls in pd.unique(target):
        rows = (target == cls).to_numpy()
        r = realism[cls]
        th = thresholds.get(cls)
        entry = {
            "n": int(rows.sum()),
            "kept": int(scores["kept"][rows].sum()),
            "rejected": {
                reason: int((primary[rows] == reason).sum()) for reason in REASONS if (primary[rows] == reason).any()
            },
            "flagged": {reason: int(flags[reason][rows].sum()) for reason in REASONS},
            "threshold": th.value if th else None,
            "threshold_rule": th.rule if th else "none",
            "n_val_pos": th.n_val_pos if th else 0,
            "fid": r.fid if r else None,
            "fid_ci": list(r.fid_ci) if r else None,
            "fid_floor": r.fid_floor if r else None,
            "fid_floor_ci": list(r.fid_floor_ci) if r else None,
            "fid_ratio": r.ratio if r else None,
            "kid": r.kid if r else None,
            "kid_std": r.kid_std if r else None,
            "kid_floor": r.kid_floor if r else None,
            "fid_set_size": r.m if r else None,
            "set_rejected": bool(set_rejected[cls]),
            "extractor": extractor_name,
            "transfer": transfer[cls].as_dict() if transfer and cls in transfer else None,
        }
        if oracle is not None:
            entry.update(oracle.get(cls, {}))
        else:
            entry["oracle_fidelity"] = None
        classes[cls] = _finite(entry)
    return {
        "extractor": extractor_name,
        "metric_label": f"FID/KID on {extractor_name} features",
        "n": int(len(scores)),
        "kept": int(scores["kept"].sum()),
        "classes": classes,
        "near_copy": {space: _finite(t.as_dict()) for space, t in found.calibration.items()},
        "outlier_limit": found.outlier_limit,
        "rules": _rules_in_words(cfg, extractor_name),
        "verifier": str(verifier_dir),
        "config": dataclasses.asdict(cfg),
    }


def _rules_in_words(cfg, extractor_name: str) -> dict[str, str | list[str]]:
    """Each reason's rule with this run's numbers, for ``summary.json`` (what a reader of the report sees)."""
    return {
        "threshold": f"per class: {cfg.threshold_quantile} quantile of real VAL positives' P(class) when >= "
        f"{cfg.min_val_positives} val positives, else the {cfg.fallback_specificity} quantile of real VAL "
        "negatives' P(class); never train or test rows",
        "class_set_fid": f"FID(synthetic, real train positives) > {cfg.fid_reject_factor} x FID(real, real), both at "
        "the same set size m; sets with m < min_fid_images are not judged",
        "outlier": f"mean distance to the {cfg.outlier_knn} nearest real training images (standardised features) "
        f"> {cfg.outlier_percentile}th percentile of real images' own distances"
        + ("" if cfg.outlier_rejects else " (flagged, not rejected: outlier_rejects is false)"),
        "near_copy": "nearest real training image: feature cosine / flip-aware pixel correlation above a threshold "
        "calibrated between perturbed copies and distinct-patient neighbours",
        "no_transfer": (
            "a logistic probe on "
            f"{extractor_name if cfg.transfer_extractor in ('extractor', cfg.extractor) else cfg.transfer_extractor} "
            "features, fitted on the generated images only (the "
            "class's vs other classes' without its label), ranks REAL train+val rows of the class with a "
            f"patient-bootstrap AUROC interval whose lower bound is <= {cfg.transfer_min_auroc}; classes with "
            f"< {cfg.transfer_min_real_positives} real positives or < {cfg.transfer_min_synthetic} generated "
            f"positives/negatives are not judged ({cfg.transfer_unjudged})"
        )
        if cfg.transfer_gate
        else "off (transfer_gate: false)",
        "reason_order": list(REASONS),
    }


def _finite(d: dict) -> dict:
    """NaN/inf are not JSON: report them as null."""
    return {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in d.items()}


def write_outputs(out_dir: Path, synth: pd.DataFrame, scores: pd.DataFrame, summary: dict) -> None:
    out = synth.reset_index(drop=True).copy()
    out["fpath"] = [str(p.resolve()) for p in image_paths(synth)]
    if summary["config"].get("transfer_gate"):  # the class's gate score beside each image (kept.csv and rejected.csv)
        gate = {c: e.get("transfer") or {} for c, e in summary["classes"].items()}
        cls = scores["target_class"]
        out["transfer_auroc"] = scores["transfer_auroc"].to_numpy()
        out["transfer_ci_low"] = cls.map(lambda c: (gate[c].get("ci") or [None, None])[0]).to_numpy(dtype=float)
        out["transfer_ci_high"] = cls.map(lambda c: (gate[c].get("ci") or [None, None])[1]).to_numpy(dtype=float)
    scores.insert(1, "fpath", out["fpath"])
    kept = scores["kept"].to_numpy()
    write_manifest(out[kept], out_dir / "kept.csv")
    rejected = out[~kept].copy()
    rejected["reject_reason"] = scores["reasons"][~kept].str.split("|").str[0].to_numpy()
    rejected["reject_reasons"] = scores["reasons"][~kept].to_numpy()
    write_manifest(rejected, out_dir / "rejected.csv")
    with atomic_path(out_dir / "scores.csv") as tmp:
        scores.to_csv(tmp, index=False)
    rows = [
        {"class": c, **{k: (json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in e.items()}}
        for c, e in summary["classes"].items()
    ]
    with atomic_path(out_dir / "summary.csv") as tmp:
        pd.DataFrame(rows).to_csv(tmp, index=False)
    filter_card(out_dir, synth, summary)  # README.md, before summary.json marks the folder complete
    write_json_atomic(out_dir / "summary.json", summary)
