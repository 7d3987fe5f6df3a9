"""Does a real-data-only gate track the oracle once the real data has MIMIC-like tail counts? (issue #18)

On phantom-cpu (6,953 training images) a tail class has 4-76 real training positives, and no real-data score
tried so far ranks the class sets as the oracle's fidelity does (Spearman -0.6 to +0.47, ``gate_variants*.json``).
The oracle is itself a verifier, trained on ~350 positives of every class. So is the gate's failure the method's,
or only the few real positives'? MIMIC-CXR-LT's training split (~258,000 images) has hundreds of positives for
most tail classes; the phantom can render that many real images.

For each cohort size N this renders a fresh natural-prevalence phantom cohort (its own seed: no patient, generated
image or oracle image shared), splits it by patient as ``synth prepare`` does, trains the filter's verifier on its
train split (``configs/filter/verifier-64px.yaml``, the run's recipe) and scores the generated class sets of one or
more finished ``synth ablate`` runs, class by class:

  transfer       the filter's gate (train-on-synthetic probe, AUROC on real train+val rows) in these features;
  share@5%FPR    the share of the set scoring above the 95th percentile of the cohort's real val negatives,
                 adjusted for those 5 % (classify-and-count: ``(rate - 0.05) / 0.95``);
  acc@5%FPR      the same share divided by the verifier's recall of real val positives at that threshold
                 (adjusted classify-and-count, Forman 2008; only with >= 10 val positives).

Each score's Spearman rank correlation with the oracle's fidelity (share of the set in which the oracle sees its
target) is printed per run. Test rows of the cohort are never read; the oracle only judges.

    python bench/bench_gate_scale.py outputs/ablations/phantom-cpu [more runs] --n 10000 40000 100000 \
        [--json bench/results/gate_scale.json] [--work /tmp/gate-scale]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
from ablation_stages import stage_folder

VERIFIER_CONFIG = "configs/filter/verifier-64px.yaml"
FPR = 0.05
MIN_VAL_POSITIVES = 10


def train_cohort_verifier(n: int, seed: int, work: Path):
    """Render ``n`` natural-prevalence phantom images, split them by patient, train the verifier on train."""
    from synth.filtering import load_verifier_config
    from synth.filtering.verifier import load_verifier, train_verifier
    from synth.manifest import read_manifest
    from synth.phantom import render_dataset
    from synth.prepare import prepare_dataset

    out = work / f"n{n}-seed{seed}"
    labels = Path(render_dataset(n=n, size=64, seed=seed, out=out / "phantom", progress=False))
    manifest = prepare_dataset("cxrlt", labels, labels.parent, out / "prepared", size=64, seed=seed, overwrite=True)
    data = read_manifest(manifest)
    if not (out / "verifier" / "verifier.json").exists():
        train_verifier(data, out / "verifier", load_verifier_config(VERIFIER_CONFIG))
    return data, load_verifier(out / "verifier")


def oracle_detections(root: Path, synth: pd.DataFrame) -> np.ndarray:
    from synth.filtering.oracle import oracle_report

    oracle = stage_folder(root, "oracle") / "oracle"
    _, detected = oracle_report(oracle, synth, synth["target_class"], np.ones(len(synth)), 64)
    return detected


def class_scores(verifier, data: pd.DataFrame, synth: pd.DataFrame, gate_options: dict) -> pd.DataFrame:
    """Per generated class: the three scores of the module doc, from this cohort's train+val rows only."""
    from synth.filtering.transfer import transfer_gate
    from synth.filtering.verifier import FeatureExtractor, real_training_rows, run_inference
    from synth.manifest import label_matrix

    val = data[(data["split"] == "val") & (data["source"] == "real")].reset_index(drop=True)
    real = pd.concat([real_training_rows(data), val], ignore_index=True)
    fx = FeatureExtractor(verifier.model, verifier.image_size, verifier.pixel_mean, verifier.pixel_std, verifier.name)
    syn_out, real_out = run_inference(fx, synth, 64, 8), run_inference(fx, real, 64, 8)
    val_probs = real_out.probs[len(real) - len(val) :]
    classes = list(verifier.classes)
    target = synth["target_class"].to_numpy()
    generated = [c for c in pd.unique(target) if c in classes]
    real_y, val_y = label_matrix(real, generated), label_matrix(val, generated)
    syn_y = label_matrix(synth, generated)
    rows = []
    for j, cls in enumerate(generated):
        k = classes.index(cls)
        mine = target == cls
        threshold = np.quantile(val_probs[val_y[:, j] == 0, k], 1 - FPR)
        rate = float((syn_out.probs[mine, k] > threshold).mean())
        val_pos = val_probs[val_y[:, j] == 1, k]
        recall = float((val_pos > threshold).mean()) if len(val_pos) >= MIN_VAL_POSITIVES else np.nan
        others = (real_y[:, [i for i in range(len(generated)) if i != j]] == 1).any(axis=1)
        gate = transfer_gate(
            cls,
            syn_out.features,
            target,
            syn_y[:, j],
            real_out.features,
            real_y[:, j].copy(),
            real["subject_id"].astype(str).to_numpy(),
            real_exclude=others,
            **gate_options,
        )
        rows.append(
            {
                "class": cls,
                "real_train_positives": int((label_matrix(real_training_rows(data), [cls])[:, 0] == 1).sum()),
                "val_positives": int(len(val_pos)),
                "transfer": gate.auroc,
                "share@5%FPR": (rate - FPR) / (1 - FPR),
                "acc@5%FPR": (rate - FPR) / (recall - FPR) if recall > FPR else np.nan,
            }
        )
    return pd.DataFrame(rows)


