"""Accelerate's experiment trackers (``--report_to`` / ``train.report_to``) for every training loop, and the loss rows
(``loss.csv``) a loop keeps beside its checkpoints whatever ``report_to`` says."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from synth.io import atomic_path


def tracker_kwargs(report_to: str, out: Path) -> dict[str, Any]:
    """Accelerator arguments for ``report_to`` (event files under ``<out>/logs``); none for ``"none"``."""
    if report_to == "none":
        return {}
    from accelerate.utils import ProjectConfiguration

    return {
        "log_with": report_to,
        "project_config": ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")),
    }


def flat_hparams(values: dict) -> dict:
    """Hyper-parameters as tracker-friendly scalars (None as "")."""
    return {k: "" if v is None else v for k, v in values.items()}


def write_rows_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def read_rows_csv(path: Path, max_step: int) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    out = []
    for r in rows:
        if int(r["step"]) <= max_step:
            out.append({k: (int(v) if k == "step" else float(v)) for k, v in r.items()})
    return out
