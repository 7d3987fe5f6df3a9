"""One training stage of one ensemble member: the epochs of AdamW steps, validation, checkpoint and resume.

:func:`fit_stage` is what :func:`classifier.member.train_member` runs per stage of a member (``train``, or
``pretrain`` then ``finetune``); see :mod:`classifier.train`'s module docstring for the data discipline and the
checkpoint layout.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch

from classifier.config import EnsembleConfig, MemberConfig
from classifier.data import CachedSet, epoch_batches
from classifier.ensemble import predict_images
from classifier.losses import build_loss
from classifier.metrics import macro_ap
from classifier.models import build_model, check_input_size
from classifier.resume import CHECKPOINT_FORMAT, PROGRESS_FILE, Progress, load_own_state, record_epoch, save_own_state
from classifier.stage_steps import StageLoop, adamw_decaying_weights_only, epoch_steps
from synth.errors import UserError
from synth.io import save_safetensors_atomic
from synth.training import (
    first_step_warmup_cosine,
    flat_hparams,
    resume_or_start_afresh,
    save_state_atomically,
    tracker_kwargs,
)

if TYPE_CHECKING:
    from accelerate import Accelerator

#: Test hook: called as ``hook(stage, epoch)`` after each epoch's checkpoint (tests interrupt training here).
EPOCH_END_HOOK: Callable[[str, int], None] | None = None


#: The stage of ``synthetic.mode = mix_then_head`` that re-trains only the classification head.
HEAD_STAGE = "head"


@dataclasses.dataclass
class Stage:
    name: str
    data: CachedSet
    epochs: int
    select: str  #: "best" (val) or "last"
    head_only: bool = False  #: re-initialise the classifier head and train it alone (the features frozen)


class ConsoleLog:
    """``[classifier] message`` lines on stdout, from the main process only (``enabled``)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def __call__(self, message: str) -> None:
        if self.enabled:
            print(f"[classifier] {message}", flush=True)


def fit_stage(
    ens: EnsembleConfig,
    member: MemberConfig,
    stage: Stage,
    val: CachedSet,
    class_weights: torch.Tensor,
    folder: Path,
    init: dict[str, torch.Tensor] | None,
    fingerprint: str,
    log: ConsoleLog,
) -> dict[str, Any]:
    """Train one stage; return ``{"state": best-or-last weights, "history", "best_epoch", "val_map", ...}``.

    ``folder`` holds the resumable checkpoint (``state/``) and the best EMA
    weights so far (``best.safetensors``).
    """
    t = ens.train
    accelerator = _stage_accelerator(ens, member, stage, folder, log)
    n_classes = int(val.labels.shape[1])
    loop, batch_size, per_epoch, total = _prepared_stage(
        ens, member, stage, accelerator, n_classes, class_weights, init
    )
    progress = _resumed_progress(loop, folder, fingerprint, stage.name, log)
    accelerator, model, raw, scheduler, ema = loop.accelerator, loop.model, loop.raw, loop.scheduler, loop.ema
    rank, world, device = accelerator.process_index, accelerator.num_processes, accelerator.device
    use_cuda = device.type == "cuda"
    state_dir, best_file = folder / "state", folder / "best.safetensors"
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
        losses, seen = epoch_steps(loop, stage.data, batches, t.grad_accum, total, progress, ens.augment, gen)
        elapsed = time.perf_counter() - start
        progress.epoch += 1
        probs = predict_images(eval_model(), val.images, t.eval_batch_size, False, device)
        images_per_s = seen * world / max(elapsed, 1e-9)
        score, mean_loss, improved = record_epoch(progress, macro_ap(labels_val, probs), losses, images_per_s)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process and improved and stage.select == "best":
            save_safetensors_atomic(best_file, eval_model().state_dict())
        if t.checkpoint:
            save_state_atomically(accelerator, state_dir, lambda d: save_own_state(d, scheduler, progress, ema))
        if t.report_to != "none":
            accelerator.log(
                {
                    "train/loss": mean_loss,
                    "val/map": score,
                    "train/lr": scheduler.get_last_lr()[0],
                    "train/images_per_s": images_per_s,
                },
                step=progress.step,
            )
        log(
            f"{stage.name} epoch {progress.epoch}/{stage.epochs}: loss {mean_loss:.4f}, val mAP {score:.4f}, "
            f"{images_per_s:.0f} img/s"
        )
        if EPOCH_END_HOOK is not None:
            EPOCH_END_HOOK(stage.name, progress.epoch)

    for tracker in accelerator.trackers:  # not end_training(): that would also destroy the process group
        tracker.finish()
    accelerator.wait_for_everyone()
    result = _stage_result(stage, progress, best_file, eval_model(), accelerator.mixed_precision)
    if use_cuda:  # release the prepared model/optimiser and the CUDA cache before the next member; on CPU
        accelerator.free_memory()  # the locals simply go out of scope (its gc.collect() cost ~0.2 s per stage)
    return result


