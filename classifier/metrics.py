"""CXR-LT metrics: macro / group mAP, mAUROC, mF1, ECE, per-class table, patient bootstrap.

Rules (the CXR-LT 2024 paper's table set):

* a class with no positive in the evaluated rows has no AP: it is reported
  (``n_pos = 0``, metrics ``None``) and left out of every macro mean — never
  scored 0, which would punish a model for a split's sampling;
* label cells that are NaN (not annotated) are dropped per class;
* head / medium / tail come from TRAINING prevalence (``groups``);
* confidence intervals resample PATIENTS (all of a patient's images move
  together — images of one patient are not independent), and the paired
  bootstrap uses the same resampled patients for both runs.

Point estimates use torchmetrics. The bootstrap uses a vectorised weighted AP
(a resample = integer weights per row), the same step-function AP as
scikit-learn / torchmetrics (tested equal), so 1,000 resamples × 40 classes
take seconds rather than minutes.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from synth.io import atomic_path
from synth.taxonomy import CXR_LT_CLASSES, GROUPS

F1_THRESHOLD = 0.5  #: a class is predicted when p > 0.5 (torchmetrics convention)
ECE_BINS = 15
CI_LEVEL = 0.95


# ---------------------------------------------------------------- per class


def class_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, Any]:
    """AP, AUROC, F1/FNR at 0.5 and ECE of one class over its annotated rows."""
    from torchmetrics.functional.classification import (
        binary_auroc,
        binary_average_precision,
        binary_calibration_error,
        binary_f1_score,
        binary_recall,
    )

    known = ~np.isnan(y)
    y, p = y[known].astype(np.int64), p[known].astype(np.float64)
    n_pos, n = int(y.sum()), int(y.size)
    out: dict[str, Any] = {"ap": None, "auroc": None, "f1": None, "fnr": None, "ece": None, "n_pos": n_pos, "n": n}
    if n_pos == 0:
        return out
    yt, pt = torch.from_numpy(y), torch.from_numpy(p)
    out["ap"] = float(binary_average_precision(pt, yt))
    out["auroc"] = float(binary_auroc(pt, yt)) if n_pos < n else None
    out["f1"] = float(binary_f1_score(pt, yt, threshold=F1_THRESHOLD))
    out["fnr"] = 1.0 - float(binary_recall(pt, yt, threshold=F1_THRESHOLD))
    out["ece"] = float(binary_calibration_error(pt.float(), yt, n_bins=ECE_BINS, norm="l1"))
    return out


def _mean(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return float(np.mean(vals)) if vals else None


def group_means(per_class_ap: Mapping[str, float | None], groups: Mapping[str, str]) -> dict[str, float | None]:
    """``map`` over all classes with positives, and ``<group>_map`` over each group's."""
    out = {"map": _mean(list(per_class_ap.values()))}
    for g in GROUPS:
        out[f"{g}_map"] = _mean([v for c, v in per_class_ap.items() if groups.get(c) == g])
    return out


# ---------------------------------------------------------------- bootstrap


