"""A plausible synthetic ``results.json`` (and its image grids) for the report tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from synth.taxonomy import CXR_LT_CLASSES

ARMS = ("real_only", "synthetic_unfiltered", "synthetic_filtered", "synthetic_pretrain")


def make_results(report_dir: Path, seeds=(0, 1, 2), tail_gain: float = 0.08) -> dict:
    """A plausible results.json: the filtered arm gains `tail_gain` tail mAP with a CI above 0."""
    rng = np.random.default_rng(0)
    classes = list(CXR_LT_CLASSES)
    prevalence = {c: float(10 ** rng.uniform(-3.3, -0.5)) for c in classes}
    groups = {c: "head" if p > 0.1 else "tail" if p < 0.01 else "medium" for c, p in prevalence.items()}
    generated = [c for c in classes if groups[c] == "tail"][:3]
    arms = []
    for a, name in enumerate(ARMS):
        gain = {
            "real_only": 0.0,
            "synthetic_unfiltered": 0.01,
            "synthetic_filtered": tail_gain,
            "synthetic_pretrain": 0.05,
        }[name]
        seed_entries = {}
        for s in seeds:
            base = {"overall": 0.40, "head": 0.60, "medium": 0.35, "tail": 0.15}
            value = {g: v + (gain if g == "tail" else gain / 4) + 0.002 * s for g, v in base.items()}
            entry = {
                "groups": {g: {"value": v, "ci": [v - 0.03, v + 0.03]} for g, v in value.items()},
                "per_class": {
                    c: {
                        "ap": float(rng.uniform(0.05, 0.9)),
                        "auroc": float(rng.uniform(0.5, 0.99)),
                        "f1": float(rng.uniform(0, 0.8)),
                        "fnr": float(rng.uniform(0, 1)),
                        "n_pos": int(rng.integers(1, 50)),
                    }
                    for c in classes
                },
            }
            if name != "real_only":
                d = {g: value[g] - (base[g] + 0.002 * s) for g in base}
                entry["paired"] = {
                    g: {"diff": v, "ci": [v - 0.02, v + 0.02], "p": 0.01 if v > 0.02 else 0.5} for g, v in d.items()
                }
            seed_entries[str(s)] = entry
        arms.append({"name": name, "seeds": seed_entries})
    grids = _fake_grids(report_dir, generated, rng)
    results = {
        "name": "unit",
        "classes": classes,
        "groups": groups,
        "train_prevalence": prevalence,
        "generated_classes": generated,
        "baseline": "real_only",
        "arms": arms,
        "dataset": {"name": "fixture", "n_train": 1000, "n_val": 100, "n_test": 300, "n_test_patients": 250},
        "filter": {
            "extractor": "verifier convnext_atto",
            "classes": {
                c: {
                    "n": 40,
                    "kept": 31,
                    "rejected": {"verifier": 6, "near_copy": 1, "outlier": 2},
                    "fid": 12.5,
                    "kid": 0.004,
                    "fid_floor": 8.0,
                    "fid_ci": [10.0, 15.0],
                    "oracle_fidelity": 0.8,
                }
                for c in generated
            },
        },
        "grids": grids,
        "target": {"tail_gain": 0.05, "max_head_drop": 0.01},
        "provenance": {
            "commands": ["synth ablate --config configs/ablation/unit.yaml"],
            "seeds": list(seeds),
            "versions": {"torch": "x"},
            "config": {"name": "unit"},
            "git_commit": "abc123",
        },
    }
    report_dir.mkdir(parents=True, exist_ok=True)
    (report_dir / "results.json").write_text(json.dumps(results))
    return results


def _fake_grids(report_dir: Path, generated: list[str], rng: np.random.Generator) -> dict[str, dict[str, list[str]]]:
    """Three random 32 px images per row (real / kept / rejected) and generated class, written under report_dir."""
    grids = {}
    for cls in generated:
        rows = {}
        for row in ("real", "kept", "rejected"):
            paths = []
            for i in range(3):
                rel = Path("samples") / cls.replace(" ", "_") / f"{row}_{i}.png"
                (report_dir / rel).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)).save(report_dir / rel)
                paths.append(str(rel))
            rows[row] = paths
        grids[cls] = rows
    return grids
