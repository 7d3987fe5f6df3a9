"""``synth evaluate``: score a trained ensemble on one split of a manifest.

Writes ``metrics.json`` (the :func:`classifier.metrics.evaluate` dict plus
provenance), ``probs.csv`` (dicom_id + per-class probabilities) and the
CXR-LT submission CSV, and returns the metrics for the rich table.

Head / medium / tail and the training prevalence come from the MODEL
(``ensemble.json`` stores them when it is trained), so a test-only manifest —
an external site, a challenge test set — is scored like the model's own test
split. An ensemble saved without them falls back to the manifest's real train
rows; with neither, evaluation is refused with the fix.

:func:`predict_submission` is the unlabeled path (``synth predict``): the same
ensemble prediction and the same submission writer, no labels needed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from classifier.ensemble import model_groups, predict, read_ensemble
from classifier.metrics import evaluate, write_submission
from synth.errors import UserError
from synth.io import atomic_path, write_json_atomic
from synth.manifest import label_matrix, read_manifest
from synth.output_folder import EVALUATE, writing_folder
from synth.taxonomy import CXR_LT_CLASSES, frequency_groups

SUBMISSION_FILE = "submission.csv"


def train_groups(df: pd.DataFrame, classes: list[str]) -> tuple[dict[str, str], dict[str, float]]:
    """Groups and prevalence from the manifest's real train rows (ensembles that store none)."""
    train = df[(df["split"] == "train") & (df["source"] == "real")]
    if train.empty:
        raise UserError(
            "evaluate: the ensemble stores no training prevalence (saved by an older version) and the manifest "
            "has no real training rows, so head/medium/tail cannot be defined; pass --data the manifest the "
            "model was trained on (all splits), or retrain the ensemble so it stores its groups"
        )
    y = label_matrix(train, classes)
    prevalence = {}
    for j, c in enumerate(classes):
        known = ~np.isnan(y[:, j])
        if known.any():
            prevalence[c] = float(y[known, j].mean())
    return frequency_groups(prevalence), prevalence


def evaluate_model(
    model_dir: str | Path,
    manifest: str | Path,
    split: str,
    out: str | Path,
    n_boot: int = 1000,
    seed: int = 0,
    batch_size: int = 64,
) -> dict[str, Any]:
    df = read_manifest(manifest)
    rows = df[(df["split"] == split) & (df["source"] == "real")].reset_index(drop=True)
    rows.attrs.update(df.attrs)
    if rows.empty:
        present = sorted(set(df.loc[df["source"] == "real", "split"]))
        raise UserError(
            f"{manifest}: no real rows with split={split!r} (it has {', '.join(present) or 'none'}); "
            f"use --split {present[0] if present else 'test'}"
        )
    spec = read_ensemble(model_dir)
    absent = [c for c in spec["classes"] if c in df.attrs.get("absent_classes", ())]
    if absent:
        raise UserError(
            f"{manifest}: no column {absent[0]!r} ({len(absent)} of the model's classes absent); the model scores "
            "it, so add the column (an empty cell means not annotated: that class is then listed as not scored)"
        )
    stored = model_groups(spec)
    probs, classes = predict(model_dir, rows, batch_size=batch_size)
    if stored is not None:
        groups, prevalence = stored
        groups_from = "model"
    else:
        groups, prevalence = train_groups(df, classes)
        groups_from = "manifest train split"
    y = label_matrix(rows, classes)
    result = evaluate(
        y, probs, classes, groups, patient_ids=rows["subject_id"].astype(str).to_numpy(), n_boot=n_boot, seed=seed
    )
    result.update(
        {
            "split": split,
            "model": str(Path(model_dir).resolve()),
            "manifest": str(Path(manifest).resolve()),
            "groups": groups,
            "groups_from": groups_from,
            "train_prevalence": prevalence,
            "bootstrap_seed": seed,
        }
    )
    with writing_folder(Path(out), EVALUATE) as folder:  # all three files or none, replacing only an evaluation
        missing = write_submission(folder / SUBMISSION_FILE, rows["dicom_id"], probs, classes)
        with atomic_path(folder / "probs.csv") as tmp:
            pd.DataFrame(probs, columns=classes).assign(dicom_id=rows["dicom_id"].to_numpy())[
                ["dicom_id", *classes]
            ].to_csv(tmp, index=False)
        result["submission"] = {"file": SUBMISSION_FILE, "filled_with_zero": missing}
        write_json_atomic(folder / "metrics.json", result)
    return result


def predict_submission(
    model_dir: str | Path, rows: pd.DataFrame, out_file: str | Path, batch_size: int = 64, progress: bool = True
) -> tuple[Path, list[str]]:
    """Predict ``rows`` (``dicom_id`` + ``fpath``; no labels needed) and write the CXR-LT submission CSV
    (``dicom_id`` + the model's class columns in taxonomy order) atomically; return (path, classes).

    Only the model's classes are written (a submission of the 40 with zeros for classes it never learnt
    would look like a confident negative).
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    read_ensemble(model_dir)  # a wrong --model fails before any image is read
    columns = (TextColumn("predicting"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, disable=not progress) as bar:
        task = bar.add_task("predict", total=len(rows))
        probs, classes = predict(
            model_dir,
            rows,
            batch_size=batch_size,
            chunk_rows=max(batch_size, 1024),
            on_rows=lambda n: bar.advance(task, n),
        )
    ordered = [c for c in CXR_LT_CLASSES if c in classes]
    write_submission(out_file, rows["dicom_id"], probs, classes, columns=ordered)
    return Path(out_file), ordered


def render_table(result: dict[str, Any]):
    """A rich table: the summary row, then per-class AP / AUROC / F1 / FNR / ECE by group."""
    from rich.table import Table

    def f(v: Any) -> str:
        return "—" if v is None else f"{v:.3f}"

    def ci(key: str) -> str:
        lo, hi = result["ci"].get(key, (None, None))
        return "" if lo is None else f" [{lo:.3f}, {hi:.3f}]"

    summary = Table(
        title=f"{result.get('split', '')}: {result['n']} images, {result['n_patients']} patients, "
        f"{result['n_boot']} patient-bootstrap resamples"
    )
    for col in ("mAP", "head mAP", "medium mAP", "tail mAP", "mAUROC", "mF1@0.5", "ECE"):
        summary.add_column(col, justify="right")
    summary.add_row(
        *(f(result[k]) + ci(k) for k in ("map", "head_map", "medium_map", "tail_map")),
        f(result["mauroc"]),
        f(result["mf1"]),
        f(result["ece"]),
    )
    per = Table(
        title="per class (— = no positives in this split, 'not annotated' = no labelled row: "
        "not scored, excluded from the means)"
    )
    for col, justify in (
        ("class", "left"),
        ("group", "left"),
        ("n_pos", "right"),
        ("AP", "right"),
        ("AUROC", "right"),
        ("F1", "right"),
        ("FNR", "right"),
        ("ECE", "right"),
    ):
        per.add_column(col, justify=justify)
    order = {"head": 0, "medium": 1, "tail": 2}
    groups = result.get("groups", {})
    for c, m in sorted(result["per_class"].items(), key=lambda kv: (order.get(groups.get(kv[0]), 3), kv[0])):
        per.add_row(
            c,
            groups.get(c, "?"),
            str(m["n_pos"]) if m.get("n", 1) else "not annotated",
            f(m["ap"]),
            f(m["auroc"]),
            f(m["f1"]),
            f(m["fnr"]),
            f(m["ece"]),
        )
    return summary, per
