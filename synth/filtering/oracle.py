"""The phantom oracle: an evaluation-only judge of whether a synthetic image shows its target.

Trained like the verifier but on a LARGE class-balanced phantom set, where
every finding has a strong rendered signature, so it reaches high AP on all
classes. It never takes part in filtering: it measures

* fidelity per class = fraction of synthetic images of a class in which the
  oracle detects the target (threshold per class = the F1-optimal threshold on
  the held-out balanced phantom val split);
* the verifier's precision / recall against the oracle (oracle = truth).

Folder = a verifier folder (model.safetensors, verifier.json) + ``oracle.json``
(thresholds and their val AP).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from synth.errors import UserError
from synth.filtering.config import VerifierConfig
from synth.filtering.verifier import FeatureExtractor, Verifier, load_verifier, run_inference, train_verifier
from synth.io import write_json_atomic
from synth.manifest import label_matrix, read_manifest

ORACLE_FILE = "oracle.json"


def f1_optimal_threshold(scores: np.ndarray, labels: np.ndarray) -> float:
    from sklearn.metrics import precision_recall_curve

    precision, recall, thresholds = precision_recall_curve(labels, scores)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    return float(thresholds[int(np.argmax(f1[:-1]))])


def train_oracle(data_manifest: str | Path, out_dir: str | Path, cfg: VerifierConfig | None = None) -> Path:
    """Train on the balanced phantom's real train split; fit thresholds and report AP on its val split."""
    from sklearn.metrics import average_precision_score

    from synth.distributed import process_state

    df = read_manifest(data_manifest)
    out_dir = train_verifier(df, out_dir, cfg)
    if not process_state().is_main_process:
        return out_dir
    verifier = load_verifier(out_dir)
    val = df[(df["split"] == "val") & (df["source"] == "real")]
    if val.empty:
        raise UserError(
            f"{data_manifest}: the oracle needs a held-out val split to choose its thresholds; re-create the phantom "
            "set with a val split"
        )
    probs = predict(verifier, val, (cfg or VerifierConfig()).eval_batch_size)
    y = label_matrix(val, verifier.classes)
    classes = {}
    for j, cls in enumerate(verifier.classes):
        known = ~np.isnan(y[:, j])
        pos = int((y[known, j] == 1).sum())
        if pos == 0 or pos == known.sum():
            classes[cls] = {"threshold": None, "val_ap": None, "val_positives": pos}
            continue
        classes[cls] = {
            "threshold": f1_optimal_threshold(probs[known, j], y[known, j]),
            "val_ap": float(average_precision_score(y[known, j], probs[known, j])),
            "val_positives": pos,
        }
    write_json_atomic(
        out_dir / ORACLE_FILE, {"classes": classes, "threshold_rule": "F1-optimal on the real val split"}
    )
    return out_dir


def predict(verifier: Verifier, df: pd.DataFrame, batch_size: int) -> np.ndarray:
    extractor = FeatureExtractor(verifier.model, verifier.image_size, verifier.pixel_mean, verifier.pixel_std)
    return run_inference(extractor, df, batch_size, pixel_size=8).probs


def load_oracle(path: str | Path) -> tuple[Verifier, dict[str, float]]:
    path = Path(path)
    if not (path / ORACLE_FILE).exists():
        raise UserError(f"{path} is not an oracle folder (no {ORACLE_FILE}); train one with `synth oracle train`")
    from synth.model_files import read_json_object

    fix = "train it again with `synth oracle train` (or restore the folder from a copy)"
    record = read_json_object(path / ORACLE_FILE, fix)
    try:
        thresholds = {c: float(v["threshold"]) for c, v in record["classes"].items() if v.get("threshold") is not None}
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise UserError(
            f"{path / ORACLE_FILE}: no per-class thresholds ({type(err).__name__}: {err}); {fix}"
        ) from None
    return load_verifier(path), thresholds


def oracle_report(
    oracle_dir: str | Path, synthetic: pd.DataFrame, target: pd.Series, verifier_accept: np.ndarray, batch_size: int
) -> tuple[dict[str, dict], np.ndarray]:
    """Per class: oracle fidelity and the verifier's precision/recall vs the oracle; plus per-image detections."""
    oracle, thresholds = load_oracle(oracle_dir)
    probs = predict(oracle, synthetic, batch_size)
    index = {c: j for j, c in enumerate(oracle.classes)}
    detected = np.full(len(synthetic), np.nan)
    for i, cls in enumerate(target):
        if cls in thresholds:
            detected[i] = float(probs[i, index[cls]] >= thresholds[cls])
    report = {}
    for cls in pd.unique(target):
        rows = np.flatnonzero((target == cls).to_numpy())
        det = detected[rows]
        if np.isnan(det).all():
            report[cls] = {"oracle_fidelity": None, "verifier_precision": None, "verifier_recall": None}
            continue
        acc = verifier_accept[rows].astype(bool)
        hit = det == 1.0
        report[cls] = {
            "oracle_fidelity": float(hit.mean()),
            "verifier_precision": float((acc & hit).sum() / acc.sum()) if acc.any() else None,
            "verifier_recall": float((acc & hit).sum() / hit.sum()) if hit.any() else None,
        }
    return report, detected
