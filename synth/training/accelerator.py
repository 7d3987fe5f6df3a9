"""Accelerator + precision policy of every training loop (re-exported from :mod:`synth.distributed`).

The code stays in :mod:`synth.distributed`, which every stage already imports for the process state; this
module is the toolkit's name for it, so a training loop finds all it needs under :mod:`synth.training`.
"""

from synth.distributed import (
    CPU_AUTOCAST_ENV,
    adamw,
    cpu_autocast_enabled,
    main_process_only,
    make_accelerator,
    on_cpu_only_host,
    process_state,
    resolve_precision,
    running_alone,
)

__all__ = [
    "CPU_AUTOCAST_ENV",
    "adamw",
    "cpu_autocast_enabled",
    "main_process_only",
    "make_accelerator",
    "on_cpu_only_host",
    "process_state",
    "resolve_precision",
    "running_alone",
]
