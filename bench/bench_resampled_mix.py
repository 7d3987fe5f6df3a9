"""Does the filtered synthetic mix add anything on top of re-sampling the real tail? (issue #18's quality target)

On the fresh phantom-cpu run the filtered arm lost to ``real_resampled`` (tail -0.048): re-presenting the few
real tail positives is worth more than adding generated ones. The two are not exclusive. This bench trains
the run's classifier on the filtered arm's rows (real + kept synthetic, synthetic-mix recipe) WITH the
``real_resampled`` arm's repeat-factor plan on the real rows, per seed, and compares it on the run's test +
held-out rows with the run's own ``real_resampled`` and ``synthetic_filtered`` arms (same seeds; paired
patient bootstrap, seed-averaged; head / medium / tail mAP as the report groups them). Nothing is chosen on
the test rows.

    python bench/bench_resampled_mix.py outputs/ablations/phantom-cpu [--config configs/ablation/phantom-cpu.yaml] \
        [--seeds 0 1 2] [--json F]

CPU cost: one classifier training + prediction per seed, ~2.5 min each on 2 cores at phantom-cpu size.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from ablation_stages import stage_folder
from bench_unfaithful_images import arm_probs


def run_arm_folder(root: Path, arm: str) -> Path:
    """The run's single ``arms/<arm>-<key>`` folder."""
    found = sorted((root / "arms").glob(f"{arm}-*"))
    if len(found) != 1:
        raise SystemExit(f"{root / 'arms'}: expected one {arm}-* folder, found {len(found)}")
    return found[0]


def main() -> None:
    from classifier.metrics import paired_bootstrap_runs
    from synth.ablation.config import load_ablation_config
    from synth.ablation.runner import _predict_to
    from synth.ablation.stages import resample_plan, train_arm
    from synth.manifest import annotated_classes, concat_manifests, label_matrix, read_manifest

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("ablation_dir", type=Path)
    ap.add_argument("--config", type=Path, default=Path("configs/ablation/phantom-cpu.yaml"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", type=Path, default=Path("outputs/bench/resampled_mix"))
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    root, cfg = args.ablation_dir, load_ablation_config(args.config)
    data_manifest = stage_folder(root, "data") / "prepared" / "manifest.csv"
    real = read_manifest(data_manifest)
    kept = read_manifest(stage_folder(root, "filter") / "filtered" / "kept.csv")
    classes = annotated_classes(real[real["split"] == "train"])
    repeats = resample_plan(cfg, real, classes).repeats
    train_df = concat_manifests([real, kept], data_manifest.parent)
    heldout_dir = stage_folder(root, "heldout")
    test = real[real["split"] == cfg.evaluation.split].reset_index(drop=True)
    test = concat_manifests([test, read_manifest(heldout_dir / "phantom" / "heldout.csv")], data_manifest.parent)

    probs, seconds = [], {}
    for seed in args.seeds:
        folder = args.out / f"seed-{seed}"
        if not (folder / "probs.npy").exists():
            start = time.time()
            model = train_arm(cfg, "mix", seed, train_df, classes, folder / "model", row_repeats=repeats)
            _predict_to(cfg, Path(model), test, classes, folder / "probs.npy")
            (folder / "seconds.json").write_text(json.dumps(round(time.time() - start, 1)))
        seconds[f"seed-{seed}"] = json.loads((folder / "seconds.json").read_text())
        print(f"seed-{seed}: {seconds[f'seed-{seed}']} s", flush=True)
        probs.append(np.load(folder / "probs.npy"))

    report = json.loads((root.parent.parent / "reports" / root.name / "results.json").read_text())
    groups = report["groups"]
    y = label_matrix(test, classes)
    patients = test["subject_id"].astype(str).to_numpy()
    table = {}
    for base in ("real_resampled", "synthetic_filtered", "real_only"):
        folder = run_arm_folder(root, base)
        base_probs = [arm_probs(folder / f"seed-{s}", heldout_dir.name) for s in args.seeds]
        diff = paired_bootstrap_runs(y, base_probs, probs, classes, groups, patients, 1000, 0)
        table[f"filtered mix + resampling - {base}"] = {
            k: {"diff": v["diff"], "ci": list(v["ci"]), "run_diffs": v["run_diffs"]} for k, v in diff.items()
        }
    for name, rows in table.items():
        print(f"\n{name} (mAP, seed mean, 95 % paired patient-bootstrap interval)")
        for key, r in rows.items():
            if r["diff"] is not None:
                print(f"  {key:10s} {r['diff']:+.3f}  [{r['ci'][0]:+.3f}, {r['ci'][1]:+.3f}]")
    if args.json:
        from synth.provenance import write_bench_result

        payload = {"ablation_dir": str(root), "config": str(args.config), "seeds": args.seeds, "seconds": seconds}
        payload.update(synthetic_rows=len(kept), repeated_real_rows=len(repeats))
        write_bench_result(args.json, "resampled_mix", {**payload, "differences": table})


if __name__ == "__main__":
    main()
