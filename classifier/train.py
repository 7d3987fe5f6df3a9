"""Train a multi-resolution ConvNeXt ensemble (the CXR-LT winners' recipe) under Accelerate.

    accelerate launch classifier/train.py --config configs/classifier/nih-sample.yaml [--set train.epochs=2]

Each member: timm model (1-channel), weighted ASL, AdamW with linear warm-up +
cosine decay, EMA of the weights (timm ModelEmaV3), gradient accumulation,
mixed precision on GPU only, images preloaded once at the member's resolution.

Data discipline: the model learns from ``split == train`` rows only (real, plus
synthetic rows as ``synthetic.mode`` says); the epoch to keep and the
ensemble weights are chosen on REAL ``split == val`` rows; ``split == test``
rows are dropped before any image is read.

Resumable: every epoch ends with ``accelerator.save_state`` (model and optimiser as
safetensors / weights-only tensors, RNG) plus the project's own state -- scheduler and
progress as JSON, EMA as safetensors -- into ``member-<k>/ckpt-<stage>/``. Nothing is
registered with ``register_for_checkpointing``: Accelerate pickles such objects to
``custom_checkpoint_*.pkl`` and unpickles them with ``weights_only=False`` on resume,
so a crafted file in a checkpoint folder would run code; a checkpoint holding such a
file is never resumed (it is discarded with a log line). A re-run with
the same config and data continues from there, a finished member or ensemble
is reused, and a changed config starts that member afresh. Under DDP every
process trains on its own shard of each epoch's (seeded) permutation; the
small validation pass runs on every process on the whole val set (no
gathering), and only the main process writes files.
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:  # `python classifier/train.py` from a checkout that pip did not install
    import sys
    from pathlib import Path as _P

    sys.path.insert(0, str(_P(__file__).resolve().parents[1]))

import argparse
import dataclasses
import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch

from classifier.config import EnsembleConfig, MemberConfig, load_ensemble_config
from classifier.data import (CachedSet, ImageView, augment, check_rows, epoch_batches, prefetch, real_rows, synthetic_rows,
                             to_input, view_of_frame)
from classifier.ensemble import ENSEMBLE_FILE, MEMBER_FILE, WEIGHTS_FILE, choose_weights, group_record, predict_images
from classifier.losses import build_loss, class_weights_from_prevalence
from classifier.metrics import macro_ap
from classifier.models import PIXEL_MEAN, PIXEL_STD, build_model
from synth.config import SET_HELP, command_overrides
from synth.errors import UserError
from synth.io import save_safetensors_atomic, write_json_atomic
from synth.manifest import annotated_classes, label_matrix
from synth.training import first_step_warmup_cosine, load_state, pickled_custom_state, save_state_atomically

#: Test hook: called as ``hook(stage, epoch)`` after each epoch's checkpoint (tests interrupt training here).
EPOCH_END_HOOK: Callable[[str, int], None] | None = None

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
        return {"epoch": self.epoch, "step": self.step, "best_map": self.best_map, "best_epoch": self.best_epoch,
                "history": json.dumps(self.history)}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self.best_map, self.best_epoch = float(state["best_map"]), int(state["best_epoch"])
        self.history = json.loads(state["history"])


@dataclasses.dataclass
class Stage:
    name: str
    data: CachedSet
    epochs: int
    select: str  #: "best" (val) or "last"


def _fingerprint(*parts: Any) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _rows_key(df: pd.DataFrame) -> str:
    return hashlib.sha256("\n".join(df["dicom_id"].astype(str) + "|" + df["fpath"].astype(str)).encode()).hexdigest()[:16]


class _Log:
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def __call__(self, message: str) -> None:
        if self.enabled:
            print(f"[classifier] {message}", flush=True)


# ---------------------------------------------------------------- one stage of one member


def fit_stage(ens: EnsembleConfig, member: MemberConfig, stage: Stage, val: CachedSet, class_weights: torch.Tensor,
              folder: Path, init: dict[str, torch.Tensor] | None, fingerprint: str, log: _Log) -> dict[str, Any]:
    """Train one stage; return ``{"state": best-or-last weights, "history", "best_epoch", "val_map", ...}``.

    ``folder`` holds the resumable checkpoint (``state/``) and the best EMA
    weights so far (``best.safetensors``).
    """
    from accelerate.utils import set_seed
    from timm.utils import ModelEmaV3

    from synth.training import make_accelerator

    t = ens.train
    # the one place a stage's precision is decided: the same here whether the classifier runs alone, after a
    # fresh generator/verifier in `synth ablate`, or in a resumed ablation whose earlier stages were cached
    accelerator, note = make_accelerator(t.mixed_precision, gradient_accumulation_steps=t.grad_accum,
                                         **_tracker_kwargs(t.report_to, folder.parent.parent))
    if note:
        log(note)
    if t.report_to != "none":
        accelerator.init_trackers(f"{folder.parent.name}-{stage.name}", config=_flat(dataclasses.asdict(member) | {
            "stage": stage.name, "epochs": stage.epochs, "rows": len(stage.data), "mixed_precision": accelerator.mixed_precision}))
    use_cuda = accelerator.device.type == "cuda"
    set_seed(member.seed * 1000 + {"pretrain": 1}.get(stage.name, 0), device_specific=True)
    rank, world, device = accelerator.process_index, accelerator.num_processes, accelerator.device

    model = _stage_model(member, int(val.labels.shape[1]), init, t.channels_last and use_cuda)
    batch_size = member.batch_size or t.batch_size
    lr = member.lr or t.lr
    per_epoch = len(epoch_batches(len(stage.data), batch_size, 0, member.seed, rank, world)) // t.grad_accum
    if per_epoch < 1:
        raise UserError(f"classifier: {len(stage.data)} {stage.name} rows give no optimiser step with batch {batch_size} × "
                        f"grad_accum {t.grad_accum}; lower train.batch_size or train.grad_accum")
    total = per_epoch * stage.epochs
    if t.max_steps is not None:
        total = min(total, t.max_steps)
    optimizer = _adamw(model, lr, t.weight_decay)
    scheduler = first_step_warmup_cosine(optimizer, int(t.warmup_frac * total), total)
    loss_fn = build_loss(ens.loss.name, class_weights, **({"gamma_neg": ens.loss.gamma_neg, "gamma_pos": ens.loss.gamma_pos,
                                                          "clip": ens.loss.clip} if ens.loss.name == "asl" else {})).to(device)
    model, optimizer = accelerator.prepare(model, optimizer)
    raw = accelerator.unwrap_model(model)
    ema = ModelEmaV3(raw, decay=t.ema_decay, use_warmup=True) if t.ema_decay else None
    progress = Progress()

    state_dir, best_file = folder / "state", folder / "best.safetensors"
    _resume_or_start_afresh(accelerator, folder, fingerprint, stage.name,
                            lambda d: _load_own_state(d, scheduler, progress, ema),
                            lambda: f"resumed after epoch {progress.epoch} (step {progress.step})", log)

    loop = _Loop(accelerator, model, raw, optimizer, scheduler, loss_fn, ema, t.channels_last and use_cuda)
    eval_model = (lambda: ema.module) if ema is not None else (lambda: raw)
    labels_val = val.labels.numpy().copy()
    labels_val[val.mask.numpy() == 0] = np.nan
    gen = torch.Generator()
    model.train()
    while progress.epoch < stage.epochs and progress.step < total:
        epoch = progress.epoch
        gen.manual_seed(member.seed * 7919 + epoch * 31 + rank)
        batches = epoch_batches(len(stage.data), batch_size, epoch, member.seed, rank, world)
        batches = batches[: per_epoch * t.grad_accum]
        start = time.perf_counter()
        losses, seen = _epoch_steps(loop, stage.data, batches, t.grad_accum, total, progress, ens.augment, gen)
        elapsed = time.perf_counter() - start
        progress.epoch += 1
        probs = predict_images(eval_model(), val.images, t.eval_batch_size, False, device)
        images_per_s = seen * world / max(elapsed, 1e-9)
        score, mean_loss, improved = _record_epoch(progress, macro_ap(labels_val, probs), losses, images_per_s)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process and improved and stage.select == "best":
            save_safetensors_atomic(best_file, eval_model().state_dict())
        if t.checkpoint:
            save_state_atomically(accelerator, state_dir, lambda d: _save_own_state(d, scheduler, progress, ema))
        if t.report_to != "none":
            accelerator.log({"train/loss": mean_loss, "val/map": score, "train/lr": scheduler.get_last_lr()[0],
                             "train/images_per_s": progress.history[-1]["images_per_s"]}, step=progress.step)
        log(f"{stage.name} epoch {progress.epoch}/{stage.epochs}: loss {mean_loss:.4f}, val mAP {score:.4f}, "
            f"{images_per_s:.0f} img/s")
        if EPOCH_END_HOOK is not None:
            EPOCH_END_HOOK(stage.name, progress.epoch)

    for tracker in accelerator.trackers:  # not end_training(): that would also destroy the process group
        tracker.finish()
    accelerator.wait_for_everyone()
    result = _stage_result(stage, progress, best_file, eval_model(), accelerator.mixed_precision)
    if use_cuda:  # release the prepared model/optimiser and the CUDA cache before the next member; on CPU
        accelerator.free_memory()  # the locals simply go out of scope (its gc.collect() cost ~0.2 s per stage)
    return result


def _stage_model(member: MemberConfig, n_classes: int, init: dict[str, torch.Tensor] | None,
                 channels_last: bool) -> torch.nn.Module:
    """The member's timm model: ``init``'s weights (the previous stage) or its pretrained file / random init."""
    pretrained = member.pretrained_file if init is None else None  # a later stage starts from the earlier one
    model = build_model(member.arch, n_classes, pretrained, member.drop_path_rate)
    _check_input_size(model, member)
    if init is not None:
        model.load_state_dict(init)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def _record_epoch(progress: Progress, val_map: float | None, losses: list[torch.Tensor],
                  images_per_s: float) -> tuple[float, float, bool]:
    """Append the epoch to ``progress.history`` (val mAP -1 when undefined); returns (val mAP, mean loss, improved)."""
    score = -1.0 if val_map is None else val_map
    mean_loss = float(torch.stack(losses).mean()) if losses else float("nan")
    progress.history.append({"epoch": progress.epoch, "step": progress.step, "loss": mean_loss, "val_map": score,
                             "images_per_s": images_per_s})
    improved = score > progress.best_map
    if improved:
        progress.best_map, progress.best_epoch = score, progress.epoch
    return score, mean_loss, improved


def _stage_result(stage: Stage, progress: Progress, best_file: Path, final_model: torch.nn.Module,
                  mixed_precision: str) -> dict[str, Any]:
    """What :func:`fit_stage` returns: the selected weights (best val epoch, or the last) and the stage's record."""
    from safetensors.torch import load_file

    best = stage.select == "best"
    if best and best_file.exists():
        state = load_file(str(best_file))
    else:
        state = {k: v.detach().cpu().clone() for k, v in final_model.state_dict().items()}
    last_map = progress.history[-1]["val_map"] if progress.history else None
    return {"state": state, "history": progress.history, "steps": progress.step,
            "best_epoch": progress.best_epoch if best else progress.epoch,
            "val_map": progress.best_map if best else last_map, "mixed_precision": mixed_precision}


