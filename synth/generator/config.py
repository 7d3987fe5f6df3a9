"""The generator's training settings: one typed dataclass, a YAML per recipe, CLI overrides.

Flag names follow diffusers' ``train_text_to_image.py`` (``--learning_rate``,
``--max_train_steps``, ``--resume_from_checkpoint latest`` ...) so users of that
script feel at home; every field is settable from ``configs/finetune/*.yaml``
and every YAML key can be overridden on the command line. Everything that can be
checked without loading a model is checked here, so a typo fails in the first
second rather than after the VAE stage trained.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from synth.config import MAX_SEED, SET_HELP, Style, as_typed_text, coerce, command_overrides, load_config
from synth.errors import UserError

STAGES = ("all", "vae", "unet")
PREDICTION_TYPES = ("epsilon", "v_prediction")
MIXED_PRECISION = ("no", "fp16", "bf16")
CACHE_LATENTS = ("auto", "true", "false")
LR_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup")
REPORT_TO = ("none", "tensorboard")


@dataclass
class FinetuneConfig:
    """All options of ``synth/finetune.py`` (YAML keys == CLI flags without the ``--``)."""

    # ---- data
    train_manifest: str | None = None  # prepared manifest; trains on split == train and source == real
    resolution: int = 64
    prompt_templates: str | None = None  # default: prompts/cxr.yaml
    sampling: str = "repeat_factor"  # repeat_factor | class_balanced | uniform
    repeat_threshold: float = 0.1  # LVIS t: classes rarer than this are repeated sqrt(t / f) times
    prompt_dropout: float = 0.1  # share of prompts replaced by "" so classifier-free guidance works
    # >0: finding order drawn from this many fixed permutations per label set (bounded prompt set -> text cache hits)
    prompt_orders: int = 0
    text_max_length: int = 77  # tokenizer length of the from-scratch (MiniLM) model
    cache_latents: str = (
        "auto"  # auto | true | false: encode each image once (frozen VAE), see synth/generator/latent_cache.py
    )
    latent_cache_max_ram_gb: float = 16.0  # per process: a larger latent cache stays memory-mapped on disk
    latent_cache_dir: str | None = (
        None  # None: latent_cache/ beside the manifest (output_dir/latent_cache if not writable)
    )
    text_cache_size: int = 4096  # frozen text encoder: remember this many prompt embeddings
    dataloader_num_workers: int = 0

    # ---- model source
    pretrained_model_name_or_path: str | None = None  # LOCAL Stable-Diffusion-style folder; None = from scratch
    vae_model_path: str | None = None  # an already trained AutoencoderKL folder (skips the vae stage)
    stage: str = "all"  # vae | unet | all (from scratch: the VAE is trained first, then the UNet on its latents)

    # ---- from-scratch architecture
    vae_block_out_channels: list[int] = field(default_factory=lambda: [32, 64, 64])  # 3 blocks -> /4
    vae_layers_per_block: int = 1
    latent_channels: int = 4
    unet_block_out_channels: list[int] = field(default_factory=lambda: [64, 128, 128])
    unet_layers_per_block: int = 1
    unet_attention_head_dim: int = 8
    norm_num_groups: int = 8

    # ---- VAE stage
    vae_max_train_steps: int = 1000
    vae_batch_size: int = 32
    vae_learning_rate: float = 1e-3
    vae_kl_weight: float = 1e-6

    # ---- UNet stage (diffusers train_text_to_image names)
    train_batch_size: int = 32
    max_train_steps: int = 1000
    gradient_accumulation_steps: int = 1
    gradient_checkpointing: bool = False
    learning_rate: float = 1e-4
    scale_lr: bool = False
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-2
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    use_ema: bool = False
    ema_decay: float = 0.9999
    ema_power: float = 0.75  # EMA warm-up: decay ramps as 1 - (1 + step)^-power, so short runs are not stuck at init
    snr_gamma: float | None = None  # min-SNR loss weighting (Hang et al. 2023); 5.0 is the paper's value
    noise_offset: float = 0.0
    prediction_type: str = "epsilon"  # epsilon | v_prediction (from scratch; pretrained: the folder's own)
    beta_schedule: str = "scaled_linear"
    num_train_timesteps: int = 1000
    train_text_encoder: bool = False
    text_encoder_lr: float | None = None  # None = learning_rate
    mixed_precision: str = (
        "no"  # no | fp16 | bf16 (fp32 on a CPU-only host unless SYNTH_CPU_AUTOCAST=1, see synth.distributed)
    )
    enable_xformers_memory_efficient_attention: bool = False
    seed: int = 0

    # ---- output, checkpoints, validation
    output_dir: str = "outputs/models/generator"
    checkpointing_steps: int = 500
    checkpoints_total_limit: int | None = None
    # unset or "latest": resume from the newest checkpoint in output_dir if there is one (a plain re-run continues);
    # "none": start over at step 0 (removes output_dir's old checkpoints); or a checkpoint-<step> folder
    resume_from_checkpoint: str | None = None
    validation_prompts: list[str] | None = None  # None: a few prompts of the rarest training findings
    num_validation_images: int = 2  # per prompt
    validation_inference_steps: int = 20
    validation_guidance_scale: float = 3.0
    logging_steps: int = 50
    # none | tensorboard (Accelerate tracker, event files in output_dir/logs; pip install 'cxr-synth[tensorboard]')
    report_to: str = "none"
    dry_run: bool = False

    def validated(self) -> "FinetuneConfig":
        """Check every option that can be checked without data or models; return self."""
        _choice("stage", self.stage, STAGES)
        _choice("prediction_type", self.prediction_type, PREDICTION_TYPES)
        _choice("mixed_precision", self.mixed_precision, MIXED_PRECISION)
        _choice("lr_scheduler", self.lr_scheduler, LR_SCHEDULERS)
        _choice("report_to", self.report_to, REPORT_TO)
        self.cache_latents = _cache_mode(self.cache_latents)
        if self.latent_cache_max_ram_gb < 0:
            raise UserError(
                "--latent_cache_max_ram_gb must be >= 0 (0 = always memory-mapped), got "
                f"{self.latent_cache_max_ram_gb}"
            )
        from synth.generator.row_sampling import SAMPLING_MODES

        _choice("sampling", self.sampling, SAMPLING_MODES)
        for name in (
            "resolution",
            "train_batch_size",
            "vae_batch_size",
            "gradient_accumulation_steps",
            "checkpointing_steps",
            "num_train_timesteps",
            "text_max_length",
            "validation_inference_steps",
            "logging_steps",
            "latent_channels",
            "vae_layers_per_block",
            "unet_layers_per_block",
            "unet_attention_head_dim",
            "norm_num_groups",
        ):
            if getattr(self, name) < 1:
                raise UserError(f"--{name} must be >= 1, got {getattr(self, name)}")
        for name in (
            "max_train_steps",
            "vae_max_train_steps",
            "prompt_orders",
            "lr_warmup_steps",
            "num_validation_images",
            "dataloader_num_workers",
        ):
            if getattr(self, name) < 0:
                raise UserError(f"--{name} must be >= 0, got {getattr(self, name)}")
        for name in ("learning_rate", "vae_learning_rate", "text_encoder_lr", "adam_epsilon", "max_grad_norm"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise UserError(f"--{name} must be > 0, got {getattr(self, name)}")
        if self.seed > MAX_SEED:
            raise UserError(f"--seed must be <= {MAX_SEED} (processes add their index), got {self.seed}")
        if self.ema_power <= 0:
            raise UserError(f"--ema_power must be > 0, got {self.ema_power}")
        for name in ("adam_beta1", "adam_beta2", "ema_decay"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise UserError(f"--{name} must be in [0, 1), got {getattr(self, name)}")
        for name in ("vae_block_out_channels", "unet_block_out_channels"):
            if not getattr(self, name) or min(getattr(self, name)) < 1:
                raise UserError(f"--{name} must list channel counts >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.prompt_dropout < 1.0:
            raise UserError(f"--prompt_dropout must be in [0, 1), got {self.prompt_dropout}")
        if self.snr_gamma is not None and self.snr_gamma <= 0:
            raise UserError(f"--snr_gamma must be > 0 (or unset), got {self.snr_gamma}")
        if self.checkpoints_total_limit is not None and self.checkpoints_total_limit < 1:
            raise UserError(f"--checkpoints_total_limit must be >= 1 (or unset), got {self.checkpoints_total_limit}")
        if self.pretrained_model_name_or_path is None:
            down = 2 ** (len(self.vae_block_out_channels) - 1)
            if self.resolution % (down * 2 ** (len(self.unet_block_out_channels) - 1)):
                raise UserError(
                    f"--resolution {self.resolution} must be divisible by "
                    f"{down * 2 ** (len(self.unet_block_out_channels) - 1)} "
                    f"(VAE /{down} then {len(self.unet_block_out_channels) - 1} UNet downsamplings)"
                )
            for name in ("vae_block_out_channels", "unet_block_out_channels"):
                bad = [c for c in getattr(self, name) if c % self.norm_num_groups]
                if bad:
                    raise UserError(f"--{name}: {bad} not divisible by --norm_num_groups {self.norm_num_groups}")
        if not self.output_dir:
            raise UserError("--output_dir is required")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _cache_mode(value: Any) -> str:
    """``cache_latents`` as one of auto | true | false (YAML booleans and yes/no/1/0 accepted)."""
    text = str(value).strip().lower() if value is not None else "auto"
    mode = {"1": "true", "yes": "true", "on": "true", "0": "false", "no": "false", "off": "false", "none": "auto"}.get(
        text, text
    )
    _choice("cache_latents", mode, CACHE_LATENTS)
    return mode


def _choice(name: str, value: Any, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise UserError(f"--{name} {value!r}: choose one of {', '.join(allowed)}")


def _fields() -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(FinetuneConfig)}


#: finetune's keys are also its flags, so its messages name them as flags; its float fields have always held floats
#: (``latent_cache_max_ram_gb: 16`` is 16.0 in finetune_config.json).
FINETUNE_STYLE: dict[str, Any] = {
    "key_prefix": "--",
    "valid_hint": "valid keys are the flags of synth/finetune.py --help",
    "int_to_float": True,
}


def load_finetune_config(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> FinetuneConfig:
    """YAML (``configs/finetune/*.yaml``) + overrides (``None`` values ignored) -> validated config.

    Loading, overrides (flags and ``--set KEY=VALUE``) and type conversion are :func:`synth.config.load_config`'s."""
    return load_config(
        FinetuneConfig,
        path,
        overrides,
        where=str(path) if path is not None else "",
        missing_hint="see configs/finetune/ (e.g. configs/finetune/demo.yaml)",
        **FINETUNE_STYLE,
    ).validated()


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """YAML / CLI value -> the field's type, with a one-line error naming the option."""
    return coerce(value, hint, [name], Style("", **FINETUNE_STYLE))


def build_arg_parser() -> argparse.ArgumentParser:
    """``--config YAML`` plus one flag per config field (all default to None = "not given")."""
    parser = argparse.ArgumentParser(
        prog="synth/finetune.py",
        description="Train the latent-diffusion generator (from scratch on CPU, or fine-tune a local SD folder). "
        "Run under `accelerate launch` for multi-GPU.",
    )
    parser.add_argument(
        "--config", type=str, default=None, help="YAML of options (configs/finetune/*.yaml); flags override it."
    )
    parser.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=SET_HELP + " Same as the flag of that name (--set max_train_steps=10 = --max_train_steps 10).",
    )
    hints = typing.get_type_hints(FinetuneConfig)
    for name, f in _fields().items():
        hint = hints[name]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        is_list = "list[" in str(hint)
        is_bool = hint is bool or str(hint) in ("bool | None", "typing.Optional[bool]")
        kwargs: dict[str, Any] = {"default": None, "help": f"[default: {default}]"}
        if is_list:
            kwargs["nargs"] = "+"
        elif is_bool:
            kwargs.update(nargs="?", const="true", metavar="BOOL")  # `--use_ema` or `--use_ema false`
        parser.add_argument(f"--{name}", **kwargs)
    return parser


def parse_args(argv: Sequence[str] | None = None) -> FinetuneConfig:
    args = vars(build_arg_parser().parse_args(argv))
    path, sets = args.pop("config"), args.pop("sets")
    flags = {k: as_typed_text(v) for k, v in args.items()}  # typed on a command line: read like a --set value
    return load_finetune_config(path, command_overrides(sets, flags))
