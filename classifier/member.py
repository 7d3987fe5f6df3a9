"""One ensemble member: its stages fitted or reused, and member.json.

The stages by ``synthetic.mode``: ``train``; ``pretrain`` then ``finetune``; or ``train`` then ``head``.

Apart from :mod:`classifier.train` (the ensemble around the members) because each stage and each member is
reusable on its own: a finished stage (``<stage>.safetensors`` + ``.json``) or member (``member.json`` + weights)
whose fingerprint matches is loaded instead of retrained, so a crashed ensemble resumes at the unfinished stage.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch

from classifier.config import EnsembleConfig, MemberConfig
from classifier.data import CachedSet
from classifier.ensemble import MEMBER_FILE, WEIGHTS_FILE
from classifier.models import PIXEL_MEAN, PIXEL_STD
from classifier.resume import fingerprint_of, results_only, rows_key
from classifier.stage import HEAD_STAGE, ConsoleLog, Stage, fit_stage
from classifier.training_sets import cached_set, concat_sets, weighted_set
from synth.io import save_safetensors_atomic, write_json_atomic
from synth.model_files import load_safetensors, read_json_object


def train_member(
    ens: EnsembleConfig,
    k: int,
    member: MemberConfig,
    sets: dict[str, pd.DataFrame],
    classes: list[str],
    class_weights: np.ndarray,
    out: Path,
    cache: dict,
    log: ConsoleLog,
    cache_dir: Path | None = None,
) -> dict[str, Any]:
    """Train member ``k`` (all its stages) into ``out/member-<k>``; reuse it when already finished."""
    from synth.distributed import process_state

    state = process_state()
    folder = out / f"member-{k}"
    section = {f: results_only(dataclasses.asdict(getattr(ens, f))) for f in ("train", "loss", "augment", "synthetic")}
    fp = fingerprint_of(dataclasses.asdict(member), section, classes, {n: rows_key(df) for n, df in sets.items()})
    finished = _finished(folder / MEMBER_FILE, fp, folder / WEIGHTS_FILE)
    if finished is not None:
        log(f"member {k} ({member.arch}@{member.image_size}): finished earlier, reused")
        return finished
    cached = _set_loader(sets, classes, member.image_size, cache, cache_dir, log)
    plan = _stage_plan(ens, member, has_synthetic=len(sets["synthetic"]) > 0)
    val, weights = cached("val"), torch.from_numpy(class_weights)
    init, stages_meta = None, []
    synthetic_weight = ens.synthetic.loss_weight
    for name, parts, n_epochs, select in plan:
        data = concat_sets([weighted_set(cached(p), synthetic_weight if p == "synthetic" else 1.0) for p in parts])
        stage = Stage(name, data, n_epochs, select, head_only=name == HEAD_STAGE)
        stage_fp = fingerprint_of(fp, name)
        result = _reused_stage(folder, name, stage_fp)
        if result is not None:
            log(f"member {k} stage {name}: finished earlier, reused")
        else:
            log(f"member {k} ({member.arch}@{member.image_size}) stage {name}: {_describe(stage)}")
            result = fit_stage(ens, member, stage, val, weights, folder / f"ckpt-{name}", init, stage_fp, log)
            _keep_stage(folder, name, stage_fp, result)
        init = result["state"]
        stages_meta.append(_stage_record(stage, result))
    meta = _member_meta(member, classes, stages_meta, fp)
    if state.is_main_process:
        save_safetensors_atomic(folder / WEIGHTS_FILE, init)
        write_json_atomic(folder / MEMBER_FILE, meta)
        for name, *_ in plan:  # finished: the resume state is no longer needed
            shutil.rmtree(folder / f"ckpt-{name}", ignore_errors=True)
    state.wait_for_everyone()
    return meta


def _set_loader(
    sets: dict[str, pd.DataFrame],
    classes: list[str],
    image_size: int,
    cache: dict,
    cache_dir: Path | None,
    log: ConsoleLog,
) -> Callable[[str], CachedSet]:
    """``name -> CachedSet`` at the member's resolution, read once per resolution and shared by the members."""

    def cached(name: str) -> CachedSet:
        key = (name, image_size)
        if key not in cache:
            t0 = time.perf_counter()
            cache[key] = cached_set(sets[name], classes, image_size, cache_dir, log)
            log(
                f"{name}: {len(sets[name])} images at {image_size} px from the image cache "
                f"({time.perf_counter() - t0:.1f}s)"
            )
        return cache[key]

    return cached