@dataclasses.dataclass
class _Loop:
    """The prepared pieces the optimiser steps of one stage use."""

    accelerator: Any
    model: torch.nn.Module  #: as prepared (DDP-wrapped under several processes)
    raw: torch.nn.Module  #: unwrapped, what the EMA follows
    optimizer: Any
    scheduler: Any
    loss_fn: torch.nn.Module
    ema: Any
    channels_last: bool


def _epoch_steps(loop: _Loop, data: CachedSet, batches: list, grad_accum: int, total: int, progress: Progress,
                 augment_cfg: Any, gen: torch.Generator) -> tuple[list[torch.Tensor], int]:
    """One epoch's optimiser steps (``grad_accum`` batches each, up to step ``total``); returns (losses, images)."""
    acc, device = loop.accelerator, loop.accelerator.device
    losses, seen = [], 0
    pixels = prefetch(data.images, batches)  # the next batches are read from the cache while this one trains
    for i in range(0, len(batches), grad_accum):
        if progress.step >= total:
            break
        for idx in batches[i:i + grad_accum]:
            x = augment(to_input(next(pixels)).to(device, non_blocking=True), augment_cfg, gen)
            if loop.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            y, m = data.labels[idx].to(device), data.mask[idx].to(device)
            with acc.accumulate(loop.model):  # all-reduce on the group's last batch only; backward divides the loss
                with acc.autocast():
                    loss = loop.loss_fn(loop.model(x), y, m)
                acc.backward(loss)
            losses.append(loss.detach())
            seen += int(idx.numel())
        loop.optimizer.step()
        loop.scheduler.step()
        loop.optimizer.zero_grad(set_to_none=True)
        progress.step += 1
        if loop.ema is not None:
            loop.ema.update(loop.raw, step=progress.step)
    pixels.close()
    return losses, seen


