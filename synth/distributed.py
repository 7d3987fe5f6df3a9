"""The one way stages ask Accelerate which process they are and how to compute.

On a CPU-only host Accelerate treats ``torchrun``/``mpirun`` workers as one
process each unless the state is created with ``cpu=True`` (then it uses the
gloo backend, ``DistributedType.MULTI_CPU``). Every stage goes through these
helpers so the first, process-wide state is created the same way everywhere;
on GPU hosts it is the plain default.

``make_accelerator`` is the single place where a stage gets an ``Accelerator``
and its precision. Accelerate keeps its state in process-wide singletons, so a
stage that asks for bf16 after another stage made an fp32 one in the same
process (``synth ablate`` runs finetune, verifier and classifier in one
process) would otherwise either raise or silently inherit the other stage's
precision -- and a resumed ablation (some stages cached) would then compute in
a different precision from a fresh one. Here each call resets the precision
part of the state and keeps the process group.
"""

from __future__ import annotations

import contextlib
import os

#: Test-only opt-in: keep bf16 autocast on a CPU-only host so the mixed-precision
#: branches a GPU runs (casts, autocast, validation, export) also run in CI.
CPU_AUTOCAST_ENV = "SYNTH_CPU_AUTOCAST"


def on_cpu_only_host() -> bool:
    import torch

    return not torch.cuda.is_available()


def process_state():
    """``accelerate.PartialState`` with ``cpu=True`` exactly when no GPU is present."""
    from accelerate import PartialState

    return PartialState(cpu=on_cpu_only_host())


def cpu_autocast_enabled() -> bool:
    return os.environ.get(CPU_AUTOCAST_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def resolve_precision(requested: str) -> tuple[str, str | None]:
    """The precision a stage will really use here, and a note when it differs from the request.

    On a CPU-only host bf16/fp16 fall back to fp32 (bf16 autocast is ~6x slower there and
    fp16 autocast is not what a GPU run does), unless ``SYNTH_CPU_AUTOCAST=1`` keeps bf16.
    """
    requested = (requested or "no").lower()
    if requested == "no" or not on_cpu_only_host():
        return requested, None
    if cpu_autocast_enabled():
        if requested == "fp16":
            return "bf16", f"--mixed_precision fp16 on CPU with {CPU_AUTOCAST_ENV}=1: using bf16 autocast"
        return requested, None
    return (
        "no",
        f"--mixed_precision {requested}: no CUDA device, training in fp32 (bf16 autocast is ~6x slower on CPU)",
    )


def make_accelerator(mixed_precision: str = "no", **kwargs):
    """An ``Accelerator`` with ``mixed_precision`` resolved by :func:`resolve_precision`.

    Any earlier stage's precision in this process is forgotten (the process group is kept), so a
    stage computes the same whether it runs alone, in a fresh ablation or in a resumed one.
    Returns ``(accelerator, note)``; ``note`` is ``None`` unless the precision was changed.
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    precision, note = resolve_precision(mixed_precision)
    if AcceleratorState._shared_state:
        AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    accelerator = Accelerator(mixed_precision=precision, cpu=on_cpu_only_host(), **kwargs)
    return accelerator, note


_ALONE = 0  #: depth of main_process_only() sections this process is in


@contextlib.contextmanager
def main_process_only(active: bool = True):
    """Mark work the main process does while the other processes wait at a barrier (``synth ablate``'s main-only
    steps).

    Inside, :func:`running_alone` is true, so a stage trains without DDP or any other collective: a
    collective there would wait forever for processes that are parked at the barrier.
    """
    global _ALONE
    _ALONE += int(active)
    try:
        yield
    finally:
        _ALONE -= int(active)


def running_alone() -> bool:
    """True when no other process takes part in what this process does now (one process, or a main-only section)."""
    return _ALONE > 0 or process_state().num_processes == 1


def adamw(params, **kwargs):
    """``torch.optim.AdamW`` with the fused kernel where this torch has one for every parameter's device.

    The fused step is one kernel over all tensors instead of a loop of small ops: on the generator
    bench (13 M-parameter UNet, CPU) the AdamW step went from 61 to 20 ms and the whole training step
    from 1.19x to 1.31x the reference script's rate. Same update rule; not bitwise equal to the
    foreach implementation, so runs are reproducible against themselves, not against older versions.
    """
    import torch

    params = list(params)
    tensors = [p for group in params for p in (group["params"] if isinstance(group, dict) else [group])]
    try:
        from torch.optim.optimizer import _get_fused_kernels_supported_devices

        supported = set(_get_fused_kernels_supported_devices())
    except ImportError:  # older torch: keep the default implementation
        supported = set()
    fused = bool(tensors) and all(t.device.type in supported and t.is_floating_point() for t in tensors)
    return torch.optim.AdamW(params, fused=fused or None, **kwargs)
