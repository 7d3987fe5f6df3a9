"""``results.json`` of an ablation: every arm and seed evaluated on the same test rows, paired with the baseline,
and a few real / kept / rejected images per generated class copied beside the report.

The statistics are :mod:`synth.ablation.stages`' (looked up at call time, so tests replace them with fakes).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from synth.ablation import stages
from synth.ablation.arms import BASELINE, RESAMPLED_BASELINE, Arm, SyntheticSet
from synth.ablation.config import AblationConfig
from synth.ablation.evidence import evidence_section, judged_groups, test_positives
from synth.ablation.external import ExternalScores
from synth.ablation.harm import judge_harm, paired_per_class
from synth.manifest import image_paths, label_matrix, read_manifest
from synth.taxonomy import frequency_groups, report_class_slug


def build_results(
    cfg: AblationConfig,
    real: pd.DataFrame,
    test: pd.DataFrame,
    classes: list[str],
    probs: dict[tuple[str, int], np.ndarray],
    filter_dir: Path | None,
    synthetic: dict[str, pd.DataFrame],
    n_heldout: int = 0,
    rows: dict[tuple[str, int], dict[str, Any]] | None = None,
    resampling: Any = None,
    external: list[ExternalScores] | None = None,
) -> dict[str, Any]:
    """Evaluate every arm/seed on the same test rows (held-out phantom rows included) and assemble results.json.

    Every arm but the baseline is paired with ``real_only`` (``paired_over_seeds``, per class in
    ``per_class_paired``, the significantly harmed classes in ``harmed``); when ``real_resampled`` ran,
    every synthetic arm is also paired with it (``paired_vs_resampled``), the verdict's reference.
    ``results["evidence"]`` is the evidence rule applied to the test positives (synth/ablation/evidence.py); where
    it sets a class aside, each arm's verdict Δ is recomputed over the judged classes (``judged_paired``).
    ``external``: each external test set's predictions, scored the same way into ``results["external"]``.
    """
    train = real[real["split"] == "train"]
    y_train = label_matrix(train, classes)
    prevalence = {c: float(np.nanmean(y_train[:, i])) for i, c in enumerate(classes)}
    groups = frequency_groups(prevalence)
    y_test = label_matrix(test, classes)
    patients = test["subject_id"].astype(str).to_numpy()
    evidence = _evidence(cfg, groups, y_test, classes)
    judged = judged_groups(evidence)
    arms = []
    for arm in cfg.run_arms:
        arms.append(_arm_entry(cfg, arm, y_test, probs, classes, groups, patients, rows, resampling, judged))
    generated = (
        sorted(set(synthetic[SyntheticSet.UNFILTERED]["target_class"])) if SyntheticSet.UNFILTERED in synthetic else []
    )
    results: dict[str, Any] = {
        "name": cfg.name,
        "question": "Does synthetic tail data help, where, and by how much?",
        "dataset": {
            "name": cfg.data.source,
            "n_train": int(len(train)),
            "n_val": int((real["split"] == "val").sum()),
            f"n_{cfg.evaluation.split}": int(len(test)),
            "n_test_patients": int(len(set(patients))),
            **({"n_heldout": n_heldout} if n_heldout else {}),
        },
        "classes": classes,
        "groups": groups,
        "train_prevalence": prevalence,
        "generated_classes": generated,
        "baseline": BASELINE,
        "verdict_baseline": RESAMPLED_BASELINE if RESAMPLED_BASELINE in cfg.arms else BASELINE,
        "arms": arms,
        "evidence": evidence,
        "target": {
            "tail_gain": cfg.target.tail_gain,
            "max_head_drop": cfg.target.max_head_drop,
            "arm": cfg.target.arm,
        },
        "generators": generator_scope(cfg),
        "provenance": stages.provenance(cfg),
    }
    if filter_dir is not None:
        results["filter"] = stages.filter_summary(filter_dir)
    if generated:
        results["grids"] = export_grid_samples(cfg, train, synthetic, filter_dir, generated)
    if external:
        results["external"] = [_external_entry(cfg, ext, classes, groups) for ext in external]
    return results


def _evidence(cfg: AblationConfig, groups: dict[str, str], y: np.ndarray, classes: list[str]) -> dict[str, Any]:
    ev = cfg.evaluation
    return evidence_section(groups, test_positives(y, classes), ev.min_test_positives, ev.min_effect)


def _external_entry(
    cfg: AblationConfig, ext: ExternalScores, classes: list[str], groups: dict[str, str]
) -> dict[str, Any]:
    """One ``results["external"]`` section: every arm scored on the set as on the test split (same groups, from the
    training prevalence; same paired patient bootstrap), plus the classes the set does not score."""
    y = label_matrix(ext.rows, classes)
    patients = ext.rows["subject_id"].astype(str).to_numpy()
    evidence = _evidence(cfg, groups, y, classes)
    judged = judged_groups(evidence)
    positives = evidence["test_positives"]
    return {
        "name": ext.name,
        "manifest": ext.manifest,
        "fingerprint": ext.fingerprint,
        "dataset": {"n_test": int(len(ext.rows)), "n_test_patients": int(len(set(patients)))},
        "not_scored": [c for c in classes if positives[c] is None],
        "no_positives": [c for c in classes if positives[c] == 0],
        "evidence": evidence,
        "arms": [
            _arm_entry(cfg, arm, y, ext.probs, classes, groups, patients, None, None, judged) for arm in cfg.run_arms
        ],
    }


def _arm_entry(
    cfg: AblationConfig,
    arm: Arm,
    y_test: np.ndarray,
    probs: dict[tuple[str, int], np.ndarray],
    classes: list[str],
    groups: dict[str, str],
    patients: np.ndarray,
    rows: dict[tuple[str, int], dict[str, Any]] | None,
    resampling: Any,
    judged: dict[str, str] | None = None,
) -> dict[str, Any]:
    """One arm in results.json: every seed's metrics and, but for the baseline, its paired differences and harms.

    ``judged``: the groups restricted to the classes the evidence rule judges, when that differs from ``groups``;
    the arm's Δ vs its verdict reference is then also computed over them (``judged_paired``).
    """
    name = arm.name
    seeds = {
        str(seed): stages.evaluate(cfg, y_test, probs[name, seed], classes, groups, patients) for seed in cfg.seeds
    }
    for seed in cfg.seeds:
        if rows is not None and (name, seed) in rows:
            seeds[str(seed)]["train_rows"] = rows[name, seed]
    arm_entry: dict[str, Any] = {"name": name, "label": arm.label, "short": arm.short, "seeds": seeds}
    arm_entry["synthetic"] = arm.synthetic.value if arm.synthetic else None
    if arm.base:
        arm_entry["variant"] = {"arm": arm.base, "classifier": dict(arm.classifier), "generate": dict(arm.generate)}
    generators = run_generators(cfg, arm)
    if name != BASELINE:
        base = [probs[BASELINE, s] for s in cfg.seeds]
        mine = [probs[name, s] for s in cfg.seeds]
        pooled = stages.paired(cfg, y_test, base, mine, classes, groups, patients, generators=generators)
        for i, seed in enumerate(cfg.seeds):  # each seed's own difference; the interval is the pooled one
            seeds[str(seed)]["paired"] = {g: {"diff": row["run_diffs"][i]} for g, row in pooled.items()}
        arm_entry["paired_over_seeds"] = {
            g: {k: v for k, v in row.items() if k != "run_diffs"} for g, row in pooled.items()
        }
        per_class = paired_per_class(cfg, y_test, list(zip(base, mine)), classes, patients)
        arm_entry["per_class_paired"] = per_class
        arm_entry["harmed"], arm_entry["harm_not_judged"] = judge_harm(per_class)
        if arm.uses_synthetic and RESAMPLED_BASELINE in cfg.arms:
            resampled = [probs[RESAMPLED_BASELINE, s] for s in cfg.seeds]
            vs = stages.paired(cfg, y_test, resampled, mine, classes, groups, patients, generators=generators)
            arm_entry["paired_vs_resampled"] = {g: {k: v for k, v in row.items()} for g, row in vs.items()}
        if judged is not None:
            ref = RESAMPLED_BASELINE if "paired_vs_resampled" in arm_entry else BASELINE
            ref_probs = [probs[ref, s] for s in cfg.seeds]
            rows_judged = stages.paired(cfg, y_test, ref_probs, mine, classes, judged, patients, generators=generators)
            arm_entry["judged_paired"] = {"against": ref, "groups": rows_judged}
    if arm.resample and resampling is not None:
        arm_entry["resampling"] = resampling.summary()
    return arm_entry


def run_generators(cfg: AblationConfig, arm: Arm) -> list[int] | None:
    """The generator each seed of ``arm`` trained on, when that is a source of variance (K >= 2 and synthetic)."""
    if not arm.uses_synthetic or cfg.n_generators < 2:
        return None
    return [cfg.generator_of(i) for i in range(len(cfg.seeds))]


def generator_scope(cfg: AblationConfig) -> dict[str, Any]:
    """What the synthetic arms' intervals cover: results.json's record for the report's sentence about it."""
    return {
        "k": cfg.n_generators,
        "seeds": list(cfg.generator.seeds),
        "assignment": {str(s): cfg.generator_of(i) for i, s in enumerate(cfg.seeds)} if cfg.generator.seeds else {},
        "interval": "rubin" if cfg.n_generators > 1 else "within_generator",
    }