def _adamw(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with weight decay on the weights only (no decay on biases and norm parameters)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, fused=True)  # fused kernels exist for CPU and CUDA: ~30 % cheaper step


def _resume_or_start_afresh(accelerator, folder: Path, fingerprint: str, stage: str, read_own: Callable[[Path], None],
                            resumed: Callable[[], str], log: _Log) -> None:
    """Resume ``folder/state`` when it was written by this config, data and format and holds no pickle; else clear it.

    A folder that cannot be resumed is deleted with ``best.safetensors`` (one log line says why), and the
    fingerprint of this run is stamped into ``folder`` for the next resume.
    """
    state_dir, best_file, fp_file = folder / "state", folder / "best.safetensors", folder / "fingerprint.json"
    stamp = {"fingerprint": fingerprint, "format": CHECKPOINT_FORMAT}
    same = fp_file.exists() and {k: json.loads(fp_file.read_text()).get(k) for k in stamp} == stamp
    unsafe = pickled_custom_state(state_dir)
    if state_dir.exists() and same and not unsafe and (state_dir / PROGRESS_FILE).exists():
        load_state(accelerator, state_dir, read_own)
        log(f"{stage}: {resumed()}")
    elif state_dir.exists():
        if accelerator.is_main_process:
            why = (f"it holds pickled {', '.join(unsafe)}, which is never unpickled" if unsafe else
                   "config, data or checkpoint format changed since it was written" if not same else
                   f"it has no {PROGRESS_FILE}")
            log(f"{stage}: not resuming the checkpoint in {folder} ({why}); starting afresh")
            shutil.rmtree(state_dir, ignore_errors=True)
            best_file.unlink(missing_ok=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        folder.mkdir(parents=True, exist_ok=True)
        write_json_atomic(fp_file, stamp)


def _tracker_kwargs(report_to: str, out: Path) -> dict[str, Any]:
    """Accelerator arguments for ``report_to`` (event files under ``<output>/logs``), as synth/finetune.py does."""
    if report_to == "none":
        return {}
    from accelerate.utils import ProjectConfiguration

    return {"log_with": report_to, "project_config": ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs"))}


def _flat(values: dict) -> dict:
    """Hyper-parameters as tracker-friendly scalars (None as "")."""
    return {k: "" if v is None else v for k, v in values.items()}


def _check_input_size(model: torch.nn.Module, member: MemberConfig) -> None:
    """One dummy forward, so a too-small resolution fails with the option to fix, not a conv error mid-run."""
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 1, member.image_size, member.image_size))
    except RuntimeError as err:
        raise UserError(f"classifier member {member.arch}@{member.image_size}px: input too small for this arch "
                        f"({str(err).splitlines()[0][:80]}); use image_size >= 32 for ConvNeXt") from None
    finally:
        model.train()


