"""Stage "vae" of the from-scratch generator: a small AutoencoderKL on the training images.

Stable Diffusion's VAE was trained on natural RGB photos; ours learns grey chest
radiographs (replicated to 3 channels so the folder is a standard SD pipeline).
Loss = reconstruction MSE + a tiny KL term (a near-deterministic, smooth latent
space, as in LDM's KL-f4 models). After training the latent std is measured and
``scaling_factor = 1 / std`` stored in the VAE config, as SD did with 0.18215.
The stage's output folder is written atomically, so its presence means "done".
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from synth.generator.config import FinetuneConfig
from synth.generator.data import encode_latents, measured_scaling_factor, step_rng, to_vae_input
from synth.training import adamw

VAE_STAGE_DIR = "vae_stage"
#: Report progress at least this often (seconds), whatever --logging_steps says: the VAE stage of a CPU
#: recipe runs for tens of minutes and used to print nothing until step logging_steps.
PROGRESS_EVERY_S = 30.0


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def progress_line(stage: str, step: int, total: int, elapsed: float, extra: str = "") -> str:
    """``vae step 120/3000  <extra>  1m05s elapsed, ETA 26m00s`` (rate from the steps done so far)."""
    eta = elapsed / max(step, 1) * (total - step)
    return f"{stage} step {step}/{total}  {extra}  {_duration(elapsed)} elapsed, ETA {_duration(eta)}".replace(
        "    ", "  "
    )


class _VAEStep(torch.nn.Module):
    """encode -> sample -> decode in one forward, so DDP sees (and all-reduces) the whole graph."""

    def __init__(self, vae) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, x: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        posterior = self.vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * eps
        return self.vae.decode(z).sample, posterior.kl().mean()


def vae_stage_complete(path: Path) -> bool:
    return (path / "config.json").exists() and any(path.glob("*.safetensors"))


def train_vae(cfg: FinetuneConfig, vae, pixels: torch.Tensor, accelerator, out_dir: Path, log=print):
    """Train ``vae`` on ``pixels`` (N, 1, H, W in [0, 1]); save it under ``out_dir / vae_stage``; return it (eval)."""
    from synth.training.trackers import write_rows_csv

    latent = cfg.resolution // 2 ** (len(cfg.vae_block_out_channels) - 1)
    step_module = _VAEStep(vae)
    optimizer = adamw(vae.parameters(), lr=cfg.vae_learning_rate, weight_decay=0.0)
    step_module, optimizer = accelerator.prepare(step_module, optimizer)
    step_module.train()
    n, bs = len(pixels), cfg.vae_batch_size
    rows, t0 = [], time.perf_counter()
    last_report = t0
    if accelerator.is_main_process:
        log(f"vae: training {cfg.vae_max_train_steps} steps x batch {bs} on {n} images ({cfg.resolution} px)")
    for step in range(cfg.vae_max_train_steps):
        _, gen = step_rng(cfg.seed, step, accelerator.process_index, micro=1_000_000)  # distinct from the UNet stage
        idx = torch.randint(n, (bs,), generator=gen)
        eps = torch.randn((bs, cfg.latent_channels, latent, latent), generator=gen)
        x = to_vae_input(pixels[idx]).to(accelerator.device)
        recon, kl = step_module(x, eps.to(accelerator.device))
        rec_loss = F.mse_loss(recon.float(), x.float())
        loss = rec_loss + cfg.vae_kl_weight * kl
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(step_module.parameters(), cfg.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        rec = accelerator.gather(rec_loss.detach()[None]).mean().item()
        rows.append(
            {
                "step": step + 1,
                "rec_loss": rec,
                "kl": float(kl.detach()),
                "elapsed_s": round(time.perf_counter() - t0, 3),
            }
        )
        now = time.perf_counter()
        if accelerator.is_main_process and (
            step == 0
            or (step + 1) % cfg.logging_steps == 0
            or step + 1 == cfg.vae_max_train_steps
            or now - last_report >= PROGRESS_EVERY_S
        ):
            last_report = now
            log(
                progress_line(
                    "vae",
                    step + 1,
                    cfg.vae_max_train_steps,
                    now - t0,
                    f"rec_loss {rec:.5f}  kl {float(kl.detach()):.1f}",
                )
            )
    vae = accelerator.unwrap_model(step_module).vae
    vae.eval()
    if accelerator.is_main_process:
        log(f"vae: encoding {n} images to measure the latent scale")
    mean, std = encode_latents(vae, pixels)
    scaling = measured_scaling_factor(mean, std, cfg.seed)
    vae.register_to_config(scaling_factor=scaling)
    if accelerator.is_main_process:
        log(f"vae: latent std {1 / scaling:.4f} -> scaling_factor {scaling:.4f}")
        save_vae(vae, out_dir / VAE_STAGE_DIR)
        write_rows_csv(out_dir / "vae_loss.csv", rows)
    accelerator.wait_for_everyone()
    return vae, (mean, std)


def save_vae(vae, path: Path) -> None:
    """save_pretrained into a temp folder, then rename: the folder exists only when complete."""
    tmp = path.with_name(f".{path.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    vae.save_pretrained(tmp, safe_serialization=True)
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)
