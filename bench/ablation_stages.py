"""Find a finished ``synth ablate`` run's stage folders for the benches that re-use them.

Stage folders are named ``<stage>-<content hash>``; an output root keeps the old folder when a config edit
changes the hash, so "the newest match" could pair one run's data with another run's oracle. A bench therefore
takes a stage only when exactly one folder matches, and otherwise says which to keep.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


def stage_folder(root: Path, prefix: str) -> Path:
    """The single ``<prefix>-*`` folder under ``root`` that holds a finished stage (its ``done.json``)."""
    found = sorted(p for p in Path(root).glob(f"{prefix}-*") if (p / "done.json").exists())
    if not found:
        raise SystemExit(f"{root}: no finished {prefix}-* stage folder; run `synth ablate` to the end first")
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise SystemExit(
            f"{root}: {len(found)} finished {prefix}-* folders ({names}) from different configs; point the bench at "
            "an output folder that holds one run (move the others away)"
        )
    return found[0]


def generation_of(root: Path) -> tuple[dict[str, Any], Any]:
    """The run's generate stage: its sampling settings (``generate_run.json``) and its generator
    (:class:`~synth.inference.model_folder.GeneratorInfo`: model folder, prompt templates, resolution)."""
    from synth.inference.model_folder import load_generator_info
    from synth.inference.planning import RUN_SETTINGS_NAME

    settings = json.loads((stage_folder(root, "generate") / RUN_SETTINGS_NAME).read_text())
    return settings, load_generator_info(settings["model_dir"], settings["train_manifest"])


# ---------------------------------------------------------------- benches that train extra arms on a finished run


@dataclass
class RunRows:
    """A finished run's config and rows as its arms saw them."""

    cfg: Any  #: the AblationConfig the benches train with (the run's committed config)
    data_manifest: Path
    real: pd.DataFrame  #: every real row (all splits), as the arms were given them
    classes: list[str]  #: the classes annotated in the real training split (the arms' output order)
    test: pd.DataFrame  #: the evaluation split, then the held-out phantom rows: the order of the arms' stored probs
    heldout_name: str  #: the held-out stage folder's name (prefix of each arm's stored held-out probs)


def arm_bench_parser(description: str, out: str) -> argparse.ArgumentParser:
    """The options every extra-arm bench takes: the run, its config, the seeds, where to train, the result file."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("ablation_dir", type=Path)
    ap.add_argument("--config", type=Path, default=Path("configs/ablation/phantom-cpu.yaml"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", type=Path, default=Path(out))
    ap.add_argument("--json", type=Path, default=None)
    return ap


def load_run_rows(root: Path, config: Path) -> RunRows:
    from synth.ablation.config import load_ablation_config
    from synth.manifest import annotated_classes, concat_manifests, read_manifest

    cfg = load_ablation_config(config)
    data_manifest = stage_folder(root, "data") / "prepared" / "manifest.csv"
    real = read_manifest(data_manifest)
    heldout_dir = stage_folder(root, "heldout")
    test = real[real["split"] == cfg.evaluation.split].reset_index(drop=True)
    test = concat_manifests([test, read_manifest(heldout_dir / "phantom" / "heldout.csv")], data_manifest.parent)
    classes = annotated_classes(real[real["split"] == "train"])
    return RunRows(cfg, data_manifest, real, classes, test, heldout_dir.name)


def train_and_predict(
    run: RunRows, mode: str, seed: int, train_df: pd.DataFrame, folder: Path, row_repeats: dict | None = None
) -> tuple[np.ndarray, float | None]:
    """Train one extra arm/seed with the run's classifier recipe and predict ``run.test`` (kept in ``folder``: a
    rerun reads it back); its probabilities and training + prediction seconds (None if not recorded)."""
    from synth.ablation.runner import _predict_to
    from synth.ablation.stages import train_arm

    if not (folder / "probs.npy").exists():
        start = time.time()
        model = train_arm(run.cfg, mode, seed, train_df, run.classes, folder / "model", row_repeats=row_repeats)
        _predict_to(run.cfg, Path(model), run.test, run.classes, folder / "probs.npy")
        (folder / "seconds.json").write_text(json.dumps(round(time.time() - start, 1)))
    seconds = json.loads((folder / "seconds.json").read_text()) if (folder / "seconds.json").exists() else None
    return np.load(folder / "probs.npy"), seconds


def run_arm_probs(root: Path, arm: str, seeds: list[int], heldout_name: str) -> list[np.ndarray]:
    """The run's own arm ``arm``: per seed, its test probabilities then its held-out ones (the ablation's order)."""
    found = sorted((root / "arms").glob(f"{arm}-*"))
    if len(found) != 1:
        raise SystemExit(f"{root / 'arms'}: expected one {arm}-* folder, found {len(found)}")
    out = []
    for seed in seeds:
        folder = found[0] / f"seed-{seed}"
        out.append(np.concatenate([np.load(folder / "test_probs.npy"), np.load(folder / f"{heldout_name}_probs.npy")]))
    return out
