"""Which transfer-gate variant ranks class sets as the phantom oracle does? (issue #18: Spearman >= 0.6)

Reads a finished ``synth ablate`` output folder (its generate, filter, oracle and data stages), embeds the
generated and the real train+val images once, and re-runs :func:`synth.filtering.transfer.transfer_gate` per
tail class under variants that use no test row and no oracle:

  current        the filter's rule: probe fitted on every generated image, scored on real train+val rows;
  no-copies      probe fitted only on generated images the near-copy rule kept (a memorised copy of a real
                 positive "transfers" to that very image);
  unseen-real    no-copies, and the real rows that are some class-c image's nearest neighbour left out;
  generic        the current rule in a random-init resnet10t's features (no label-fitted shortcut).

For each it prints the gate AUROC per class beside the oracle's fidelity (of all generated images, and of the
images the probe used) and the Spearman rank correlation. The oracle only judges; nothing here feeds it back.

    python bench/bench_gate_variants.py outputs/ablations/phantom-cpu [--json bench/results/gate_variants.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd


def _stage(root: Path, prefix: str) -> Path:
    found = sorted(root.glob(f"{prefix}-*"))
    if not found:
        raise SystemExit(f"{root}: no {prefix}-* stage folder; run `synth ablate` to the end first")
    return found[-1]


@dataclass
class RunInputs:
    """One finished ablation's generated rows, real train+val rows, near-copy columns and oracle detections."""

    synth: pd.DataFrame
    real: pd.DataFrame
    scores: pd.DataFrame  #: the filter's scores.csv (near_copy, nearest-neighbour ids)
    detected: np.ndarray  #: oracle: does generated image i show its target finding (1/0/NaN)
    spaces: dict  #: feature space -> (generated features, real features)


def _load(root: Path) -> RunInputs:
    from synth.filtering.extractor import load_extractor, random_resnet10t
    from synth.filtering.oracle import oracle_report
    from synth.filtering.verifier import FeatureExtractor, load_verifier, real_training_rows, run_inference
    from synth.manifest import read_manifest

    synth = read_manifest(_stage(root, "generate") / "manifest.csv")
    data = read_manifest(_stage(root, "data") / "prepared" / "manifest.csv")
    filt = _stage(root, "filter")
    scores = pd.read_csv(filt / "filtered" / "scores.csv")
    if not (scores["dicom_id"].to_numpy() == synth["dicom_id"].to_numpy()).all():
        raise SystemExit(f"{filt}: scores.csv rows do not match the generated manifest")
    val = data[(data["split"] == "val") & (data["source"] == "real")]
    real = pd.concat([real_training_rows(data), val], ignore_index=True)
    real.attrs.update(data.attrs)

    def embed(fx) -> tuple[np.ndarray, np.ndarray]:
        return run_inference(fx, synth, 64, 8, False).features, run_inference(fx, real, 64, 8, False).features

    v = load_verifier(filt / "verifier")
    spaces = {"verifier": embed(FeatureExtractor(v.model, v.image_size, v.pixel_mean, v.pixel_std, v.name))}
    with tempfile.TemporaryDirectory() as tmp:
        spaces["generic"] = embed(load_extractor(str(random_resnet10t(Path(tmp), int(v.image_size))), v))
    oracle = _stage(root, "oracle") / "oracle"
    _, detected = oracle_report(oracle, synth, synth["target_class"], np.ones(len(synth)), 64)
    return RunInputs(synth, real, scores, detected, spaces)


def _judge(run: RunInputs, space: str, use, drop_real, n_boot: int) -> list[dict]:
    """The gate per generated class: probe fitted on the generated rows ``use(c)``, real rows ``drop_real(c)`` out."""
    from synth.filtering.transfer import transfer_gate
    from synth.manifest import label_matrix

    target = run.synth["target_class"].to_numpy()
    classes = list(pd.unique(target))
    real_y = label_matrix(run.real, classes)
    syn_x, real_x = run.spaces[space]
    rows = []
    for j, cls in enumerate(classes):
        labels = real_y[:, j].copy()
        dropped = drop_real(cls)
        if dropped is not None:
            labels[dropped] = np.nan
        m = use(cls)
        others = (real_y[:, [k for k in range(len(classes)) if k != j]] == 1).any(axis=1)
        syn_labels = label_matrix(run.synth, [cls])[:, 0][m]
        patients = run.real["subject_id"].astype(str).to_numpy()
        gate = transfer_gate(
            cls, syn_x[m], target[m], syn_labels, real_x, labels, patients, real_exclude=others, n_boot=n_boot
        )
        used = m & (target == cls)
        rows.append(
            {
                "class": cls,
                "auroc": gate.auroc,
                "ci": list(gate.ci),
                "passed": gate.passed,
                "real_positives": gate.n_real_pos,
                "fidelity_all": float(np.nanmean(run.detected[target == cls])),
                "fidelity_used": float(np.nanmean(run.detected[used])) if used.any() else None,
            }
        )
    return rows


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


def _spearman(rows: list[dict]) -> dict[str, float]:
    from scipy.stats import spearmanr

    judged = [r for r in rows if r["auroc"] is not None]
    return {
        k: float(spearmanr([r["auroc"] for r in judged], [r[k] for r in judged]).statistic)
        for k in ("fidelity_all", "fidelity_used")
        if len(judged) >= 3 and all(r[k] is not None for r in judged)
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("ablation_dir", type=Path)
    ap.add_argument("--json", type=Path, default=None, help="also write the table here")
    ap.add_argument("--n-boot", type=int, default=200)
    args = ap.parse_args()

    run = _load(args.ablation_dir)
    table = {}
    for name, (space, use, drop_real) in _variants(run).items():
        rows = _judge(run, space, use, drop_real, args.n_boot)
        judged, kept = sum(r["auroc"] is not None for r in rows), sum(r["passed"] for r in rows)
        table[name] = {"spearman": _spearman(rows), "judged": judged, "kept": kept, "rows": rows}
        print(f"\n{name}: Spearman vs fidelity {table[name]['spearman']}  judged {judged}/{len(rows)}  kept {kept}")
        for r in rows:
            auroc = "  n/a" if r["auroc"] is None else f"{r['auroc']:.3f}"
            low = "n/a" if r["ci"][0] is None else f"{r['ci'][0]:.3f}"
            print(
                f"  {r['class'][:26]:26s} auroc {auroc}  lo {low}  real+ {r['real_positives']:3d}  "
                f"fidelity all {r['fidelity_all']:.2f} used {r['fidelity_used']}"
            )
    if args.json:
        args.json.write_text(json.dumps({"ablation_dir": str(args.ablation_dir), "variants": table}, indent=1))


if __name__ == "__main__":
    main()