def _save_own_state(folder: Path, scheduler, progress: Progress, ema) -> None:
    """Scheduler and progress as JSON, EMA weights as safetensors: what Accelerate would have pickled."""
    write_json_atomic(folder / PROGRESS_FILE, {"progress": progress.state_dict(), "scheduler": scheduler.state_dict()})
    if ema is not None:
        save_safetensors_atomic(folder / EMA_FILE, ema.state_dict())


def _load_own_state(folder: Path, scheduler, progress: Progress, ema) -> None:
    from safetensors.torch import load_file

    saved = json.loads((folder / PROGRESS_FILE).read_text())
    progress.load_state_dict(saved["progress"])
    scheduler.load_state_dict(saved["scheduler"])
    if ema is not None:
        ema.load_state_dict(load_file(str(folder / EMA_FILE)))


# ---------------------------------------------------------------- one member


def train_member(ens: EnsembleConfig, k: int, member: MemberConfig, sets: dict[str, pd.DataFrame], classes: list[str],
                 class_weights: np.ndarray, out: Path, cache: dict, log: _Log, cache_dir: Path | None = None) -> dict[str, Any]:
    """Train member ``k`` (all its stages) into ``out/member-<k>``; reuse it when already finished."""
    from synth.distributed import process_state
    from safetensors.torch import load_file

    state = process_state()
    folder = out / f"member-{k}"
    section = {f: _results_only(dataclasses.asdict(getattr(ens, f))) for f in ("train", "loss", "augment", "synthetic")}
    fp = _fingerprint(dataclasses.asdict(member), section, classes, {n: _rows_key(df) for n, df in sets.items()})
    meta_file = folder / MEMBER_FILE
    if meta_file.exists() and (folder / WEIGHTS_FILE).exists() and json.loads(meta_file.read_text()).get("fingerprint") == fp:
        log(f"member {k} ({member.arch}@{member.image_size}): finished earlier, reused")
        return json.loads(meta_file.read_text())

    def cached(name: str) -> CachedSet:
        key = (name, member.image_size)
        if key not in cache:
            t0 = time.perf_counter()
            cache[key] = _cached_set(sets[name], classes, member.image_size, cache_dir, log)
            log(f"{name}: {len(sets[name])} images at {member.image_size} px from the image cache ({time.perf_counter() - t0:.1f}s)")
        return cache[key]

    mode, epochs = ens.synthetic.mode, member.epochs or ens.train.epochs
    has_syn = len(sets["synthetic"]) > 0
    plan: list[tuple[str, list[str], int, str]] = []  # (stage, row sets, epochs, select)
    # pretrain_finetune: synthetic-only pretraining (RoentGen-v2), then real-only fine-tuning with a fresh
    # optimiser/schedule/EMA; "select" of the pretraining stage is "last" (val is real, the stage is a warm start).
    if mode == "pretrain_finetune" and has_syn:
        plan.append(("pretrain", ["synthetic"] + (["real"] if ens.synthetic.pretrain_with_real else []),
                     ens.synthetic.pretrain_epochs, "last"))
        plan.append(("finetune", ["real"], epochs, ens.train.select))
    elif mode == "mix" and has_syn:
        plan.append(("train", ["real", "synthetic"], epochs, ens.train.select))
    else:
        plan.append(("train", ["real"], epochs, ens.train.select))

    val = cached("val")
    init, stages_meta, result = None, [], None
    for name, parts, n_epochs, select in plan:
        data = _concat([cached(p) for p in parts])
        stage_fp = _fingerprint(fp, name)
        done_file = folder / f"{name}.safetensors"
        done_meta = folder / f"{name}.json"
        if done_file.exists() and done_meta.exists() and json.loads(done_meta.read_text()).get("fingerprint") == stage_fp:
            result = {**json.loads(done_meta.read_text()), "state": load_file(str(done_file))}
            log(f"member {k} stage {name}: finished earlier, reused")
        else:
            log(f"member {k} ({member.arch}@{member.image_size}) stage {name}: {len(data)} rows "
                f"({', '.join(f'{s}={data.sources.count(s)}' for s in sorted(set(data.sources)))}), {n_epochs} epochs")
            result = fit_stage(ens, member, Stage(name, data, n_epochs, select), val, torch.from_numpy(class_weights),
                               folder / f"ckpt-{name}", init, stage_fp, log)
            if state.is_main_process:
                save_safetensors_atomic(done_file, result["state"])
                write_json_atomic(done_meta, {"fingerprint": stage_fp, **{k2: v for k2, v in result.items() if k2 != "state"}})
            state.wait_for_everyone()
        init = result["state"]
        stages_meta.append({"name": name, "rows": len(data), "sources": {s: data.sources.count(s) for s in sorted(set(data.sources))},
                            "epochs": n_epochs, "steps": result["steps"], "selected_epoch": result["best_epoch"],
                            "mixed_precision": result.get("mixed_precision"),
                            "val_map": result["val_map"], "history": result["history"]})

    meta = {"arch": member.arch, "image_size": member.image_size, "seed": member.seed, "classes": classes,
            "pixel_mean": PIXEL_MEAN, "pixel_std": PIXEL_STD, "val_map": stages_meta[-1]["val_map"],
            "stages": stages_meta, "member": dataclasses.asdict(member), "fingerprint": fp}
    if state.is_main_process:
        save_safetensors_atomic(folder / WEIGHTS_FILE, init)
        write_json_atomic(meta_file, meta)
        for name, *_ in plan:
            shutil.rmtree(folder / f"ckpt-{name}", ignore_errors=True)  # finished: the resume state is no longer needed
    state.wait_for_everyone()
    return meta


