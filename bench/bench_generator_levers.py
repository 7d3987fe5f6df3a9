"""Which generator levers buy oracle fidelity per CPU-minute? (issue #19)

Trains the from-scratch UNet once per variant of the phantom-cpu finetune config, on a finished
``synth ablate`` run's training manifest and trained VAE (the VAE stage is shared, so only the UNet
lever differs), for the same ``--train-steps`` with a complete warm-up+cosine schedule each. Then it
generates ``--n`` images per tail class (same per-image seeds for every variant) and asks the run's
phantom oracle how many show the prompted finding. Printed per variant: UNet training-loop minutes, mean
fidelity over the judgeable tail classes, and fidelity per training minute.

    python bench/bench_generator_levers.py outputs/ablations/phantom-cpu \
        [--variants baseline no_min_snr v_prediction no_ema narrow_unet] [--train-steps 1200] \
        [--json bench/results/generator_levers.json]

A short schedule is what makes five variants affordable on 2 cores (~11 min each at 1,200 steps); the
ranking at 1,200 steps need not hold at the config's 3,200, and the results file says which was run.
Run it alone: the minutes are wall time and another job on the cores inflates them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

from ablation_stages import stage_folder
from bench_generator_fidelity import judge_generator, mean_fidelity

VARIANTS: dict[str, dict[str, Any]] = {
    "baseline": {},  # configs/finetune/phantom-cpu.yaml as shipped: epsilon, min-SNR 5, EMA 0.999, UNet 64-128-128
    "no_min_snr": {"snr_gamma": None},
    "v_prediction": {"prediction_type": "v_prediction"},
    "no_ema": {"use_ema": False},
    "narrow_unet": {"unet_block_out_channels": [32, 64, 64]},
    "batch_16": {"train_batch_size": 16},
}


def train_variant(
    config: Path, name: str, manifest: Path, vae: Path, steps: int, out: Path
) -> tuple[Path, float, float]:
    """One UNet run of the variant on the shared VAE: pipeline folder, training-loop seconds, stage seconds
    (the stage adds loading the latent cache and encoding the prompts once)."""
    from synth.finetune import load_finetune_config, run_finetune

    overrides = {
        "train_manifest": str(manifest),
        "output_dir": str(out),
        "vae_model_path": str(vae),
        "stage": "unet",
        "max_train_steps": steps,
        "checkpointing_steps": steps,
        "num_validation_images": 0,
        "resume_from_checkpoint": "none",
    }
    cfg = load_finetune_config(config, overrides)
    cfg = dataclasses.replace(cfg, **VARIANTS[name]).validated()  # None (no min-SNR) is not an override value
    start = time.time()
    pipeline = Path(run_finetune(cfg))
    loop = json.loads((pipeline / "loss_summary.json").read_text())["wall_s_this_run"]
    return pipeline, loop, time.time() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ablation_dir", type=Path, help="a finished `synth ablate` folder (data, generator, oracle)")
    ap.add_argument("--config", type=Path, default=Path("configs/finetune/phantom-cpu.yaml"))
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS)[:5], choices=list(VARIANTS))
    ap.add_argument("--train-steps", type=int, default=1200)
    ap.add_argument("--n", type=int, default=24, help="generated images per tail class")
    ap.add_argument("--guidance", type=float, default=7.5)
    ap.add_argument("--sample-steps", type=int, default=25)
    ap.add_argument("--out", type=Path, default=Path("outputs/bench/generator_levers"))
    ap.add_argument("--json", type=Path, default=None, help="also write the figures (with provenance) here")
    args = ap.parse_args()

    from synth.manifest import read_manifest

    data = stage_folder(args.ablation_dir, "data") / "prepared" / "manifest.csv"
    vae = stage_folder(args.ablation_dir, "generator") / "pipeline" / "vae_stage"
    oracle = stage_folder(args.ablation_dir, "oracle") / "oracle"
    real = read_manifest(data)
    real_train = real[real["split"] == "train"]
    figures: dict[str, Any] = {"train_steps": args.train_steps, "n_per_class": args.n, "variants": {}}
    for name in args.variants:
        pipeline, seconds, stage_seconds = train_variant(
            args.config, name, data, vae, args.train_steps, args.out / name / "model"
        )
        classes, _ = judge_generator(
            pipeline,
            oracle,
            real_train,
            ["tail"],
            args.n,
            args.guidance,
            args.sample_steps,
            args.out / name / "images",
        )
        mean, n_judged = mean_fidelity(classes)
        minutes = seconds / 60
        figures["variants"][name] = {
            "overrides": VARIANTS[name],
            "unet_train_minutes": round(minutes, 2),
            "stage_minutes": round(stage_seconds / 60, 2),
            "mean_fidelity": round(mean, 4),
            "n_judgeable": n_judged,
            "fidelity_per_train_minute": round(mean / minutes, 5),
            "per_class": {c: v.get("generated") for c, v in classes.items()},
        }
        print(
            f"{name:14s} {minutes:6.1f} min  fidelity {100 * mean:5.1f} % on {n_judged} classes  "
            f"{100 * mean / minutes:5.2f} %/min",
            flush=True,
        )
    if args.json:
        from synth.provenance import write_bench_result

        write_bench_result(args.json, "generator_levers", figures)


if __name__ == "__main__":
    main()
