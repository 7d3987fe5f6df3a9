"""The one way stages ask Accelerate which process they are.

On a CPU-only host Accelerate treats ``torchrun``/``mpirun`` workers as one
process each unless the state is created with ``cpu=True`` (then it uses the
gloo backend, ``DistributedType.MULTI_CPU``). Every stage goes through this
helper so the first, process-wide state is created the same way everywhere;
on GPU hosts it is the plain default.
"""

from __future__ import annotations


def on_cpu_only_host() -> bool:
    import torch

    return not torch.cuda.is_available()


def process_state():
    """``accelerate.PartialState`` with ``cpu=True`` exactly when no GPU is present."""
    from accelerate import PartialState

    return PartialState(cpu=on_cpu_only_host())
