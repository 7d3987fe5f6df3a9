"""Accelerate's experiment trackers (``--report_to`` / ``train.report_to``) for every training loop."""

from __future__ import annotations

from pathlib import Path
from typing import Any


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
