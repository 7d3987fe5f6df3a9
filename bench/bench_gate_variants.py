"""Which transfer-gate variant ranks class sets as the phantom oracle does? (issue #18: Spearman >= 0.6)

Reads a finished ``synth ablate`` output folder (its generate, filter, oracle and data stages), embeds the
generated and the real train+val images once, and re-runs :func:`synth.filtering.transfer.transfer_gate` per
tail class under variants that use no test row and no oracle:

  current        the filter's rule: probe fitted on every generated image, scored on real train+val rows;
  no-copies      probe fitted only on generated images the near-copy rule kept (a memorised copy of a real
                 positive "transfers" to that very image);
  unseen-real    no-copies, and the real rows that are some class-c image's nearest neighbour left out;
  generic        the current rule in a random-init resnet10t's features (no label-fitted shortcut);
  quantify-*     not a transfer AUROC but the estimated share of faithful images in each class set, by
                 adjusted classify-and-count with a probe fitted on real rows (:func:`_adjusted_count`),
                 in the verifier's or the random encoder's features, thresholded at 5 % or 20 % real FPR;
  neighbours-*   the share of a set's images with a real c-positive among their k nearest real rows, minus
                 that share for images generated without c (:func:`_neighbour_share`).
  residual-*     the current probe, its real scores adjusted for the row's OTHER findings before the AUROC
                 (:func:`_residual_gate_row`): a probe that learned only what co-occurs with c scores ~0.5.

For each it prints the score per class beside the oracle's fidelity (of all generated images, and of the
images the probe used) and the Spearman rank correlation. The oracle only judges; nothing here feeds it back.

``--dose`` runs the filter's gate instead on class sets of KNOWN fidelity (0-100 %), each built from a class's
own generated images that the oracle judged faithful or not (:func:`_dose_response`): the run's natural sets
never go below 28 %, so only these test "every set under 10 % dropped".

    python bench/bench_gate_variants.py outputs/ablations/phantom-cpu [--json bench/results/gate_variants.json] \
        [--cache /tmp/embeddings.npz] [--only quantify-generic-fpr0.2 ...]
    python bench/bench_gate_variants.py outputs/ablations/phantom-cpu --dose [--dose-size 20] [--dose-repeats 2] \
        [--residual] [--json bench/results/gate_dose_response.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from ablation_stages import stage_folder


@dataclass
class RunInputs:
    """One finished ablation's generated rows, real train+val rows, near-copy columns and oracle detections."""

    synth: pd.DataFrame
    real: pd.DataFrame
    scores: pd.DataFrame  #: the filter's scores.csv (near_copy, nearest-neighbour ids)
    detected: np.ndarray  #: oracle: does generated image i show its target finding (1/0/NaN)
    spaces: dict  #: feature space -> (generated features, real features)
    gate_options: dict  #: transfer_gate keyword options as the run's filter config set them


def _load(root: Path, cache: Path | None = None) -> RunInputs:
    from synth.filtering.extractor import load_extractor, random_resnet10t
    from synth.filtering.oracle import oracle_report
    from synth.filtering.pipeline import TRANSFER_GATE_OPTIONS
    from synth.filtering.verifier import FeatureExtractor, load_verifier, real_training_rows, run_inference
    from synth.manifest import read_manifest

    synth = read_manifest(stage_folder(root, "generate") / "manifest.csv")
    data = read_manifest(stage_folder(root, "data") / "prepared" / "manifest.csv")
    filt = stage_folder(root, "filter")
    scores = pd.read_csv(filt / "filtered" / "scores.csv")
    filter_config = json.loads((filt / "filtered" / "summary.json").read_text())["config"]
    gate_options = {keyword: filter_config[field] for keyword, field in TRANSFER_GATE_OPTIONS.items()}
    if not (scores["dicom_id"].to_numpy() == synth["dicom_id"].to_numpy()).all():
        raise SystemExit(f"{filt}: scores.csv rows do not match the generated manifest")
    val = data[(data["split"] == "val") & (data["source"] == "real")]
    real = pd.concat([real_training_rows(data), val], ignore_index=True)
    real.attrs.update(data.attrs)

    def embed(fx) -> tuple[np.ndarray, np.ndarray]:
        return run_inference(fx, synth, 64, 8, False).features, run_inference(fx, real, 64, 8, False).features

    if cache is not None and cache.exists():
        with np.load(cache) as saved:
            spaces = {k: (saved[f"{k}_synthetic"], saved[f"{k}_real"]) for k in ("verifier", "generic")}
    else:
        v = load_verifier(filt / "verifier")
        spaces = {"verifier": embed(FeatureExtractor(v.model, v.image_size, v.pixel_mean, v.pixel_std, v.name))}
        with tempfile.TemporaryDirectory() as tmp:
            spaces["generic"] = embed(load_extractor(str(random_resnet10t(Path(tmp), int(v.image_size))), v))
        if cache is not None:
            arrays = {f"{k}_{side}": x for k, pair in spaces.items() for side, x in zip(("synthetic", "real"), pair)}
            np.savez(cache, **arrays)
    oracle = stage_folder(root, "oracle") / "oracle"
    _, detected = oracle_report(oracle, synth, synth["target_class"], np.ones(len(synth)), 64)
    return RunInputs(synth, real, scores, detected, spaces, gate_options)


