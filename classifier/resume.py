"""What a classifier stage's checkpoint holds beyond Accelerate's, and what makes a finished member reusable.

A stage's checkpoint is Accelerate's ``save_state`` (model, optimiser, RNG) plus the loop's own state --
scheduler and :class:`Progress` as JSON, EMA as safetensors -- because Accelerate would pickle them; saving,
resuming and refusing a checkpoint are :mod:`synth.training.checkpoint`'s (the one checkpoint module). The
fingerprints (config, classes, rows) decide whether a checkpoint or a finished member belongs to this run.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from synth.hashing import hex_hash
from synth.io import save_safetensors_atomic, write_json_atomic

#: Version of the resumable checkpoint layout; a checkpoint of another version starts the stage afresh.
#: 2: progress + scheduler in ``progress.json``, EMA in ``ema.safetensors`` (1 pickled them).
CHECKPOINT_FORMAT = 2
PROGRESS_FILE, EMA_FILE = "progress.json", "ema.safetensors"


@dataclasses.dataclass
class Progress:
    """Training progress, saved as JSON beside the accelerate checkpoint (never pickled)."""

    epoch: int = 0  #: epochs completed
    step: int = 0  #: optimiser steps done
    best_map: float = -1.0
    best_epoch: int = 0
    history: list = dataclasses.field(default_factory=list)

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "step": self.step,
            "best_map": self.best_map,
            "best_epoch": self.best_epoch,
            "history": json.dumps(self.history),
        }

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self.best_map, self.best_epoch = float(state["best_map"]), int(state["best_epoch"])
        self.history = json.loads(state["history"])


def record_epoch(
    progress: Progress, val_map: float | None, losses: list[torch.Tensor], images_per_s: float
) -> tuple[float, float, bool]:
    """Append the epoch to ``progress.history`` (val mAP -1 when undefined); returns (val mAP, mean loss, improved)."""
    score = -1.0 if val_map is None else val_map
    mean_loss = float(torch.stack(losses).mean()) if losses else float("nan")
    progress.history.append(
        {
            "epoch": progress.epoch,
            "step": progress.step,
            "loss": mean_loss,
            "val_map": score,
            "images_per_s": images_per_s,
        }
    )
    improved = score > progress.best_map
    if improved:
        progress.best_map, progress.best_epoch = score, progress.epoch
    return score, mean_loss, improved


def fingerprint_of(*parts: Any) -> str:
    return hex_hash(json.dumps(parts, sort_keys=True, default=str), algorithm="sha256", hex_chars=16)


def rows_key(df: pd.DataFrame) -> str:
    rows = "\n".join(df["dicom_id"].astype(str) + "|" + df["fpath"].astype(str))
    return hex_hash(rows, algorithm="sha256", hex_chars=16)


#: TrainConfig keys that change where or how fast, never what is learned: left out of the fingerprints,
#: so setting them does not retrain finished members.
NOT_RESULTS = ("image_cache_dir", "report_to")


#: Keys added to a section after members were first fingerprinted, with their defaults: left out while at the
#: default, so a config that does not use them keeps the fingerprint (and the trained members) it had.
ADDED_WITH_DEFAULT = {"loss_weight": 1.0, "head_epochs": 2, "controls": False}


def results_only(section: dict) -> dict:
    return {
        k: v
        for k, v in section.items()
        if k not in NOT_RESULTS and not (k in ADDED_WITH_DEFAULT and v == ADDED_WITH_DEFAULT[k])
    }


def save_own_state(folder: Path, scheduler, progress: Progress, ema) -> None:
    """Scheduler and progress as JSON, EMA weights as safetensors: what Accelerate would have pickled."""
    write_json_atomic(folder / PROGRESS_FILE, {"progress": progress.state_dict(), "scheduler": scheduler.state_dict()})
    if ema is not None:
        save_safetensors_atomic(folder / EMA_FILE, ema.state_dict())


def load_own_state(folder: Path, scheduler, progress: Progress, ema) -> None:
    from safetensors.torch import load_file

    saved = json.loads((folder / PROGRESS_FILE).read_text())
    progress.load_state_dict(saved["progress"])
    scheduler.load_state_dict(saved["scheduler"])
    if ema is not None:
        ema.load_state_dict(load_file(str(folder / EMA_FILE)))
