"""What makes a classifier stage resumable and a finished member or ensemble reusable.

A stage's checkpoint is Accelerate's ``save_state`` (model, optimiser, RNG) plus the project's own state --
scheduler and :class:`Progress` as JSON, EMA as safetensors -- because Accelerate would pickle them. The
fingerprints (config, classes, rows) decide whether a checkpoint or a finished member belongs to this run.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import torch

from synth.hashing import hex_hash
from synth.io import save_safetensors_atomic, write_json_atomic
from synth.model_files import read_json_object
from synth.training import load_state, pickled_custom_state

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


def resume_or_start_afresh(
    accelerator,
    folder: Path,
    fingerprint: str,
    stage: str,
    read_own: Callable[[Path], None],
    resumed: Callable[[], str],
    log: Callable[[str], None],
) -> None:
    """Resume ``folder/state`` when it was written by this config, data and format and holds no pickle; else clear it.

    A folder that cannot be resumed is deleted with ``best.safetensors`` (one log line says why), and the
    fingerprint of this run is stamped into ``folder`` for the next resume.
    """
    state_dir, best_file, fp_file = folder / "state", folder / "best.safetensors", folder / "fingerprint.json"
    stamp = {"fingerprint": fingerprint, "format": CHECKPOINT_FORMAT}
    fix = f"delete {folder} to start this stage over (finished stages and members are kept)"
    same = fp_file.exists() and {k: read_json_object(fp_file, fix).get(k) for k in stamp} == stamp
    unsafe = pickled_custom_state(state_dir)
    if state_dir.exists() and same and not unsafe and (state_dir / PROGRESS_FILE).exists():
        load_state(accelerator, state_dir, read_own, fix)
        log(f"{stage}: {resumed()}")
    elif state_dir.exists():
        if accelerator.is_main_process:
            why = (
                f"it holds pickled {', '.join(unsafe)}, which is never unpickled"
                if unsafe
                else "config, data or checkpoint format changed since it was written"
                if not same
                else f"it has no {PROGRESS_FILE}"
            )
            log(f"{stage}: not resuming the checkpoint in {folder} ({why}); starting afresh")
            shutil.rmtree(state_dir, ignore_errors=True)
            best_file.unlink(missing_ok=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        folder.mkdir(parents=True, exist_ok=True)
        write_json_atomic(fp_file, stamp)


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