def _judge(run: RunInputs, space: str, use, drop_real) -> list[dict]:
    """The gate per generated class: probe fitted on the generated rows ``use(c)``, real rows ``drop_real(c)`` out."""
    classes = list(pd.unique(run.synth["target_class"]))
    return [_gate_row(run, space, cls, use(cls), drop_real(cls)) for cls in classes]


def _gate_row(run: RunInputs, space: str, cls: str, use: np.ndarray, dropped: np.ndarray | None) -> dict:
    """The gate on class ``cls``: probe fitted on the generated rows ``use``, the real rows ``dropped`` left out."""
    from synth.filtering.transfer import transfer_gate
    from synth.manifest import label_matrix

    target = run.synth["target_class"].to_numpy()
    classes = list(pd.unique(target))
    j = classes.index(cls)
    real_y = label_matrix(run.real, classes)
    syn_x, real_x = run.spaces[space]
    labels = real_y[:, j].copy()
    if dropped is not None:
        labels[dropped] = np.nan
    others = (real_y[:, [k for k in range(len(classes)) if k != j]] == 1).any(axis=1)
    syn_labels = label_matrix(run.synth, [cls])[:, 0][use]
    patients = run.real["subject_id"].astype(str).to_numpy()
    gate = transfer_gate(
        cls, syn_x[use], target[use], syn_labels, real_x, labels, patients, real_exclude=others, **run.gate_options
    )
    return _judged_row(run, cls, gate.auroc, gate.ci, gate.passed, gate.n_real_pos, use & (target == cls))


def _judged_row(run: RunInputs, cls: str, auroc, ci, passed: bool, real_positives: int, used: np.ndarray) -> dict:
    """One class's table row: the judge's AUROC and decision beside the oracle's fidelity (all / probe-used)."""
    target = run.synth["target_class"].to_numpy()
    return {
        "class": cls,
        "score": auroc,
        "auroc": auroc,
        "ci": list(ci),
        "passed": passed,
        "real_positives": real_positives,
        "fidelity_all": float(np.nanmean(run.detected[target == cls])),
        "fidelity_used": float(np.nanmean(run.detected[used])) if used.any() else None,
    }


def _residual_gate_row(run: RunInputs, space: str, cls: str, use: np.ndarray) -> dict:
    """The gate on class ``cls`` with the probe's real scores adjusted for each row's other findings.

    Why: on sets of known fidelity the gate's AUROC barely moves (0.85 with no image the oracle calls
    faithful, 0.89 with only faithful ones): images prompted for c carry c's co-occurring findings, a probe
    fitted on them learns those, and real c-positives carry them too. Here a ridge fit of the probe score on
    the row's other labels, over the real c-negatives, is subtracted before the AUROC, so only what the
    other findings do not explain is credited to c. Same probe, same real rows and exclusions as the filter's
    gate; no test row, no oracle.
    """
    from sklearn.linear_model import Ridge

    from synth.filtering.transfer import patient_bootstrap_auroc, probe_scores
    from synth.manifest import annotated_classes, label_matrix

    target = run.synth["target_class"].to_numpy()
    generated = list(pd.unique(target))
    syn_x, real_x = run.spaces[space]
    syn_c = label_matrix(run.synth, [cls])[:, 0]
    pos, neg = use & (target == cls), use & (target != cls) & (syn_c != 1.0)
    fit_x = np.concatenate([syn_x[pos], syn_x[neg]])
    fit_y = np.concatenate([np.ones(int(pos.sum())), np.zeros(int(neg.sum()))])
    options = run.gate_options
    scores = probe_scores(fit_x, fit_y, real_x, options["probe_c"], options["seed"])
    names = [c for c in annotated_classes(run.real) if c != cls]
    others = np.nan_to_num(label_matrix(run.real, names))
    y = label_matrix(run.real, [cls])[:, 0]
    other_generated = (label_matrix(run.real, [c for c in generated if c != cls]) == 1).any(axis=1)
    known = ~np.isnan(y) & ~(other_generated & (y != 1))
    negatives = known & (y == 0)
    residual = scores - Ridge(alpha=1.0).fit(others[negatives], scores[negatives]).predict(others)
    patients = run.real["subject_id"].astype(str).to_numpy()
    auroc, ci = patient_bootstrap_auroc(
        y[known].astype(int), residual[known], patients[known], options["n_boot"], options["ci_level"], options["seed"]
    )
    passed = ci[0] is not None and ci[0] > options["min_auroc"]
    return _judged_row(run, cls, auroc, ci, passed, int((y[known] == 1).sum()), pos)