def _prepared_stage(
    ens: EnsembleConfig,
    member: MemberConfig,
    stage: Stage,
    accelerator: Accelerator,
    n_classes: int,
    class_weights: torch.Tensor,
    init: dict[str, torch.Tensor] | None,
) -> tuple[StageLoop, int, int, int]:
    """Seeded model, AdamW, schedule, loss and EMA, prepared by the stage's Accelerator; returns (loop, batch size,
    steps per epoch, total steps)."""
    from accelerate.utils import set_seed
    from timm.utils import ModelEmaV3

    t = ens.train
    use_cuda = accelerator.device.type == "cuda"
    set_seed(member.seed * 1000 + {"pretrain": 1}.get(stage.name, 0), device_specific=True)
    model = _stage_model(member, n_classes, init, t.channels_last and use_cuda)
    if stage.head_only:
        _train_head_only(model)
    batch_size, per_epoch, total = _step_budget(
        ens, member, stage, accelerator.process_index, accelerator.num_processes
    )
    optimizer = adamw_decaying_weights_only(model, member.lr or t.lr, t.weight_decay)
    scheduler = first_step_warmup_cosine(optimizer, int(t.warmup_frac * total), total)
    loss_fn = _stage_loss(ens, class_weights).to(accelerator.device)
    model, optimizer = accelerator.prepare(model, optimizer)
    raw = accelerator.unwrap_model(model)
    ema = ModelEmaV3(raw, decay=t.ema_decay, use_warmup=True) if t.ema_decay else None
    loop = StageLoop(accelerator, model, raw, optimizer, scheduler, loss_fn, ema, t.channels_last and use_cuda)
    return loop, batch_size, per_epoch, total


def _resumed_progress(loop: StageLoop, folder: Path, fingerprint: str, stage: str, log: ConsoleLog) -> Progress:
    """The stage's progress, restored (with the scheduler and EMA) from ``folder`` when its checkpoint belongs to this
    run, else fresh."""
    progress = Progress()
    resume_or_start_afresh(
        loop.accelerator,
        folder,
        {"fingerprint": fingerprint, "format": CHECKPOINT_FORMAT},
        stage,
        lambda d: load_own_state(d, loop.scheduler, progress, loop.ema),
        lambda: f"resumed after epoch {progress.epoch} (step {progress.step})",
        log,
        required=PROGRESS_FILE,
    )
    return progress


def _step_budget(
    ens: EnsembleConfig, member: MemberConfig, stage: Stage, rank: int, world: int
) -> tuple[int, int, int]:
    """(batch size, optimiser steps per epoch on this process, total steps of the stage: epochs or train.max_steps)."""
    t = ens.train
    batch_size = member.batch_size or t.batch_size
    per_epoch = len(epoch_batches(len(stage.data), batch_size, 0, member.seed, rank, world)) // t.grad_accum
    if per_epoch < 1:
        raise UserError(
            f"classifier: {len(stage.data)} {stage.name} rows give no optimiser step with batch {batch_size} × "
            f"grad_accum {t.grad_accum}; lower train.batch_size or train.grad_accum"
        )
    total = per_epoch * stage.epochs
    if t.max_steps is not None:
        total = min(total, t.max_steps)
    return batch_size, per_epoch, total


def _stage_loss(ens: EnsembleConfig, class_weights: torch.Tensor) -> torch.nn.Module:
    """The configured multi-label loss (ASL with its gammas and clip, or masked BCE) with the class weights."""
    loss = ens.loss
    asl = {"gamma_neg": loss.gamma_neg, "gamma_pos": loss.gamma_pos, "clip": loss.clip} if loss.name == "asl" else {}
    return build_loss(loss.name, class_weights, **asl)


def _stage_accelerator(ens: EnsembleConfig, member: MemberConfig, stage: Stage, folder: Path, log: ConsoleLog):
    """The stage's Accelerator (precision, accumulation, trackers under ``<output>/logs``), trackers started."""
    from synth.training import make_accelerator

    t = ens.train
    # the one place a stage's precision is decided: the same here whether the classifier runs alone, after a
    # fresh generator/verifier in `synth ablate`, or in a resumed ablation whose earlier stages were cached
    accelerator, note = make_accelerator(
        t.mixed_precision,
        gradient_accumulation_steps=t.grad_accum,
        **tracker_kwargs(t.report_to, folder.parent.parent),
    )
    if note:
        log(note)
    if t.report_to != "none":
        accelerator.init_trackers(
            f"{folder.parent.name}-{stage.name}",
            config=flat_hparams(
                dataclasses.asdict(member)
                | {
                    "stage": stage.name,
                    "epochs": stage.epochs,
                    "rows": len(stage.data),
                    "mixed_precision": accelerator.mixed_precision,
                }
            ),
        )
    return accelerator


def _train_head_only(model: torch.nn.Module) -> None:
    """Freeze every parameter but the timm classifier's, and re-initialise that one (cRT: the decision boundary is
    learnt afresh on the stage's rows, on the features the previous stage learnt)."""
    head = model.get_classifier()
    for p in model.parameters():
        p.requires_grad_(False)
    for m in head.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    for p in head.parameters():
        p.requires_grad_(True)


def _stage_model(
    member: MemberConfig, n_classes: int, init: dict[str, torch.Tensor] | None, channels_last: bool
) -> torch.nn.Module:
    """The member's timm model: ``init``'s weights (the previous stage) or its pretrained file / random init."""
    pretrained = member.pretrained_file if init is None else None  # a later stage starts from the earlier one
    model = build_model(member.arch, n_classes, pretrained, member.drop_path_rate)
    check_input_size(model, member.arch, member.image_size)
    if init is not None:
        model.load_state_dict(init)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def _stage_result(
    stage: Stage, progress: Progress, best_file: Path, final_model: torch.nn.Module, mixed_precision: str
) -> dict[str, Any]:
    """What :func:`fit_stage` returns: the selected weights (best val epoch, or the last) and the stage's record."""
    from safetensors.torch import load_file

    best = stage.select == "best"
    if best and best_file.exists():
        state = load_file(str(best_file))
    else:
        state = {k: v.detach().cpu().clone() for k, v in final_model.state_dict().items()}
    last_map = progress.history[-1]["val_map"] if progress.history else None
    return {
        "state": state,
        "history": progress.history,
        "steps": progress.step,
        "best_epoch": progress.best_epoch if best else progress.epoch,
        "val_map": progress.best_map if best else last_map,
        "mixed_precision": mixed_precision,
    }