def _concat(parts: Sequence[CachedSet]) -> CachedSet:
    """One set of several (real + synthetic): row indices into the same cache files, no pixel copied."""
    if len(parts) == 1:
        return parts[0]
    if all(isinstance(p.images, ImageView) for p in parts):
        images = ImageView.concat([p.images for p in parts])
    else:
        images = torch.cat([p.images if isinstance(p.images, torch.Tensor) else p.images[:] for p in parts])
    return CachedSet(images, torch.cat([p.labels for p in parts]), torch.cat([p.mask for p in parts]),
                     [s for p in parts for s in p.sources])


#: TrainConfig keys that change where or how fast, never what is learned: left out of the fingerprints,
#: so setting them does not retrain finished members.
_NOT_RESULTS = ("image_cache_dir", "report_to")


def _results_only(section: dict) -> dict:
    return {k: v for k, v in section.items() if k not in _NOT_RESULTS}


def _image_cache_dir(ens: EnsembleConfig, df: pd.DataFrame, out: Path) -> Path:
    """``train.image_cache_dir``, else ``image-cache/`` beside the manifest (shared by the ablation's arms), else in ``out``."""
    if ens.train.image_cache_dir:
        return Path(ens.train.image_cache_dir)
    root = Path(df.attrs.get("root") or out)
    for candidate in (root / "image-cache", out / "image-cache"):
        try:
            candidate.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(candidate, os.W_OK):
            return candidate
    raise UserError(f"classifier: cannot write the image cache in {root / 'image-cache'} or {out / 'image-cache'}; "
                    "set train.image_cache_dir to a writable folder")