def _variants(run: RunInputs) -> dict:
    """name -> (feature space, generated rows the probe may use, real rows to leave out) per class."""
    target = run.synth["target_class"].to_numpy()
    near = run.scores["near_copy"].astype(bool).to_numpy()
    every = np.ones(len(target), bool)

    def nearest_of(cls: str) -> np.ndarray:
        rows = target == cls
        ids = set(run.scores["nn_feature_dicom_id"][rows]) | set(run.scores["nn_pixel_dicom_id"][rows])
        return run.real["dicom_id"].isin(ids).to_numpy()

    return {
        "current": ("verifier", lambda c: every, lambda c: None),
        "no-copies": ("verifier", lambda c: ~near, lambda c: None),
        "unseen-real": ("verifier", lambda c: ~near, nearest_of),
        "generic": ("generic", lambda c: every, lambda c: None),
    }


def out_of_fold_probe(
    x: np.ndarray, y: np.ndarray, groups: np.ndarray, n_splits: int, probe_c: float = 1.0, seed: int = 0
) -> np.ndarray:
    """The gate's probe fitted on real rows and scored out of fold, folds split by patient (``groups``)."""
    from sklearn.model_selection import StratifiedGroupKFold

    from synth.filtering.transfer import probe_scores

    oof = np.empty(len(y))
    folds = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    for fit, held in folds.split(x, y, groups):
        oof[held] = probe_scores(x[fit], y[fit], x[held], probe_c, seed)
    return oof


def _adjusted_count(run: RunInputs, space: str, fpr: float, n_folds: int = 5, seed: int = 0) -> list[dict]:
    """Estimate the share of faithful images per class set by adjusted classify-and-count (Forman 2008).

    The transfer AUROC asks whether *some* of a set carries a signal that transfers to real positives;
    the oracle's fidelity is the *fraction* of the set that shows the finding. Quantification estimates
    that fraction from real data alone: a probe fitted on REAL train+val rows (c positive vs negative),
    threshold at ``fpr`` on its out-of-fold real negatives, TPR from its out-of-fold real positives;
    applied to the generated images, pass rate r_c on the class set and r_0 on generated images whose
    label set excludes c (the false-positive rate in the generated domain). Estimate
    pi = (r_c - r_0) / (TPR - r_0), clipped to [0, 1]. No test row, no oracle.
    """

    from synth.filtering.transfer import probe_scores
    from synth.manifest import label_matrix

    target = run.synth["target_class"].to_numpy()
    classes = list(pd.unique(target))
    syn_x, real_x = run.spaces[space]
    real_y = label_matrix(run.real, classes)
    syn_y = label_matrix(run.synth, classes)
    patients = run.real["subject_id"].astype(str).to_numpy()
    rows = []
    for j, cls in enumerate(classes):
        known = ~np.isnan(real_y[:, j])
        x, y, groups = real_x[known], real_y[known, j].astype(int), patients[known]
        row = {"class": cls, "real_positives": int(y.sum()), "score": None, "auroc": None, "ci": [None, None]}
        row.update(fidelity_all=float(np.nanmean(run.detected[target == cls])), fidelity_used=None, passed=True)
        if y.sum() >= 3:
            oof = out_of_fold_probe(x, y, groups, min(n_folds, int(y.sum())), seed=seed)
            threshold = float(np.quantile(oof[y == 0], 1 - fpr))
            tpr = float(np.mean(oof[y == 1] >= threshold))
            syn_scores = probe_scores(x, y, syn_x, seed=seed)
            rate_c = float(np.mean(syn_scores[target == cls] >= threshold))
            rate_0 = float(np.mean(syn_scores[(target != cls) & (syn_y[:, j] == 0)] >= threshold))
            denominator = tpr - rate_0
            row.update(tpr=tpr, rate_class=rate_c, rate_others=rate_0)
            if denominator > 0.05:
                row["score"] = float(np.clip((rate_c - rate_0) / denominator, 0.0, 1.0))
        rows.append(row)
    return rows


