"""Stage "unet": the latent-diffusion training loop (diffusers ``train_text_to_image`` semantics).

What it adds for long-tailed multi-label CXR data, and why:

* **Tail-aware sampling** (:mod:`synth.generator.row_sampling`) so rare findings are seen often enough.
* **Exact resume.** Every random draw of a micro-step (finding order, prompt
  dropout, latent sample, noise, timesteps) comes from RNGs seeded by
  ``(seed, step, rank, micro)``; the checkpoint holds the UNet, optimizer, LR
  scheduler, Accelerate RNG states (``save_state``), the EMA weights
  (safetensors) and the sampler position, so a resumed run continues the very
  same loss sequence on CPU.
* **DDP-correct.** Per-process seeds and sampler shards, losses gathered across
  processes for logging, all writes on the main process only, checkpoint folders
  renamed into place only once complete.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from synth.errors import UserError
from synth.generator.config import FinetuneConfig
from synth.generator.data import PromptEncoder, TrainingSet, pixel_dataset, step_rng, to_vae_input
from synth.generator.export import export_pipeline, save_validation_grid, training_pipeline
from synth.generator.latent_cache import take_latents
from synth.generator.models import Components, enable_xformers
from synth.generator.row_sampling import ResumableWeightedSampler, SamplerPosition, image_weights, index_batches
from synth.io import write_json_atomic
from synth.model_files import read_json_object
from synth.prompts import PromptTemplates
from synth.training import (
    adamw,
    load_ema_shadow,
    load_state,
    lr_scheduler,
    prune_oldest,
    save_ema_shadow,
    save_state_atomically,
)
from synth.training.checkpoint import TRAINER_STATE, list_checkpoints
from synth.training.trackers import read_rows_csv, write_rows_csv

EMA_FILE = "ema_unet.safetensors"


class NonFiniteLoss(UserError):
    """The loss became NaN / inf: the run stops at once with one ``error:`` line (a UserError)."""


def _after_step(step: int) -> None:
    """Hook called after each completed optimizer step (tests patch it to simulate a crash)."""


# ----------------------------------------------------------------------------- the trainer


@dataclass
class UNetTrainer:
    """Owns the models, optimizer and state of the UNet stage; :meth:`train` runs it to the end."""

    cfg: FinetuneConfig
    accelerator: Any
    comps: Components
    data: TrainingSet
    templates: PromptTemplates
    latent_cache: Any = None  # synth.generator.latent_cache.LatentCache (RAM or memory-mapped) or a (mean, std) tuple
    log: Callable[[str], None] = print
    rows: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        cfg, acc = self.cfg, self.accelerator
        self.out = Path(cfg.output_dir)
        # Mixed precision = autocast over fp32 weights, for the frozen parts too: casting the frozen VAE / text
        # encoder to bf16 (diffusers' weight_dtype) saves ~0.5 GB but rounds the pretrained weights that the
        # export then saves, and feeds fp32 latents into a bf16 VAE at validation ("Input type (float) and bias
        # type (BFloat16)"). Every module stays fp32 here; the exported pipeline is therefore fp32.
        self.weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(acc.mixed_precision, torch.float32)
        c = self.comps
        c.vae.requires_grad_(False).eval().to(acc.device, dtype=torch.float32)
        c.text_encoder.requires_grad_(cfg.train_text_encoder)
        c.text_encoder.train(cfg.train_text_encoder)
        c.text_encoder.to(acc.device, dtype=torch.float32)
        c.unet.to(dtype=torch.float32)
        c.unet.train()
        if cfg.gradient_checkpointing:
            c.unet.enable_gradient_checkpointing()
            if cfg.train_text_encoder:  # transformers >= 5 renamed it (the old name warns on every run)
                enable = getattr(c.text_encoder, "activation_checkpointing_enable", None) or getattr(
                    c.text_encoder, "gradient_checkpointing_enable", None
                )
                if enable is not None:
                    enable()
        if cfg.enable_xformers_memory_efficient_attention:
            enable_xformers(c.unet)
        self.noise_scheduler = c.noise_scheduler
        self.prediction_type = self.noise_scheduler.config.prediction_type

        scale = cfg.gradient_accumulation_steps * cfg.train_batch_size * acc.num_processes if cfg.scale_lr else 1
        groups = [{"params": [p for p in c.unet.parameters() if p.requires_grad], "lr": cfg.learning_rate * scale}]
        if cfg.train_text_encoder:
            groups.append(
                {
                    "params": [p for p in c.text_encoder.parameters() if p.requires_grad],
                    "lr": (cfg.text_encoder_lr or cfg.learning_rate) * scale,
                }
            )
        optimizer = adamw(
            groups, betas=(cfg.adam_beta1, cfg.adam_beta2), weight_decay=cfg.adam_weight_decay, eps=cfg.adam_epsilon
        )
        # prepared below, so stepped once per process per optimiser step (lr_scheduler accounts for it)
        schedule = lr_scheduler(
            optimizer, cfg.lr_warmup_steps, max(cfg.max_train_steps, 1), cfg.lr_scheduler, acc.num_processes
        )
        if cfg.train_text_encoder:
            prepared = acc.prepare(c.unet, c.text_encoder, optimizer, schedule)
            self.unet, self.text_encoder, self.optimizer, self.lr_scheduler = prepared
        else:
            self.unet, self.optimizer, self.lr_scheduler = acc.prepare(c.unet, optimizer, schedule)
            self.text_encoder = c.text_encoder
        self.trained_models = [self.unet] + ([self.text_encoder] if cfg.train_text_encoder else [])
        # set here, not when the accelerator is made: the VAE stage before this one must not divide its loss by it
        acc.gradient_accumulation_steps = cfg.gradient_accumulation_steps
        self.ema = None
        if cfg.use_ema:
            from diffusers.training_utils import EMAModel

            raw = acc.unwrap_model(self.unet)
            self.ema = EMAModel(
                raw.parameters(),
                decay=cfg.ema_decay,
                use_ema_warmup=True,
                power=cfg.ema_power,
                model_cls=type(raw),
                model_config=raw.config,
            )
            self.ema.to(acc.device)
        self.prompt_encoder = PromptEncoder(
            c.tokenizer, self.text_encoder, cfg.text_cache_size, trainable=cfg.train_text_encoder
        )
        if cfg.prompt_orders > 0 and not cfg.train_text_encoder:
            self.prefill_prompt_cache()
        weights = image_weights(self.data.label_sets, cfg.sampling, cfg.repeat_threshold)
        self.sampler = ResumableWeightedSampler(
            weights, seed=cfg.seed, rank=acc.process_index, num_replicas=acc.num_processes
        )
        self.global_step = 0
        self.validation_prompts = cfg.validation_prompts or self.data.default_validation_prompts(self.templates)
        if self.latent_cache is None:
            self.dataset = pixel_dataset(self.data, cfg.resolution)

    def prefill_prompt_cache(self) -> None:
        """Encode every prompt the run can draw (bounded by --prompt_orders) once, in big batches."""
        import random as _random

        prompts = {""}
        for i in sorted({(s, v): n for n, (s, v) in enumerate(zip(self.data.label_sets, self.data.views))}.values()):
            for k in range(self.cfg.prompt_orders):
                rng = _random.Random(f"{'|'.join(self.data.label_sets[i])}#{k}")
                prompts.add(self.templates.render(self.data.label_sets[i], self.data.views[i], rng=rng))
        if len(prompts) > self.prompt_encoder.cache_size:
            self.log(
                f"text cache: {len(prompts)} distinct prompts > --text_cache_size {self.prompt_encoder.cache_size}; "
                "encoding on demand"
            )
            return
        ordered = sorted(prompts)
        for start in range(0, len(ordered), 64):
            self.prompt_encoder(ordered[start : start + 64])
        self.log(f"text cache: {len(ordered)} distinct prompts encoded once")

    # ------------------------------------------------------------------ one step

    def batch_latents(
        self, indices: list[int], gen: torch.Generator, pixels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Scaled latents of the batch: a fresh posterior sample per step (cached mean/std or on-the-fly encode)."""
        vae = self.comps.vae
        if self.latent_cache is not None:
            mean, std = take_latents(self.latent_cache, indices)
        else:
            with torch.no_grad(), self.accelerator.autocast():
                dist = vae.encode(to_vae_input(pixels).to(self.accelerator.device, vae.dtype)).latent_dist
            mean, std = dist.mean.float().cpu(), dist.std.float().cpu()
        z = mean + std * torch.randn(mean.shape, generator=gen)
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        # fp32 latents, noise and target: the prepared UNet runs under autocast; the loss is taken in fp32
        return ((z - shift) * vae.config.scaling_factor).to(self.accelerator.device, torch.float32)

    def loss(self, indices: list[int], step: int, micro: int, pixels: torch.Tensor | None = None) -> torch.Tensor:
        cfg, acc = self.cfg, self.accelerator
        rng, gen = step_rng(cfg.seed, step, acc.process_index, micro)
        prompts = [self.data.prompt(i, self.templates, rng, cfg.prompt_dropout, cfg.prompt_orders) for i in indices]
        latents = self.batch_latents(indices, gen, pixels)
        noise = torch.randn(latents.shape, generator=gen)
        if cfg.noise_offset:
            noise += cfg.noise_offset * torch.randn((latents.shape[0], latents.shape[1], 1, 1), generator=gen)
        timesteps = torch.randint(
            0, self.noise_scheduler.config.num_train_timesteps, (latents.shape[0],), generator=gen
        )
        noise, timesteps = noise.to(latents.device, latents.dtype), timesteps.to(latents.device)
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        target = (
            noise
            if self.prediction_type == "epsilon"
            else self.noise_scheduler.get_velocity(latents, noise, timesteps)
        )
        with self.accelerator.autocast():  # a frozen text encoder is not prepared: autocast it here
            hidden = self.prompt_encoder(prompts)
        hidden = hidden.to(latents.device, torch.float32)
        pred = self.unet(noisy, timesteps, hidden, return_dict=False)[0]
        if cfg.snr_gamma is None:
            return F.mse_loss(pred.float(), target.float())
        from diffusers.training_utils import compute_snr

        snr = compute_snr(self.noise_scheduler, timesteps)
        weights = torch.clamp(snr, max=cfg.snr_gamma)
        weights = weights / snr if self.prediction_type == "epsilon" else weights / (snr + 1)
        per_sample = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
        return (per_sample * weights).mean()

    # ------------------------------------------------------------------ checkpoints

    def save_checkpoint(self) -> Path:
        cfg, acc = self.cfg, self.accelerator
        final = save_state_atomically(acc, self.out / f"checkpoint-{self.global_step}", self._write_own_state)
        if acc.is_main_process:
            write_rows_csv(self.out / "loss.csv", self.rows)
            # prune only now: a kill during the save above leaves the previous checkpoints untouched
            prune_oldest([p for _, p in list_checkpoints(self.out)], cfg.checkpoints_total_limit)
        acc.wait_for_everyone()
        return final

    def _write_own_state(self, folder: Path) -> None:
        """What Accelerate's ``save_state`` does not hold: EMA weights (safetensors), step, sampler position (JSON)."""
        if self.ema is not None:
            save_ema_shadow(folder / EMA_FILE, self.ema)
        write_json_atomic(
            folder / TRAINER_STATE,
            {
                "global_step": self.global_step,
                "sampler_position": self.position.consumed(),
                "sampler_seed": self.sampler.seed,
                "num_processes": self.accelerator.num_processes,
            },
        )

    def load_checkpoint(self, path: Path) -> None:
        fix = (
            "pass --resume_from_checkpoint none to start over at step 0, or --resume_from_checkpoint "
            "checkpoint-<step> to resume an earlier checkpoint"
        )
        state = read_json_object(path / TRAINER_STATE, fix)
        if state.get("num_processes", 1) != self.accelerator.num_processes:
            raise UserError(
                f"--resume_from_checkpoint {path}: saved with {state['num_processes']} processes, resuming with "
                f"{self.accelerator.num_processes}; the sample stream would differ — use the same process count"
            )
        if self.ema is not None and not (path / EMA_FILE).exists():
            raise UserError(f"--resume_from_checkpoint {path}: no {EMA_FILE} (the run was saved without --use_ema)")
        load_state(self.accelerator, path, self._read_own_state, fix)
        try:
            self.global_step = int(state["global_step"])
            self.sampler.load_state_dict({"position": state["sampler_position"], "seed": state["sampler_seed"]})
        except (KeyError, TypeError, ValueError) as err:
            raise UserError(f"{path / TRAINER_STATE}: {type(err).__name__} {err} (incomplete record); {fix}") from None
        self.rows = read_rows_csv(self.out / "loss.csv", self.global_step)

    def _read_own_state(self, folder: Path) -> None:
        if self.ema is not None:
            load_ema_shadow(folder / EMA_FILE, self.ema)

    # ------------------------------------------------------------------ validation + export

    def pipeline(self):
        """A diffusers pipeline over the trained (unwrapped) models, for validation and export."""
        return training_pipeline(self)

    def validate(self) -> Path | None:
        """Grid PNG (rows: prompts, columns: seeds) of the current (EMA) model; main process only."""
        return save_validation_grid(self)

    def export(self, meta: dict[str, Any]) -> Path:
        """The final diffusers pipeline (EMA weights if --use_ema) + synth_meta.json, written into output_dir."""
        return export_pipeline(self, meta)

    # ------------------------------------------------------------------ the loop

    def start_stream(self) -> None:
        """(Re)open the batch stream at the sampler's current position (after a resume, too)."""
        cfg = self.cfg
        self.position = SamplerPosition(self.sampler, cfg.train_batch_size * self.accelerator.num_processes)
        self._batches = index_batches(self.sampler, cfg.train_batch_size)
        self._loader = None
        if self.latent_cache is None:
            self._loader = iter(
                torch.utils.data.DataLoader(
                    self.dataset, batch_sampler=self._batches, num_workers=cfg.dataloader_num_workers
                )
            )

    def train_step(self) -> float:
        """One optimizer step (all micro-batches, clip, AdamW, LR, EMA, gathered loss row); returns the loss."""
        cfg, acc = self.cfg, self.accelerator
        step, total = self.global_step, 0.0
        for micro in range(cfg.gradient_accumulation_steps):
            if self._loader is None:
                indices, pixels = next(self._batches), None
            else:
                batch = next(self._loader)
                indices, pixels = batch["index"].tolist(), batch["pixel_values"]
            self.position.batches += 1
            with acc.accumulate(*self.trained_models):  # DDP all-reduces on the last micro-batch only
                loss = self.loss(indices, step, micro, pixels)
                acc.backward(loss)  # divided by gradient_accumulation_steps inside
            total += loss.detach().float() / cfg.gradient_accumulation_steps
        mean_loss = acc.gather(total[None]).mean().item() if acc.num_processes > 1 else float(total)
        if not math.isfinite(mean_loss):  # every process sees the gathered value: all stop together
            raise NonFiniteLoss(self.non_finite_message(mean_loss))
        params = list(self.unet.parameters()) + (
            list(self.text_encoder.parameters()) if cfg.train_text_encoder else []
        )
        acc.clip_grad_norm_(params, cfg.max_grad_norm)
        lr = self.lr_scheduler.get_last_lr()[0]  # the rate this step used
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.step(acc.unwrap_model(self.unet).parameters())
        self.global_step += 1
        self.rows.append({"step": self.global_step, "loss": mean_loss, "lr": lr, "elapsed_s": 0.0})
        return mean_loss

    def non_finite_message(self, value: float) -> str:
        """Step, likely cause and the flag to change, for a loss that is NaN or inf."""
        cfg, acc = self.cfg, self.accelerator
        found = list_checkpoints(self.out)
        kept = f"the last good checkpoint {found[-1][1]} is intact" if found else "no checkpoint was written yet"
        if acc.mixed_precision == "fp16":
            cause = "fp16 overflow; train with --mixed_precision bf16 (or no)"
        else:
            lrs = f"--learning_rate {cfg.learning_rate}" + (
                f" / --text_encoder_lr {cfg.text_encoder_lr or cfg.learning_rate}" if cfg.train_text_encoder else ""
            )
            cause = f"the optimisation diverged; lower {lrs} (or raise --lr_warmup_steps {cfg.lr_warmup_steps})"
        return (
            f"step {self.global_step + 1}: the training loss is {value} (not finite); stopped before updating the "
            "weights, "
            f"{kept} (a re-run resumes there). Likely cause: {cause}"
        )

    def train(self, resume: Path | None = None) -> None:
        cfg, acc = self.cfg, self.accelerator
        if resume is not None:
            self.load_checkpoint(resume)
            self.log(f"resumed from {resume} at step {self.global_step}")
        self.start_stream()
        t0, start_step = time.perf_counter(), self.global_step
        while self.global_step < cfg.max_train_steps:
            self.train_step()
            elapsed = time.perf_counter() - t0
            self.rows[-1]["elapsed_s"] = round(elapsed, 3)
            if acc.is_main_process and (
                self.global_step % cfg.logging_steps == 0 or self.global_step == cfg.max_train_steps
            ):
                recent = [r["loss"] for r in self.rows[-cfg.logging_steps :]]
                rate = (self.global_step - start_step) / max(elapsed, 1e-9)
                self.log(
                    f"unet step {self.global_step}/{cfg.max_train_steps}  loss {np.mean(recent):.4f}  "
                    f"lr {self.rows[-1]['lr']:.2e}  {rate:.2f} steps/s"
                )
            if acc.trackers and (self.global_step % cfg.logging_steps == 0 or self.global_step == cfg.max_train_steps):
                acc.log({"train/loss": self.rows[-1]["loss"], "train/lr": self.rows[-1]["lr"]}, step=self.global_step)
            if self.global_step % cfg.checkpointing_steps == 0 or self.global_step == cfg.max_train_steps:
                self.save_checkpoint()
                self.validate()
            _after_step(self.global_step)
        if acc.is_main_process:
            write_rows_csv(self.out / "loss.csv", self.rows)
            losses = [r["loss"] for r in self.rows]
            tail = losses[-max(1, len(losses) // 10) :] if losses else []
            write_json_atomic(
                self.out / "loss_summary.json",
                {
                    "steps": self.global_step,
                    "resumed_at": start_step if resume is not None else None,
                    "final_loss_mean_last_10pct": float(np.mean(tail)) if tail else None,
                    "min_loss": float(min(losses)) if losses else None,
                    "wall_s_this_run": round(time.perf_counter() - t0, 2),
                    "steps_per_s_this_run": round(
                        (self.global_step - start_step) / max(time.perf_counter() - t0, 1e-9), 3
                    ),
                },
            )
