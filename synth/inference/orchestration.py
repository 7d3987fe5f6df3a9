"""``synth generate`` end to end, and :func:`regenerate` of one image from its manifest row.

:func:`run` checks the class names, plans the jobs, reconciles them with what the output folder already holds,
splits the missing images over the Accelerate processes, renders them batch by batch and leaves one merged
``manifest.csv``. Tests that replace a step (``load_pipeline``, ``save_image_atomic``) patch it here.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import pandas as pd

from synth.cooccurrence import TrainingLabels
from synth.diffusion import precision_dtype
from synth.errors import UserError
from synth.inference.config import GenerateConfig
from synth.inference.model_folder import load_generator_info
from synth.inference.pipeline import (
    PromptEmbeddings,
    load_pipeline,
    pipeline_resolution,
    render,
    speed_up_cuda,
)
from synth.inference.planning import (
    RUN_SETTINGS_NAME,
    ImageJob,
    Planner,
    check_run_settings,
    resolve_targets,
    run_settings,
    validate_class_names,
)
from synth.inference.state import MANIFEST_NAME, ManifestSync, finished_images, note_kept_images, write_merged_manifest
from synth.io import save_image_atomic, write_json_atomic
from synth.manifest import read_manifest
from synth.model_card import generated_set_card
from synth.progress import progress_bar

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image


def _batches(items: Sequence[ImageJob], size: int) -> Iterator[list[ImageJob]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def _progress(enabled: bool, total: int):
    progress = progress_bar("[bold]generate", "{task.fields[rate]}", disable=not enabled)
    task = progress.add_task("generate", total=total, rate="")
    return progress, task


def generate(model_dir: str | Path, classes: Sequence[str], n: int | str, out_dir: str | Path, **options: Any) -> Path:
    """Generate ``n`` images per class (or top up to ``target_count``) into ``out_dir``; return the manifest path.

    ``classes`` holds class names (any case) and/or ``head`` / ``medium`` / ``tail``. ``options`` are
    :class:`GenerateConfig` fields (``seed``, ``batch_size``, ``steps``, ``precision``, ``target_count``, ...),
    with the config's defaults, so the two cannot disagree.
    """
    return run(model_dir, classes, out_dir, GenerateConfig(n=n, **options).validated())


def run(model_dir: str | Path, classes: Sequence[str], out_dir: str | Path, cfg: GenerateConfig) -> Path:
    """:func:`generate` with a config object (the CLI's entry)."""
    names = validate_class_names(classes)  # before touching the model folder
    info = load_generator_info(model_dir, cfg.train_manifest, cfg.prompt_templates)
    labels = TrainingLabels(read_manifest(info.train_manifest), source=str(info.train_manifest))
    targets = resolve_targets(names, labels)
    planner = Planner(labels, info.templates, cfg)
    counts = planner.counts(targets)
    planned = planner.jobs(counts)  # also checks every target has training positives

    import torch

    from synth.distributed import process_state

    state = process_state()
    device = torch.device(cfg.device) if cfg.device else state.device
    dtype = precision_dtype(cfg.precision, device)
    settings = run_settings(cfg, info, planner, str(dtype).removeprefix("torch."))
    out_dir = Path(out_dir)
    check_run_settings(out_dir, settings)

    base = planner.frame([])
    if state.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out_dir / RUN_SETTINGS_NAME, settings)
        for shard in out_dir.glob("manifest.rank*.csv"):  # left by a killed run; the files on disk are the truth
            shard.unlink()
        for stray in out_dir.glob(".*.tmp"):  # a manifest / settings write a kill interrupted (issue 20, defect 9)
            if stray.is_file():
                stray.unlink(missing_ok=True)
        done = finished_images(out_dir)
        note_kept_images(out_dir, done, counts)
        kept = [planner.job_for(key) for key in sorted(done) if key[0] in labels.classes]
        base = planner.frame(kept, info.fingerprint)
        write_merged_manifest(out_dir, [base], targets)
    state.wait_for_everyone()

    done = finished_images(out_dir)
    todo = [j for j in planned if j.key not in done]
    with state.split_between_processes(todo) as mine:
        mine = list(mine)
    sync = ManifestSync(out_dir, planner, info.fingerprint, base, targets, state.process_index)
    if mine:
        pipe = load_pipeline(info.model_dir, cfg.scheduler, dtype, device, cfg.enable_xformers)
        resolution = pipeline_resolution(pipe, info)
        if cfg.compile:
            speed_up_cuda(pipe)
        embeddings = PromptEmbeddings(pipe)
        progress, task = _progress(cfg.progress and state.is_main_process, len(mine))
        finished, start = 0, time.perf_counter()
        with progress:
            for batch in _batches(mine, cfg.batch_size):
                images = render(pipe, batch, resolution, cfg.steps, cfg.guidance_scale, embeddings)
                for job, image in zip(batch, images):
                    save_image_atomic(out_dir / job.fpath, image)
                sync.add(batch)
                finished += len(batch)
                progress.update(task, advance=len(batch), rate=f"{finished / (time.perf_counter() - start):.2f} img/s")
        if not state.is_main_process:  # the main process's rows go into the final merge below
            sync.add([], force=True)
    state.wait_for_everyone()

    manifest = out_dir / MANIFEST_NAME
    if state.is_main_process:
        write_merged_manifest(out_dir, [base, planner.frame_from_rows(sync.rows)], targets)
        for shard in out_dir.glob("manifest.rank*.csv"):
            shard.unlink()
        generated_set_card(out_dir, settings, manifest)
    state.wait_for_everyone()
    return manifest


def regenerate(
    manifest_path: str | Path, dicom_id: str, model_dir: str | Path | None = None, device: str | None = None
) -> "Image.Image":
    """Re-render one synthetic image alone from its manifest row (seed, prompt, sampler, model)."""
    import torch

    manifest_path = Path(manifest_path)
    df = read_manifest(manifest_path)
    rows = df[df["dicom_id"] == dicom_id]
    if rows.empty:
        raise UserError(f"{manifest_path}: no row with dicom_id {dicom_id!r}")
    row = rows.iloc[0]
    settings = json.loads((manifest_path.parent / RUN_SETTINGS_NAME).read_text())
    info = load_generator_info(model_dir or settings["model_dir"], settings["train_manifest"])
    if info.fingerprint != row["model_fingerprint"]:
        raise UserError(
            f"--model {info.model_dir} has fingerprint {info.fingerprint}, the image was made by "
            f"{row['model_fingerprint']}; pass the model it was generated with"
        )
    negative = "" if pd.isna(row["negative_prompt"]) else row["negative_prompt"]
    job = ImageJob(
        target_class=row["target_class"],
        index=-1,
        seed=int(row["seed"]),
        findings=(),
        view=row["ViewPosition"],
        prompt=row["prompt"],
        negative_prompt=negative,
    )
    target = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    pipe = load_pipeline(info.model_dir, row["scheduler"], getattr(torch, settings["dtype"]), target)
    resolution = pipeline_resolution(pipe, info)
    return render(pipe, [job], resolution, int(row["num_inference_steps"]), float(row["guidance_scale"]))[0]