def _neighbour_share(run: RunInputs, space: str, k: int) -> list[dict]:
    """Per class set: the share of its images with a real c-positive among their ``k`` nearest real rows
    (cosine, standardised features), minus the same share for generated images prompted without c.

    A non-parametric cousin of :func:`_adjusted_count`: it asks how many images of the set lie where real
    positives lie, without fitting a probe on the few real positives. No test row, no oracle.
    """
    from synth.manifest import label_matrix

    target = run.synth["target_class"].to_numpy()
    classes = list(pd.unique(target))
    syn_x, real_x = run.spaces[space]
    mean, std = real_x.mean(0), real_x.std(0) + 1e-6
    syn_n, real_n = ((x - mean) / std for x in (syn_x, real_x))
    syn_n = syn_n / np.linalg.norm(syn_n, axis=1, keepdims=True)
    real_n = real_n / np.linalg.norm(real_n, axis=1, keepdims=True)
    nearest = np.argsort(-(syn_n @ real_n.T), axis=1)[:, :k]
    real_y, syn_y = label_matrix(run.real, classes), label_matrix(run.synth, classes)
    rows = []
    for j, cls in enumerate(classes):
        near_positive = (real_y[:, j] == 1)[nearest].any(axis=1)
        share = float(near_positive[target == cls].mean())
        base = float(near_positive[(target != cls) & (syn_y[:, j] == 0)].mean())
        row = {"class": cls, "score": share - base, "auroc": None, "ci": [None, None], "passed": True}
        row.update(share=share, base=base, real_positives=int((real_y[:, j] == 1).sum()))
        row.update(fidelity_all=float(np.nanmean(run.detected[target == cls])), fidelity_used=None)
        rows.append(row)
    return rows


def _dose_response(
    run: RunInputs,
    space: str,
    fractions: tuple[float, ...],
    size: int,
    repeats: int,
    seed: int = 0,
    residual: bool = False,
) -> list[dict]:
    """The gate on class sets of known fidelity, built from each class's own generated images.

    The run's natural sets span fidelity 0.28-1.0, so "every set under 10 % dropped" is never put to the test
    there. Here a class with at least ``size`` images the oracle judged faithful and ``size`` it judged
    unfaithful gets its set replaced by ``size`` of its own images, a share f of them faithful (the generator's
    own failures are the unfaithful part, so the set looks as generated as before); every other class's set
    stays as generated. The oracle only builds the sets and measures them; the gate sees images and real rows
    as in ``synth filter``.
    """
    target = run.synth["target_class"].to_numpy()
    rng = np.random.default_rng(seed)
    rows = []
    for cls in pd.unique(target):
        own = target == cls
        faithful = np.flatnonzero(own & (run.detected == 1))
        unfaithful = np.flatnonzero(own & (run.detected == 0))
        if min(len(faithful), len(unfaithful)) < size:
            continue
        for fraction in fractions:
            for repeat in range(repeats):
                n_faithful = int(round(fraction * size))
                chosen = np.concatenate(
                    [
                        rng.choice(faithful, n_faithful, replace=False),
                        rng.choice(unfaithful, size - n_faithful, replace=False),
                    ]
                )
                use = ~own
                use[chosen] = True
                row = _residual_gate_row(run, space, cls, use) if residual else _gate_row(run, space, cls, use, None)
                row.update(fraction=fraction, repeat=repeat, set_size=size)
                rows.append(row)
    return rows


def _dose_summary(rows: list[dict], low: float = 0.1, high: float = 0.5) -> dict:
    """Spearman of the gate's AUROC vs the set's fidelity over all (class, fraction) sets, and the two decisions
    the issue asks for: sets under ``low`` fidelity dropped, sets at ``high`` or more kept."""
    from scipy.stats import spearmanr

    judged = [r for r in rows if r["score"] is not None]
    low_sets = [r for r in judged if r["fidelity_used"] < low]
    high_sets = [r for r in judged if r["fidelity_used"] >= high]
    return {
        "sets": len(rows),
        "judged": len(judged),
        "classes": len({r["class"] for r in rows}),
        "spearman": float(spearmanr([r["score"] for r in judged], [r["fidelity_used"] for r in judged]).statistic),
        f"dropped_below_{low:g}": [sum(not r["passed"] for r in low_sets), len(low_sets)],
        f"kept_at_or_above_{high:g}": [sum(r["passed"] for r in high_sets), len(high_sets)],
    }


