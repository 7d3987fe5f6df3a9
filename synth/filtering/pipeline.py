"""``run_filter``: decide, per synthetic image, keep or reject — and say why.

Order of the reasons (an image gets the first that applies as its
``reject_reason``; all that apply are listed in ``scores.csv``):

1. ``near_copy``      nearest real training image too similar (privacy leak);
2. ``class_set_fid``  its class's whole synthetic set has FID > k x real-vs-real floor;
   ``no_transfer``    its class's whole set fails the transfer gate: a probe trained on the generated
                      images only does not rank REAL train+val positives of the class above chance
                      (``transfer_gate``, see synth/filtering/transfer.py);
3. ``no_threshold``   its target class cannot be verified (not in the verifier / not annotated in val);
4. ``verifier``       P(target) below the class threshold fitted on real val;
5. ``co_labels``      too few co-occurring labels confirmed (only if co_label_min_agreement > 0);
6. ``outlier``        feature distance to real images beyond the real images' own range
                      (rejects only with ``outlier_rejects``; otherwise flagged in ``scores.csv``
                      ``flags`` and the summary's ``flagged`` counts).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from synth.image_datasets import ManifestDataset
from synth.errors import UserError
from synth.filtering.config import FilterConfig, load_filter_config
from synth.filtering.extractor import load_extractor
from synth.filtering.nearcopy import NearCopyIndex, calibrate, perturbed_copies, unit_rows
from synth.filtering.realism import fit_outlier_model, set_realism
from synth.filtering.thresholds import fit_thresholds
from synth.filtering.verifier import (FeatureExtractor, Inference, concat_inference, embed, load_verifier,
                                      real_training_rows, run_inference)
from synth.io import atomic_path, write_json_atomic
from synth.manifest import image_paths, label_matrix, read_manifest, write_manifest
from synth.taxonomy import UnknownClassError, resolve_class

REASONS: tuple[str, ...] = ("near_copy", "class_set_fid", "no_transfer", "no_threshold", "verifier", "co_labels", "outlier")


def run_filter(synthetic_manifest: str | Path, data_manifest: str | Path, verifier_dir: str | Path, out_dir: str | Path,
               config: FilterConfig | str | Path | None = None) -> dict[str, Any]:
    """Filter a synthetic manifest; write kept/rejected/scores/summary to ``out_dir``; return the summary.

    Runs on the main process only (other Accelerate processes wait and read the summary).
    """
    from synth.distributed import process_state

    cfg = config if isinstance(config, FilterConfig) else load_filter_config(config)
    out_dir = Path(out_dir)
    state = process_state()
    if state.is_main_process:
        summary = _run(Path(synthetic_manifest), Path(data_manifest), Path(verifier_dir), out_dir, cfg)
    state.wait_for_everyone()
    if not state.is_main_process:
        summary = json.loads((out_dir / "summary.json").read_text())
    return summary


def _targets(synth: pd.DataFrame, where: str) -> pd.Series:
    if "target_class" not in synth.columns:
        raise UserError(f"{where}: no target_class column; filter a manifest written by `synth generate`")
    if (synth["source"] != "synthetic").any():
        raise UserError(f"{where}: has rows with source != synthetic; pass the generated manifest as --synthetic and the real one as --data")
    try:
        return synth["target_class"].map(lambda c: resolve_class(str(c))).rename("target_class")
    except UnknownClassError as err:
        raise UserError(f"{where}: target_class: {err}") from None


def _require_images(df: pd.DataFrame, root: str, manifest: Path, fix: str) -> None:
    """A missing image file is one error naming it, the count and a fix that exists, before any work."""
    paths = image_paths(df, root)
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise UserError(f"image not found: {missing[0]} ({len(missing)} of {len(paths)} images of {manifest} missing); {fix}")


def _run(synthetic_manifest: Path, data_manifest: Path, verifier_dir: Path, out_dir: Path, cfg: FilterConfig) -> dict:
    synth, data = read_manifest(synthetic_manifest), read_manifest(data_manifest)
    if synth.empty:
        raise UserError(f"{synthetic_manifest}: no synthetic images to filter")
    target = _targets(synth, str(synthetic_manifest)).reset_index(drop=True)
    train = real_training_rows(data).reset_index(drop=True)
    val = data[(data["split"] == "val") & (data["source"] == "real")]
    # every image is read below, some only after minutes of inference: a missing one fails here, first
    _require_images(synth, synth.attrs["root"], synthetic_manifest,
                    "rerun the `synth generate` command that wrote it (same --out: it re-creates missing images and rewrites the manifest)")
    _require_images(pd.concat([train, val]), data.attrs["root"], data_manifest, "re-create that dataset with `synth prepare ... --overwrite`")
    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)

    verifier = load_verifier(verifier_dir)
    verifier_fx = FeatureExtractor(verifier.model, verifier.image_size, verifier.pixel_mean, verifier.pixel_std, verifier.name)
    extractor = load_extractor(cfg.extractor, verifier)
    px, bs = cfg.nearcopy_pixel_size, cfg.batch_size

    # ---- one pass per image set ------------------------------------------------------------------
    syn_scores = run_inference(verifier_fx, synth, bs, px, with_probs=True, mirror=cfg.extractor == "verifier")
    syn = syn_scores if cfg.extractor == "verifier" else run_inference(extractor, synth, bs, px, with_probs=False, mirror=True)
    val_inference = run_inference(verifier_fx, val, bs, px)
    val_probs = val_inference.probs
    real = run_inference(extractor, train, bs, px, with_probs=False)

    # ---- label verifier --------------------------------------------------------------------------
    thresholds = fit_thresholds(val_probs.reshape(len(val), len(verifier.classes)), val, verifier.classes,
                                cfg.threshold_quantile, cfg.min_val_positives, cfg.fallback_specificity)
    scores = _verifier_scores(synth, target, syn_scores.probs, verifier.classes, thresholds)

    # ---- per-image outliers ----------------------------------------------------------------------
    outliers = fit_outlier_model(real.features, cfg.outlier_knn, cfg.outlier_percentile, cfg.outlier_reference_max, rng)
    scores["outlier_distance"] = outliers.distances(syn.features)
    scores["outlier_limit"] = outliers.limit

    # ---- near-copy -------------------------------------------------------------------------------
    index = NearCopyIndex.build(real.features, real.pixels, px)
    calibration = _calibrate_nearcopy(index, extractor, train, real, cfg, rng)
    feat_direct, feat_i = index.feature_similarity(syn.features)
    feat_mirror, feat_mi = index.feature_similarity(syn.mirror_features)
    scores["nn_feature_cos"] = np.maximum(feat_direct, feat_mirror)
    scores["nn_feature_dicom_id"] = train["dicom_id"].to_numpy()[np.where(feat_mirror > feat_direct, feat_mi, feat_i)]
    pix, pix_i = index.pixel_similarity(syn.pixels)
    scores["nn_pixel_ncc"] = pix
    scores["nn_pixel_dicom_id"] = train["dicom_id"].to_numpy()[pix_i]
    near = np.zeros(len(synth), bool)
    if calibration["feature"].used:
        near |= scores["nn_feature_cos"].to_numpy() > calibration["feature"].threshold
    if calibration["pixel"].used:
        near |= pix > calibration["pixel"].threshold
    scores["near_copy"] = near

    # ---- set-level realism -----------------------------------------------------------------------
    real_y = label_matrix(train, list(pd.unique(target)))
    realism: dict[str, Any] = {}
    for j, cls in enumerate(pd.unique(target)):
        rows = (target == cls).to_numpy()
        realism[cls] = set_realism(syn.features[rows], real.features[real_y[:, j] == 1.0], max_images=cfg.max_fid_images,
                                   min_images=cfg.min_fid_images, kid_subset_size=cfg.kid_subset_size,
                                   kid_subsets=cfg.kid_subsets, bootstrap=cfg.bootstrap, ci_level=cfg.ci_level, rng=rng)
    set_rejected = {c: r is not None and r.fid > cfg.fid_reject_factor * r.fid_floor for c, r in realism.items()}

    # ---- per-class transfer gate (generated images fit a probe; REAL train + val rows judge it) ----------------
    transfer = {}
    if cfg.transfer_gate:
        if cfg.transfer_extractor in ("extractor", cfg.extractor):
            gate_syn, gate_train = syn.features, real.features
            gate_val = val_inference.features if cfg.extractor == "verifier" else \
                run_inference(extractor, val, bs, px, with_probs=False).features
        else:
            gate_fx = load_extractor(cfg.transfer_extractor, verifier)
            gate_syn, gate_train, gate_val = (run_inference(gate_fx, df, bs, px, with_probs=False).features
                                              for df in (synth, train, val))
        transfer = _transfer(synth, target, gate_syn, pd.concat([train, val]), np.concatenate([gate_train, gate_val]), cfg)
    no_transfer = {c: c in transfer and not transfer[c].passed for c in pd.unique(target)}
    scores["transfer_auroc"] = target.map(lambda c: transfer[c].auroc if c in transfer else None).to_numpy(dtype=float)
    scores["class_fid_ratio"] = target.map(lambda c: realism[c].ratio if realism[c] is not None else np.nan).to_numpy()

    # ---- decisions -------------------------------------------------------------------------------
    flags = {
        "near_copy": near,
        "class_set_fid": target.map(set_rejected).to_numpy(bool),
        "no_transfer": target.map(no_transfer).to_numpy(bool),
        "no_threshold": scores["threshold_rule"].eq("none").to_numpy(),
        "verifier": ~scores["verifier_pass"].to_numpy(bool) & scores["threshold_rule"].ne("none").to_numpy(),
        "co_labels": (scores["co_label_agreement"].fillna(1.0) < cfg.co_label_min_agreement).to_numpy(),
        "outlier": (scores["outlier_distance"] > outliers.limit).to_numpy(),
    }
    rejecting = [r for r in REASONS if r != "outlier" or cfg.outlier_rejects]
    scores["flags"] = ["|".join(r for r in REASONS if flags[r][i]) for i in range(len(synth))]
    scores["reasons"] = ["|".join(r for r in rejecting if flags[r][i]) for i in range(len(synth))]
    scores["kept"] = scores["reasons"] == ""

    oracle = None
    if cfg.oracle:
        from synth.filtering.oracle import oracle_report

        oracle, detected = oracle_report(cfg.oracle, synth, target, scores["verifier_pass"].to_numpy(bool), bs)
        scores["oracle_detects"] = detected

    summary = _summary(target, scores, flags, thresholds, realism, set_rejected, calibration, outliers.limit, oracle,
                       extractor.name, verifier_dir, cfg, transfer)
    _write(out_dir, synth, scores, summary)
    return summary


def _transfer(synth: pd.DataFrame, target: pd.Series, syn_features: np.ndarray, real: pd.DataFrame,
              real_features: np.ndarray, cfg: FilterConfig) -> dict:
    """The transfer gate per generated class; ``real`` holds real train + val rows only (never test)."""
    from synth.filtering.transfer import transfer_gate

    if (real["split"] == "test").any():
        raise AssertionError("transfer gate: test rows reached the gate")
    targets = target.to_numpy()
    generated = [c for c in pd.unique(target) if c in real.columns]
    real_y = label_matrix(real, generated)
    out = {}
    for cls in pd.unique(target):
        syn_labels = label_matrix(synth, [cls])[:, 0] if cls in synth.columns else np.full(len(synth), np.nan)
        real_labels = real_y[:, generated.index(cls)] if cls in generated else np.full(len(real), np.nan)
        others = [j for j, c in enumerate(generated) if c != cls]
        exclude = (real_y[:, others] == 1.0).any(axis=1) if others else np.zeros(len(real), bool)
        out[cls] = transfer_gate(cls, syn_features, targets, syn_labels, real_features, real_labels,
                                 real["subject_id"].astype(str).to_numpy(), real_exclude=exclude,
                                 min_auroc=cfg.transfer_min_auroc,
                                 min_real_positives=cfg.transfer_min_real_positives, min_synthetic=cfg.transfer_min_synthetic,
                                 unjudged=cfg.transfer_unjudged, n_boot=cfg.transfer_bootstrap, ci_level=cfg.ci_level,
                                 probe_c=cfg.transfer_probe_c, seed=cfg.seed)
    return out


def _verifier_scores(synth: pd.DataFrame, target: pd.Series, probs: np.ndarray, classes: list[str], thresholds: dict) -> pd.DataFrame:
    col = {c: j for j, c in enumerate(classes)}
    y = label_matrix(synth, classes)
    rows = []
    for i, cls in enumerate(target):
        th = thresholds.get(cls)
        p = float(probs[i, col[cls]]) if cls in col else np.nan
        co = [c for c in classes if c != cls and y[i, col[c]] == 1.0 and np.isfinite(thresholds[c].value)]
        co_p = [float(probs[i, col[c]]) for c in co]
        rows.append({
            "dicom_id": synth["dicom_id"].iloc[i], "target_class": cls, "p_target": p,
            "threshold": th.value if th else np.nan, "threshold_rule": th.rule if th else "none",
            "verifier_pass": bool(th is not None and np.isfinite(th.value) and p >= th.value),
            "co_labels": "|".join(co), "co_label_mean_p": float(np.mean(co_p)) if co else np.nan,
            "co_label_agreement": float(np.mean([q >= thresholds[c].value for c, q in zip(co, co_p)])) if co else np.nan,
        })
    return pd.DataFrame(rows)


def _calibrate_nearcopy(index: NearCopyIndex, extractor: FeatureExtractor, train: pd.DataFrame, real: Inference,
                        cfg: FilterConfig, rng: np.random.Generator) -> dict:
    """Similarities a copy produces (perturbed copies vs their source) and a non-copy produces (distinct patients)."""
    n = min(cfg.nearcopy_calibration_images, len(train))
    pick = np.sort(rng.choice(len(train), size=n, replace=False))
    dataset = ManifestDataset(train.iloc[pick], extractor.image_size, classes=[])
    images = torch.stack([dataset[i]["pixel_values"] for i in range(n)])
    generator = torch.Generator().manual_seed(cfg.seed)
    copies = perturbed_copies(images, cfg.nearcopy_noise_std, cfg.nearcopy_shift_px, generator)
    src_f, src_p = index.features[pick], index.pixels[pick]
    copy_f, copy_p = [], []
    for batch in copies.values():
        emb = concat_inference([embed(extractor, batch[s:s + cfg.batch_size], index.pixel_size, with_probs=False, mirror=True)
                                for s in range(0, n, cfg.batch_size)])
        copy_f.append(np.maximum((unit_rows(emb.features, False) * src_f).sum(1).numpy(),
                                 (unit_rows(emb.mirror_features, False) * src_f).sum(1).numpy()))
        mirrored = torch.flip(torch.as_tensor(emb.pixels).reshape(n, index.pixel_size, index.pixel_size), dims=[-1]).reshape(n, -1)
        copy_p.append(np.maximum((unit_rows(emb.pixels, True) * src_p).sum(1).numpy(),
                                 (unit_rows(mirrored.numpy(), True) * src_p).sum(1).numpy()))
    subjects = train["subject_id"].to_numpy()
    same_patient = subjects[pick][:, None] == subjects[None, :]
    originals = concat_inference([embed(extractor, images[s:s + cfg.batch_size], index.pixel_size, with_probs=False, mirror=True)
                                  for s in range(0, n, cfg.batch_size)])
    distinct_f = np.maximum(index.feature_similarity(real.features[pick], same_patient)[0],
                            index.feature_similarity(originals.mirror_features, same_patient)[0])
    distinct_p = index.pixel_similarity(real.pixels[pick], same_patient)[0]
    distinct_f, distinct_p = distinct_f[np.isfinite(distinct_f)], distinct_p[np.isfinite(distinct_p)]
    out = {
        "feature": calibrate(np.concatenate(copy_f), distinct_f, cfg.nearcopy_copy_quantile, cfg.nearcopy_distinct_quantile),
        "pixel": calibrate(np.concatenate(copy_p), distinct_p, cfg.nearcopy_copy_quantile, cfg.nearcopy_distinct_quantile),
    }
    return out


def _summary(target, scores, flags, thresholds, realism, set_rejected, calibration, outlier_limit, oracle, extractor_name,
             verifier_dir, cfg, transfer=None) -> dict:
    classes = {}
    primary = scores["reasons"].str.split("|").str[0]
    for cls in pd.unique(target):
        rows = (target == cls).to_numpy()
        r = realism[cls]
        th = thresholds.get(cls)
        entry = {
            "n": int(rows.sum()), "kept": int(scores["kept"][rows].sum()),
            "rejected": {reason: int((primary[rows] == reason).sum()) for reason in REASONS if (primary[rows] == reason).any()},
            "flagged": {reason: int(flags[reason][rows].sum()) for reason in REASONS},
            "threshold": th.value if th else None, "threshold_rule": th.rule if th else "none",
            "n_val_pos": th.n_val_pos if th else 0,
            "fid": r.fid if r else None, "fid_ci": list(r.fid_ci) if r else None,
            "fid_floor": r.fid_floor if r else None, "fid_floor_ci": list(r.fid_floor_ci) if r else None,
            "fid_ratio": r.ratio if r else None, "kid": r.kid if r else None, "kid_std": r.kid_std if r else None,
            "kid_floor": r.kid_floor if r else None, "fid_set_size": r.m if r else None,
            "set_rejected": bool(set_rejected[cls]), "extractor": extractor_name,
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
        "n": int(len(scores)), "kept": int(scores["kept"].sum()),
        "classes": classes,
        "near_copy": {space: _finite(t.as_dict()) for space, t in calibration.items()},
        "outlier_limit": outlier_limit,
        "rules": {
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
            "no_transfer": (f"a logistic probe on {extractor_name if cfg.transfer_extractor in ('extractor', cfg.extractor) else cfg.transfer_extractor} features, fitted on the generated images only (the "
                            "class's vs other classes' without its label), ranks REAL train+val rows of the class with a "
                            f"patient-bootstrap AUROC interval whose lower bound is <= {cfg.transfer_min_auroc}; classes with "
                            f"< {cfg.transfer_min_real_positives} real positives or < {cfg.transfer_min_synthetic} generated "
                            f"positives/negatives are not judged ({cfg.transfer_unjudged})")
                           if cfg.transfer_gate else "off (transfer_gate: false)",
            "reason_order": list(REASONS),
        },
        "verifier": str(verifier_dir),
        "config": dataclasses.asdict(cfg),
    }


def _finite(d: dict) -> dict:
    """NaN/inf are not JSON: report them as null."""
    return {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in d.items()}


def _write(out_dir: Path, synth: pd.DataFrame, scores: pd.DataFrame, summary: dict) -> None:
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
    rows = [{"class": c, **{k: (json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in e.items()}}
            for c, e in summary["classes"].items()]
    with atomic_path(out_dir / "summary.csv") as tmp:
        pd.DataFrame(rows).to_csv(tmp, index=False)
    write_json_atomic(out_dir / "summary.json", summary)
