"""One epoch's optimiser steps of a classifier stage, and the AdamW they step."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from classifier.data import CachedSet, augment, prefetch, to_input
from classifier.resume import Progress


@dataclasses.dataclass
class StageLoop:
    """The prepared pieces the optimiser steps of one stage use."""

    accelerator: Any
    model: torch.nn.Module  #: as prepared (DDP-wrapped under several processes)
    raw: torch.nn.Module  #: unwrapped, what the EMA follows
    optimizer: Any
    scheduler: Any
    loss_fn: torch.nn.Module
    ema: Any
    channels_last: bool


def epoch_steps(
    loop: StageLoop,
    data: CachedSet,
    batches: list,
    grad_accum: int,
    total: int,
    progress: Progress,
    augment_cfg: Any,
    gen: torch.Generator,
) -> tuple[list[torch.Tensor], int]:
    """One epoch's optimiser steps (``grad_accum`` batches each, up to step ``total``); returns (losses, images)."""
    acc, device = loop.accelerator, loop.accelerator.device
    losses, seen = [], 0
    pixels = prefetch(data.images, batches)  # the next batches are read from the cache while this one trains
    for i in range(0, len(batches), grad_accum):
        if progress.step >= total:
            break
        for idx in batches[i : i + grad_accum]:
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


def adamw_decaying_weights_only(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with weight decay on the weights only (no decay on biases and norm parameters)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:  # frozen (a head-only stage): not stepped, not decayed
            continue
        (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, fused=True)  # fused kernels exist for CPU and CUDA: ~30 % cheaper step
