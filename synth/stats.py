"""Label statistics of a manifest (``stats.json``).

Prevalence is computed over the rows that *annotate* a class (empty cells are
not negatives), per split. Frequency groups come from the train split only.
The label-set table is what co-occurrence prompting samples from, so it is
kept per split with exact counts rather than as derived probabilities.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from synth.errors import UserError
from synth.io import read_json_file, write_json_atomic
from synth.manifest import SPLITS, annotated_classes, label_sets
from synth.taxonomy import GroupThresholds, frequency_groups

STATS_VERSION = 1
_MISSING = "stats not found: {path}; run `synth prepare` first"
_INVALID = "{path}: not valid JSON ({err}); re-run `synth prepare`"
SCOPES: tuple[str, ...] = (*SPLITS, "all")


def compute_stats(df: pd.DataFrame, thresholds: GroupThresholds = GroupThresholds()) -> dict[str, Any]:
    """All statistics of ``df`` (a manifest with ``split``) as a JSON-ready dict.

    Keys: ``classes`` (annotated, taxonomy order), ``images`` / ``patients`` per
    scope (train/val/test/all), ``positives`` / ``annotated`` / ``prevalence``
    per scope and class, ``cooccurrence`` (train counts, ``matrix[i][j]`` =
    images positive for both) and ``conditional`` (``P(j | i)`` on train),
    ``groups`` (class => head/medium/tail from train prevalence) with
    ``thresholds``, and ``label_sets`` per scope as ``[{"labels", "count"}]``
    sorted by count.
    """
    classes = annotated_classes(df)
    scopes = {s: df[df["split"] == s] for s in SPLITS}
    scopes["all"] = df
    stats: dict[str, Any] = {
        "version": STATS_VERSION,
        "classes": classes,
        "images": {s: int(len(part)) for s, part in scopes.items()},
        "patients": {s: int(part["subject_id"].nunique()) for s, part in scopes.items()},
        "positives": {},
        "annotated": {},
        "prevalence": {},
    }
    for s, part in scopes.items():
        y = part.reindex(columns=classes)
        positives = (y == 1).sum()
        annotated = y.notna().sum()
        stats["positives"][s] = {c: int(positives[c]) for c in classes}
        stats["annotated"][s] = {c: int(annotated[c]) for c in classes}
        stats["prevalence"][s] = {c: (float(positives[c] / annotated[c]) if annotated[c] else None) for c in classes}

    train = scopes["train"]
    y = np.nan_to_num(train.reindex(columns=classes).to_numpy(dtype=np.float64), nan=0.0)
    co = (y.T @ y).astype(np.int64)
    diag = np.diag(co).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        cond = np.where(diag[:, None] > 0, co / diag[:, None], np.nan)
    stats["cooccurrence"] = {"split": "train", "classes": classes, "matrix": co.tolist()}
    stats["conditional"] = {
        "split": "train",
        "classes": classes,
        "note": "matrix[i][j] = P(classes[j] | classes[i]); null where classes[i] has no positive",
        "matrix": [[None if np.isnan(v) else round(float(v), 6) for v in row] for row in cond],
    }
    train_prevalence = {c: p for c, p in stats["prevalence"]["train"].items() if p is not None}
    groups = frequency_groups(train_prevalence, thresholds)
    stats["thresholds"] = asdict(thresholds)
    stats["groups"] = groups
    stats["group_counts"] = {g: sum(1 for v in groups.values() if v == g) for g in ("head", "medium", "tail")}
    stats["label_sets"] = {s: _label_set_table(part, classes) for s, part in scopes.items()}
    return stats


def _label_set_table(df: pd.DataFrame, classes: list[str]) -> list[dict[str, Any]]:
    counts = Counter(label_sets(df, classes)) if len(df) else Counter()
    table = [{"labels": list(labels), "count": int(n)} for labels, n in counts.items()]
    table.sort(key=lambda row: (-row["count"], row["labels"]))
    return table


def write_stats(stats: dict[str, Any], path: str | os.PathLike) -> Path:
    path = Path(path)
    write_json_atomic(path, stats, indent=1)
    return path


def load_stats(path: str | os.PathLike) -> dict[str, Any]:
    """Read ``stats.json`` (or the one inside a prepared dataset folder)."""
    path, stats = read_json_file(path, "stats.json", missing=_MISSING, invalid=_INVALID)
    if stats.get("version") != STATS_VERSION:
        raise UserError(
            f"{path}: stats version {stats.get('version')!r}, expected {STATS_VERSION}; re-run `synth prepare`"
        )
    return stats
