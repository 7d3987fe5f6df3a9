"""The ablation's "do no harm" rule: per class, is an arm's AP significantly below the baseline's?

Apart from :mod:`synth.ablation.stages` (thin adapters the tests replace with fakes) because this is the
report's own statistics: the per-class paired bootstrap and which classes have enough test positives to judge.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from synth.ablation.config import AblationConfig
from synth.ablation.stages import import_stage_module

#: "Do no harm" judges a class only with at least this many test positives: with fewer, a patient resample
#: either holds the one or two positives or not, and the interval of an AP difference is too coarse to call.
HARM_MIN_TEST_POSITIVES = 5


def paired_per_class(
    cfg: AblationConfig,
    y_true: np.ndarray,
    runs: list[tuple[np.ndarray, np.ndarray]],
    classes: list[str],
    patients: np.ndarray,
) -> dict[str, dict[str, Any]]:
    """Per class: arm minus baseline AP, averaged over seeds, with one paired patient-bootstrap interval.

    ``runs``: (baseline, arm) probabilities per seed. The same resampling rule (and seed) as
    :func:`synth.ablation.stages.paired`: every seed is scored on the same resampled
    patients and the differences averaged, so a class is "significantly harmed" when the interval of
    the seed-averaged difference lies below 0. Rows with an unknown label are left out of that class.
    """
    metrics = import_stage_module("classifier.metrics", "classifier")
    ev = cfg.evaluation
    resamples = metrics.patient_resamples(patients, max(ev.n_boot, 1), ev.bootstrap_seed)
    y_true = np.asarray(y_true, dtype=np.float64)
    out: dict[str, dict[str, Any]] = {}
    for j, cls in enumerate(classes):
        known = ~np.isnan(y_true[:, j])
        y = y_true[known, j]
        if not (y == 1).any():
            out[cls] = {"diff": None, "ci": [None, None], "run_diffs": [], "n_pos": 0}
            continue
        codes = resamples.codes[known]
        points, boots = [], []
        for pb, pa in runs:
            pb, pa = np.asarray(pb, dtype=np.float64)[known, j], np.asarray(pa, dtype=np.float64)[known, j]
            points.append(metrics.class_metrics(y, pa)["ap"] - metrics.class_metrics(y, pb)["ap"])
            boots.append(
                metrics.resampled_ap(y, pa, codes, resamples.counts)
                - metrics.resampled_ap(y, pb, codes, resamples.counts)
            )
        d = np.mean(boots, axis=0)
        d = d[~np.isnan(d)]
        ci = [float(np.percentile(d, 2.5)), float(np.percentile(d, 97.5))] if d.size else [None, None]
        out[cls] = {
            "diff": float(np.mean(points)),
            "ci": ci,
            "run_diffs": [float(x) for x in points],
            "n_pos": int((y == 1).sum()),
            **metrics.bootstrap_shape(d),
        }
    return out


def judge_harm(per_class: dict[str, dict[str, Any]]) -> tuple[list[str], list[str]]:
    """(harmed, not judged): classes whose interval lies below 0 among the judgeable ones, and those with too few
    test positives to call (but at least one)."""
    harmed = sorted(
        c
        for c, v in per_class.items()
        if v["n_pos"] >= HARM_MIN_TEST_POSITIVES and v["ci"][1] is not None and v["ci"][1] < 0
    )
    return harmed, sorted(c for c, v in per_class.items() if 0 < v["n_pos"] < HARM_MIN_TEST_POSITIVES)
