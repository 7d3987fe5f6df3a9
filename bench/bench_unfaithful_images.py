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

import numpy as np
import pandas as pd
from ablation_stages import arm_bench_parser, load_run_rows, run_arm_probs, stage_folder, train_and_predict

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
    from synth.filtering.oracle import oracle_report
    from synth.manifest import concat_manifests, label_matrix, read_manifest

    ap = arm_bench_parser(__doc__.split("\n")[0], "outputs/bench/unfaithful_images")
    ap.add_argument("--min", type=int, default=20, help="faithful and unfaithful images a class needs to take part")
    args = ap.parse_args()

    root = args.ablation_dir
    run = load_run_rows(root, args.config)
    synth = read_manifest(stage_folder(root, "generate") / "manifest.csv")
    _, detected = oracle_report(
        stage_folder(root, "oracle") / "oracle", synth, synth["target_class"], np.ones(len(synth)), 64
    )
    sets = pick_sets(synth, detected, args.min)
    judged = sorted(pd.unique(sets["faithful"]["target_class"]))
    print(f"{len(judged)} classes, {len(sets['faithful'])} images per set: {', '.join(judged)}", flush=True)

    probs: dict[str, list[np.ndarray]] = {arm: [] for arm in ARMS}
    seconds = {}
    for arm in ARMS:
        train_df = concat_manifests([run.real, sets[arm]], run.data_manifest.parent)
        for seed in args.seeds:
            p, seconds[f"{arm}/seed-{seed}"] = train_and_predict(
                run, "mix", seed, train_df, args.out / arm / f"seed-{seed}"
            )
            probs[arm].append(p)
    probs["real_only"] = run_arm_probs(root, "real_only", args.seeds, run.heldout_name)

    y = label_matrix(run.test, run.classes)
    patients = run.test["subject_id"].astype(str).to_numpy()
    table = {}
    for base, arm in (("faithful", "unfaithful"), ("real_only", "faithful"), ("real_only", "unfaithful")):
        table[f"{arm} - {base}"] = per_class_differences(y, probs[base], probs[arm], run.classes, judged, patients)
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
