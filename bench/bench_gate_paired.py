"""Does a class's synthetic set carry its finding? Ask the generator for each image's twin without it (issue #18).

Why: the transfer gate's probe separates a class's generated images from other classes' generated images, but
the two sides differ in more than the class: each prompt lists the class's co-occurring findings, which the
real positives share, so a set that never draws the finding can still "transfer" (``bench_gate_variants.py
--dose``: sets the oracle judged 0 % faithful passed as readily as faithful ones). Here each generated image
of class c gets a control rendered by the same generator: the same seed, view and co-occurring findings, the
prompt without c. A pair differs only where the generator drew something for c, so these scores ask about c
alone:

  paired-uplift              mean over pairs of the real-trained verifier's c probability, image minus control;
  paired-win                 the share of pairs whose image the verifier scores above its control for c;
  paired-transfer-<space>    the transfer gate with the class's controls as its only negatives (a probe fitted on
                             images vs controls, scored on real train+val rows; AUROC).

They use the generator, the verifier (trained on the real training split) and real train + val rows: no test
row and no oracle. The oracle only judges the ranking (Spearman rho vs its fidelity, the bar being 0.6).

    python bench/bench_gate_paired.py outputs/ablations/phantom-cpu --controls /tmp/controls \\
        [--cache /tmp/embeddings.npz] [--json bench/results/gate_paired.json]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
from ablation_stages import generation_of, stage_folder
from bench_gate_variants import RunInputs, _load
from scipy.stats import spearmanr

from synth.taxonomy import CXR_LT_CLASSES


def control_rows(synth: pd.DataFrame, templates) -> pd.DataFrame:
    """Each generated row's control: its label set without its target class, prompt re-rendered, same seed."""
    rows = []
    for _, row in synth.iterrows():
        findings = [c for c in CXR_LT_CLASSES if row.get(c) == 1.0]
        if templates.render(findings, row["ViewPosition"]) != row["prompt"]:
            raise SystemExit(f"{row['dicom_id']}: the templates do not re-render the stored prompt")
        control = row.copy()
        control[row["target_class"]] = 0.0
        control["prompt"] = templates.render([c for c in findings if c != row["target_class"]], row["ViewPosition"])
        control["fpath"] = "controls/" + row["fpath"].split("/", 1)[1]
        rows.append(control)
    return pd.DataFrame(rows).reset_index(drop=True)


def render_controls(root: Path, controls: pd.DataFrame, out: Path, batch_size: int = 16) -> float:
    """Render the controls the way ``synth generate`` rendered their twins (same model, sampler, steps,
    guidance, per-image seed); images already on disk are kept. Returns seconds spent."""
    import torch

    from synth.inference.pipeline import load_pipeline, pipeline_resolution, render
    from synth.inference.planning import ImageJob

    settings, info = generation_of(root)
    todo = controls[[not (out / f).exists() for f in controls["fpath"]]]
    if todo.empty:
        return 0.0
    start = time.time()
    pipe = load_pipeline(info.model_dir, settings["scheduler"], getattr(torch, settings["dtype"]), torch.device("cpu"))
    resolution = pipeline_resolution(pipe, info)
    for first in range(0, len(todo), batch_size):
        batch = todo.iloc[first : first + batch_size]
        jobs = [
            ImageJob(r.target_class, -1, int(r.seed), (), r.ViewPosition, r.prompt, settings["negative_prompt"])
            for r in batch.itertuples()
        ]
        images = render(pipe, jobs, resolution, settings["steps"], settings["guidance_scale"])
        for fpath, image in zip(batch["fpath"], images):
            (out / fpath).parent.mkdir(parents=True, exist_ok=True)
            image.save(out / fpath)
        print(f"  controls {first + len(batch)}/{len(todo)} ({time.time() - start:.0f} s)", flush=True)
    return time.time() - start


