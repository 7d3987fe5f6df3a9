"""Does the filtered synthetic mix add anything on top of re-sampling the real tail? (issue #18's quality target)

On the fresh phantom-cpu run the filtered arm lost to ``real_resampled`` (tail -0.048): re-presenting the few
real tail positives is worth more than adding generated ones. The two are not exclusive. This bench trains
the run's classifier on the filtered arm's rows (real + kept synthetic, synthetic-mix recipe) WITH the
``real_resampled`` arm's repeat-factor plan on the real rows, per seed, and compares it on the run's test +
held-out rows with the run's own ``real_resampled`` and ``synthetic_filtered`` arms (same seeds; paired
patient bootstrap, seed-averaged; head / medium / tail mAP as the report groups them). Nothing is chosen on
the test rows.

``--synthetic unfiltered`` mixes every generated image instead of the kept ones (the ``synthetic_unfiltered_resampled``
arm); ``--generated FOLDER`` mixes another ``synth generate`` folder's images instead (the run's generator topped up to
more images per class). ``--cohort N --cohort-seed S`` scores everything on N freshly rendered phantom patients of
seed S instead of the run's test + held-out rows: the run's own arms are then predicted from their stored models.
Rows no verdict was drawn on are where a recipe may be chosen for the next fresh run; the run's test rows are not.

    python bench/bench_resampled_mix.py outputs/ablations/phantom-cpu [--config configs/ablation/phantom-cpu.yaml] \
        [--seeds 0 1 2] [--synthetic filtered|unfiltered] [--cohort 20000 --cohort-seed 5] [--json F]

CPU cost: one classifier training + prediction per seed, ~2.5 min each on 2 cores at phantom-cpu size (+ ~20 s per
stored model and seed to predict a 20,000-image cohort).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from ablation_stages import arm_bench_parser, load_run_rows, run_arm_probs, stage_folder, train_and_predict


def _ran(root: Path, arm: str) -> bool:
    return bool(sorted((root / "arms").glob(f"{arm}-*")))


def _rows(diff: dict) -> dict:
    """``paired_bootstrap_runs`` output as the result file keeps it."""
    return {k: {"diff": v["diff"], "ci": list(v["ci"]), "run_diffs": v["run_diffs"]} for k, v in diff.items()}


def _cohort(run, n: int, seed: int, out: Path):
    """``n`` new phantom patients of ``seed`` as the rows to score, in place of the run's test + held-out rows."""
    from dataclasses import replace

    from synth.ablation.stages import prepare_heldout
    from synth.manifest import read_manifest

    cfg = replace(run.cfg, evaluation=replace(run.cfg.evaluation, heldout_phantom_n=n, heldout_phantom_seed=seed))
    manifest = out / "phantom" / "heldout.csv"
    if not manifest.exists():
        prepare_heldout(cfg, out)
    return replace(run, test=read_manifest(manifest))


def _stored_arm_probs(run, root: Path, arm: str, seeds: list[int], cohort: Path | None) -> list[np.ndarray]:
    """The run's own arm: its stored probabilities of the run's rows, or its stored models' on the cohort."""
    from synth.ablation.runner import _predict_to

    if cohort is None:
        return run_arm_probs(root, arm, seeds, run.heldout_name)
    (folder,) = sorted((root / "arms").glob(f"{arm}-*"))
    out = []
    for seed in seeds:
        path = cohort / "stored" / arm / f"seed-{seed}.npy"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            _predict_to(run.cfg, folder / f"seed-{seed}" / "model", run.test, run.classes, path)
        out.append(np.load(path))
    return out


