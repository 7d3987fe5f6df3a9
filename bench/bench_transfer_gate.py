"""Does the filter's transfer gate tell a faithful class set from a blank one on the PHANTOM?

No generator is trained: the "generated" sets are rendered by the phantom itself, so their content
is known exactly. For each judgeable tail class c (>= 3 real train+val positives):

  faithful  K images rendered WITH finding c (other findings absent), labelled c;
  blank     K images rendered with NO finding, labelled c (a generator that cannot draw c).

`synth filter` runs twice (all sets faithful / all sets blank) with every rule but the transfer gate
made permissive, in the verifier's own features and, with --generic, also in a random-init
resnet10t's (a label-free encoder). It prints, per class and feature space, the gate's AUROC
[interval] and decision. A useful gate keeps the faithful sets and drops the blank ones.

    python bench/bench_transfer_gate.py --n 3000 --size 64 --per-set 40 --classes 6 --generic

Training the verifier (configs/filter/verifier-demo.yaml) dominates: minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image


def _synthetic(root: Path, classes: list[str], per_set: int, blank: bool, size: int) -> Path:
    from synth.manifest import write_manifest
    from synth.phantom import render_image
    from synth.taxonomy import CXR_LT_CLASSES

    rows = []
    for j, cls in enumerate(classes):
        for i in range(per_set):
            seed = 900_000 + 1000 * j + i
            fpath = f"images/{'blank' if blank else 'faithful'}-{j}-{i}.png"
            (root / fpath).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(render_image([] if blank else [cls], seed=seed, size=size)).save(root / fpath)
            row = {
                "dicom_id": f"syn-{j}-{i}",
                "subject_id": "synthetic",
                "study_id": f"syn-{j}-{i}",
                "ViewPosition": "PA",
                "fpath": fpath,
                "split": "train",
                "source": "synthetic",
                "target_class": cls,
                "prompt": f"chest x-ray: {cls.lower()}",
                "seed": seed,
            }
            row.update({c: float(c == cls) for c in CXR_LT_CLASSES})
            rows.append(row)
    return write_manifest(pd.DataFrame(rows), root / "manifest.csv")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=3000, help="phantom images (train/val/test split by patient)")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--per-set", type=int, default=40)
    ap.add_argument(
        "--classes", type=int, default=6, help="at most this many tail classes (most real positives first)"
    )
    ap.add_argument("--verifier-config", default="configs/filter/verifier-demo.yaml")
    ap.add_argument("--generic", action="store_true", help="also judge in a random-init encoder's features")
    ap.add_argument("--out", default="outputs/bench/transfer_gate")
    args = ap.parse_args()

    from synth.filtering import load_filter_config, load_verifier_config, run_filter, train_verifier
    from synth.filtering.extractor import random_resnet10t
    from synth.phantom import render_dataset
    from synth.prepare import prepare_dataset

    out = Path(args.out)
    t0 = time.time()
    labels = Path(render_dataset(n=args.n, size=args.size, seed=0, out=out / "phantom"))
    manifest = prepare_dataset(
        "cxrlt", labels, labels.parent, out / "prepared", size=args.size, seed=0, overwrite=True
    )
    tail, pos = _tail_classes(manifest, args.classes)
    print(
        f"phantom {args.n} at {args.size} px: tail classes judged {tail} (real train+val positives "
        f"{[pos[c] for c in tail]}); {time.time() - t0:.0f} s"
    )
    t0 = time.time()
    verifier = train_verifier(manifest, out / "verifier", load_verifier_config(args.verifier_config))
    print(f"verifier trained in {time.time() - t0:.0f} s")
    spaces = {"verifier": "extractor"}
    if args.generic:
        spaces["generic"] = str(random_resnet10t(out / "generic", args.size))
    permissive = {
        "fid_reject_factor": 1e6,
        "outlier_percentile": 100.0,
        "bootstrap": 5,
        "kid_subsets": 5,
        "nearcopy_calibration_images": 40,
        "fallback_specificity": 0.01,
        "threshold_quantile": 0.0,
        "transfer_gate": True,
    }
    table = []
    for kind in ("faithful", "blank"):
        synthetic = _synthetic(out / kind, tail, args.per_set, kind == "blank", args.size)
        for space, extractor in spaces.items():
            t0 = time.time()
            summary = run_filter(
                synthetic,
                manifest,
                verifier,
                out / f"filter-{kind}-{space}",
                load_filter_config(None, {**permissive, "transfer_extractor": extractor}),
            )
            for cls in tail:
                g = summary["classes"][cls]["transfer"]
                table.append(
                    {
                        "set": kind,
                        "space": space,
                        "class": cls,
                        "auroc": g["auroc"],
                        "ci": g["ci"],
                        "kept": g["passed"],
                        "judged": g["judged"],
                    }
                )
            print(f"filter {kind} / {space}: {time.time() - t0:.0f} s")
    _print_table(table, spaces, tail)
    (out / "result.json").write_text(json.dumps(table, indent=1))


def _tail_classes(manifest: Path, at_most: int) -> tuple[list[str], dict[str, int]]:
    """Tail classes (not Normal) with >= 3 real train+val positives, most positives first; and those counts."""
    from synth.manifest import annotated_classes, label_matrix, read_manifest
    from synth.taxonomy import frequency_groups

    data = read_manifest(manifest)
    train = data[data["split"] == "train"]
    classes = annotated_classes(train)
    y = label_matrix(train, classes)
    groups = frequency_groups({c: float(np.nanmean(y[:, j])) for j, c in enumerate(classes)})
    trval = data[data["split"].isin(["train", "val"])]
    pos = {c: int((trval[c] == 1).sum()) for c in classes if groups[c] == "tail" and c != "Normal"}
    return sorted((c for c, k in pos.items() if k >= 3), key=lambda c: -pos[c])[:at_most], pos


def _print_table(table: list[dict], spaces: dict[str, str], tail: list[str]) -> None:
    print()
    print(f"{'set':9s} {'space':9s} {'class':26s} {'AUROC':>6s}  interval        decision")
    for r in table:
        ci = r["ci"] if r["ci"][0] is not None else [float("nan")] * 2
        auroc = float("nan") if r["auroc"] is None else r["auroc"]
        print(
            f"{r['set']:9s} {r['space']:9s} {r['class']:26s} {auroc:6.3f}  [{ci[0]:.3f}, {ci[1]:.3f}]  "
            f"{'kept' if r['kept'] else 'DROPPED'}{'' if r['judged'] else ' (not judged)'}"
        )
    for space in spaces:
        good = sum(r["kept"] for r in table if r["space"] == space and r["set"] == "faithful")
        bad = sum(not r["kept"] for r in table if r["space"] == space and r["set"] == "blank")
        print(f"{space}: faithful sets kept {good}/{len(tail)}, blank sets dropped {bad}/{len(tail)}")


if __name__ == "__main__":
    main()