def embed_controls(root: Path, controls: pd.DataFrame, out: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Verifier features + probabilities of the controls, and of their twins (same row order)."""
    from synth.filtering.verifier import FeatureExtractor, load_verifier, run_inference

    v = load_verifier(stage_folder(root, "filter") / "verifier")
    fx = FeatureExtractor(v.model, v.image_size, v.pixel_mean, v.pixel_std, v.name)
    frame = controls.copy()
    frame.attrs["root"] = str(out)
    twins = controls.copy()
    twins["fpath"] = "images/" + controls["fpath"].str.split("/", n=1).str[1]
    twins.attrs["root"] = str(stage_folder(root, "generate"))
    result = {}
    for name, df in (("twin", twins), ("control", frame)):
        inference = run_inference(fx, df, 64, 8, True)
        result[name] = (inference.features, inference.probs)
    result["classes"] = v.classes
    return result


def oracle_on_controls(root: Path, controls: pd.DataFrame, out: Path) -> np.ndarray:
    """The oracle's detections of each control's target class (the judge only: does the generator draw c
    from the co-occurring findings alone, without the word?)."""
    from synth.filtering.oracle import oracle_report

    frame = controls.copy()
    frame.attrs["root"] = str(out)
    oracle = stage_folder(root, "oracle") / "oracle"
    return oracle_report(oracle, frame, frame["target_class"], np.ones(len(frame)), 64)[1]


def paired_scores(run: RunInputs, controls: pd.DataFrame, embedded: dict, control_detected: np.ndarray) -> list[dict]:
    """Per generated class: the three paired scores beside the oracle's fidelity (of the images and of their
    controls)."""
    from synth.filtering.transfer import transfer_gate
    from synth.manifest import label_matrix

    target = run.synth["target_class"].to_numpy()
    classes = list(pd.unique(target))
    twin_x, twin_p = embedded["twin"]
    control_x, control_p = embedded["control"]
    real_x = run.spaces["verifier"][1]
    real_y = label_matrix(run.real, classes)
    patients = run.real["subject_id"].astype(str).to_numpy()
    rows = []
    for j, cls in enumerate(classes):
        mine = target == cls
        k = embedded["classes"].index(cls)
        uplift = twin_p[mine, k] - control_p[mine, k]
        others = (real_y[:, [i for i in range(len(classes)) if i != j]] == 1).any(axis=1)
        n = int(mine.sum())
        gate = transfer_gate(
            cls,
            np.concatenate([twin_x[mine], control_x[mine]]),
            np.array([cls] * n + ["control"] * n),
            np.concatenate([np.ones(n), np.zeros(n)]),
            real_x,
            real_y[:, j],
            patients,
            real_exclude=others,
            **run.gate_options,
        )
        rows.append(
            {
                "class": cls,
                "fidelity": float(np.nanmean(run.detected[mine])),
                "fidelity_controls": float(np.nanmean(control_detected[mine])),
                "paired-uplift": float(uplift.mean()),
                "paired-win": float((uplift > 0).mean()),
                "paired-transfer-verifier": gate.auroc,
                "paired-transfer-ci": list(gate.ci),
                "real_positives": gate.n_real_pos,
            }
        )
    return rows


def _rho(rows: list[dict], key: str) -> float | None:
    pairs = [(r[key], r["fidelity"]) for r in rows if r[key] is not None and not np.isnan(r["fidelity"])]
    return float(spearmanr(*zip(*pairs)).statistic) if len(pairs) >= 3 else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ablation_dir", type=Path)
    parser.add_argument("--controls", type=Path, required=True, help="folder for the rendered controls (reused)")
    parser.add_argument("--cache", type=Path, help="bench_gate_variants embedding cache (.npz)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    run = _load(args.ablation_dir, args.cache)
    controls = control_rows(run.synth, generation_of(args.ablation_dir)[1].templates)
    seconds = render_controls(args.ablation_dir, controls, args.controls)
    embedded = embed_controls(args.ablation_dir, controls, args.controls)
    rows = paired_scores(run, controls, embedded, oracle_on_controls(args.ablation_dir, controls, args.controls))
    scores = ("paired-uplift", "paired-win", "paired-transfer-verifier")
    keys = ("fidelity_controls", *scores)
    print(f"{'class':28s} {'fidelity':>8s} " + " ".join(f"{k:>24s}" for k in keys))
    for r in sorted(rows, key=lambda r: r["fidelity"]):
        print(f"{r['class']:28s} {r['fidelity']:8.3f} " + " ".join(f"{r[k]:24.3f}" for k in keys))
    rhos = {k: _rho(rows, k) for k in scores}
    print("Spearman rho vs oracle fidelity: " + ", ".join(f"{k} {v:+.2f}" for k, v in rhos.items()))
    if args.json:
        from synth.provenance import write_bench_result

        figures = {"ablation_dir": str(args.ablation_dir), "spearman": rhos, "controls_render_s": seconds}
        write_bench_result(args.json, "gate_paired", {**figures, "classes": rows})


if __name__ == "__main__":
    main()
