"""The one training toolkit of the generator (UNet + VAE), the classifier and the verifier.

Every training loop in the project takes these pieces from here instead of writing its own copy, so a
fix (a precision rule, a crash-safe checkpoint, a schedule) lands once:

* :mod:`synth.distributed` -- the ``Accelerator`` factory and precision policy (``make_accelerator``; the
  process-state helpers and the fused ``adamw``), re-exported here;
* :mod:`synth.training.checkpoint` -- ONE atomic ``save_state`` (temp folder + rename), ONE pruning rule,
  ONE resume, and the EMA weights as safetensors;
* :mod:`synth.training.schedule` -- learning-rate schedules through ``diffusers.optimization.get_scheduler``;
* :mod:`synth.training.trackers` -- Accelerate's experiment trackers for ``report_to`` (event files under ``logs/``);

Gradient accumulation is Accelerate's own: ``Accelerator(gradient_accumulation_steps=)`` (or its setter)
and ``with accelerator.accumulate(*models):``, which skips the all-reduce of every micro-batch but the last
and scales the loss in ``accelerator.backward``.
"""

from synth.distributed import (
    adamw,
    main_process_only,
    make_accelerator,
    process_state,
    resolve_precision,
    running_alone,
)
from synth.training.checkpoint import (
    load_ema_shadow,
    load_state,
    pickled_custom_state,
    prune_oldest,
    resume_or_start_afresh,
    save_ema_shadow,
    save_state_atomically,
)
from synth.training.schedule import first_step_warmup_cosine, lr_scheduler
from synth.training.trackers import flat_hparams, tracker_kwargs

__all__ = [
    "adamw",
    "load_ema_shadow",
    "load_state",
    "lr_scheduler",
    "main_process_only",
    "make_accelerator",
    "pickled_custom_state",
    "process_state",
    "prune_oldest",
    "resolve_precision",
    "resume_or_start_afresh",
    "running_alone",
    "save_ema_shadow",
    "save_state_atomically",
    "first_step_warmup_cosine",
    "flat_hparams",
    "tracker_kwargs",
]