def _cached_set(df: pd.DataFrame, classes: Sequence[str], size: int, cache_dir: Path, log: Callable[[str], None]) -> CachedSet:
    """Labels in RAM, images as a view of this set's cache file at ``size`` (built once, by the main process)."""
    from synth.distributed import process_state, running_alone

    state = process_state()
    barrier = (lambda: None) if running_alone() else state.wait_for_everyone
    view = view_of_frame(df, size, cache_dir, state.is_main_process, barrier, log=log)
    return CachedSet.from_frame(df, classes, size, images=view)


# ---------------------------------------------------------------- the ensemble


def train_ensemble(ens: EnsembleConfig, train_df: pd.DataFrame, out: str | Path, classes: Sequence[str] | None = None,
                   log: Callable[[str], None] | None = None, row_repeats: dict[str, int] | None = None) -> Path:
    """Train every member of ``ens`` on ``train_df``'s training rows; write ``out`` (see classifier.ensemble); return it.

    ``train_df`` may hold all splits (real) plus synthetic rows; test rows are
    dropped here, before anything is read. ``row_repeats`` (dicom_id -> times per epoch, default 1)
    repeats real training rows (the ablation's ``real_resampled`` arm); class weights stay those
    of the real prevalence, so only how often a row is presented changes.
    """
    from synth.distributed import process_state

    state = process_state()
    log = log or _Log(state.is_main_process)
    out = Path(out)
    ens = ens.validated()
    df = train_df[train_df["split"] != "test"]
    df.attrs.update(train_df.attrs)
    real_train = real_rows(df, "train")
    val_df = real_rows(df, "val")
    check_rows(real_train, val_df, "classifier training data")
    classes = list(classes) if classes is not None else annotated_classes(real_train)
    if not classes:
        raise UserError("classifier: no class is annotated in the real training rows; check the manifest's label columns")
    syn = synthetic_rows(df, ens.synthetic, len(real_train))
    sets = {"real": real_train if not row_repeats else real_train.iloc[np.repeat(np.arange(len(real_train)),
        real_train["dicom_id"].astype(str).map(row_repeats).fillna(1).astype(int).to_numpy())], "val": val_df, "synthetic": syn}
    y_train = label_matrix(real_train, classes)
    with np.errstate(invalid="ignore"):
        prevalence = np.nan_to_num(np.nanmean(y_train, axis=0), nan=0.0)
    weights = class_weights_from_prevalence(prevalence, ens.loss.class_weight_power, ens.loss.max_class_weight)
    if ens.synthetic.mode != "none" and syn.empty:
        log(f"synthetic.mode={ens.synthetic.mode} but no synthetic training rows: training on real rows only")

    config = ens.to_dict()
    config["train"] = _results_only(config["train"])
    ens_fp = _fingerprint(config | {"data": None}, classes, {n: _rows_key(d) for n, d in sets.items()})
    spec_file = out / ENSEMBLE_FILE
    if spec_file.exists() and json.loads(spec_file.read_text()).get("fingerprint") == ens_fp:
        log(f"ensemble in {out} is up to date")
        return out

    cache: dict = {}
    cache_dir = _image_cache_dir(ens, df, out)
    metas = []
    for k, member in enumerate(ens.members):
        metas.append(train_member(ens, k, member, sets, classes, weights, out, cache, log, cache_dir))

    # ensemble weights on REAL val rows
    from classifier.ensemble import load_member

    y_val = label_matrix(val_df, classes)
    member_probs = []
    for k, meta in enumerate(metas):
        key = ("val", meta["image_size"])
        images = cache[key].images if key in cache else _cached_set(val_df, classes, meta["image_size"], cache_dir, log).images
        m = load_member(out / f"member-{k}", "cuda" if torch.cuda.is_available() else "cpu")
        member_probs.append(predict_images(m.model, images, ens.train.eval_batch_size, ens.ensemble.tta_flip,
                                           next(m.model.parameters()).device).astype(np.float64))
    w = choose_weights(y_val, member_probs, ens.ensemble.weights)
    val_map = macro_ap(y_val, sum(wi * p for wi, p in zip(w, member_probs)))
    spec = {
        "classes": classes, "tta_flip": ens.ensemble.tta_flip, "weights_mode": ens.ensemble.weights,
        "members": [{"dir": f"member-{k}", "arch": m["arch"], "image_size": m["image_size"], "seed": m["seed"],
                     "weight": w[k], "val_map": m["val_map"], "val_map_as_ensembled": macro_ap(y_val, member_probs[k])}
                    for k, m in enumerate(metas)],
        "val_map": val_map, "train_prevalence": dict(zip(classes, map(float, prevalence))),
        **group_record(dict(zip(classes, map(float, prevalence)))),  # groups travel with the model (test-only evaluate)
        "class_weights": dict(zip(classes, map(float, weights))),
        "rows": {"real_train": len(real_train), "val": len(val_df), "synthetic": len(syn)},
        "synthetic_mode": ens.synthetic.mode, "config": ens.to_dict(), "fingerprint": ens_fp,
    }
    if state.is_main_process:
        write_json_atomic(spec_file, spec)
    state.wait_for_everyone()
    log(f"ensemble of {len(metas)} written to {out} (val mAP {val_map if val_map is None else round(val_map, 4)}, weights {w})")
    return out


