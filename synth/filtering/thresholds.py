"""Per-class acceptance thresholds of the verifier, fitted on the REAL VALIDATION split only.

Rule (documented in configs/filter/default.yaml and the summary):

* class with >= ``min_val_positives`` real val positives: threshold = the
  ``threshold_quantile`` quantile of those positives' P(class) — i.e. a real
  positive image would be accepted with probability ~ 1 - q;
* fewer val positives (typical for tail classes): threshold = the
  ``fallback_specificity`` quantile of the class's real val NEGATIVES'
  P(class) — accept only what outscores e.g. 95 % of real negatives;
* class not annotated in val at all: no threshold (NaN) and its synthetic
  images are rejected with reason ``no_threshold``.

Training rows are never used (the verifier has fitted them, its scores there
are optimistic) and test rows are never read, so corrupting test labels
cannot move a threshold.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from synth.manifest import label_matrix


@dataclass
class ClassThreshold:
    value: float
    rule: str  #: "val_positive_quantile" | "val_negative_specificity" | "none"
    n_val_pos: int
    n_val_neg: int


def fit_thresholds(
    val_probs: np.ndarray,
    val_df: pd.DataFrame,
    classes: list[str],
    quantile: float,
    min_positives: int,
    fallback_specificity: float,
) -> dict[str, ClassThreshold]:
    """``val_probs`` (N, C) verifier scores of ``val_df`` (real val rows only) in ``classes`` order."""
    if len(val_df) and not ((val_df["split"] == "val").all() and (val_df["source"] == "real").all()):
        raise ValueError("thresholds must be fitted on real validation rows only")
    y = label_matrix(val_df, classes)
    out: dict[str, ClassThreshold] = {}
    for j, cls in enumerate(classes):
        pos = val_probs[y[:, j] == 1.0, j]
        neg = val_probs[y[:, j] == 0.0, j]
        if len(pos) >= min_positives:
            out[cls] = ClassThreshold(float(np.quantile(pos, quantile)), "val_positive_quantile", len(pos), len(neg))
        elif len(neg) > 0:
            out[cls] = ClassThreshold(
                float(np.quantile(neg, fallback_specificity)), "val_negative_specificity", len(pos), len(neg)
            )
        else:
            out[cls] = ClassThreshold(float("nan"), "none", len(pos), len(neg))
    return out
