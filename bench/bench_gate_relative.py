"""The transfer gate set against each class's real-data ceiling (issue #18): does normalising help?

Why: the gate's TSTR AUROC (probe fitted on generated images, scored on real train+val rows) mixes how faithful
a set is with how separable class c is in real data at all (tail classes differ in difficulty and have 4-68 real
positives on phantom-cpu). ``A_real`` is the same probe recipe fitted on real rows out of fold (patient-grouped);

  relative-ratio-<space>  (A_gate - 0.5) / max(A_real - 0.5, 0.05)
  relative-diff-<space>   A_gate - A_real

in the verifier's features and a random resnet10t's. No test row, no oracle; the oracle's fidelity judges the
ranking (Spearman rho, bar 0.6).

    python bench/bench_gate_relative.py outputs/ablations/phantom-cpu [--cache /tmp/embeddings.npz] [--json F]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from bench_gate_variants import RunInputs, _judge, _load, out_of_fold_probe
from scipy.stats import spearmanr


def _real_ceiling(
    run: RunInputs, space: str, cls: str, probe_c: float = 1.0, n_folds: int = 5, seed: int = 0
) -> tuple[float | None, int]:
    """Class ``cls``'s real-on-real AUROC: the gate's probe recipe fitted on REAL rows, scored out of fold.

    The same real rows the gate scores (label known; negatives positive for another generated class left out, as
    ``_gate_row``'s ``real_exclude``), split by patient with :class:`StratifiedGroupKFold` as
    :func:`_adjusted_count` does; the AUROC is taken over the pooled out-of-fold scores. ``None`` when fewer than
    two patients carry a positive (nothing to cross-fit). Returns (AUROC, number of folds).
    """
    from sklearn.metrics import roc_auc_score

    from synth.manifest import label_matrix

    classes = list(pd.unique(run.synth["target_class"]))
    j = classes.index(cls)
    real_y = label_matrix(run.real, classes)
    others = (real_y[:, [k for k in range(len(classes)) if k != j]] == 1).any(axis=1)
    labels = real_y[:, j]
    known = ~np.isnan(labels) & ~(others & (labels != 1.0))
    x, y = run.spaces[space][1][known], labels[known].astype(int)
    groups = run.real["subject_id"].astype(str).to_numpy()[known]
    n_splits = min(n_folds, len(set(groups[y == 1])))
    if n_splits < 2 or (y == 0).sum() < n_splits:
        return None, n_splits
    return float(roc_auc_score(y, out_of_fold_probe(x, y, groups, n_splits, probe_c, seed))), n_splits


def _relative(run: RunInputs, space: str) -> list[dict]:
    """The gate (probe fitted on every generated image, as ``current`` / ``generic``) beside class c's real-data
    ceiling A_real (:func:`_real_ceiling`).

    Why: the TSTR AUROC mixes how faithful a set is with how separable c is in real data at all (tail classes
    differ a lot in difficulty and have 4-68 real positives on phantom-cpu), so a faithful set of a hard class
    can score below a poor set of an easy one. Set against the ceiling, that difficulty should cancel.
    ``score`` is filled in by :func:`_relative_score`. No test row, no oracle.
    """
    every = np.ones(len(run.synth), bool)
    rows = _judge(run, space, lambda c: every, lambda c: None)
    options = run.gate_options
    for row in rows:
        a_real, n_splits = _real_ceiling(run, space, row["class"], options["probe_c"], seed=options["seed"])
        row.update(auroc_real=a_real, real_folds=n_splits)
    return rows


def _relative_score(rows: list[dict], kind: str, floor: float = 0.05) -> list[dict]:
    """``ratio``: (A_gate - 0.5) / max(A_real - 0.5, floor); ``diff``: A_gate - A_real (None if either is None)."""
    out = []
    for row in rows:
        gate, real = row["auroc"], row["auroc_real"]
        score = None
        if gate is not None and real is not None:
            score = (gate - 0.5) / max(real - 0.5, floor) if kind == "ratio" else gate - real
        out.append({**row, "score": score})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ablation_dir", type=Path)
    parser.add_argument("--cache", type=Path, help="bench_gate_variants embedding cache (.npz)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    run = _load(args.ablation_dir, args.cache)
    table = {}
    for space in ("verifier", "generic"):
        fitted = _relative(run, space)
        for kind in ("ratio", "diff"):
            rows = _relative_score(fitted, kind)
            pairs = [(r["score"], r["fidelity_all"]) for r in rows if r["score"] is not None]
            rho = float(spearmanr(*zip(*pairs)).statistic) if len(pairs) >= 3 else None
            gate = float(spearmanr([r["auroc"] for r in fitted], [r["fidelity_all"] for r in fitted]).statistic)
            table[f"relative-{kind}-{space}"] = {"spearman": rho, "gate_spearman": gate, "rows": rows}
            print(f"relative-{kind}-{space}: rho {rho:+.2f} over {len(pairs)} classes (the gate alone: {gate:+.2f})")
    if args.json:
        from synth.provenance import write_bench_result

        write_bench_result(args.json, "gate_relative", {"ablation_dir": str(args.ablation_dir), "variants": table})


if __name__ == "__main__":
    main()
