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

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from synth.errors import UserError
from synth.filtering.config import FilterConfig, load_filter_config
from synth.filtering.extractor import load_extractor
from synth.filtering.nearcopy_scores import near_copy_scores
from synth.filtering.outputs import REASONS, RuleFindings, filter_summary, write_outputs
from synth.filtering.realism import fit_outlier_model, set_realism
from synth.filtering.thresholds import fit_thresholds
from synth.filtering.verifier import FeatureExtractor, Inference, load_verifier, real_training_rows, run_inference
from synth.manifest import image_paths, label_matrix, read_manifest
from synth.output_folder import FILTER, owned_output, writing_folder
from synth.taxonomy import UnknownClassError, resolve_class


def run_filter(
    synthetic_manifest: str | Path,
    data_manifest: str | Path,
    verifier_dir: str | Path,
    out_dir: str | Path,
    config: FilterConfig | str | Path | None = None,
) -> dict[str, Any]:
    """Filter a synthetic manifest; write kept/rejected/scores/summary to ``out_dir``; return the summary.

    ``out_dir`` is written whole (a temporary folder beside it, renamed in at the end) and replaces only an earlier
    filter output there; whether one may be replaced at all is the caller's call (``synth filter --overwrite``).

    Runs on the main process only (other Accelerate processes wait and read the summary).
    """
    from synth.distributed import process_state

    cfg = config if isinstance(config, FilterConfig) else load_filter_config(config)
    out_dir = Path(out_dir)
    state = process_state()
    if state.is_main_process:
        owned_output(out_dir, FILTER)  # a folder the filter did not write is refused before minutes of inference
        summary = _run(Path(synthetic_manifest), Path(data_manifest), Path(verifier_dir), out_dir, cfg)
    state.wait_for_everyone()
    if not state.is_main_process:
        summary = json.loads((out_dir / "summary.json").read_text())
    return summary


def _targets(synth: pd.DataFrame, where: str) -> pd.Series:
    if "target_class" not in synth.columns:
        raise UserError(f"{where}: no target_class column; filter a manifest written by `synth generate`")
    if (synth["source"] != "synthetic").any():
        raise UserError(
            f"{where}: has rows with source != synthetic; pass the generated manifest as --synthetic and the real one "
            "as --data"
        )
    try:
        return synth["target_class"].map(lambda c: resolve_class(str(c))).rename("target_class")
    except UnknownClassError as err:
        raise UserError(f"{where}: target_class: {err}") from None


def _require_images(df: pd.DataFrame, root: str, manifest: Path, fix: str) -> None:
    """A missing image file is one error naming it, the count and a fix that exists, before any work."""
    paths = image_paths(df, root)
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise UserError(
            f"image not found: {missing[0]} ({len(missing)} of {len(paths)} images of {manifest} missing); {fix}"
        )


