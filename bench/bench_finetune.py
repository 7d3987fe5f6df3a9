"""Training-loop overhead of synth/finetune.py: full loop steps/s vs the bare model step.

The full loop is :class:`synth.generator.train.UNetTrainer` as the script runs it (tail-aware
sampler, prompt rendering with shuffled findings and dropout, text-embedding cache, posterior
sampling from the latent cache, noise/timesteps, min-SNR loss, clip, AdamW, LR scheduler, EMA if
configured, gathered loss logging). The bare step is forward + loss + backward + clip + AdamW on
ONE fixed batch of the same shape, with every input precomputed (no data work at all).
Single steps of the two alternate so load from other processes hits both alike; the ratio
of median step times is reported. Target: ratio >= 0.95.

    python bench/bench_finetune.py [--config configs/finetune/demo.yaml] [--manifest M] [--steps 20 --blocks 3]
    (steps * blocks interleaved pairs)
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default=str(REPO / "configs/finetune/demo.yaml"))
    ap.add_argument("--manifest", default=None, help="prepared manifest (default: 300 phantom images at 16 px)")
    ap.add_argument("--steps", type=int, default=20, help="steps per timed block")
    ap.add_argument("--blocks", type=int, default=3)
    args = ap.parse_args()

    from synth.finetune import quiet_libraries

    quiet_libraries()
    cfg, acc, trainer = _trainer(args.config, args.manifest)
    bare, full = _step_timers(cfg, acc, trainer)
    trainer.start_stream()
    for _ in range(3):  # warm-up (allocator, prompt cache as in a long run)
        full(), bare()
    # single steps interleaved: whatever load other processes put on the CPU hits both alike
    fulls, bares = [], []
    for _ in range(args.steps * args.blocks):
        fulls.append(full())
        bares.append(bare())
    _report(args.config, cfg, trainer.comps.unet, fulls, bares)


def _trainer(config: str, manifest: str | None):
    """The UNetTrainer as synth/finetune.py builds it (random VAE, latents cached), on ``manifest`` or a tiny one."""
    import torch
    from accelerate import Accelerator

    from synth.generator import models
    from synth.generator.config import load_finetune_config
    from synth.generator.data import TrainingSet, encode_latents, load_pixels
    from synth.generator.train import UNetTrainer
    from synth.prompts import PromptTemplates

    tmp = Path(tempfile.mkdtemp(prefix="bench_finetune_"))
    if manifest is None:  # 300 phantom radiographs at 16 px, prepared as `synth phantom` + `synth prepare` do
        from synth.phantom import render_dataset
        from synth.prepare import prepare_dataset

        labels = Path(render_dataset(n=300, size=16, seed=0, out=tmp / "phantom"))
        manifest = str(prepare_dataset("cxrlt", labels, labels.parent, tmp / "data", size=16))
    cfg = load_finetune_config(
        config,
        {
            "train_manifest": manifest,
            "output_dir": str(tmp / "out"),
            "num_validation_images": 0,
            "checkpointing_steps": 10**9,
            "logging_steps": 10**9,
            "resume_from_checkpoint": None,
        },
    )
    acc = Accelerator(mixed_precision="no")
    data = TrainingSet.load(manifest)
    torch.manual_seed(cfg.seed)
    vae = models.build_vae(cfg)  # random VAE: speed does not depend on its weights
    pixels = load_pixels(data, cfg.resolution)
    cache = encode_latents(vae, pixels)
    comps = models.scratch_components(cfg, vae)  # reseeds before the UNet: its init, not its speed, changes
    return (
        cfg,
        acc,
        UNetTrainer(cfg, acc, comps, data, PromptTemplates.load(cfg.prompt_templates), cache, log=lambda m: None),
    )


def _step_timers(cfg, acc, trainer):
    """(bare, full): each runs one step and returns its seconds; bare works on one fixed, precomputed batch."""
    import torch
    import torch.nn.functional as F

    # the bare step's fixed batch: same shapes as the loop's
    g = torch.Generator().manual_seed(0)
    idx = list(range(cfg.train_batch_size))
    latents = trainer.batch_latents(idx, g)
    noise = torch.randn(latents.shape, generator=g)
    t = torch.randint(0, 1000, (latents.shape[0],), generator=g)
    hidden = trainer.prompt_encoder(
        [trainer.data.prompt(i, trainer.templates, __import__("random").Random(0), 0.0) for i in idx]
    )
    noisy = trainer.noise_scheduler.add_noise(latents, noise, t)

    def bare() -> float:
        t0 = time.perf_counter()
        pred = trainer.unet(noisy, t, hidden, return_dict=False)[0]
        loss = F.mse_loss(pred.float(), noise.float())
        acc.backward(loss)
        acc.clip_grad_norm_(trainer.unet.parameters(), cfg.max_grad_norm)
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=True)
        float(loss)
        return time.perf_counter() - t0

    def full() -> float:
        t0 = time.perf_counter()
        trainer.train_step()  # exactly the body of UNetTrainer.train between checkpoints
        return time.perf_counter() - t0

    return bare, full


def _report(config: str, cfg, unet, fulls: list[float], bares: list[float]) -> None:
    ratio = statistics.median(bares) / statistics.median(fulls)
    ratio_sum = sum(bares) / sum(fulls)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"config {config}: {cfg.resolution} px, batch {cfg.train_batch_size}, UNet {cfg.unet_block_out_channels}, "
        f"{sum(p.numel() for p in unet.parameters()) / 1e6:.1f} M params, ema={cfg.use_ema}, snr_gamma={cfg.snr_gamma}"
    )
    print(
        f"{len(fulls)} interleaved steps each; median s/step  full {statistics.median(fulls):.3f}  bare "
        f"{statistics.median(bares):.3f}; "
        f"min  full {min(fulls):.3f}  bare {min(bares):.3f}"
    )
    print(
        f"steps/s (median)  full loop {1 / statistics.median(fulls):.2f}  bare step {1 / statistics.median(bares):.2f}"
    )
    print(
        f"ratio full/bare steps/s: median-based {ratio:.3f}, total-time-based {ratio_sum:.3f}, min-based "
        f"{min(bares) / min(fulls):.3f}  "
        f"target >= 0.95: {'PASS' if ratio >= 0.95 else 'FAIL'}"
    )
    print(f"peak RSS: {peak_mib:.0f} MiB")


if __name__ == "__main__":
    main()