# ---------------------------------------------------------------- script entry


def run_from_config(config: str | Path, overrides: dict[str, Any] | None = None, out: str | Path | None = None) -> Path:
    """Train the ensemble a config describes, reading ``data.manifest`` (+ ``data.synthetic_manifest``)."""
    from synth.manifest import concat_manifests, read_manifest

    ens = load_ensemble_config(config, overrides or {})
    if not ens.data.manifest:
        raise UserError(f"{config}: data.manifest is not set; give it in the YAML or with --set data.manifest=PATH")
    real = read_manifest(ens.data.manifest)
    df = real
    if ens.data.synthetic_manifest:
        df = concat_manifests([real, read_manifest(ens.data.synthetic_manifest)], real.attrs["root"])
    out = out or ens.data.output_dir
    if not out:
        raise UserError(f"{config}: no output folder; set data.output_dir or pass --out")
    return train_ensemble(ens, df, out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train a multi-resolution ConvNeXt ensemble (classifier/train.py).")
    parser.add_argument("--config", required=True, help="configs/classifier/*.yaml")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE", help=SET_HELP)
    parser.add_argument("--out", default=None, help="output folder (default: data.output_dir)")
    parser.add_argument("--report_to", default=None, choices=["none", "tensorboard"],
                        help="log per-epoch metrics through Accelerate's trackers (= --set train.report_to=...)")
    args = parser.parse_args(argv)
    try:
        print(run_from_config(args.config, command_overrides(args.sets, {"train.report_to": args.report_to}), args.out))
    except UserError as err:
        print(f"error: {err}")
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
