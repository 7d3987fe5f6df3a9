"""Do the generated images the phantom oracle rejects help or harm the classifier? (issue #18)

The transfer gate passes class sets the oracle judges 0 % faithful as readily as 100 % faithful ones
(``bench_gate_variants.py --dose``), so whether that is a blind spot depends on what such images do to the
classifier. This bench takes a finished ``synth ablate`` run and, for every generated class with at least
``--min`` images the oracle judged faithful and as many it judged unfaithful, picks the same number of each
(the smaller count). It then trains the run's classifier with the synthetic-mix arm's recipe on the real
training rows plus

  faithful     those classes' oracle-faithful images,
  unfaithful   the same number of their oracle-unfaithful images,

per seed, and scores the run's test + held-out rows. Per class (and their mean) it prints the paired
patient-bootstrap difference, seed-averaged, of unfaithful vs faithful and of each vs the run's own
``real_only`` arm (read from its folder, same seeds). The oracle only picks the two sets; nothing is chosen on
the test rows.

    python bench/bench_unfaithful_images.py outputs/ablations/phantom-cpu \
        [--config configs/ablation/phantom-cpu.yaml] [--seeds 0 1 2] [--min 20] [--json F]

CPU cost: one classifier training + prediction per (set, seed), ~2.5 min each on 2 cores at phantom-cpu size.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
from ablation_stages import stage_folder

ARMS = ("faithful", "unfaithful")


def pick_sets(synth: pd.DataFrame, detected: np.ndarray, minimum: int, seed: int = 0) -> dict[str, pd.DataFrame]:
    """Per eligible class, ``n`` oracle-faithful and ``n`` oracle-unfaithful generated rows (n = the smaller count)."""
    rng = np.random.default_rng(seed)
    picked: dict[str, list[np.ndarray]] = {arm: [] for arm in ARMS}
    for cls in pd.unique(synth["target_class"]):
        own = (synth["target_class"] == cls).to_numpy()
        kinds = {
            "faithful": np.flatnonzero(own & (detected == 1)),
            "unfaithful": np.flatnonzero(own & (detected == 0)),
        }
        n = min(len(rows) for rows in kinds.values())
        if n < minimum:
            continue
        for arm, rows in kinds.items():
            picked[arm].append(rng.choice(rows, n, replace=False))
    return {arm: synth.iloc[np.sort(np.concatenate(rows))] for arm, rows in picked.items() if rows}


def arm_probs(folder: Path, heldout_name: str | None) -> np.ndarray:
    """An arm/seed's probabilities of the test rows, then of the held-out rows, as the ablation stored them."""
    probs = np.load(folder / "test_probs.npy")
    if heldout_name is not None:
        probs = np.concatenate([probs, np.load(folder / f"{heldout_name}_probs.npy")])
    return probs


def per_class_differences(y, base: list[np.ndarray], arm: list[np.ndarray], classes, judged, patients) -> dict:
    """Seed-averaged paired bootstrap of AP(arm) - AP(base) per judged class and over them (``mean``)."""
    from classifier.metrics import paired_bootstrap_runs

    idx = [classes.index(c) for c in judged]
    out = {}
    for name, cols in [("mean", idx), *((c, [classes.index(c)]) for c in judged)]:
        groups = {classes[j]: "tail" for j in cols}
        picked = [classes[j] for j in cols]
        diff = paired_bootstrap_runs(
            y[:, cols], [p[:, cols] for p in base], [p[:, cols] for p in arm], picked, groups, patients, 1000, 0
        )["tail_map"]
        out[name] = {"diff": diff["diff"], "ci": list(diff["ci"]), "run_diffs": diff["run_diffs"]}
    return out


def main() -> None:
    from synth.ablation.config import load_ablation_config
    from synth.ablation.runner import _predict_to
    from synth.ablation.stages import train_arm
    from synth.filtering.oracle import oracle_report
    from synth.manifest import annotated_classes, concat_manifests, label_matrix, read_manifest

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("ablation_dir", type=Path)
    ap.add_argument("--config", type=Path, default=Path("configs/ablation/phantom-cpu.yaml"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--min", type=int, default=20, help="faithful and unfaithful images a class needs to take part")
    ap.add_argument("--out", type=Path, default=Path("outputs/bench/unfaithful_images"))
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    root, cfg = args.ablation_dir, load_ablation_config(args.config)
    data_manifest = stage_folder(root, "data") / "prepared" / "manifest.csv"
    real = read_manifest(data_manifest)
    synth = read_manifest(stage_folder(root, "generate") / "manifest.csv")
    _, detected = oracle_report(
        stage_folder(root, "oracle") / "oracle", synth, synth["target_class"], np.ones(len(synth)), 64
    )
    sets = pick_sets(synth, detected, args.min)
    judged = sorted(pd.unique(sets["faithful"]["target_class"]))
    classes = annotated_classes(real[real["split"] == "train"])
    test = real[real["split"] == cfg.evaluation.split].reset_index(drop=True)
    heldout_dir = stage_folder(root, "heldout")
    heldout = read_manifest(heldout_dir / "phantom" / "heldout.csv")
    test = concat_manifests([test, heldout], data_manifest.parent)
    print(f"{len(judged)} classes, {len(sets['faithful'])} images per set: {', '.join(judged)}", flush=True)

    probs: dict[str, list[np.ndarray]] = {arm: [] for arm in ARMS}
    seconds = {}
    for arm in ARMS:
        train_df = concat_manifests([real, sets[arm]], data_manifest.parent)
        for seed in args.seeds:
            folder = args.out / arm / f"seed-{seed}"
            if not (folder / "probs.npy").exists():
                start = time.time()
                model = train_arm(cfg, "mix", seed, train_df, classes, folder / "model")
                _predict_to(cfg, Path(model), test, classes, folder / "probs.npy")
                seconds[f"{arm}/seed-{seed}"] = round(time.time() - start, 1)
                print(f"{arm}/seed-{seed}: {seconds[f'{arm}/seed-{seed}']} s", flush=True)
            probs[arm].append(np.load(folder / "probs.npy"))
    real_only = sorted((root / "arms").glob("real_only-*"))
    if len(real_only) != 1:
        raise SystemExit(f"{root / 'arms'}: expected one real_only-* folder, found {len(real_only)}")
    probs["real_only"] = [arm_probs(real_only[0] / f"seed-{s}", heldout_dir.name) for s in args.seeds]

    y = label_matrix(test, classes)
    patients = test["subject_id"].astype(str).to_numpy()
    table = {}
    for base, arm in (("faithful", "unfaithful"), ("real_only", "faithful"), ("real_only", "unfaithful")):
        table[f"{arm} - {base}"] = per_class_differences(y, probs[base], probs[arm], classes, judged, patients)
    for name, rows in table.items():
        print(f"\n{name} (AP, seed mean, 95 % paired patient-bootstrap interval)")
        for cls, r in rows.items():
            print(f"  {cls[:26]:26s} {r['diff']:+.3f}  [{r['ci'][0]:+.3f}, {r['ci'][1]:+.3f}]")
    if args.json:
        from synth.provenance import write_bench_result

        fidelity = {c: float(np.nanmean(detected[(synth["target_class"] == c).to_numpy()])) for c in judged}
        payload = {"ablation_dir": str(root), "config": str(args.config), "seeds": args.seeds, "min": args.min}
        payload.update(images_per_set=len(sets["faithful"]), classes=judged, fidelity=fidelity, seconds=seconds)
        write_bench_result(args.json, "unfaithful_images", {**payload, "differences": table})


if __name__ == "__main__":
    main()