def weighted_ap(y: np.ndarray, p: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Average precision of one class under B row-weight vectors ``w`` (B, N); NaN where no positive weight.

    AP = Σ_k (R_k − R_{k−1}) P_k over distinct score thresholds (scikit-learn's
    definition), with TP/FP counts weighted. Rows with NaN labels must have w = 0.
    """
    order = np.argsort(-p, kind="mergesort")
    ys, ps, ws = y[order], p[order], w[:, order]
    last = np.r_[np.flatnonzero(np.diff(ps)), ps.size - 1]  # last index of each tie group
    tp = np.cumsum(ws * ys, axis=1)[:, last]
    fp = np.cumsum(ws * (1 - ys), axis=1)[:, last]
    total = tp[:, -1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        recall = tp / total
    d_recall = np.diff(np.concatenate([np.zeros_like(recall[:, :1]), recall], axis=1), axis=1)
    ap = np.sum(d_recall * precision, axis=1)
    return np.where(total[:, 0] > 0, ap, np.nan)


@dataclass(frozen=True)
class PatientResamples:
    """``n_boot`` draws of the test patients with replacement, kept at patient level.

    ``counts[b, k]`` is how often patient ``k`` was drawn in resample ``b`` and
    ``codes[i]`` is row ``i``'s patient. Expanding this to (n_boot, rows) weights
    costs ~0.2 GB and most of the bootstrap's time at 20,000 test rows; the AP
    below never needs the expansion.
    """

    codes: np.ndarray  #: (N,) patient index of each row
    counts: np.ndarray  #: (n_boot, P) draws per patient

    def row_weights(self) -> np.ndarray:
        """(n_boot, N) row multiplicities: each image counted as often as its patient was drawn."""
        return self.counts[:, self.codes]


def patient_resamples(patients: Sequence[Any], n_boot: int, seed: int) -> PatientResamples:
    codes, uniques = pd.factorize(pd.Series(np.asarray(patients)).astype(str))
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(uniques), size=(n_boot, len(uniques)))
    counts = np.stack([np.bincount(d, minlength=len(uniques)) for d in draws]).astype(np.float64)
    # Fortran order: resampled_ap reads counts.T row-wise, patient by patient
    return PatientResamples(codes=np.asarray(codes), counts=np.asfortranarray(counts))


def patient_weights(patients: Sequence[Any], n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, N) row multiplicities: patients drawn with replacement, each image counted with its patient."""
    return patient_resamples(patients, n_boot, seed).row_weights()


def resampled_ap(y: np.ndarray, p: np.ndarray, codes: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """:func:`weighted_ap` under patient resamples (``codes``, ``counts`` as in :class:`PatientResamples`).

    AP only moves at score thresholds (tie groups) that hold a positive, so a
    row's weight is only ever needed summed over the rows between two such
    thresholds ("segments"). Those sums are ``A @ counts.T`` with ``A`` a sparse
    segments × patients incidence matrix: one pass over the rows per resample
    and no (n_boot, rows) temporaries — ~50× faster than sorting expanded
    weights at 20,000 rows, and the same number (tested equal).

    Everything runs in (thresholds, n_boot) layout on ``counts.T``, which is C-contiguous when ``counts`` is
    Fortran-ordered (as :func:`patient_resamples` makes it): scipy would otherwise copy the whole
    (patients, n_boot) matrix on every call. On 22,000 test patients x 1,000 resamples this layout took a head-like
    class (20 % positives) from 0.52 to 0.13 s and a tail-like one (0.1 %) from 0.17 to 0.02 s
    (``bench/bench_bootstrap.py`` times both layouts).
    """
    from scipy import sparse

    pos = y == 1
    if not pos.any():
        return np.full(counts.shape[0], np.nan)
    by_patient = counts.T if counts.T.flags.c_contiguous else np.ascontiguousarray(counts.T)
    thresholds = np.unique(p[pos])[::-1]  # descending scores of the tie groups that hold a positive
    segment = np.searchsorted(-thresholds, -p, side="left")  # first such threshold at or below the row's score
    inside = segment < len(thresholds)  # rows scored below every positive never count

    def cumulative(rows: np.ndarray) -> np.ndarray:
        rows = rows & inside
        incidence = sparse.csr_matrix(
            (np.ones(int(rows.sum())), (segment[rows], codes[rows])), shape=(len(thresholds), by_patient.shape[0])
        )
        sums = np.asarray(incidence @ by_patient)  # (thresholds, n_boot)
        return np.cumsum(sums, axis=0, out=sums)

    tp, fp = cumulative(pos), cumulative(y == 0)
    total = tp[-1]
    with np.errstate(invalid="ignore", divide="ignore"):
        seen = tp + fp
        precision = np.divide(tp, seen, out=np.zeros_like(tp), where=seen > 0)
        d_recall = np.diff(tp / total, axis=0, prepend=0.0)
    return np.where(total > 0, np.einsum("tb,tb->b", d_recall, precision), np.nan)


def _boot_group_maps(
    y_true: np.ndarray,
    probs: np.ndarray,
    classes: Sequence[str],
    groups: Mapping[str, str],
    resamples: PatientResamples,
) -> dict[str, np.ndarray]:
    """(n_boot,) arrays of map / head_map / medium_map / tail_map (NaN where the split has no class with positives).

    Every resample averages the same classes as the point estimate: a class whose
    few positives all fall out of a resample keeps its full-split AP there. Letting
    it drop out instead shifts every rare-class-heavy mean (tail classes score low,
    so the resampled means drift upwards and the interval can miss the estimate).
    """
    n_boot = resamples.counts.shape[0]
    aps = np.full((n_boot, len(classes)), np.nan)
    for j in range(len(classes)):
        known = ~np.isnan(y_true[:, j])
        if not (y_true[known, j] == 1).any():
            continue
        y_j, p_j = y_true[known, j], probs[known, j].astype(np.float64)
        full_split_ap = weighted_ap(y_j, p_j, np.ones((1, y_j.size)))[0]
        resampled = resampled_ap(y_j, p_j, resamples.codes[known], resamples.counts)
        aps[:, j] = np.where(np.isnan(resampled), full_split_ap, resampled)
    out = {"map": _nanmean_rows(aps)}
    for g in GROUPS:
        idx = [j for j, c in enumerate(classes) if groups.get(c) == g]
        out[f"{g}_map"] = _nanmean_rows(aps[:, idx]) if idx else np.full(n_boot, np.nan)
    return out


def _group_maps(
    y_true: np.ndarray, probs: np.ndarray, classes: Sequence[str], groups: Mapping[str, str]
) -> dict[str, float | None]:
    return group_means({c: class_metrics(y_true[:, j], probs[:, j])["ap"] for j, c in enumerate(classes)}, groups)


def _nanmean_rows(a: np.ndarray) -> np.ndarray:
    n = np.sum(~np.isnan(a), axis=1)
    s = np.nansum(a, axis=1)
    return np.where(n > 0, s / np.maximum(n, 1), np.nan)


def bootstrap_shape(samples: np.ndarray) -> dict[str, Any]:
    """How many different values a bootstrap distribution takes (to 1e-12; 1 = zero variance) and the share of
    resamples holding its most common value.

    A p-value "< 0.001" read off a distribution of a handful of values, or one where a third of the resamples
    sit on one value (a class whose positives are one patient: that patient is left out of ~37 % of resamples
    and the class keeps its full-split AP there), is an artefact of the resampling, not evidence; the ablation
    report calls such a distribution degenerate (synth/ablation/evidence.py).
    """
    s = np.asarray(samples, dtype=np.float64)
    s = s[~np.isnan(s)]
    if not s.size:
        return {"n_distinct": 0, "modal_share": None}
    _, counts = np.unique(np.round(s, 12), return_counts=True)
    return {"n_distinct": int(counts.size), "modal_share": float(counts.max() / s.size)}


def _ci(samples: np.ndarray, level: float = CI_LEVEL) -> tuple[float | None, float | None]:
    s = samples[~np.isnan(samples)]
    if s.size == 0:
        return (None, None)
    lo, hi = np.percentile(s, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return (float(lo), float(hi))


# ---------------------------------------------------------------- public API


def evaluate(
    y_true: np.ndarray,
    probs: np.ndarray,
    classes: Sequence[str],
    groups: Mapping[str, str],
    patient_ids: Sequence[Any] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """The CXR-LT table of one run: macro/group mAP with patient-bootstrap CIs, mAUROC, mF1, ECE, per class."""
    y_true = np.asarray(y_true, dtype=np.float64)
    probs = np.asarray(probs, dtype=np.float64)
    classes = list(classes)
    if y_true.shape != probs.shape or y_true.shape[1] != len(classes):
        raise ValueError(f"shape mismatch: y_true {y_true.shape}, probs {probs.shape}, {len(classes)} classes")
    per_class = {c: class_metrics(y_true[:, j], probs[:, j]) for j, c in enumerate(classes)}
    out: dict[str, Any] = group_means({c: m["ap"] for c, m in per_class.items()}, groups)
    out["mauroc"] = _mean([m["auroc"] for m in per_class.values()])
    out["mf1"] = _mean([m["f1"] for m in per_class.values()])
    out["ece"] = _mean([m["ece"] for m in per_class.values()])
    out["n"] = int(y_true.shape[0])
    out["classes_without_positives"] = [c for c, m in per_class.items() if m["n_pos"] == 0]
    out["classes_not_annotated"] = [c for c, m in per_class.items() if m["n"] == 0]  #: not scored at all
    if patient_ids is None:
        patient_ids = np.arange(y_true.shape[0])
    out["n_patients"] = int(pd.Series(np.asarray(patient_ids)).nunique())
    out["ci"] = {k: (None, None) for k in ("map", *(f"{g}_map" for g in GROUPS))}
    if n_boot > 0:
        boots = _boot_group_maps(y_true, probs, classes, groups, patient_resamples(patient_ids, n_boot, seed))
        out["ci"] = {k: _ci(v) for k, v in boots.items()}
    out["n_boot"] = int(n_boot)
    out["per_class"] = per_class
    return out


def paired_bootstrap(
    y_true: np.ndarray,
    prob_base: np.ndarray,
    prob_arm: np.ndarray,
    classes: Sequence[str],
    groups: Mapping[str, str],
    patients: Sequence[Any],
    n_boot: int = 1000,
    seed: int = 0,
) -> dict:
    """Arm − base for map / head_map / medium_map / tail_map on the SAME resampled patients: one run of
    :func:`paired_bootstrap_runs`.

    ``p`` is the two-sided bootstrap p-value of "no difference" (twice the
    smaller tail of the resampled differences around 0).
    """
    return paired_bootstrap_runs(y_true, [prob_base], [prob_arm], classes, groups, patients, n_boot, seed)


def paired_bootstrap_runs(
    y_true: np.ndarray,
    probs_base: Sequence[np.ndarray],
    probs_arm: Sequence[np.ndarray],
    classes: Sequence[str],
    groups: Mapping[str, str],
    patients: Sequence[Any],
    n_boot: int = 1000,
    seed: int = 0,
    generators: Sequence[Any] | None = None,
) -> dict[str, Any]:
    """The run-averaged difference (e.g. over training seeds), arm k paired with base k, one bootstrap.

    Each resample draws one set of patients and scores every run on it, then
    averages the per-run differences, so the interval and ``p`` describe the
    same seed-averaged estimate the report prints. Averaging per-seed
    intervals instead gives no coverage guarantee, and calling a difference
    significant by it can disagree with the per-seed p-values.

    ``generators`` (one id per run: the generator whose images arm run k trained on) adds the generator's own
    randomness: with K >= 2 distinct generators the interval and ``p`` are Rubin's rules over the K
    per-generator estimates (:func:`combine_over_generators`), the bootstrap-only interval kept as
    ``ci_within``. With one generator (or None) the result is the plain bootstrap's, unchanged.
    """
    if len(probs_base) != len(probs_arm) or not probs_base:
        raise ValueError(f"need matching runs: {len(probs_base)} base vs {len(probs_arm)} arm")
    if generators is not None and len(generators) != len(probs_arm):
        raise ValueError(f"need one generator per run: {len(generators)} for {len(probs_arm)} runs")
    y_true = np.asarray(y_true, dtype=np.float64)
    classes = list(classes)
    resamples = patient_resamples(patients, max(n_boot, 1), seed)
    points: list[dict[str, float | None]] = []
    boots: list[dict[str, np.ndarray]] = []
    for pb, pa in zip(probs_base, probs_arm):
        pb, pa = np.asarray(pb, dtype=np.float64), np.asarray(pa, dtype=np.float64)
        point_base, point_arm = _group_maps(y_true, pb, classes, groups), _group_maps(y_true, pa, classes, groups)
        points.append(
            {
                k: None if point_base[k] is None or point_arm[k] is None else point_arm[k] - point_base[k]
                for k in point_base
            }
        )
        base = _boot_group_maps(y_true, pb, classes, groups, resamples)
        arm = _boot_group_maps(y_true, pa, classes, groups, resamples)
        boots.append({k: arm[k] - base[k] for k in base})
    out: dict[str, Any] = {}
    for key in boots[0]:
        if any(pt[key] is None for pt in points):
            out[key] = {"diff": None, "ci": (None, None), "p": None, "run_diffs": [pt[key] for pt in points]}
            continue
        d = np.mean([b[key] for b in boots], axis=0)
        d = d[~np.isnan(d)]
        p = float(min(1.0, 2 * min(np.mean(d <= 0), np.mean(d >= 0)))) if d.size and n_boot > 0 else None
        out[key] = {
            "diff": float(np.mean([pt[key] for pt in points])),
            "ci": _ci(d) if n_boot > 0 else (None, None),
            "p": p,
            "run_diffs": [float(pt[key]) for pt in points],
            **bootstrap_shape(d),
        }
        if generators is not None and len(set(generators)) > 1 and n_boot > 1:
            by_gen = {g: [i for i, gi in enumerate(generators) if gi == g] for g in dict.fromkeys(generators)}
            combined = combine_over_generators(
                [float(np.mean([points[i][key] for i in runs])) for runs in by_gen.values()],
                [np.mean([boots[i][key] for i in runs], axis=0) for runs in by_gen.values()],
            )
            out[key].update(
                ci_within=out[key]["ci"], ci=combined.ci, p=combined.p, generators=dataclasses.asdict(combined)
            )
    return out


@dataclass(frozen=True)
class GeneratorCombined:
    """Rubin's rules over K generators (van Breugel et al., ICML 2023, "Deep Generative Ensemble")."""

    k: int  #: generators
    estimate: float  #: mean of the per-generator estimates
    within: float  #: W̄: mean bootstrap variance of a generator's estimate (patients and classifier seeds)
    between: float  #: B: variance of the per-generator estimates (the generator's own randomness)
    total: float  #: T = W̄ + (1 + 1/K)·B
    df: float  #: Barnard–Rubin degrees of freedom of the t interval
    ci: tuple[float, float]
    p: float


def combine_over_generators(
    estimates: Sequence[float], boot_samples: Sequence[np.ndarray], level: float = CI_LEVEL
) -> GeneratorCombined:
    """One estimate, interval and two-sided p from K per-generator estimates and their bootstrap samples.

    Multiple-imputation logic: each generator is one draw of "the synthetic set"; the bootstrap of a generator's
    runs measures the within-draw variance, the spread of the K estimates the between-draw variance, and
    T = W̄ + (1 + 1/K)·B is the variance of the pooled estimate, referred to a t distribution with
    ν = (K − 1)(1 + W̄ / ((1 + 1/K)·B))² degrees of freedom (ν → ∞ when B = 0: the plain normal interval).
    """
    from scipy import stats

    k = len(estimates)
    if k < 2 or len(boot_samples) != k:
        raise ValueError(f"need >= 2 generators with one bootstrap each, got {k} and {len(boot_samples)}")
    q = np.asarray(estimates, dtype=np.float64)
    within = float(np.mean([np.nanvar(np.asarray(b, dtype=np.float64), ddof=1) for b in boot_samples]))
    between = float(np.var(q, ddof=1))
    inflated = (1.0 + 1.0 / k) * between
    total = within + inflated
    df = math.inf if inflated == 0 else (k - 1) * (1.0 + within / inflated) ** 2
    mean, se = float(q.mean()), math.sqrt(total)
    t = float(stats.t.ppf((1 + level) / 2, df)) if math.isfinite(df) else float(stats.norm.ppf((1 + level) / 2))
    if se == 0:
        p = 1.0 if mean == 0 else 0.0
    else:
        dist = stats.t(df) if math.isfinite(df) else stats.norm
        p = float(min(1.0, 2 * dist.sf(abs(mean) / se)))
    return GeneratorCombined(k, mean, within, between, total, df, (mean - t * se, mean + t * se), p)


def write_submission(
    path: str | Path,
    dicom_ids: Sequence[str],
    probs: np.ndarray,
    classes: Sequence[str],
    fill: float = 0.0,
    columns: Sequence[str] | None = None,
) -> list[str]:
    """CXR-LT submission CSV: ``dicom_id`` + the 40 class probability columns in challenge order
    (or ``columns``, e.g. only the model's classes).

    Classes the model does not predict (e.g. the 25 NIH does not label) get
    ``fill``; their names are returned so the caller can report them.
    """
    probs = np.asarray(probs, dtype=np.float64)
    index = {c: j for j, c in enumerate(classes)}
    table = {"dicom_id": list(map(str, dicom_ids))}
    missing = []
    for c in CXR_LT_CLASSES if columns is None else columns:
        if c in index:
            table[c] = probs[:, index[c]]
        else:
            table[c] = np.full(probs.shape[0], fill)
            missing.append(c)
    with atomic_path(path) as tmp:
        pd.DataFrame(table).to_csv(tmp, index=False, float_format="%.6g")
    return missing


def macro_ap(y_true: np.ndarray, probs: np.ndarray) -> float | None:
    """Mean AP over classes with positives (NaN labels dropped); for model selection on val."""
    y_true, probs = np.asarray(y_true, dtype=np.float64), np.asarray(probs, dtype=np.float64)
    aps = []
    for j in range(y_true.shape[1]):
        known = ~np.isnan(y_true[:, j])
        if (y_true[known, j] == 1).any():
            aps.append(weighted_ap(y_true[known, j], probs[known, j], np.ones((1, int(known.sum()))))[0])
    return float(np.mean(aps)) if aps else None