def _spearman(rows: list[dict]) -> dict[str, float]:
    from scipy.stats import spearmanr

    judged = [r for r in rows if r["score"] is not None]
    return {
        k: float(spearmanr([r["score"] for r in judged], [r[k] for r in judged]).statistic)
        for k in ("fidelity_all", "fidelity_used")
        if len(judged) >= 3 and all(r[k] is not None for r in judged)
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("ablation_dir", type=Path)
    ap.add_argument("--json", type=Path, default=None, help="also write the table here")
    ap.add_argument("--cache", type=Path, default=None, help="an .npz to keep the embeddings in between runs")
    ap.add_argument("--only", nargs="+", default=None, help="run only these variants")
    ap.add_argument(
        "--dose", action="store_true", help="instead: the gate on class sets of known fidelity (_dose_response)"
    )
    ap.add_argument("--dose-size", type=int, default=20, help="images per constructed class set")
    ap.add_argument("--dose-repeats", type=int, default=2, help="random draws per (class, fidelity)")
    ap.add_argument("--residual", action="store_true", help="with --dose: the residual-* gate instead of the filter's")
    ap.add_argument("--spaces", nargs="+", default=["verifier", "generic"], help="with --dose: feature spaces")
    args = ap.parse_args()

    run = _load(args.ablation_dir, args.cache)
    if args.dose:
        return _dose_main(run, args)
    table = {}
    runs = {name: (lambda v=v: _judge(run, *v)) for name, v in _variants(run).items()}
    every = np.ones(len(run.synth), bool)
    for space in ("verifier", "generic"):
        for fpr in (0.05, 0.2):
            runs[f"quantify-{space}-fpr{fpr:g}"] = lambda space=space, fpr=fpr: _adjusted_count(run, space, fpr)
        for k in (5, 20):
            runs[f"neighbours-{space}-k{k}"] = lambda space=space, k=k: _neighbour_share(run, space, k)
        runs[f"residual-{space}"] = lambda space=space: [
            _residual_gate_row(run, space, c, every) for c in pd.unique(run.synth["target_class"])
        ]
    for name, judge in runs.items():
        if args.only and name not in args.only:
            continue
        rows = judge()
        judged, kept = sum(r["score"] is not None for r in rows), sum(r["passed"] for r in rows)
        table[name] = {"spearman": _spearman(rows), "judged": judged, "kept": kept, "rows": rows}
        print(f"\n{name}: Spearman vs fidelity {table[name]['spearman']}  judged {judged}/{len(rows)}  kept {kept}")
        for r in rows:
            score = "  n/a" if r["score"] is None else f"{r['score']:.3f}"
            low = "n/a" if r["ci"][0] is None else f"{r['ci'][0]:.3f}"
            print(
                f"  {r['class'][:26]:26s} score {score}  lo {low}  real+ {r['real_positives']:3d}  "
                f"fidelity all {r['fidelity_all']:.2f} used {r['fidelity_used']}"
            )
    if args.json:
        from synth.provenance import write_bench_result

        write_bench_result(args.json, "gate_variants", {"ablation_dir": str(args.ablation_dir), "variants": table})


def _dose_main(run: RunInputs, args: argparse.Namespace) -> None:
    fractions = (0.0, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0)
    table = {}
    for space in args.spaces:
        rows = _dose_response(run, space, fractions, args.dose_size, args.dose_repeats, residual=args.residual)
        table[space] = {"summary": _dose_summary(rows), "rows": rows}
        print(f"\ndose-response, {space} features: {table[space]['summary']}")
        for r in rows:
            low = "n/a" if r["ci"][0] is None else f"{r['ci'][0]:.3f}"
            score = "n/a" if r["score"] is None else f"{r['score']:.3f}"
            print(
                f"  {r['class'][:26]:26s} fid {r['fidelity_used']:.2f}  auroc {score}  lo {low}  kept {r['passed']:d}"
            )
    if args.json:
        from synth.provenance import write_bench_result

        payload = {"ablation_dir": str(args.ablation_dir), "fractions": list(fractions), "set_size": args.dose_size}
        write_bench_result(args.json, "gate_dose_response", {**payload, "spaces": table})


if __name__ == "__main__":
    main()