def _stage_plan(
    ens: EnsembleConfig, member: MemberConfig, has_synthetic: bool
) -> list[tuple[str, list[str], int, str]]:
    """The member's stages as (stage, row sets, epochs, select), by ``synthetic.mode``."""
    mode, epochs = ens.synthetic.mode, member.epochs or ens.train.epochs
    # pretrain_finetune: synthetic-only pretraining (RoentGen-v2), then real-only fine-tuning with a fresh
    # optimiser/schedule/EMA; "select" of the pretraining stage is "last" (val is real, the stage is a warm start).
    if mode == "pretrain_finetune" and has_synthetic:
        return [
            (
                "pretrain",
                ["synthetic"] + (["real"] if ens.synthetic.pretrain_with_real else []),
                ens.synthetic.pretrain_epochs,
                "last",
            ),
            ("finetune", ["real"], epochs, ens.train.select),
        ]
    if mode == "mix" and has_synthetic:
        return [("train", ["real", "synthetic"], epochs, ens.train.select)]
    # mix_then_head: the mix, then the head alone re-trained on real rows (cRT); both stages keep their best val epoch
    if mode == "mix_then_head" and has_synthetic:
        return [
            ("train", ["real", "synthetic"], epochs, ens.train.select),
            (HEAD_STAGE, ["real"], ens.synthetic.head_epochs, ens.train.select),
        ]
    return [("train", ["real"], epochs, ens.train.select)]


def _finished(meta_file: Path, fingerprint: str, weights_file: Path) -> dict[str, Any] | None:
    """The record of a stage or member finished earlier with this fingerprint (its weights file beside it), or None."""
    if not (meta_file.exists() and weights_file.exists()):
        return None
    meta = read_json_object(meta_file, _redo(meta_file.parent))
    return meta if meta.get("fingerprint") == fingerprint else None


def _redo(folder: Path) -> str:
    """The fix for a broken file of a finished stage or member: it is only a cache of training, so retraining it
    is safe (kept to the user: nothing they have is deleted without asking)."""
    return f"delete {folder} and rerun `synth classify train` to retrain that member"


def _reused_stage(folder: Path, name: str, stage_fp: str) -> dict[str, Any] | None:
    """A stage finished earlier with this fingerprint (``<stage>.safetensors`` + ``.json``) as :func:`fit_stage`
    returns it, or None."""
    weights = folder / f"{name}.safetensors"
    done = _finished(folder / f"{name}.json", stage_fp, weights)
    return None if done is None else {**done, "state": load_safetensors(weights, _redo(folder))}


def _keep_stage(folder: Path, name: str, stage_fp: str, result: dict[str, Any]) -> None:
    """Write a fitted stage's weights and record (main process), so a re-run reuses it."""
    from synth.distributed import process_state

    state = process_state()
    if state.is_main_process:
        save_safetensors_atomic(folder / f"{name}.safetensors", result["state"])
        write_json_atomic(
            folder / f"{name}.json", {"fingerprint": stage_fp, **{k: v for k, v in result.items() if k != "state"}}
        )
    state.wait_for_everyone()


def _describe(stage: Stage) -> str:
    """``120 rows (real=100, synthetic=20), 3 epochs``: the log line of a stage that starts training."""
    data = stage.data
    sources = ", ".join(f"{s}={data.sources.count(s)}" for s in sorted(set(data.sources)))
    return f"{len(data)} rows ({sources}), {stage.epochs} epochs"


def _stage_record(stage: Stage, result: dict[str, Any]) -> dict[str, Any]:
    """One entry of member.json's ``stages``: the rows it saw, the epoch kept and its history."""
    data = stage.data
    return {
        "name": stage.name,
        "rows": len(data),
        "sources": {s: data.sources.count(s) for s in sorted(set(data.sources))},
        "epochs": stage.epochs,
        "steps": result["steps"],
        "selected_epoch": result["best_epoch"],
        "mixed_precision": result.get("mixed_precision"),
        "val_map": result["val_map"],
        "history": result["history"],
    }


def _member_meta(member: MemberConfig, classes: list[str], stages_meta: list[dict], fp: str) -> dict[str, Any]:
    """member.json: what :mod:`classifier.ensemble` needs to rebuild and run the member, and its fingerprint."""
    return {
        "arch": member.arch,
        "image_size": member.image_size,
        "seed": member.seed,
        "classes": classes,
        "pixel_mean": PIXEL_MEAN,
        "pixel_std": PIXEL_STD,
        "val_map": stages_meta[-1]["val_map"],
        "stages": stages_meta,
        "member": dataclasses.asdict(member),
        "fingerprint": fp,
    }