def export_grid_samples(
    cfg: AblationConfig,
    train: pd.DataFrame,
    synthetic: dict[str, pd.DataFrame],
    filter_dir: Path | None,
    generated: list[str],
) -> dict[str, dict[str, list[str]]]:
    """Copy a few real / kept / rejected images per class into the report folder (the report reads only these)."""
    k = cfg.evaluation.grid_examples
    kept = synthetic.get("filtered", synthetic["unfiltered"])
    rejected = (
        read_manifest(filter_dir / "rejected.csv") if filter_dir and (filter_dir / "rejected.csv").exists() else None
    )
    grids: dict[str, dict[str, list[str]]] = {}
    for cls in generated:
        sources = {
            "real": train[train[cls] == 1].head(k) if cls in train else train.head(0),
            "kept": kept[kept["target_class"] == cls].head(k),
            "rejected": rejected[rejected["target_class"] == cls].head(k) if rejected is not None else kept.head(0),
        }
        rows = {}
        for row, df in sources.items():
            rel = []
            for i, src in enumerate(image_paths(df)):
                dst = Path("samples") / report_class_slug(cls) / f"{row}_{i}{src.suffix}"
                (cfg.report_dir / dst).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, cfg.report_dir / dst)
                rel.append(str(dst))
            rows[row] = rel
        grids[cls] = rows
    return grids
