"""The generator as its own judge: does naming a class help it denoise REAL images of that class? (issue #18)

Why: every real-data judge tried so far (the transfer gate and its variants, paired controls, the gate against a
real-data ceiling) learns what class c looks like from the 4-68 real positives a tail class has on phantom-cpu,
and at that size it does not rank class sets as the oracle's fidelity does (``bench/results/gate_*.json``). The
generator has already learned c from those same images; if it draws c when prompted, the word c should carry
information about c's real images. So, as a diffusion classifier (Li et al. 2023, "Your diffusion model is
secretly a zero-shot classifier"), for each real train + val image x the denoising loss is taken twice with the
same noise and timesteps: with x's own findings plus c in the prompt, and without c. ``delta`` = loss without
- loss with (> 0: the word helps). Per class:

  denoise-auroc     AUROC of delta, c's real positives vs real negatives (the generator as a zero-shot classifier);
  denoise-uplift    mean delta over the positives minus mean delta over the negatives;
  denoise-share     the share of c's GENERATED images whose delta exceeds the 95th percentile of the real negatives'
                    (the generator, calibrated on real rows, classifying its own set);
  denoise-fraction  (mean delta of the set - of real negatives) / (of real positives - of real negatives): the
                    share of the set that carries c if each image is all-c or no-c.

Real train + val rows, the generated sets and the generator: no test row, no oracle; the oracle's fidelity only
judges the ranking (Spearman, bar 0.6).

    python bench/bench_gate_denoising.py outputs/ablations/phantom-cpu [--cache /tmp/embeddings.npz] \\
        [--negatives 80] [--timesteps 10] [--json bench/results/gate_denoising.json]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from ablation_stages import generation_of
from bench_gate_variants import _load
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

from synth.taxonomy import CXR_LT_CLASSES


class DenoisingJudge:
    """The run's generator (UNet, VAE, text encoder, noise schedule) scoring prompts on real images."""

    def __init__(self, root: Path, timesteps: int, noise_draws: int, batch_size: int = 64) -> None:
        from diffusers import DDPMScheduler

        from synth.generator.data import PromptEncoder
        from synth.inference.pipeline import load_pipeline

        settings, info = generation_of(root)
        pipe = load_pipeline(info.model_dir, settings["scheduler"], torch.float32, torch.device("cpu"))
        self.templates = info.templates
        self.unet, self.vae = pipe.unet.eval(), pipe.vae.eval()
        self.noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        self.prompts = PromptEncoder(pipe.tokenizer, pipe.text_encoder)
        self.resolution = int(info.resolution or self.unet.config.sample_size * pipe.vae_scale_factor)
        n = self.noise_scheduler.config.num_train_timesteps
        self.timesteps = torch.linspace(n * 0.05, n * 0.95, timesteps).long()
        self.noise_draws = noise_draws
        self.batch_size = batch_size

    @torch.no_grad()
    def latents(self, df: pd.DataFrame) -> torch.Tensor:
        """Scaled VAE posterior means of the images (the training's latents without the posterior sample)."""
        from synth.generator.data import to_vae_input
        from synth.image_datasets import ManifestDataset

        loader = torch.utils.data.DataLoader(ManifestDataset(df, image_size=self.resolution, classes=[]), 128)
        means = [self.vae.encode(to_vae_input(b["pixel_values"])).latent_dist.mean for b in loader]
        shift = getattr(self.vae.config, "shift_factor", None) or 0.0
        return (torch.cat(means) - shift) * self.vae.config.scaling_factor

    @torch.no_grad()
    def losses(self, latents: torch.Tensor, prompts: list[str], seed: int = 0) -> np.ndarray:
        """Each image's denoising loss under its prompt, averaged over the fixed timesteps and noise draws.
        Image i's noise depends only on (seed, i), so two calls on the same images differ only in the prompts."""
        k = len(self.timesteps) * self.noise_draws
        timesteps = self.timesteps.repeat(self.noise_draws)
        hidden = self.prompts(prompts)
        prediction = self.noise_scheduler.config.prediction_type
        out = np.empty(len(latents))
        per_batch = max(1, self.batch_size // k)
        for first in range(0, len(latents), per_batch):
            idx = list(range(first, min(len(latents), first + per_batch)))
            z = latents[idx].repeat_interleave(k, dim=0)
            noise = torch.cat(
                [torch.randn((k, *latents.shape[1:]), generator=torch.Generator().manual_seed(seed + i)) for i in idx]
            )
            t = timesteps.repeat(len(idx))
            noisy = self.noise_scheduler.add_noise(z, noise, t)
            target = noise if prediction == "epsilon" else self.noise_scheduler.get_velocity(z, noise, t)
            pred = self.unet(noisy, t, encoder_hidden_states=hidden[idx].repeat_interleave(k, dim=0)).sample
            out[idx] = ((pred - target) ** 2).mean(dim=(1, 2, 3)).view(len(idx), k).mean(dim=1).numpy()
        return out


def class_rows(real: pd.DataFrame, cls: str, negatives: int, seed: int = 0) -> pd.DataFrame:
    """c's real train+val positives and up to ``negatives`` real rows annotated negative for c."""
    pos = real[real[cls] == 1.0]
    neg = real[real[cls] == 0.0]
    neg = neg.sample(min(negatives, len(neg)), random_state=seed)
    out = pd.concat([pos, neg])
    out.attrs.update(real.attrs)
    return out


def deltas(judge: DenoisingJudge, rows: pd.DataFrame, cls: str) -> np.ndarray:
    """Per image: denoising loss with its findings minus ``cls`` in the prompt, minus the loss with ``cls`` added."""
    findings = [[c for c in CXR_LT_CLASSES if r.get(c) == 1.0 and c != cls] for _, r in rows.iterrows()]
    views = rows["ViewPosition"].tolist()
    with_c = [judge.templates.render([*f, cls], v) for f, v in zip(findings, views)]
    without_c = [judge.templates.render(f, v) for f, v in zip(findings, views)]
    latents = judge.latents(rows)
    return judge.losses(latents, without_c) - judge.losses(latents, with_c)


def judge_class(judge: DenoisingJudge, rows: pd.DataFrame, generated: pd.DataFrame, cls: str) -> dict:
    """The real rows score the generator as a classifier of c; its set's images are then classified with the
    threshold its real negatives set (the 95th percentile of their delta)."""
    delta = deltas(judge, rows, cls)
    y = (rows[cls] == 1.0).to_numpy()
    pos, neg = delta[y].mean(), delta[~y].mean()
    on_set = deltas(judge, generated, cls)
    return {
        "class": cls,
        "real_positives": int(y.sum()),
        "real_negatives": int((~y).sum()),
        "denoise-auroc": float(roc_auc_score(y, delta)),
        "denoise-uplift": float(pos - neg),
        "denoise-share": float((on_set > np.quantile(delta[~y], 0.95)).mean()),
        "denoise-fraction": float((on_set.mean() - neg) / (pos - neg)) if pos > neg else None,
        "delta_positives": float(pos),
        "delta_negatives": float(neg),
        "delta_generated": float(on_set.mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ablation_dir", type=Path)
    parser.add_argument("--cache", type=Path, help="bench_gate_variants embedding cache (.npz)")
    parser.add_argument("--negatives", type=int, default=80)
    parser.add_argument("--timesteps", type=int, default=10)
    parser.add_argument("--noise-draws", type=int, default=2)
    parser.add_argument("--only", nargs="*", help="classes (a smoke run)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    run = _load(args.ablation_dir, args.cache)
    judge = DenoisingJudge(args.ablation_dir, args.timesteps, args.noise_draws)
    target = run.synth["target_class"].to_numpy()
    rows, start = [], time.time()
    for cls in pd.unique(target):
        if args.only and cls not in args.only:
            continue
        generated = run.synth[target == cls]
        generated.attrs.update(run.synth.attrs)
        row = judge_class(judge, class_rows(run.real, cls, args.negatives), generated, cls)
        row["fidelity"] = float(np.nanmean(run.detected[target == cls]))
        rows.append(row)
        print(
            f"{cls:28s} fidelity {row['fidelity']:.3f}  auroc {row['denoise-auroc']:.3f}  uplift "
            f"{row['denoise-uplift']:+.5f}  share {row['denoise-share']:.2f}  fraction {row['denoise-fraction']}  "
            f"(pos {row['real_positives']}; {time.time() - start:.0f} s)",
            flush=True,
        )
    rhos = {}
    for key in ("denoise-auroc", "denoise-uplift", "denoise-share", "denoise-fraction"):
        pairs = [(r[key], r["fidelity"]) for r in rows if r[key] is not None]
        rhos[key] = float(spearmanr(*zip(*pairs)).statistic)
    print("Spearman rho vs oracle fidelity: " + ", ".join(f"{k} {v:+.2f}" for k, v in rhos.items()))
    if args.json:
        from synth.provenance import write_bench_result

        figures = {"ablation_dir": str(args.ablation_dir), "spearman": rhos, "seconds": time.time() - start}
        write_bench_result(args.json, "gate_denoising", {**figures, "classes": rows})


if __name__ == "__main__":
    main()