def _run(synthetic_manifest: Path, data_manifest: Path, verifier_dir: Path, out_dir: Path, cfg: FilterConfig) -> dict:
    synth, target, train, val = _read_inputs(synthetic_manifest, data_manifest)
    synth, target, controls = _without_controls(synth, target)
    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)

    verifier = load_verifier(verifier_dir)
    verifier_fx = FeatureExtractor(
        verifier.model, verifier.image_size, verifier.pixel_mean, verifier.pixel_std, verifier.name
    )
    extractor = load_extractor(cfg.extractor, verifier)
    px, bs = cfg.nearcopy_pixel_size, cfg.batch_size

    # ---- one pass per image set ------------------------------------------------------------------
    syn_scores = run_inference(verifier_fx, synth, bs, px, with_probs=True, mirror=cfg.extractor == "verifier")
    syn = (
        syn_scores
        if cfg.extractor == "verifier"
        else run_inference(extractor, synth, bs, px, with_probs=False, mirror=True)
    )
    val_inference = run_inference(verifier_fx, val, bs, px)
    val_probs = val_inference.probs
    real = run_inference(extractor, train, bs, px, with_probs=False)

    # ---- label verifier --------------------------------------------------------------------------
    thresholds = fit_thresholds(
        val_probs.reshape(len(val), len(verifier.classes)),
        val,
        verifier.classes,
        cfg.threshold_quantile,
        cfg.min_val_positives,
        cfg.fallback_specificity,
    )
    scores = _verifier_scores(synth, target, syn_scores.probs, verifier.classes, thresholds)

    # ---- per-image outliers ----------------------------------------------------------------------
    outliers = fit_outlier_model(
        real.features, cfg.outlier_knn, cfg.outlier_percentile, cfg.outlier_reference_max, rng
    )
    scores["outlier_distance"] = outliers.distances(syn.features)
    scores["outlier_limit"] = outliers.limit

    # ---- near-copy -------------------------------------------------------------------------------
    calibration = near_copy_scores(scores, extractor, train, real, syn, cfg, rng)
    near = scores["near_copy"].to_numpy()

    # ---- set-level realism -----------------------------------------------------------------------
    realism = _set_realism(target, train, syn, real, cfg, rng)
    set_rejected = {c: r is not None and r.fid > cfg.fid_reject_factor * r.fid_floor for c, r in realism.items()}

    # ---- per-class transfer gate (generated images fit a probe; REAL train + val rows judge it) ----------------
    transfer = {}
    if cfg.transfer_gate:
        transfer = _transfer_gate(synth, target, train, val, syn, real, val_inference, extractor, verifier, cfg)
    no_transfer = {c: c in transfer and not transfer[c].passed for c in pd.unique(target)}
    scores["transfer_auroc"] = target.map(lambda c: transfer[c].auroc if c in transfer else None).to_numpy(dtype=float)
    scores["class_fid_ratio"] = target.map(lambda c: realism[c].ratio if realism[c] is not None else np.nan).to_numpy()

    # ---- decisions -------------------------------------------------------------------------------
    flags = _decide(scores, target, near, set_rejected, no_transfer, outliers.limit, cfg)

    oracle = None
    if cfg.oracle:
        from synth.filtering.oracle import oracle_report

        oracle, detected = oracle_report(cfg.oracle, synth, target, scores["verifier_pass"].to_numpy(bool), bs)
        scores["oracle_detects"] = detected

    found = RuleFindings(thresholds, realism, set_rejected, transfer, calibration, outliers.limit, oracle)
    summary = filter_summary(target, scores, flags, found, extractor.name, verifier_dir, cfg)
    if not controls.empty:
        synth, scores = _with_controls(synth, scores, controls)
        summary["controls"] = {"rows": int(len(controls)), "kept": int(scores["kept"].iloc[-len(controls) :].sum())}
    with writing_folder(out_dir, FILTER) as tmp:  # the whole folder or nothing: never a new kept.csv by an old summary
        write_outputs(tmp, synth, scores, summary)
    return summary


def _without_controls(synth: pd.DataFrame, target: pd.Series) -> tuple[pd.DataFrame, pd.Series, pd.DataFrame]:
    """Split off the counterfactual controls (``synth generate --controls``): they are not judged — a control is
    meant NOT to show its class — but follow their twin into kept.csv or rejected.csv."""
    if "pair_role" not in synth.columns:
        return synth, target, synth.iloc[:0]
    is_control = synth["pair_role"].eq("control").to_numpy()
    images = synth[~is_control].reset_index(drop=True)
    images.attrs.update(synth.attrs)
    return images, target[~is_control].reset_index(drop=True), synth[is_control].reset_index(drop=True)


