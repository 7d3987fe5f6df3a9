"""synth generate: class checks, co-occurrence labels, per-image determinism, crash + resume."""

from __future__ import annotations

import collections
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy.stats import chisquare
from typer.testing import CliRunner

import synth.inference as gen
import synth.inference.orchestration as orchestration
from synth.cli import app
from synth.cooccurrence import TrainingLabels
from synth.errors import UserError
from synth.manifest import read_manifest
from synth.prompts import PromptTemplates

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tiny_pipeline import TRAIN_LABEL_SETS, build_tiny_pipeline  # noqa: E402

FAST = dict(steps=4, guidance_scale=3.0, progress=False)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_pipeline(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def rib_run(tiny_model, tmp_path_factory) -> Path:
    """6 Rib Fracture images generated in batches of 4 (the last batch is partial)."""
    out = tmp_path_factory.mktemp("rib")
    return gen.generate(tiny_model, ["rib fracture"], 6, out, seed=7, batch_size=4, **FAST)


def _labels(model_dir: Path) -> TrainingLabels:
    info = gen.load_generator_info(model_dir)
    return TrainingLabels(read_manifest(info.train_manifest))


def _findings_from_prompt(prompt: str) -> set[str]:
    """Invert the cxr-v1 template: 'chest x-ray, PA view: a, b and c' -> {a, b, c}."""
    words = prompt.split(": ", 1)[1].replace(" and ", ", ").split(", ")
    return set(words)


def test_unknown_class_exits_2_with_suggestions_before_loading(tiny_model, tmp_path, monkeypatch):
    def must_not_run(*args, **kwargs):
        raise AssertionError("model touched before the class names were checked")

    monkeypatch.setattr(orchestration, "load_generator_info", must_not_run)
    monkeypatch.setattr(orchestration, "load_pipeline", must_not_run)
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app,
        [
            "generate",
            "--model",
            str(tiny_model),
            "--class",
            "Rib Fracture",
            "--class",
            "rib fractur",
            "--n",
            "2",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 2, result.output
    assert "'Rib Fracture'" in result.output and "rib fractur" in result.output
    assert not out.exists()


def test_bad_options_and_untrained_classes_fail_before_writing(tiny_model, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(UserError, match="no positive image in the train split"):
        gen.generate(tiny_model, ["Mass"], 2, out, **FAST)  # positive only in val
    with pytest.raises(UserError, match="not annotated"):
        gen.generate(tiny_model, ["Tuberculosis"], 2, out, **FAST)
    with pytest.raises(UserError, match="--target-count"):
        gen.generate(tiny_model, ["Rib Fracture"], "auto", out, **FAST)
    with pytest.raises(UserError, match="--scheduler"):
        gen.generate(tiny_model, ["Rib Fracture"], 2, out, scheduler="dpm3", **FAST)
    assert not out.exists()


def test_template_name_mismatch_is_refused(tiny_model, tmp_path):
    other = tmp_path / "other.yaml"
    other.write_text('name: other-v2\nfindings_template: "{findings}"\nnormal_template: "normal"\n')
    with pytest.raises(UserError, match="other-v2.*cxr-v1"):
        gen.load_generator_info(tiny_model, prompt_templates=other)


def test_groups_and_auto_counts_come_from_training_prevalence(tiny_model):
    labels = _labels(tiny_model)
    # Subcutaneous Emphysema: 2/300 train rows (tail); Rib Fracture: 3/300 = 1 % is medium, not tail.
    # Edema / Mass have no train positive: skipped with a warning.
    with pytest.warns(UserWarning, match="Edema, Mass"):
        assert gen.resolve_targets(["tail"], labels) == ["Subcutaneous Emphysema"]
    assert gen.resolve_targets(["rib FRACTURE", "medium", "Rib Fracture"], labels)[0] == "Rib Fracture"
    assert "Pneumothorax" in gen.resolve_targets(["medium"], labels)
    cfg = gen.GenerateConfig(n="auto", target_count=10).validated()
    planner = gen.Planner(labels, PromptTemplates.load(), cfg)
    assert planner.counts(["Rib Fracture", "Cardiomegaly"]) == {"Rib Fracture": 7, "Cardiomegaly": 0}


def test_manifest_labels_are_the_prompted_set_and_contain_the_target(rib_run, tiny_model):
    df = read_manifest(rib_run)
    assert len(df) == 6 and df["dicom_id"].is_unique
    assert set(df["source"]) == {"synthetic"} and set(df["split"]) == {"train"}
    assert set(df["target_class"]) == {"Rib Fracture"}
    annotated = _labels(tiny_model).classes
    for _, row in df.iterrows():
        positives = {c for c in annotated if row[c] == 1.0}
        assert "Rib Fracture" in positives and "Fracture" in positives
        assert {p.lower() for p in positives} == _findings_from_prompt(row["prompt"])
        assert all(row[c] == 0.0 for c in annotated if c not in positives)
        assert np.isnan(row["Tuberculosis"])  # not annotated in training stays empty
        assert row["ViewPosition"] in row["prompt"]
    files = sorted(p.relative_to(rib_run.parent).as_posix() for p in (rib_run.parent / "images").rglob("*.png"))
    assert files == sorted(df["fpath"])
    with Image.open(rib_run.parent / df["fpath"].iloc[0]) as im:
        assert im.mode == "L" and im.size == (16, 16)


def test_one_image_regenerates_alone_bit_identically(rib_run):
    df = read_manifest(rib_run)
    row = df.iloc[5]  # was rendered in a batch of 2, together with index 4
    alone = np.asarray(gen.regenerate(rib_run, row["dicom_id"]))
    with Image.open(rib_run.parent / row["fpath"]) as im:
        batched = np.asarray(im)
    assert alone.std() > 0  # a real image, not a constant that would match anything
    np.testing.assert_array_equal(alone, batched)
    other = np.asarray(Image.open(rib_run.parent / df["fpath"].iloc[4]))
    assert not np.array_equal(other, batched)  # different seeds give different images


def test_label_sets_follow_training_cooccurrence(tiny_model):
    labels = _labels(tiny_model)
    empirical = collections.Counter()
    for findings, count, _ in TRAIN_LABEL_SETS:
        if "Pneumothorax" in findings:
            empirical[tuple(sorted(findings))] += count  # 8, 4, 2 rows
    planner = gen.Planner(labels, PromptTemplates.load(), gen.GenerateConfig(seed=3).validated())
    draws = collections.Counter(tuple(sorted(planner.job("Pneumothorax", i).findings)) for i in range(3000))
    assert set(draws) == set(empirical)
    sets = sorted(empirical)
    observed = np.array([draws[s] for s in sets])
    expected = np.array([empirical[s] for s in sets], dtype=float)
    expected *= observed.sum() / expected.sum()
    assert chisquare(observed, expected).pvalue > 0.001
    assert 0.5 * np.abs(observed / observed.sum() - expected / expected.sum()).sum() < 0.03

    flat = gen.Planner(labels, PromptTemplates.load(), gen.GenerateConfig(seed=3, temperature=1e6).validated())
    flat_draws = collections.Counter(tuple(sorted(flat.job("Pneumothorax", i).findings)) for i in range(3000))
    assert max(flat_draws.values()) / min(flat_draws.values()) < 1.2  # T -> inf: uniform over real sets


def test_image_seeds_are_unique_and_follow_the_run_seed(tiny_model):
    """Every (class, index) has its own seed, and --seed changes every one of them (and the label draws)."""
    labels = _labels(tiny_model)
    counts = {"Rib Fracture": 50, "Pneumothorax": 50}
    runs = {
        seed: gen.Planner(labels, PromptTemplates.load(), gen.GenerateConfig(seed=seed).validated()).jobs(counts)
        for seed in (0, 1)
    }
    for jobs in runs.values():
        assert len({j.seed for j in jobs}) == 100 and len({j.dicom_id for j in jobs}) == 100
    assert not {j.seed for j in runs[0]} & {j.seed for j in runs[1]}
    pneumothorax = [[j.findings for j in runs[s] if j.target_class == "Pneumothorax"] for s in (0, 1)]
    assert pneumothorax[0] != pneumothorax[1]  # label sets are drawn from the run seed too
    again = gen.Planner(labels, PromptTemplates.load(), gen.GenerateConfig(seed=0).validated()).jobs(counts)
    assert again == runs[0]


def test_rerun_with_other_settings_is_refused(tiny_model, tmp_path):
    out = tmp_path / "out"
    gen.generate(tiny_model, ["Rib Fracture"], 1, out, batch_size=1, **FAST)
    with pytest.raises(UserError, match="steps: 4 -> 5"):
        gen.generate(tiny_model, ["Rib Fracture"], 1, out, batch_size=1, **{**FAST, "steps": 5})


_CRASHING_RUN = """
import os, signal, sys
import synth.inference as gen
import synth.inference.orchestration as orchestration
from synth.io import save_image_atomic
saved = 0
def save_then_die(path, image, **kw):
    global saved
    saved += 1
    if saved == 4:  # mid-batch: leave a half-written temp PNG, then die like kill -9
        (path.parent / f".{path.name}.half.tmp").write_bytes(b"\\x89PNG")
        os.kill(os.getpid(), signal.SIGKILL)
    save_image_atomic(path, image, **kw)
orchestration.save_image_atomic = save_then_die
gen.generate(sys.argv[1], ["Rib Fracture", "Pneumothorax"], 4, sys.argv[2], batch_size=3, steps=2, progress=False)
"""


def test_kill_9_mid_batch_then_resume_gives_exactly_n(tiny_model, tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    crashed = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_CRASHING_RUN), str(tiny_model), str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert crashed.returncode == -9, crashed.stderr[-2000:]
    pngs = sorted((out / "images").rglob("*.png"))
    assert len(pngs) == 3 and list((out / "images").rglob("*.tmp"))  # one full batch, one torn write
    assert len(read_manifest(out / "manifest.csv")) == 3  # the manifest matched the disk at the crash

    # resumed with another batch size (not a pinned setting): batches differ from the uninterrupted run's
    manifest = gen.generate(
        tiny_model, ["Rib Fracture", "Pneumothorax"], 4, out, batch_size=2, steps=2, progress=False
    )
    df = read_manifest(manifest)
    files = sorted(p.relative_to(out).as_posix() for p in (out / "images").rglob("*.png"))
    assert len(df) == 8 and df["fpath"].is_unique and sorted(df["fpath"]) == files
    assert df["target_class"].value_counts().to_dict() == {"Rib Fracture": 4, "Pneumothorax": 4}
    assert not list(out.rglob("*.tmp")) and not list(out.glob("manifest.rank*.csv"))

    # the interrupted + resumed run is the uninterrupted run: same rows (seeds, prompts, labels) and pixels
    whole = tmp_path / "whole"
    reference = read_manifest(
        gen.generate(tiny_model, ["Rib Fracture", "Pneumothorax"], 4, whole, batch_size=3, steps=2, progress=False)
    )
    key = ["fpath", "dicom_id", "seed", "prompt", "ViewPosition", *_labels(tiny_model).classes]
    resumed_rows = df.sort_values("fpath")[key].reset_index(drop=True)
    reference_rows = reference.sort_values("fpath")[key].reset_index(drop=True)
    pd.testing.assert_frame_equal(resumed_rows, reference_rows)
    assert reference["seed"].is_unique
    for fpath in reference["fpath"]:
        with Image.open(out / fpath) as a, Image.open(whole / fpath) as b:
            assert np.asarray(b).std() > 0, fpath  # a real image, not a constant that would match anything
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=fpath)


def test_xformers_request_falls_back_to_sdpa_with_one_warning(tiny_model):
    import torch

    if torch.cuda.is_available():
        pytest.skip("tests the CPU fallback")
    with pytest.warns(UserWarning, match="SDPA") as record:
        gen.load_pipeline(tiny_model, "ddim", torch.float32, torch.device("cpu"), enable_xformers=True)
    assert len([w for w in record if "xformers" in str(w.message)]) == 1


def test_accelerate_two_processes_merge_one_manifest_with_the_same_images(tiny_model, rib_run, tmp_path):
    """Sharded over 2 CPU processes: one manifest, no duplicates, pixels equal to the 1-process run.

    ``--multi_gpu`` on a CPU-only host gives torchrun workers with the gloo backend (MULTI_CPU, via
    synth.distributed.process_state); ``--cpu`` would start ONE process and prove nothing.
    """
    out = tmp_path / "mp"
    from two_processes import LAUNCH_TWO_CPU_PROCESSES

    cmd = [
        *LAUNCH_TWO_CPU_PROCESSES,
        "-m",
        "synth.inference",
        "--model",
        str(tiny_model),
        "--class",
        "Rib Fracture",
        "--n",
        "5",
        "--seed",
        "7",
        "--steps",
        "4",
        "--guidance-scale",
        "3.0",
        "--batch-size",
        "1",
        "--out",
        str(out),
        "--no-progress",
    ]
    done = subprocess.run(cmd, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "sharded over 2 process(es)" in done.stderr
    df, single = read_manifest(out / "manifest.csv"), read_manifest(rib_run).iloc[:5]
    assert list(df["fpath"]) == list(single["fpath"]) and list(df["seed"]) == list(single["seed"])
    assert not list(out.glob("manifest.rank*.csv"))
    for fpath in df["fpath"]:
        np.testing.assert_array_equal(
            np.asarray(Image.open(out / fpath)), np.asarray(Image.open(rib_run.parent / fpath))
        )


def test_config_yaml_defaults_and_flag_overrides(tmp_path):
    cfg = gen.GenerateConfig.from_yaml(
        Path(__file__).resolve().parents[1] / "configs/generate/default.yaml", steps=3, n="auto"
    )
    assert (cfg.steps, cfg.n, cfg.target_count, cfg.scheduler) == (3, "auto", 1000, "dpm++")
    bad = tmp_path / "bad.yaml"
    bad.write_text("stepz: 3\n")
    with pytest.raises(UserError, match="unknown key.*stepz"):
        gen.GenerateConfig.from_yaml(bad)


def test_every_setting_is_a_flag_and_reaches_the_config(tmp_path, monkeypatch):
    """Each GenerateConfig field has its ``synth generate`` flag (``progress``: ``--no-progress``); a given flag wins
    over the YAML, one not given leaves the YAML's value (an off switch included)."""
    import dataclasses

    from synth.commands.generate import GENERATE_FLAGS

    assert set(GENERATE_FLAGS) | {"progress"} == {f.name for f in dataclasses.fields(gen.GenerateConfig)}
    seen = {}
    monkeypatch.setattr(gen, "run", lambda model, names, out, cfg: seen.setdefault("cfg", cfg))
    monkeypatch.setattr("synth.commands.generate._summary", lambda manifest: None)
    yaml_file = tmp_path / "generate.yaml"
    yaml_file.write_text("steps: 9\nenable_xformers: true\nguidance_scale: 2.5\n")
    (tmp_path / "m.csv").write_text("")  # a --train-manifest must exist when the config loads
    args = ["generate", "--model", str(tmp_path), "--class", "rib fracture", "--out", str(tmp_path / "out")]
    flags = ["--config", str(yaml_file), "--compile", "--batch-size", "3", "--train-manifest", str(tmp_path / "m.csv")]
    result = CliRunner().invoke(app, [*args, *flags, "--no-progress"])
    assert result.exit_code == 0, result.output
    cfg = seen["cfg"]
    assert (cfg.compile, cfg.batch_size, cfg.train_manifest) == (True, 3, str(tmp_path / "m.csv"))
    assert (cfg.steps, cfg.enable_xformers, cfg.guidance_scale, cfg.progress) == (9, True, 2.5, False)


def test_pipeline_folder_without_synth_meta_needs_train_manifest(tiny_model, tmp_path):
    """A user's own SD folder: no synth_meta.json, so the training manifest is passed explicitly."""
    import shutil

    plain = tmp_path / "plain"
    shutil.copytree(tiny_model, plain, ignore=shutil.ignore_patterns(gen.META_NAME))
    with pytest.raises(UserError, match="--train-manifest"):
        gen.load_generator_info(plain)
    info = gen.load_generator_info(plain, train_manifest=tiny_model.parent / "data" / "manifest.csv")
    assert info.resolution is None and info.fingerprint != gen.load_generator_info(tiny_model).fingerprint