def main() -> None:
    from classifier.metrics import paired_bootstrap_runs
    from synth.ablation.arms import REAL_RESAMPLED, SYNTHETIC_FILTERED_RESAMPLED
    from synth.ablation.harm import judge_harm, paired_per_class
    from synth.ablation.stages import resample_plan
    from synth.manifest import concat_manifests, label_matrix, read_manifest

    ap = arm_bench_parser(__doc__.split("\n")[0], "outputs/bench/resampled_mix")
    ap.add_argument("--synthetic", choices=("filtered", "unfiltered"), default="filtered")
    ap.add_argument(
        "--generated",
        type=Path,
        help="with --synthetic unfiltered: a `synth generate` folder to mix instead of the run's generate stage "
        "(e.g. the run's generator topped up to more images per class)",
    )
    ap.add_argument("--cohort", type=int, default=0, help="score N new phantom patients instead of the run's rows")
    ap.add_argument("--cohort-seed", type=int, default=5, help="their phantom seed (not one the run used)")
    args = ap.parse_args()
    root = args.ablation_dir
    run = load_run_rows(root, args.config)
    cohort = args.out / f"cohort-{args.cohort}-seed{args.cohort_seed}" if args.cohort else None
    if cohort is not None:
        used = {run.cfg.data.phantom_seed, run.cfg.evaluation.heldout_phantom_seed, run.cfg.oracle.phantom_seed}
        if args.cohort_seed in used:
            raise SystemExit(f"--cohort-seed {args.cohort_seed} is one the run used ({sorted(used)}); pick another")
        run = _cohort(run, args.cohort, args.cohort_seed, cohort)
    if args.synthetic == "filtered":
        synthetic = read_manifest(stage_folder(root, "filter") / "filtered" / "kept.csv")
    else:
        synthetic = read_manifest((args.generated or stage_folder(root, "generate")) / "manifest.csv")
    variant = args.synthetic if args.generated is None else f"{args.synthetic}-{args.generated.name}"
    repeats = resample_plan(run.cfg, run.real, run.classes).repeats
    train_df = concat_manifests([run.real, synthetic], run.data_manifest.parent)

    probs, seconds = [], {}
    for seed in args.seeds:
        folder = args.out / variant / f"seed-{seed}"
        if cohort is not None:  # the model is the same; its predictions are of other rows
            folder = cohort / variant / f"seed-{seed}"
        p, seconds[f"seed-{seed}"] = train_and_predict(run, "mix", seed, train_df, folder, repeats)
        print(f"seed-{seed}: {seconds[f'seed-{seed}']} s", flush=True)
        probs.append(p)

    groups = json.loads((root.parent.parent / "reports" / root.name / "results.json").read_text())["groups"]
    y = label_matrix(run.test, run.classes)
    patients = run.test["subject_id"].astype(str).to_numpy()
    name = f"{variant} mix + resampling"
    table = {}
    baselines = ["real_resampled", f"synthetic_{args.synthetic}", "real_only"]
    if args.synthetic == "unfiltered" or cohort is not None:
        baselines.insert(1, "synthetic_filtered_resampled")
    for base in [b for b in baselines if _ran(root, b)]:
        base_probs = _stored_arm_probs(run, root, base, args.seeds, cohort)
        table[f"{name} - {base}"] = _rows(
            paired_bootstrap_runs(y, base_probs, probs, run.classes, groups, patients, 1000, 0)
        )
        if base == "real_only":  # the quality target's "do no harm" part, by the report's own rule
            per_class = paired_per_class(run.cfg, y, list(zip(base_probs, probs)), run.classes, patients)
            harmed, not_judged = judge_harm(per_class)
            harm = {"harmed": harmed, "harmed_tail": [c for c in harmed if groups.get(c) == "tail"]}
            harm.update(not_judged=not_judged)
            print(f"classes significantly below real_only: {harmed or 'none'} (tail: {harm['harmed_tail'] or 'none'})")
    pair = (SYNTHETIC_FILTERED_RESAMPLED.name, REAL_RESAMPLED.name)
    if cohort is not None and all(_ran(root, b) for b in pair):
        # the run's own verdict, re-scored on patients it never saw: its target arm vs its reference
        target, ref = (_stored_arm_probs(run, root, b, args.seeds, cohort) for b in pair)
        table[" - ".join(pair) + " (the run's own models)"] = _rows(
            paired_bootstrap_runs(y, ref, target, run.classes, groups, patients, 1000, 0)
        )
    for key, rows in table.items():
        print(f"\n{key} (mAP, seed mean, 95 % paired patient-bootstrap interval)")
        for group, r in rows.items():
            if r["diff"] is not None:
                print(f"  {group:10s} {r['diff']:+.3f}  [{r['ci'][0]:+.3f}, {r['ci'][1]:+.3f}]")
    if args.json:
        from synth.provenance import write_bench_result

        payload = {"ablation_dir": str(root), "config": str(args.config), "seeds": args.seeds, "seconds": seconds}
        payload.update(synthetic=args.synthetic, synthetic_rows=len(synthetic), repeated_real_rows=len(repeats))
        payload.update(generated=str(args.generated) if args.generated else None)
        payload.update(
            scored_rows="run test + held-out"
            if cohort is None
            else f"{args.cohort} new phantom patients, seed {args.cohort_seed}"
        )
        write_bench_result(args.json, "resampled_mix", {**payload, "differences": table, "harm_vs_real_only": harm})


if __name__ == "__main__":
    main()
