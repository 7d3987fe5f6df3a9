"""Learning-rate schedules: diffusers' ``get_scheduler``, with Accelerate's per-process stepping accounted for."""

from __future__ import annotations


def lr_scheduler(optimizer, warmup_steps: int, total_steps: int, name: str = "cosine", num_processes: int = 1):
    """diffusers' ``get_scheduler(name)`` over ``total_steps`` optimiser steps, the first ``warmup_steps`` warm-up.

    A scheduler passed through ``accelerator.prepare`` is stepped ``num_processes`` times per optimiser step
    (Accelerate assumes the per-process batches add up), so both lengths are multiplied by ``num_processes``, as
    diffusers' training scripts do; give ``num_processes=1`` for a scheduler that is not prepared.
    """
    from diffusers.optimization import get_scheduler

    return get_scheduler(
        name, optimizer, num_warmup_steps=warmup_steps * num_processes, num_training_steps=total_steps * num_processes
    )


def first_step_warmup_cosine(optimizer, warmup_steps: int, total_steps: int):
    """The classifier's warm-up + cosine: like diffusers' ``cosine``, except the warm-up ramp is one step ahead.

    Step ``s < warmup_steps`` trains at ``(s + 1) / warmup_steps`` of the rate (diffusers: ``s / warmup_steps``,
    so its first step has rate 0 and changes nothing); the cosine part is the same. Kept because every
    classifier trained so far (the ablation histories in the README) used it: switching to ``lr_scheduler``
    shifts the whole warm-up by one step and changes the weights, which this refactor must not. It is one
    ``LambdaLR`` with a JSON-able state (``scheduler.state_dict()`` holds no function), so the checkpoint stays
    unpickled.
    """
    import math

    from torch.optim.lr_scheduler import LambdaLR

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return LambdaLR(optimizer, factor)
