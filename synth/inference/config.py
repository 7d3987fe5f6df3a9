"""``synth generate``'s settings: :class:`GenerateConfig` and the scheduler and precision names it accepts.

No torch here: a bad option fails before anything heavy is imported.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synth.config import load_config
from synth.errors import UserError

#: ``--scheduler`` name -> (diffusers class, config overrides); built from the pipeline's own scheduler config.
SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "dpm++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "use_karras_sigmas": False}),
    "dpm++-karras": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "use_karras_sigmas": True}),
    "unipc": ("UniPCMultistepScheduler", {}),
    "ddim": ("DDIMScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler-a": ("EulerAncestralDiscreteScheduler", {}),
    "pndm": ("PNDMScheduler", {}),
    "ddpm": ("DDPMScheduler", {}),
}
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "fp16", "bf16")
#: ``prompt_style``: "cooccurring" = the target plus a label set drawn from the real co-occurrence (the CXR-LT 2024
#: winner's prompts); "single" = the target finding alone (Prakash et al. 2024 found single-finding prompts better).
PROMPT_STYLES: tuple[str, ...] = ("cooccurring", "single")


@dataclass
class GenerateConfig:
    """Sampling settings (``configs/generate/*.yaml``; CLI flags override)."""

    n: int | str = 100  # images per class, or "auto": top up to target_count positives
    target_count: int | None = None
    seed: int = 0
    batch_size: int = 8
    steps: int = 25
    guidance_scale: float = 4.0
    scheduler: str = "dpm++"
    temperature: float = 1.0
    controls: bool = False  # each image also rendered without its target class in the prompt (a counterfactual pair)
    prompt_style: str = "cooccurring"  # or "single": the target finding alone in the prompt (PROMPT_STYLES)
    negative_prompt: str | None = None  # None: the prompt templates' negative prompt
    precision: str = "auto"  # auto = fp16 on CUDA, fp32 on CPU
    enable_xformers: bool = False
    compile: bool = False  # CUDA only: channels_last + torch.compile(unet); a warning elsewhere
    device: str | None = None  # None: the Accelerate process's device
    train_manifest: str | None = None  # for pipelines without synth_meta.json (or to override it)
    prompt_templates: str | None = None
    progress: bool = True

    @classmethod
    def from_yaml(cls, path: str | Path | None = None, /, **overrides: Any) -> "GenerateConfig":
        """Defaults <- YAML <- overrides (flags: None = not given; ``--set`` texts typed), via
        :func:`synth.config.load_config`."""
        return load_config(cls, path, overrides, missing_hint="see configs/generate/default.yaml").validated()

    def validated(self) -> "GenerateConfig":
        """Check every option that can be checked without the model; return self."""
        if isinstance(self.n, str):
            if self.n.strip().lower() == "auto":
                self.n = "auto"
            elif self.n.strip().isdigit():
                self.n = int(self.n)
            else:
                raise UserError(f"--n must be a number or 'auto', got {self.n!r}")
        if self.n == "auto" and (self.target_count is None or self.target_count < 1):
            raise UserError("--n auto needs --target-count (positives in train + generated to reach per class)")
        if isinstance(self.n, int) and self.n < 1:  # 0 would render nothing: every stage after it fails on no images
            raise UserError(f"--n must be >= 1 (images per class) or auto, got {self.n}")
        if self.scheduler not in SCHEDULERS:
            raise UserError(f"unknown --scheduler {self.scheduler!r}; choose one of {', '.join(SCHEDULERS)}")
        if self.precision not in PRECISIONS:
            raise UserError(f"unknown --precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}")
        if self.batch_size < 1 or self.steps < 1:
            raise UserError("--batch-size and --steps must be >= 1")
        if self.temperature <= 0:
            raise UserError(f"--temperature must be > 0, got {self.temperature}")
        if self.prompt_style not in PROMPT_STYLES:
            raise UserError(f"unknown prompt_style {self.prompt_style!r}; choose one of {', '.join(PROMPT_STYLES)}")
        for flag, path in (("--train-manifest", self.train_manifest), ("--prompt-templates", self.prompt_templates)):
            if path and not Path(path).exists():  # read only after the model loaded (an ablation: hours later)
                raise UserError(f"{flag} {path}: not found; fix the path or leave it out (the model folder's is used)")
        return self
