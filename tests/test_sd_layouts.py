"""The GPU recipe (configs/finetune/mimic-sd21.yaml) on tiny folders in the published SD layouts, bf16 kept on.

No GPU here: ``SYNTH_CPU_AUTOCAST=1`` keeps bf16 autocast on the CPU so the mixed-precision branches a
GPU run takes (autocast, frozen parts, validation, export) run here. For each layout (SD-2.1-base
epsilon, SD-2.1 v-prediction, SD-1.x/RoentGen with a safety checker, and a folder saved in fp16):
the recipe's own flags for a few steps at 32 px -> validation images -> an fp32 export that
``DiffusionPipeline.from_pretrained`` loads and ``synth generate`` samples at fp32 and bf16; an
interrupted run resumed by a plain re-run equals the uninterrupted one, bit for bit.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from sd_folders import RESOLUTION, build_sd_folder, prediction_type
from tiny_pipeline import write_tiny_manifest

from synth import finetune
from synth.distributed import CPU_AUTOCAST_ENV
from synth.generator import train as train_mod

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "configs" / "finetune" / "mimic-sd21.yaml"

#: The recipe's flags as shipped (text encoder trained, EMA, snr_gamma, gradient checkpointing, accumulation,
#: checkpoint limit, bf16, xformers, cache_latents auto), shrunk to seconds: 32 px, 4 steps.
TINY = {
    "resolution": RESOLUTION,
    "train_batch_size": 2,
    "max_train_steps": 4,
    "checkpointing_steps": 2,
    "checkpoints_total_limit": 1,
    "lr_warmup_steps": 1,
    "dataloader_num_workers": 0,
    "num_validation_images": 1,
    "validation_inference_steps": 2,
    "logging_steps": 1,
    "learning_rate": 1e-3,
    "text_encoder_lr": 1e-3,
}
CASES = {  # id -> (layout, saved dtype, overrides beyond the recipe)
    "sd21-base": ("sd21-base", None, {}),
    "sd21-v": ("sd21-v", None, {}),
    "sd1-roentgen": ("sd1-roentgen", None, {}),
    # fp16-saved source + latents encoded on the fly in bf16 (the recipe before the latent cache: its
    # validation crashed at the first checkpoint, "Input type (float) and bias type (BFloat16)")
    "sd21-base-fp16-nocache": ("sd21-base", torch.float16, {"cache_latents": "false"}),
}


def _losses(out: Path) -> list[float]:
    with open(out / "loss.csv", newline="") as f:
        return [float(r["loss"]) for r in csv.DictReader(f)]


def _overrides(src: Path, manifest: Path, out: Path, **extra) -> dict:
    return {
        "pretrained_model_name_or_path": str(src),
        "train_manifest": str(manifest),
        "output_dir": str(out),
        **TINY,
        **extra,
    }


def _load(overrides: dict) -> finetune.FinetuneConfig:
    return finetune.load_finetune_config(RECIPE, overrides)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    return write_tiny_manifest(tmp_path_factory.mktemp("sdl-data"))


@pytest.fixture(scope="module", params=list(CASES))
def recipe_run(request, manifest, tmp_path_factory):
    """(case id, source folder, output folder, warnings) of one uninterrupted recipe run in bf16."""
    layout, dtype, extra = CASES[request.param]
    root = tmp_path_factory.mktemp(request.param)
    src = build_sd_folder(root / "src", layout, dtype=dtype)
    out = root / "out"
    mp = pytest.MonkeyPatch()
    mp.setenv(CPU_AUTOCAST_ENV, "1")
    lines: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert finetune.run_finetune(_load(_overrides(src, manifest, out, **extra)), log=lines.append) == out
    if extra.get("cache_latents") == "false":
        assert "latents: encoded on the fly every step" in lines, lines
    mp.undo()
    yield request.param, src, out, [str(w.message) for w in caught]


def test_recipe_flags_are_the_shipped_ones():
    cfg = finetune.load_finetune_config(RECIPE)
    assert (
        cfg.train_text_encoder,
        cfg.use_ema,
        cfg.snr_gamma,
        cfg.gradient_checkpointing,
        cfg.mixed_precision,
        cfg.cache_latents == "auto",
        cfg.gradient_accumulation_steps > 1,
        cfg.checkpoints_total_limit,
    ) == (True, True, 5.0, True, "bf16", True, True, 3)


def test_recipe_trains_in_bf16_validates_and_exports_fp32(recipe_run):
    case, src, out, caught = recipe_run
    meta = json.loads((out / "synth_meta.json").read_text())
    assert meta["mixed_precision"] == "bf16"  # autocast really on, not the CPU fp32 fallback
    assert meta["prediction_type"] == prediction_type(CASES[case][0])
    losses = _losses(out)
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))
    assert sorted(p.name for p in (out / "validation").glob("step-*.png")) == ["step-000002.png", "step-000004.png"]
    assert [p.name for p in out.glob("checkpoint-*")] == ["checkpoint-4"]  # checkpoints_total_limit 1
    for part, name in (
        ("vae", "diffusion_pytorch_model"),
        ("unet", "diffusion_pytorch_model"),
        ("text_encoder", "model"),
    ):
        tensors = load_file(out / part / f"{name}.safetensors")
        assert {t.dtype for t in tensors.values()} == {torch.float32}, part
    # the frozen VAE is exported exactly as loaded (fp32 of the source), never rounded through bf16
    vae_src, vae_out = (
        load_file(src / "vae" / "diffusion_pytorch_model.safetensors"),
        load_file(out / "vae" / "diffusion_pytorch_model.safetensors"),
    )
    assert all(torch.equal(vae_src[k].float(), vae_out[k]) for k in vae_src)
    te_src, te_out = (
        load_file(src / "text_encoder" / "model.safetensors"),
        load_file(out / "text_encoder" / "model.safetensors"),
    )
    assert any(not torch.equal(te_src[k].float(), te_out[k]) for k in te_src)  # the text encoder was trained
    xformers = [m for m in caught if "xformers" in m]
    assert len(xformers) == 1, xformers  # CPU: exactly one fallback warning


def test_export_loads_and_generates_at_fp32_and_bf16(recipe_run, tmp_path):
    from diffusers import DiffusionPipeline

    from synth.inference import generate

    case, _, out, _ = recipe_run
    pipe = DiffusionPipeline.from_pretrained(out, local_files_only=True)
    assert {p.dtype for m in (pipe.vae, pipe.unet, pipe.text_encoder) for p in m.parameters()} == {torch.float32}
    assert pipe.scheduler.config.prediction_type == prediction_type(CASES[case][0])
    for precision in ("fp32", "bf16"):
        manifest = generate(
            out, ["Rib Fracture"], 1, tmp_path / precision, steps=2, batch_size=1, precision=precision, progress=False
        )
        with open(manifest, newline="") as f:
            rows = list(csv.DictReader(f))
        assert len(rows) == 1 and (tmp_path / precision / rows[0]["fpath"]).exists()


class _Crash(Exception):
    pass


def test_interrupted_run_resumes_on_a_plain_rerun_identically(recipe_run, manifest, tmp_path, monkeypatch):
    case, src, ref, _ = recipe_run
    out = tmp_path / "out"
    overrides = _overrides(src, manifest, out, **CASES[case][2], num_validation_images=0, resume_from_checkpoint=None)
    monkeypatch.setenv(CPU_AUTOCAST_ENV, "1")

    def crash_after_3(step: int) -> None:
        if step == 3:
            raise _Crash  # checkpoint-2 is the last one on disk

    monkeypatch.setattr(train_mod, "_after_step", crash_after_3)
    with pytest.raises(_Crash):
        finetune.run_finetune(_load(overrides))
    monkeypatch.setattr(train_mod, "_after_step", lambda step: None)
    lines: list[str] = []
    finetune.run_finetune(_load(overrides), log=lines.append)  # the same command again: no resume flag
    assert any(line.startswith("resuming from") and "checkpoint-2" in line for line in lines), lines
    assert _losses(out) == _losses(ref)
    a, b = (
        load_file(ref / "unet" / "diffusion_pytorch_model.safetensors"),
        load_file(out / "unet" / "diffusion_pytorch_model.safetensors"),
    )
    assert all(torch.equal(a[k], b[k]) for k in a)  # EMA, optimizer, scheduler and text encoder restored too
    a, b = load_file(ref / "text_encoder" / "model.safetensors"), load_file(out / "text_encoder" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    "recipe_run", ["sd21-v"], indirect=True
)  # one layout is enough; the others are interrupted in-process
def test_kill_9_then_plain_rerun_equals_uninterrupted(recipe_run, manifest, tmp_path):
    """A real SIGKILL (no cleanup runs) after step 3, in a separate process."""
    case, src, ref, _ = recipe_run
    out = tmp_path / "out"
    overrides = _overrides(src, manifest, out, **CASES[case][2], num_validation_images=0)
    args = ["--config", str(RECIPE)] + [f"--{k}={v}" for k, v in overrides.items()]
    killer = (
        "import os, signal, sys; from synth.generator import train; "
        "train._after_step = lambda s: os.kill(os.getpid(), signal.SIGKILL) if s == 3 else None; "
        "from synth.finetune import main; sys.exit(main(sys.argv[1:]))"
    )
    # Same thread count as the in-process reference run: CPU kernels reduce in a thread-dependent
    # order, so "bit for bit" only holds between runs with equal threads.
    threads = str(torch.get_num_threads())
    env = {**os.environ, CPU_AUTOCAST_ENV: "1", "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    proc = subprocess.run(
        [sys.executable, "-c", killer, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert [p.name for p in out.glob("checkpoint-*")] == ["checkpoint-2"] and not (out / "synth_meta.json").exists()
    proc = subprocess.run(
        [sys.executable, "synth/finetune.py", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "resuming from" in proc.stdout
    assert _losses(out) == _losses(ref)
    a, b = (
        load_file(ref / "unet" / "diffusion_pytorch_model.safetensors"),
        load_file(out / "unet" / "diffusion_pytorch_model.safetensors"),
    )
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_generate_fp32_reads_a_pipeline_saved_in_bf16(manifest, tmp_path):
    """Pipelines exported in bf16 by older versions: transformers >= 5 would load the text encoder in bf16 beside
    an fp32 UNet unless every component is given the dtype (``synth generate --precision fp32``)."""
    from tiny_pipeline import ANNOTATED

    from synth.inference import generate
    from synth.io import write_json_atomic
    from synth.prompts import DEFAULT_TEMPLATES, PromptTemplates

    model = build_sd_folder(tmp_path / "bf16", "sd21-base", dtype=torch.bfloat16)
    write_json_atomic(
        model / "synth_meta.json",
        {
            "train_manifest": str(manifest.resolve()),
            "prompt_templates": str(DEFAULT_TEMPLATES.resolve()),
            "prompt_templates_name": PromptTemplates.load(DEFAULT_TEMPLATES).name,
            "resolution": RESOLUTION,
            "classes": list(ANNOTATED),
        },
    )
    out = generate(
        model, ["Rib Fracture"], 1, tmp_path / "gen", steps=2, batch_size=1, precision="fp32", progress=False
    )
    assert out.exists()
