"""synth/finetune.py vs diffusers' own train_text_to_image.py: same model folder, same images, same batch.

Both scripts run as they ship, as subprocesses, on one Stable-Diffusion-2.1-layout folder (``--sd-folder``: its
CLIPTokenizer / CLIPTextModel and scheduler are used, its VAE and UNet replaced by SD-2.1's at 1/``--width``
of its channels; the recorded figures used the suite's tiny folder, built as ``bench/gpu_acceptance.sh``
builds ``sd21-base``) and the same phantom chest radiographs. The reference reads them as a ``datasets``
imagefolder (built here, in a temp dir, with one caption per image rendered from its labels); the project
reads the manifest.
The project runs at its GPU recipe's flags (``configs/finetune/mimic-sd21.yaml``) minus what the
reference cannot do or this machine has not got (text-encoder training for the default figure,
bf16, xformers, validation); both get EMA, min-SNR 5, gradient checkpointing, the same LR schedule,
batch, steps, seed and no flips.

Steady-state steps/s comes from a timestamp after every optimizer step (a global
``torch.optim`` step hook set by a small runner that then runs the unmodified script with ``runpy``):
steps after the first ``--skip`` over their time, so start-up and the final save are left out. A
1-step warm-up run of each script first builds the one-time caches (the reference's ``datasets``
arrow cache, the project's latent cache), as every later run on the same data finds them. Rounds interleave the scripts
so load from other processes hits both alike;
the median over rounds is reported. Wall time and peak RSS are per run (``wait4``).

    python bench/bench_finetune_vs_reference.py --sd-folder SD21_FOLDER \
        --reference ../shared/reference/diffusers_train_text_to_image.py \
        [--reference-python /path/to/venv/bin/python] [--images 352 --size 64 --batch 16 --steps 60 --rounds 3
        --text-encoder --json bench/results/X.json]

The reference needs the ``datasets`` package; install it in a separate environment if it would change
the project's pins (``python -m venv --system-site-packages V && V/bin/pip install datasets``) and pass
``--reference-python V/bin/python``. The reference script itself is never copied into the project.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DEFAULT_REFERENCE = REPO.parent / "shared" / "reference" / "diffusers_train_text_to_image.py"
RECIPE = REPO / "configs" / "finetune" / "mimic-sd21.yaml"


def build_inputs(root: Path, source: Path, n: int, size: int, seed: int, width: int = 0) -> tuple[Path, Path, Path]:
    """(a copy of the SD folder ``source``, project manifest, reference imagefolder) over the same ``n`` phantom
    images."""
    from synth.manifest import label_sets, validate_manifest, write_manifest
    from synth.phantom import render_dataset
    from synth.prompts import PromptTemplates
    from synth.readers import read_labels

    labels = Path(render_dataset(n=n, size=size, seed=seed, out=root / "phantom"))
    df = read_labels("cxrlt", labels)
    df = validate_manifest(df.assign(split="train", source="real"), where=str(labels))
    manifest = write_manifest(df[[c for c in df.columns if c != "source_fpath"]], root / "phantom" / "manifest.csv")
    from synth.generator.data import TrainingSet

    data = TrainingSet.load(manifest)
    templates = PromptTemplates.load(None)
    folder = root / "imagefolder" / "train"
    folder.mkdir(parents=True)
    paths = (
        __import__("synth.image_datasets", fromlist=["ManifestDataset"])
        .ManifestDataset(data.df, classes=data.classes)
        .paths
    )
    with open(folder / "metadata.jsonl", "w") as f:
        for i, (p, labelset, view) in enumerate(zip(paths, label_sets(data.df, data.classes), data.views)):
            name = f"{i:05d}.png"
            shutil.copyfile(p, folder / name)
            caption = templates.render(labelset, view, rng=random.Random(i))
            f.write(json.dumps({"file_name": name, "text": caption}) + "\n")
    sd = Path(shutil.copytree(source, root / "sd21-base"))
    if width:
        _sd21_proportions(sd, width, size)
    return sd, manifest, folder.parent


def _sd21_proportions(sd: Path, width: int, size: int) -> None:
    """Replace the folder's VAE and UNet by SD-2.1-base's architectures at 1/``width`` of its channel widths.

    The tiny test folder's VAE (8-16 channels) costs next to nothing beside its UNet, so caching latents
    could not show what it saves on SD, where the VAE encoder is a large share of a training step. The same
    block types and layer counts at 1/width of SD's channels (and images at ``size`` px instead of 512 px)
    keep the VAE-encode : UNet-step cost ratio close to SD 2.1's.
    """
    import torch
    from bench_finetune_flops import sd21_unet, sd21_vae

    torch.manual_seed(0)
    vae = sd21_vae(width, size, scaling_factor=0.18215)
    hidden = json.loads((sd / "text_encoder" / "config.json").read_text())["hidden_size"]
    unet = sd21_unet(width, size, hidden)
    for sub, model in (("vae", vae), ("unet", unet)):
        shutil.rmtree(sd / sub)
        model.save_pretrained(sd / sub, safe_serialization=True)


def _rate(stamps: list[float], skip: int) -> float:
    return (len(stamps) - 1 - skip) / (stamps[-1] - stamps[skip]) if len(stamps) > skip + 1 else float("nan")


def run(cmd: list[str], env: dict[str, str], log: Path, skip: int = 0) -> tuple[float, float, float, float]:
    """(wall s, peak RSS MiB, steady-state steps/s, steady-state steps per CPU-second) of one wrapped script run.

    The CPU-time rate counts only the script's own process time: with one thread and no loader workers it
    is the work a step takes, whatever other jobs on the machine do to the wall clock."""
    times = log.with_suffix(".steps.json")
    cmd = [cmd[0], str(Path(__file__).resolve()), "--_wrap", str(times), *cmd[1:]]
    t0 = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(
            f"error: {' '.join(cmd[:3])} ... failed (exit {proc.returncode}); see {log}:\n" + log.read_text()[-3000:]
        )
    rate = _rate(json.loads(times.read_text()), skip)
    cpu_rate = _rate(json.loads(Path(str(times) + ".cpu").read_text()), skip)
    return wall, usage.ru_maxrss / 1024, rate, cpu_rate


def _wrap(times_file: str, script: str, argv: list[str]) -> None:
    """Run ``script`` as ``__main__`` with a timestamp taken after every optimizer step (both scripts step AdamW
    once per training step), written to ``times_file`` at exit: steady-state steps/s without touching either script."""
    import atexit
    import runpy

    stamps: list[float] = []
    cpu: list[float] = []
    from torch.optim.optimizer import register_optimizer_step_post_hook

    register_optimizer_step_post_hook(lambda *a: (stamps.append(time.perf_counter()), cpu.append(time.process_time())))
    atexit.register(
        lambda: (
            Path(times_file).write_text(json.dumps(stamps)),
            Path(times_file + ".cpu").write_text(json.dumps(cpu)),
        )
    )
    sys.argv = [script, *argv]
    runpy.run_path(script, run_name="__main__")


def main() -> None:
    if len(sys.argv) > 3 and sys.argv[1] == "--_wrap":
        return _wrap(sys.argv[2], sys.argv[3], sys.argv[4:])
    args = _parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_ft_vs_ref_"))
    sd, manifest, imagefolder = build_inputs(tmp, args.sd_folder, args.images, args.size, seed=0, width=args.width)
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(args.threads),
        "MKL_NUM_THREADS": str(args.threads),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HOME": str(tmp / "hf"),
        "PYTHONPATH": str(REPO),
        "TQDM_DISABLE": "1",
    }
    common = {
        "resolution": args.size,
        "train_batch_size": args.batch,
        "learning_rate": 5e-5,
        "lr_scheduler": "constant_with_warmup",
        "lr_warmup_steps": 0,
        "snr_gamma": 5.0,
        "seed": 0,
        "dataloader_num_workers": 0,
        "gradient_accumulation_steps": 1,
    }
    arms = _arms(args, common, sd, manifest, imagefolder)
    results = _time_arms(args, arms, env, tmp)
    _summarise(args, common, results)
    if not args.keep:
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        print(f"kept {tmp}")


def _parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sd-folder", type=Path, required=True, help="a Stable-Diffusion-2.1-layout model folder")
    ap.add_argument(
        "--reference",
        type=Path,
        default=DEFAULT_REFERENCE,
        help="diffusers' examples/text_to_image/train_text_to_image.py",
    )
    ap.add_argument(
        "--reference-python", default=sys.executable, help="a Python with `datasets` installed (default: this one)"
    )
    ap.add_argument("--images", type=int, default=352)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=60, help="training steps per run")
    ap.add_argument("--skip", type=int, default=5, help="steps left out of the steady-state rate (warm-up)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument(
        "--width",
        type=int,
        default=8,
        help="VAE + UNet = SD-2.1-base's at 1/WIDTH of its channels (0: the tiny test folder's own)",
    )
    ap.add_argument("--threads", type=int, default=1, help="OMP/MKL threads of every run")
    ap.add_argument(
        "--text-encoder",
        action="store_true",
        help="also time the project with --train_text_encoder (the reference cannot)",
    )
    ap.add_argument("--json", type=Path, default=None, help="write the figures and their provenance here")
    ap.add_argument("--keep", action="store_true", help="keep the temp folder")
    args = ap.parse_args()
    if not args.reference.is_file():
        raise SystemExit(
            f"error: --reference {args.reference}: not found; pass the path of diffusers' train_text_to_image.py"
        )
    probe = subprocess.run([args.reference_python, "-c", "import datasets"], capture_output=True)
    if probe.returncode != 0:
        raise SystemExit(
            f"error: {args.reference_python} has no `datasets` package (the reference needs it); "
            "python -m venv --system-site-packages V && V/bin/pip install datasets, then --reference-python "
            "V/bin/python"
        )

    return args


def _arms(args: argparse.Namespace, common: dict, sd: Path, manifest: Path, imagefolder: Path) -> dict:
    """Arm name -> ``(steps, out) -> command line``: the reference script, the project (and its options)."""

    def reference(steps: int, out: Path) -> list[str]:
        flags = [f"--{k}={v}" for k, v in common.items()]
        return [
            args.reference_python,
            str(args.reference),
            f"--pretrained_model_name_or_path={sd}",
            f"--train_data_dir={imagefolder}",
            f"--max_train_steps={steps}",
            f"--output_dir={out}",
            "--checkpointing_steps=1000000",
            "--use_ema",
            "--gradient_checkpointing",
            "--mixed_precision=no",
            "--report_to=tensorboard",
            *flags,
        ]

    def project(steps: int, out: Path, text_encoder: bool) -> list[str]:
        flags = [f"--{k}={v}" for k, v in common.items()]
        return [
            sys.executable,
            "synth/finetune.py",
            "--config",
            str(RECIPE),
            f"--pretrained_model_name_or_path={sd}",
            f"--train_manifest={manifest}",
            f"--output_dir={out}",
            f"--max_train_steps={steps}",
            "--mixed_precision=no",
            "--enable_xformers_memory_efficient_attention=false",
            "--num_validation_images=0",
            "--checkpointing_steps=1000000",
            "--resume_from_checkpoint=none",
            "--logging_steps=1000000",
            f"--train_text_encoder={'true' if text_encoder else 'false'}",
            "--use_ema=true",
            "--gradient_checkpointing=true",
            *flags,
        ]

    arms = {"reference": lambda s, o: reference(s, o), "project": lambda s, o: project(s, o, False)}
    if args.text_encoder:
        arms["project+text_encoder"] = lambda s, o: project(s, o, True)
    return arms


def _time_arms(args: argparse.Namespace, arms: dict, env: dict, tmp: Path) -> dict[str, list[dict[str, float]]]:
    """One warm-up run per arm, then ``--rounds`` timed runs of each, the arm order reversed every other round."""
    results: dict[str, list[dict[str, float]]] = {a: [] for a in arms}
    for name, make in arms.items():  # warm-up: the reference's datasets cache, the project's latent cache
        w, _, _, _ = run(make(1, tmp / f"warmup-{name}"), env, tmp / f"warmup-{name}.log")
        print(f"warm-up {name:22s} 1 step, {w:5.1f} s (one-time caches built)", flush=True)
    n = 0
    for r in range(args.rounds):
        for name, make in arms.items() if r % 2 == 0 else reversed(list(arms.items())):
            n += 1
            out = tmp / f"run{n:03d}-{name}"
            wall, rss, rate, cpu_rate = run(make(args.steps, out), env, tmp / f"run{n:03d}.log", skip=args.skip)
            shutil.rmtree(out, ignore_errors=True)
            results[name].append(
                {"steps_per_s": rate, "steps_per_cpu_s": cpu_rate, "wall_s": wall, "peak_rss_mib": rss}
            )
            print(
                f"round {r + 1} {name:22s} steady {rate:6.2f} steps/s ({cpu_rate:6.2f} per CPU-s)   wall {wall:6.1f} "
                f"s ({args.steps} steps, start-up and save included)   "
                f"peak RSS {rss:6.0f} MiB",
                flush=True,
            )
    return results


def _summarise(args: argparse.Namespace, common: dict, results: dict[str, list[dict[str, float]]]) -> None:
    """Print the medians and the ratio against the reference; with ``--json``, write them and their provenance."""
    summary = {}
    for name, rows in results.items():
        summary[name] = {k: statistics.median(row[k] for row in rows) for k in rows[0]}
    ref, ref_cpu = summary["reference"]["steps_per_s"], summary["reference"]["steps_per_cpu_s"]
    print(
        f"\n{args.images} phantom images at {args.size} px, batch {args.batch}, {args.threads} thread(s), "
        f"{args.rounds} interleaved rounds, "
        f"steady state over steps {args.skip + 1}-{args.steps} (medians):"
    )
    for name, s in summary.items():
        print(
            f"  {name:22s} {s['steps_per_s']:6.2f} steps/s  = {s['steps_per_s'] / ref:5.2f}x reference   "
            f"per CPU-second {s['steps_per_cpu_s']:6.2f} = {s['steps_per_cpu_s'] / ref_cpu:5.2f}x   wall "
            f"{s['wall_s']:6.1f} s   "
            f"peak RSS {s['peak_rss_mib']:6.0f} MiB"
        )
    ratio = summary["project"]["steps_per_s"] / ref
    cpu_ratio = summary["project"]["steps_per_cpu_s"] / ref_cpu
    print(
        "target project >= 1.25x reference (text encoder frozen): "
        f"{'PASS' if min(ratio, cpu_ratio) >= 1.25 else 'FAIL'} "
        f"({ratio:.2f}x wall clock, {cpu_ratio:.2f}x CPU time)"
    )
    if args.json:
        from synth.provenance import write_bench_result

        te = summary.get("project+text_encoder", {})
        figures = {"reference": str(args.reference), "project_config": str(RECIPE.relative_to(REPO))}
        figures |= {"common_flags": common, "summary": summary, "ratio_project_vs_reference": ratio}
        figures |= {"ratio_project_vs_reference_cpu_time": cpu_ratio, "rounds": results}
        figures["ratio_text_encoder_vs_reference"] = te.get("steps_per_s", float("nan")) / ref
        figures["ratio_text_encoder_vs_reference_cpu_time"] = te.get("steps_per_cpu_s", float("nan")) / ref_cpu
        write_bench_result(args.json, "bench/bench_finetune_vs_reference.py", figures)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
