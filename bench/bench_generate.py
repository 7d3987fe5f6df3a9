"""Throughput of ``synth generate`` vs a plain ``StableDiffusionPipeline.__call__`` on the same batches.

    python bench/bench_generate.py [--n 32 --batch-size 8 --steps 10 --repeats 3]

Builds a generator of realistic shape (MiniLM text encoder, UNet (64, 128, 256), 16x16 latents, 4-block
VAE -> 128 px) under outputs/bench_generate/ with ``synth finetune`` itself (from scratch, one VAE and one
UNet step on 300 phantom images: speed does not depend on the weights), then times, alternately and
``--repeats`` times:

* bare: ``StableDiffusionPipeline.__call__`` on the same prompts / batches with
  per-image generators (what a user would write by hand), same scheduler, steps,
  guidance and batch size, images kept in memory;
* synth: :func:`synth.inference.run` into a fresh folder (label-set
  sampling, per-image latents, prompt embeddings computed once per distinct prompt,
  atomic PNG writes, manifest after every batch).

Both exclude model loading (the pipeline is loaded once by the bare loop; the
synth run's load is timed separately and reported). Prints images/s and the
ratio synth / bare (target >= 1.0: the text-embedding cache pays for the PNG and
manifest writes). ``--json`` writes the figures with their provenance.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]

import torch  # noqa: E402

import synth.inference as gen  # noqa: E402
import synth.inference.orchestration as orchestration  # noqa: E402


def build_model(root: Path) -> Path:
    """The benchmarked generator folder, as ``synth finetune`` writes it (see the module docstring)."""
    from synth.finetune import load_finetune_config, run_finetune
    from synth.phantom import render_dataset
    from synth.prepare import prepare_dataset

    labels = Path(render_dataset(n=300, size=128, seed=0, out=root / "phantom"))
    manifest = prepare_dataset("cxrlt", labels, labels.parent, root / "data", size=128)
    architecture = {"vae_block_out_channels": [32, 64, 64, 64], "unet_block_out_channels": [64, 128, 256]}
    architecture |= {"unet_attention_head_dim": 4, "norm_num_groups": 4}
    steps = {"vae_max_train_steps": 1, "max_train_steps": 1, "num_validation_images": 0, "use_ema": False}
    where = {"train_manifest": str(manifest), "output_dir": str(root / "model"), "resolution": 128}
    return run_finetune(load_finetune_config(REPO / "configs/finetune/demo.yaml", architecture | steps | where))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=32, help="images per repeat")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--root", type=Path, default=REPO / "outputs" / "bench_generate")
    parser.add_argument("--json", type=Path, default=None, help="write the figures and their provenance here")
    args = parser.parse_args()

    model = args.root / "model"
    if not (model / "model_index.json").exists():
        build_model(args.root)
    cfg = gen.GenerateConfig(n=args.n, batch_size=args.batch_size, steps=args.steps, progress=False).validated()
    info = gen.load_generator_info(model)
    from synth.cooccurrence import TrainingLabels
    from synth.manifest import read_manifest

    planner = gen.Planner(TrainingLabels(read_manifest(info.train_manifest)), info.templates, cfg)
    jobs = planner.jobs({"Pneumothorax": args.n})
    t = time.perf_counter()
    pipe = gen.load_pipeline(model, cfg.scheduler, torch.float32, torch.device("cpu"))
    load_s = time.perf_counter() - t
    resolution = gen.pipeline_resolution(pipe, info)

    def bare() -> tuple[float, float]:
        start, cpu = time.perf_counter(), time.process_time()
        for first in range(0, len(jobs), args.batch_size):
            batch = jobs[first : first + args.batch_size]
            generators = [torch.Generator("cpu").manual_seed(j.seed) for j in batch]
            with torch.inference_mode():
                pipe(
                    prompt=[j.prompt for j in batch],
                    negative_prompt=[j.negative_prompt for j in batch],
                    height=resolution,
                    width=resolution,
                    num_inference_steps=args.steps,
                    guidance_scale=cfg.guidance_scale,
                    generator=generators,
                    output_type="pil",
                )
        return time.perf_counter() - start, time.process_time() - cpu

    def synth(out: Path) -> tuple[float, float]:
        shutil.rmtree(out, ignore_errors=True)
        start, cpu = time.perf_counter(), time.process_time()
        gen.run(model, ["Pneumothorax"], out, cfg)
        return time.perf_counter() - start, time.process_time() - cpu

    bare()  # warm-up (allocator, oneDNN kernels)
    real_load = orchestration.load_pipeline
    orchestration.load_pipeline = lambda *a, **k: pipe  # time sampling + bookkeeping, not the (reported) load
    try:
        bare_s, synth_s, bare_cpu, synth_cpu = [], [], [], []
        for r in range(args.repeats):
            for w, c, f in ((bare_s, bare_cpu, bare), (synth_s, synth_cpu, lambda: synth(args.root / f"out{r}"))):
                wall, cpu = f()
                w.append(wall)
                c.append(cpu)
    finally:
        orchestration.load_pipeline = real_load
    _report(args, cfg, resolution, load_s, bare_s, synth_s, bare_cpu, synth_cpu)


def _report(
    args: argparse.Namespace,
    cfg,
    resolution: int,
    load_s: float,
    bare_s: list[float],
    synth_s: list[float],
    bare_cpu: list[float],
    synth_cpu: list[float],
) -> None:
    """Print the medians and the synth/bare ratios (wall clock and CPU time); with ``--json``, write them too."""
    b, s = statistics.median(bare_s), statistics.median(synth_s)
    bc, sc = statistics.median(bare_cpu), statistics.median(synth_cpu)
    print(
        f"model: UNet (64,128,256), latents 16x16 -> {resolution} px, MiniLM text encoder; {args.n} images, "
        f"batch {args.batch_size}, {args.steps} steps dpm++, fp32 CPU, {torch.get_num_threads()} threads"
    )
    print(f"pipeline load: {load_s:.2f} s (not in the figures below)")
    print(f"bare diffusers : {args.n / b:.2f} img/s  (median of {args.repeats}: {[round(x, 2) for x in bare_s]} s)")
    print(f"synth generate : {args.n / s:.2f} img/s  (median of {args.repeats}: {[round(x, 2) for x in synth_s]} s)")
    print(
        f"ratio synth/bare: {b / s:.3f} wall clock (per repeat {[round(x / y, 3) for x, y in zip(bare_s, synth_s)]}), "
        f"{bc / sc:.3f} CPU time (per repeat {[round(x / y, 3) for x, y in zip(bare_cpu, synth_cpu)]}; with 1 thread "
        "the CPU "
        "time is the work done, whatever other jobs do to the wall clock); target >= 1.0: "
        f"{'PASS' if min(b / s, bc / sc) >= 1.0 else 'FAIL'}"
    )
    if args.json:
        from synth.provenance import write_bench_result

        write_bench_result(
            args.json,
            "bench/bench_generate.py",
            {
                "threads": torch.get_num_threads(),
                "model": f"UNet (64,128,256), 16x16 latents -> {resolution} px, MiniLM",
                "n": args.n,
                "batch_size": args.batch_size,
                "steps": args.steps,
                "scheduler": cfg.scheduler,
                "guidance_scale": cfg.guidance_scale,
                "bare_s": bare_s,
                "synth_s": synth_s,
                "ratio_median": b / s,
                "bare_cpu_s": bare_cpu,
                "synth_cpu_s": synth_cpu,
                "ratio_cpu_median": bc / sc,
            },
        )


if __name__ == "__main__":
    main()
