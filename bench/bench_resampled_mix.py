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

import json

from ablation_stages import arm_bench_parser, load_run_rows, run_arm_probs, stage_folder, train_and_predict


def main() -> None:
    from classifier.metrics import paired_bootstrap_runs
    from synth.ablation.harm import judge_harm, paired_per_class
    from synth.ablation.stages import resample_plan
    from synth.manifest import concat_manifests, label_matrix, read_manifest

    args = arm_bench_parser(__doc__.split("\n")[0], "outputs/bench/resampled_mix").parse_args()
    root = args.ablation_dir
    run = load_run_rows(root, args.config)
    kept = read_manifest(stage_folder(root, "filter") / "filtered" / "kept.csv")
    repeats = resample_plan(run.cfg, run.real, run.classes).repeats
    train_df = concat_manifests([run.real, kept], run.data_manifest.parent)

    probs, seconds = [], {}
    for seed in args.seeds:
        p, seconds[f"seed-{seed}"] = train_and_predict(run, "mix", seed, train_df, args.out / f"seed-{seed}", repeats)
        print(f"seed-{seed}: {seconds[f'seed-{seed}']} s", flush=True)
        probs.append(p)

    groups = json.loads((root.parent.parent / "reports" / root.name / "results.json").read_text())["groups"]
    y = label_matrix(run.test, run.classes)
    patients = run.test["subject_id"].astype(str).to_numpy()
    table = {}
    for base in ("real_resampled", "synthetic_filtered", "real_only"):
        base_probs = run_arm_probs(root, base, args.seeds, run.heldout_name)
        diff = paired_bootstrap_runs(y, base_probs, probs, run.classes, groups, patients, 1000, 0)
        table[f"filtered mix + resampling - {base}"] = {
            k: {"diff": v["diff"], "ci": list(v["ci"]), "run_diffs": v["run_diffs"]} for k, v in diff.items()
        }
        if base == "real_only":  # the quality target's "do no harm" part, by the report's own rule
            per_class = paired_per_class(run.cfg, y, list(zip(base_probs, probs)), run.classes, patients)
            harmed, not_judged = judge_harm(per_class)
            harm = {"harmed": harmed, "harmed_tail": [c for c in harmed if groups.get(c) == "tail"]}
            harm.update(not_judged=not_judged)
            print(f"classes significantly below real_only: {harmed or 'none'} (tail: {harm['harmed_tail'] or 'none'})")
    for name, rows in table.items():
        print(f"\n{name} (mAP, seed mean, 95 % paired patient-bootstrap interval)")
        for key, r in rows.items():
            if r["diff"] is not None:
                print(f"  {key:10s} {r['diff']:+.3f}  [{r['ci'][0]:+.3f}, {r['ci'][1]:+.3f}]")
    if args.json:
        from synth.provenance import write_bench_result

        payload = {"ablation_dir": str(root), "config": str(args.config), "seeds": args.seeds, "seconds": seconds}
        payload.update(synthetic_rows=len(kept), repeated_real_rows=len(repeats))
        write_bench_result(args.json, "resampled_mix", {**payload, "differences": table, "harm_vs_real_only": harm})


if __name__ == "__main__":
    main()