def _spearman(x: pd.Series, y: pd.Series) -> float | None:
    """Spearman's rho over the classes where both are defined; None with fewer than 3."""
    from scipy.stats import spearmanr

    both = x.notna() & y.notna()
    return float(spearmanr(x[both], y[both]).statistic) if both.sum() >= 3 else None


def main() -> None:
    import json

    from synth.filtering.pipeline import TRANSFER_GATE_OPTIONS
    from synth.manifest import read_manifest

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("ablation_dirs", type=Path, nargs="+")
    ap.add_argument("--n", type=int, nargs="+", default=[10000, 40000, 100000], help="cohort sizes to render")
    ap.add_argument("--seed", type=int, default=11, help="phantom seed of the cohorts (not a seed the runs used)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/gate-scale"), help="cohorts and verifiers go here")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    runs = {}
    for root in args.ablation_dirs:
        synth = read_manifest(stage_folder(root, "generate") / "manifest.csv")
        summary = json.loads((stage_folder(root, "filter") / "filtered" / "summary.json").read_text())
        options = {kw: summary["config"][field] for kw, field in TRANSFER_GATE_OPTIONS.items()}
        runs[str(root)] = (synth, oracle_detections(root, synth), options)

    table = []
    for n in args.n:
        start = time.perf_counter()
        data, verifier = train_cohort_verifier(n, args.seed, args.work)
        trained = time.perf_counter() - start
        for name, (synth, detected, options) in runs.items():
            scores = class_scores(verifier, data, synth, options)
            target = synth["target_class"].to_numpy()
            scores["fidelity"] = [float(np.nanmean(detected[target == c])) for c in scores["class"]]
            judged = scores.dropna(subset=["fidelity"])
            rho = {s: _spearman(judged["fidelity"], judged[s]) for s in ("transfer", "share@5%FPR", "acc@5%FPR")}
            print(f"\nN={n} ({len(data)} rows, verifier {trained:.0f} s) run={name}")
            print(judged.round(3).to_string(index=False))
            shown = ", ".join(f"{s} {v:+.2f}" for s, v in rho.items() if v is not None)
            print(f"Spearman vs oracle fidelity: {shown}")
            entry = {"n": n, "seed": args.seed, "run": name, "verifier_seconds": round(trained, 1), "spearman": rho}
            table.append({**entry, "classes": judged.to_dict(orient="records")})
    if args.json:
        from synth.provenance import write_bench_result

        write_bench_result(args.json, "gate_scale", {"cohorts": table, "verifier_config": VERIFIER_CONFIG})


if __name__ == "__main__":
    main()