def _with_controls(
    synth: pd.DataFrame, scores: pd.DataFrame, controls: pd.DataFrame
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The images and their controls; a control's score row is its twin's (same decision, same reasons)."""
    twin = {pid: i for i, pid in enumerate(synth["dicom_id"])}
    rows = [twin.get(pid) for pid in controls["pair_id"]]
    orphans = controls.loc[[r is None for r in rows], "dicom_id"].tolist()
    if orphans:
        raise UserError(
            f"{len(orphans)} control row(s) without their image (e.g. {orphans[0]}); rerun the `synth generate "
            "--controls` command that wrote the set (same --out) to complete the pairs"
        )
    control_scores = scores.iloc[rows].reset_index(drop=True).assign(dicom_id=controls["dicom_id"].to_numpy())
    both = pd.concat([synth, controls], ignore_index=True)
    both.attrs.update(synth.attrs)
    return both, pd.concat([scores, control_scores], ignore_index=True)


def _read_inputs(
    synthetic_manifest: Path, data_manifest: Path
) -> tuple[pd.DataFrame, pd.Series, pd.DataFrame, pd.DataFrame]:
    """(generated rows, their target classes, real training rows, real val rows); every image file checked first."""
    synth, data = read_manifest(synthetic_manifest), read_manifest(data_manifest)
    if synth.empty:
        raise UserError(f"{synthetic_manifest}: no synthetic images to filter")
    target = _targets(synth, str(synthetic_manifest)).reset_index(drop=True)
    train = real_training_rows(data).reset_index(drop=True)
    val = data[(data["split"] == "val") & (data["source"] == "real")]
    # every image is read below, some only after minutes of inference: a missing one fails here, first
    _require_images(
        synth,
        synth.attrs["root"],
        synthetic_manifest,
        "rerun the `synth generate` command that wrote it (same --out: it re-creates missing images and rewrites the "
        "manifest)",
    )
    _require_images(
        pd.concat([train, val]),
        data.attrs["root"],
        data_manifest,
        "re-create that dataset with `synth prepare ... --overwrite`",
    )
    return synth, target, train, val


def _decide(
    scores: pd.DataFrame,
    target: pd.Series,
    near: np.ndarray,
    set_rejected: dict,
    no_transfer: dict,
    outlier_limit: float,
    cfg: FilterConfig,
) -> dict[str, np.ndarray]:
    """Every reason's flag per image; ``scores`` gets ``flags``, ``reasons`` (the rejecting ones, in order) and
    ``kept``."""
    flags = {
        "near_copy": near,
        "class_set_fid": target.map(set_rejected).to_numpy(bool),
        "no_transfer": target.map(no_transfer).to_numpy(bool),
        "no_threshold": scores["threshold_rule"].eq("none").to_numpy(),
        "verifier": ~scores["verifier_pass"].to_numpy(bool) & scores["threshold_rule"].ne("none").to_numpy(),
        "co_labels": (scores["co_label_agreement"].fillna(1.0) < cfg.co_label_min_agreement).to_numpy(),
        "outlier": (scores["outlier_distance"] > outlier_limit).to_numpy(),
    }
    rejecting = [r for r in REASONS if r != "outlier" or cfg.outlier_rejects]
    scores["flags"] = ["|".join(r for r in REASONS if flags[r][i]) for i in range(len(scores))]
    scores["reasons"] = ["|".join(r for r in rejecting if flags[r][i]) for i in range(len(scores))]
    scores["kept"] = scores["reasons"] == ""
    return flags


def _set_realism(
    target: pd.Series,
    train: pd.DataFrame,
    syn: Inference,
    real: Inference,
    cfg: FilterConfig,
    rng: np.random.Generator,
) -> dict[str, Any]:
    """FID / KID of each target class's generated set against the real training images of that class."""
    real_y = label_matrix(train, list(pd.unique(target)))
    realism: dict[str, Any] = {}
    for j, cls in enumerate(pd.unique(target)):
        rows = (target == cls).to_numpy()
        realism[cls] = set_realism(
            syn.features[rows],
            real.features[real_y[:, j] == 1.0],
            max_images=cfg.max_fid_images,
            min_images=cfg.min_fid_images,
            kid_subset_size=cfg.kid_subset_size,
            kid_subsets=cfg.kid_subsets,
            bootstrap=cfg.bootstrap,
            ci_level=cfg.ci_level,
            rng=rng,
        )
    return realism


def _transfer_gate(
    synth: pd.DataFrame,
    target: pd.Series,
    train: pd.DataFrame,
    val: pd.DataFrame,
    syn: Inference,
    real: Inference,
    val_inference: Inference,
    extractor,
    verifier,
    cfg: FilterConfig,
) -> dict:
    """The transfer gate's features (the filter's own extractor's, or ``transfer_extractor``'s) and its verdicts."""
    bs, px = cfg.batch_size, cfg.nearcopy_pixel_size
    if cfg.transfer_extractor in ("extractor", cfg.extractor):
        gate_syn, gate_train = syn.features, real.features
        gate_val = (
            val_inference.features
            if cfg.extractor == "verifier"
            else run_inference(extractor, val, bs, px, with_probs=False).features
        )
    else:
        gate_fx = load_extractor(cfg.transfer_extractor, verifier)
        gate_syn, gate_train, gate_val = (
            run_inference(gate_fx, df, bs, px, with_probs=False).features for df in (synth, train, val)
        )
    return _transfer(synth, target, gate_syn, pd.concat([train, val]), np.concatenate([gate_train, gate_val]), cfg)


#: transfer_gate's keyword -> the FilterConfig field that sets it
TRANSFER_GATE_OPTIONS = {
    "min_auroc": "transfer_min_auroc",
    "min_real_positives": "transfer_min_real_positives",
    "min_synthetic": "transfer_min_synthetic",
    "unjudged": "transfer_unjudged",
    "n_boot": "transfer_bootstrap",
    "ci_level": "ci_level",
    "probe_c": "transfer_probe_c",
    "seed": "seed",
}


def _transfer(
    synth: pd.DataFrame,
    target: pd.Series,
    syn_features: np.ndarray,
    real: pd.DataFrame,
    real_features: np.ndarray,
    cfg: FilterConfig,
) -> dict:
    """The transfer gate per generated class; ``real`` holds real train + val rows only (never test)."""
    from synth.filtering.transfer import transfer_gate

    if (real["split"] == "test").any():
        raise AssertionError("transfer gate: test rows reached the gate")
    targets = target.to_numpy()
    options = {keyword: getattr(cfg, field) for keyword, field in TRANSFER_GATE_OPTIONS.items()}
    generated = [c for c in pd.unique(target) if c in real.columns]
    real_y = label_matrix(real, generated)
    out = {}
    for cls in pd.unique(target):
        syn_labels = label_matrix(synth, [cls])[:, 0] if cls in synth.columns else np.full(len(synth), np.nan)
        real_labels = real_y[:, generated.index(cls)] if cls in generated else np.full(len(real), np.nan)
        others = [j for j, c in enumerate(generated) if c != cls]
        exclude = (real_y[:, others] == 1.0).any(axis=1) if others else np.zeros(len(real), bool)
        out[cls] = transfer_gate(
            cls,
            syn_features,
            targets,
            syn_labels,
            real_features,
            real_labels,
            real["subject_id"].astype(str).to_numpy(),
            real_exclude=exclude,
            **options,
        )
    return out


def _verifier_scores(
    synth: pd.DataFrame, target: pd.Series, probs: np.ndarray, classes: list[str], thresholds: dict
) -> pd.DataFrame:
    col = {c: j for j, c in enumerate(classes)}
    y = label_matrix(synth, classes)
    rows = []
    for i, cls in enumerate(target):
        th = thresholds.get(cls)
        p = float(probs[i, col[cls]]) if cls in col else np.nan
        co = [c for c in classes if c != cls and y[i, col[c]] == 1.0 and np.isfinite(thresholds[c].value)]
        co_p = [float(probs[i, col[c]]) for c in co]
        rows.append(
            {
                "dicom_id": synth["dicom_id"].iloc[i],
                "target_class": cls,
                "p_target": p,
                "threshold": th.value if th else np.nan,
                "threshold_rule": th.rule if th else "none",
                "verifier_pass": bool(th is not None and np.isfinite(th.value) and p >= th.value),
                "co_labels": "|".join(co),
                "co_label_mean_p": float(np.mean(co_p)) if co else np.nan,
                "co_label_agreement": float(np.mean([q >= thresholds[c].value for c, q in zip(co, co_p)]))
                if co
                else np.nan,
            }
        )
    return pd.DataFrame(rows)
