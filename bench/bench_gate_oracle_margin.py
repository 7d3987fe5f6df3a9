"""Is the yardstick binary? How much of the finding do the images the phantom oracle calls unfaithful carry?

The transfer gate barely separates class sets the oracle judges 0 % faithful from 100 % faithful ones
(``bench_gate_variants.py --dose``: AUROC 0.85 vs 0.89). Either the gate is blind, or the oracle's yes/no at
its threshold hides a graded signal: "unfaithful" images that still show the finding faintly, which a probe
fitted on them would rightly transfer. This bench reads the oracle's continuous score for the target class:

  unfaithful vs clean   AUROC of the oracle's c-score, images generated for c that it judged unfaithful vs
                        images generated for other classes whose label set excludes c (the gate's negatives);
  faithful vs clean     the same for the images it judged faithful (near 1 by construction);
  real sensitivity      the share of real train+val c-positives at or above the oracle's threshold;
  unfaithful vs control with ``--controls`` (the folder ``bench_gate_paired.py`` rendered): the share of
                        unfaithful images whose oracle c-score is above their own control's (same seed, view and
                        co-occurring findings, prompt without c), so co-occurrence is held fixed.
  oracle uplift         with ``--controls``: the mean over the class's images of the oracle's c-score minus its
                        control's, a graded fidelity; the summary gives the Spearman rho of the run's transfer-gate
                        AUROC (its filter's summary.json) against it and against the binary fidelity. Information
                        for choosing a yardstick, not a change of the issue's bar.

An "unfaithful vs clean" AUROC near 0.5 means those images carry no more of c than other classes' images; near
1, they carry a sub-threshold version of it. The oracle only judges; no stage reads this.

    python bench/bench_gate_oracle_margin.py outputs/ablations/phantom-cpu [--cache /tmp/emb.npz] [--json ...]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from ablation_stages import generation_of, stage_folder
from bench_gate_paired import control_rows
from bench_gate_variants import _load


def _margins(root: Path, cache: Path | None, controls_dir: Path | None = None) -> list[dict]:
    from sklearn.metrics import roc_auc_score

    from synth.filtering.oracle import load_oracle, predict
    from synth.manifest import label_matrix

    run = _load(root, cache)
    oracle, thresholds = load_oracle(stage_folder(root, "oracle") / "oracle")
    syn_probs, real_probs = predict(oracle, run.synth, 64), predict(oracle, run.real, 64)
    index = {c: j for j, c in enumerate(oracle.classes)}
    control_probs = None
    if controls_dir is not None:
        controls = control_rows(run.synth, generation_of(root)[1].templates)
        controls.attrs["root"] = str(controls_dir)
        control_probs = predict(oracle, controls, 64)
    target = run.synth["target_class"].to_numpy()
    rows = []
    for cls in pd.unique(target):
        if cls not in thresholds:
            continue
        score, real_score = syn_probs[:, index[cls]], real_probs[:, index[cls]]
        own, clean = target == cls, (target != cls) & (label_matrix(run.synth, [cls])[:, 0] != 1.0)
        faithful, unfaithful = own & (run.detected == 1), own & (run.detected == 0)
        real_pos = label_matrix(run.real, [cls])[:, 0] == 1.0

        def auroc(group: np.ndarray, score: np.ndarray = score, clean: np.ndarray = clean) -> float | None:
            if group.sum() < 5:
                return None
            y = np.concatenate([np.ones(int(group.sum())), np.zeros(int(clean.sum()))])
            return float(roc_auc_score(y, np.concatenate([score[group], score[clean]])))

        rows.append(
            {
                "class": cls,
                "fidelity": float(np.nanmean(run.detected[own])),
                "n_unfaithful": int(unfaithful.sum()),
                "unfaithful_vs_clean": auroc(unfaithful),
                "faithful_vs_clean": auroc(faithful),
                "real_sensitivity": float(np.mean(real_score[real_pos] >= thresholds[cls])) if any(real_pos) else None,
                "real_positives": int(real_pos.sum()),
            }
        )
        if control_probs is not None:
            paired = control_probs[:, index[cls]]
            rows[-1]["unfaithful_above_control"] = (
                float(np.mean(score[unfaithful] > paired[unfaithful])) if unfaithful.sum() >= 5 else None
            )
            rows[-1]["faithful_above_control"] = (
                float(np.mean(score[faithful] > paired[faithful])) if faithful.sum() >= 5 else None
            )
            rows[-1]["oracle_uplift"] = float(np.mean(score[own] - paired[own]))
    return rows


def _gate_spearman(root: Path, rows: list[dict]) -> dict[str, float]:
    """Spearman rho of the run's transfer-gate AUROC vs the binary fidelity and vs the graded oracle uplift."""
    import json

    from scipy.stats import spearmanr

    summary = json.loads((stage_folder(root, "filter") / "filtered" / "summary.json").read_text())["classes"]
    judged = [r for r in rows if (summary.get(r["class"], {}).get("transfer") or {}).get("auroc") is not None]
    gate = [summary[r["class"]]["transfer"]["auroc"] for r in judged]
    return {
        "classes": len(judged),
        "vs_fidelity": float(spearmanr(gate, [r["fidelity"] for r in judged]).statistic),
        "vs_oracle_uplift": float(spearmanr(gate, [r["oracle_uplift"] for r in judged]).statistic),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("ablation_dir", type=Path)
    ap.add_argument("--cache", type=Path, default=None, help="the .npz of bench_gate_variants.py's embeddings")
    ap.add_argument("--controls", type=Path, default=None, help="bench_gate_paired.py's rendered controls folder")
    ap.add_argument("--json", type=Path, default=None, help="also write the table here")
    args = ap.parse_args()
    rows = _margins(args.ablation_dir, args.cache, args.controls)
    for r in rows:
        fmt = {k: ("  n/a" if v is None else f"{v:.3f}") for k, v in r.items() if isinstance(v, float | None)}
        print(
            f"{r['class'][:26]:26s} fidelity {fmt['fidelity']}  unfaithful {r['n_unfaithful']:3d}  "
            f"AUROC unfaithful-vs-clean {fmt['unfaithful_vs_clean']}  faithful-vs-clean {fmt['faithful_vs_clean']}  "
            f"real sensitivity {fmt['real_sensitivity']} ({r['real_positives']} real+)"
            + (
                f"  above control: unfaithful {fmt['unfaithful_above_control']} "
                f"faithful {fmt['faithful_above_control']}"
                if "unfaithful_above_control" in r
                else ""
            )
        )
    judged = [r["unfaithful_vs_clean"] for r in rows if r["unfaithful_vs_clean"] is not None]
    summary = {"classes": len(judged), "mean_unfaithful_vs_clean": float(np.mean(judged)) if judged else None}
    above = [r["unfaithful_above_control"] for r in rows if r.get("unfaithful_above_control") is not None]
    if above:
        summary["mean_unfaithful_above_control"] = float(np.mean(above))
        summary["gate_spearman"] = _gate_spearman(args.ablation_dir, rows)
    print(summary)
    if args.json:
        from synth.provenance import write_bench_result

        payload = {"ablation_dir": str(args.ablation_dir), "summary": summary, "rows": rows}
        write_bench_result(args.json, "gate_oracle_margin", payload)


if __name__ == "__main__":
    main()
