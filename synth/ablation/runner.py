"""Run an ablation: shared stages cached by config hash, arms × seeds resumable.

Layout under ``outputs/ablations/NAME/``::

    data-<key>/            prepared manifest (phantom rendered first if data.source=phantom)
    heldout-<key>/         evaluation.heldout_phantom_n extra test-only phantom patients (optional)
    generator-<key>/       fine-tuned diffusers pipeline
    generate-<key>/        synthetic images + manifest
    filter-<key>/          kept.csv, rejected.csv, summary.json
    oracle-<key>/          phantom only: balanced phantom set + the evaluation-only oracle trained on it
    fidelity-<key>/        fidelity.json: oracle detection rate per generated class (real / generated / kept /
    rejected)
    arms/<arm>-<key>/seed-<s>/   classifier ensemble + test probabilities (+ heldout-<key>_probs.npy)

Every step's folder gets a ``done.json`` written last (atomically); a step
whose marker exists is reused, so a re-run after a crash resumes where it
stopped and an edited stage config (its hash changes) reruns only that stage
and what depends on it. Stages resume *inside* themselves too (generate,
finetune and the classifier are resumable), so an interrupted stage is simply
called again.

The stage work is done by :mod:`synth.ablation.stages` (looked up at call
time, so tests replace it with cheap fakes).

Under ``accelerate launch`` every process runs this loop: the Accelerate-aware
stages (finetune, generate, classifier training) split their work across
processes; data preparation and the filter run on the main process only; only
the main process writes markers, probabilities, results and the report.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from synth.ablation import stages
from synth.ablation.arms import ARMS, BASELINE, RESAMPLED_BASELINE, Arm, SyntheticSet
from synth.ablation.config import AblationConfig, check_paths, stage_key
from synth.ablation.report import render_report
from synth.ablation.results import RESULTS_FILE
from synth.errors import UserError
from synth.io import atomic_path, write_json_atomic
from synth.manifest import annotated_classes, concat_manifests, image_paths, label_matrix, read_manifest
from synth.taxonomy import frequency_groups, report_class_slug

DONE = "done.json"


@dataclass(frozen=True)
class Step:
    """One unit of cached work: where it lives and whether it already finished."""

    name: str
    folder: Path

    @property
    def done(self) -> bool:
        return (self.folder / DONE).exists()


def plan(cfg: AblationConfig) -> list[Step]:
    """The steps of this ablation in execution order, with their cache folders."""
    root = cfg.ablation_dir
    keys = _keys(cfg)
    steps = [Step("data", root / f"data-{keys['data']}")]
    if cfg.evaluation.heldout_phantom_n:
        steps.append(Step("heldout", root / f"heldout-{keys['heldout']}"))
    if cfg.needs_synthetic:
        steps += [
            Step("generator", root / f"generator-{keys['generator']}"),
            Step("generate", root / f"generate-{keys['generate']}"),
        ]
    if cfg.needs_filter:
        steps.append(Step("filter", root / f"filter-{keys['filter']}"))
    if cfg.needs_synthetic and cfg.oracle.config:
        steps += [
            Step("oracle", root / f"oracle-{keys['oracle']}"),
            Step("fidelity", root / f"fidelity-{keys['fidelity']}"),
        ]
    for arm in cfg.arms:
        for seed in cfg.seeds:
            steps.append(Step(f"{arm}/seed-{seed}", root / "arms" / f"{arm}-{keys[arm]}" / f"seed-{seed}"))
    return steps


def _keys(cfg: AblationConfig) -> dict[str, str]:
    # A phantom folder records its renderer; the stages built on rendered images must too, or a
    # changed renderer would silently reuse images drawn by the old one.
    from synth.phantom.render import RENDERER_VERSION

    renderer = {"phantom_renderer": RENDERER_VERSION}
    keys = {
        "data": stage_key("data", cfg.data, renderer) if cfg.data.source == "phantom" else stage_key("data", cfg.data)
    }
    keys["heldout"] = stage_key(
        "heldout", cfg.evaluation.heldout_phantom_n, cfg.evaluation.heldout_phantom_seed, keys["data"]
    )
    keys["generator"] = stage_key("generator", cfg.generator, keys["data"])
    keys["generate"] = stage_key("generate", cfg.generate, keys["generator"])
    keys["filter"] = stage_key("filter", cfg.filter, keys["generate"], keys["data"])
    keys["oracle"] = stage_key("oracle", cfg.oracle, cfg.data.size, renderer)
    keys["fidelity"] = stage_key(
        "fidelity", keys["oracle"], keys["generate"], keys["filter"] if cfg.needs_filter else None
    )
    upstream = {
        None: [keys["data"]],
        SyntheticSet.UNFILTERED: [keys["data"], keys["generate"]],
        SyntheticSet.FILTERED: [keys["data"], keys["filter"]],
    }
    for name, arm in ARMS.items():
        classifier = cfg.classifier if arm.uses_synthetic else _baseline_classifier(cfg)
        # the resampled arm's repeats follow from the data and what the generate stage is asked for (see resampling.py)
        resample = (
            [cfg.generate.classes, cfg.generate.n, cfg.generate.config, cfg.generate.overrides.get("target_count")]
            if arm.resample
            else []
        )
        keys[name] = stage_key(
            "arm", name, arm.mode, classifier, cfg.evaluation.split, *upstream[arm.synthetic], *resample
        )
    return keys


def _baseline_classifier(cfg: AblationConfig) -> dict[str, Any]:
    """The classifier settings the real-only arm reads: without the synthetic-mixing section.

    Tuning how synthetic rows are mixed or labelled then retrains only the arms that use them,
    not the baseline they are compared with.
    """
    import yaml

    c = cfg.classifier
    content: Any = None
    if c.config and Path(c.config).is_file():
        content = yaml.safe_load(Path(c.config).read_text())
        if isinstance(content, dict):
            content = {k: v for k, v in content.items() if k != "synthetic"}
    overrides = {k: v for k, v in c.overrides.items() if k.split(".")[0] != "synthetic"}
    return {"classifier_config": content, "overrides": overrides, "batch_size": c.batch_size}


def run_ablation(cfg: AblationConfig, log: Callable[[str], None] | None = None) -> Path:
    """Run (or resume) every step, write results.json and render the report; return the report folder."""
    from synth.distributed import process_state

    state = process_state()
    log = log or _rich_log(state.is_main_process)
    check_paths(cfg)
    started = time.time()
    timer = _Timings()
    steps = {s.name: s for s in plan(cfg)}
    data_manifest = Path(
        _cached(steps["data"], log, lambda out: stages.prepare_data(cfg, out), main_only=True, timer=timer)
    )
    real = read_manifest(data_manifest)
    synthetic: dict[str, pd.DataFrame] = {}
    filter_dir = None
    if cfg.needs_synthetic:
        model_dir = _cached(
            steps["generator"], log, lambda out: stages.train_generator(cfg, data_manifest, out), timer=timer
        )
        synth_manifest = _cached(
            steps["generate"], log, lambda out: stages.generate_images(cfg, Path(model_dir), out), timer=timer
        )
        synthetic[SyntheticSet.UNFILTERED] = read_manifest(synth_manifest)
    if cfg.needs_filter:
        # every process: the verifier trains under DDP and run_filter has its own barrier (main filters, the others
        # wait)
        filter_dir = Path(
            _cached(
                steps["filter"],
                log,
                lambda out: stages.filter_images(cfg, Path(synth_manifest), data_manifest, out),
                timer=timer,
            )
        )
        synthetic[SyntheticSet.FILTERED] = read_manifest(filter_dir / "kept.csv")
    fidelity = None
    if "oracle" in steps:
        oracle_dir = Path(
            _cached(steps["oracle"], log, lambda out: stages.train_oracle(cfg, out), main_only=True, timer=timer)
        )
        fidelity = Path(
            _cached(
                steps["fidelity"],
                log,
                lambda out: stages.oracle_fidelity(
                    oracle_dir,
                    real[real["split"] == "train"],
                    synthetic[SyntheticSet.UNFILTERED],
                    synthetic.get(SyntheticSet.FILTERED),
                    out,
                ),
                main_only=True,
                timer=timer,
            )
        )

    classes = annotated_classes(real[real["split"] == "train"])
    test = real[real["split"] == cfg.evaluation.split].reset_index(drop=True)
    heldout = None
    if "heldout" in steps:
        heldout = read_manifest(
            _cached(steps["heldout"], log, lambda out: stages.prepare_heldout(cfg, out), main_only=True, timer=timer)
        )
    resampling = stages.resample_plan(cfg, real, classes) if RESAMPLED_BASELINE in cfg.arms else None
    probs: dict[tuple[str, int], np.ndarray] = {}
    rows: dict[tuple[str, int], dict[str, Any]] = {}
    for name in cfg.arms:
        arm = ARMS[name]
        offered = synthetic[arm.synthetic] if arm.uses_synthetic else None
        if offered is not None and len(offered) == 0:
            raise UserError(
                f"arm {name}: the {arm.synthetic.value} synthetic set has 0 images, so this arm would train on "
                "real rows only; check the generate/filter summaries or drop the arm with --arms"
            )
        train_df = concat_manifests([real, offered], data_manifest.parent) if offered is not None else real
        repeats = resampling.repeats if arm.resample else None
        for seed in cfg.seeds:
            step = steps[f"{name}/seed-{seed}"]
            model_dir = _cached(
                step,
                log,
                lambda out: _train_and_predict(cfg, arm, seed, train_df, test, classes, out, repeats),
                timer=timer,
            )
            probs[name, seed] = np.load(step.folder / "test_probs.npy")
            rows[name, seed] = {
                "synthetic_offered": 0 if offered is None else int(len(offered)),
                **(stages.training_rows(Path(model_dir)) or {}),
            }
            if heldout is not None:
                held = step.folder / f"{steps['heldout'].folder.name}_probs.npy"
                state.wait_for_everyone()  # every process checks before the main one may write: all agree
                if not held.exists():
                    log(f"[run] {name}/seed-{seed}: predict {len(heldout)} held-out images")
                    t0 = time.time()
                    _predict_to(cfg, Path(model_dir), heldout, classes, held)
                    timer.add(f"{name}/seed-{seed}: held-out predict", time.time() - t0, cached=False)
                probs[name, seed] = np.concatenate([probs[name, seed], np.load(held)])
    if heldout is not None:
        test = concat_manifests([test, heldout], data_manifest.parent)

    if state.is_main_process:
        t0 = time.time()
        results = build_results(
            cfg,
            real,
            test,
            classes,
            probs,
            filter_dir,
            synthetic,
            n_heldout=0 if heldout is None else len(heldout),
            rows=rows,
            resampling=resampling,
        )
        if fidelity is not None:
            results["fidelity"] = json.loads(fidelity.read_text())
        timer.add("evaluate (bootstrap) + results", time.time() - t0, cached=False)
        results["timings"] = timer.summary(time.time() - started)
        write_json_atomic(cfg.report_dir / RESULTS_FILE, results)
        render_report(cfg.report_dir)
        log(f"report written: {cfg.report_dir / 'report.html'}")
    state.wait_for_everyone()
    return cfg.report_dir


class _Timings:
    """Wall seconds per step: measured now, or read from a cached step's done.json (how long it took when it ran)."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def add(self, step: str, seconds: float | None, cached: bool) -> None:
        self.rows.append(
            {"step": step, "seconds": None if seconds is None else round(float(seconds), 1), "cached": cached}
        )

    def summary(self, wall_this_run: float) -> dict[str, Any]:
        ran = [r["seconds"] for r in self.rows if not r["cached"] and r["seconds"] is not None]
        every = [r["seconds"] for r in self.rows if r["seconds"] is not None]
        return {
            "steps": self.rows,
            "this_run_seconds": round(wall_this_run, 1),
            "ran_seconds": round(sum(ran), 1),
            "all_steps_seconds": round(sum(every), 1),
            "rule": "seconds = wall time of the step when it ran (a cached step shows its original time); "
            "this_run_seconds = wall time of this invocation, cached steps included at ~0",
        }


def _cached(
    step: Step,
    log: Callable[[str], None],
    work: Callable[[Path], Any],
    main_only: bool = False,
    timer: _Timings | None = None,
) -> str:
    """Return a finished step's output, or do the work and mark the step done (marker last, main process)."""
    from synth.distributed import main_process_only, process_state

    state = process_state()
    marker = step.folder / DONE
    cached = marker.exists()
    if not cached:
        log(f"[run] {step.name} -> {step.folder}")
        step.folder.mkdir(parents=True, exist_ok=True)
        start = time.time()
        if state.is_main_process or not main_only:
            with main_process_only(main_only):  # the others wait at the barrier below: no collective may run inside
                output = str(work(step.folder))
            if state.is_main_process:
                write_json_atomic(
                    marker,
                    {
                        "step": step.name,
                        "output": output,
                        "seconds": round(time.time() - start, 1),
                        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
                    },
                )
        state.wait_for_everyone()
    else:
        log(f"[cached] {step.name}: {step.folder}")
    done = json.loads(marker.read_text())
    if timer is not None:
        timer.add(step.name, done.get("seconds"), cached)
    return done["output"]


def _rich_log(enabled: bool) -> Callable[[str], None]:
    from rich.console import Console

    console = Console(stderr=True)
    return (lambda message: console.log(message)) if enabled else (lambda message: None)


def _train_and_predict(
    cfg: AblationConfig,
    arm: Arm,
    seed: int,
    train_df: pd.DataFrame,
    test: pd.DataFrame,
    classes: list[str],
    out: Path,
    row_repeats: dict[str, int] | None = None,
) -> Path:
    if row_repeats:
        model_dir = stages.train_arm(cfg, arm.mode, seed, train_df, classes, out / "model", row_repeats=row_repeats)
    else:
        model_dir = stages.train_arm(cfg, arm.mode, seed, train_df, classes, out / "model")
    used = stages.training_rows(Path(model_dir))
    if arm.uses_synthetic and used is not None and not used.get("synthetic"):
        raise UserError(
            f"arm {arm.name}/seed-{seed}: the classifier trained without synthetic rows (mode {arm.mode!r}, "
            f"{int((train_df['source'] == 'synthetic').sum())} offered); its numbers would be a second real-only "
            "arm. Check classifier synthetic.ratio / per_class_cap and the arm's mode"
        )
    _predict_to(cfg, Path(model_dir), test, classes, out / "test_probs.npy")
    return model_dir


def _predict_to(cfg: AblationConfig, model_dir: Path, df: pd.DataFrame, classes: list[str], path: Path) -> None:
    """Store the ensemble's probabilities of ``df`` in ``classes`` order (main process writes; all wait)."""
    from synth.distributed import process_state

    state = process_state()
    if state.is_main_process:
        prob, prob_classes = stages.predict(cfg, model_dir, df)
        order = [list(prob_classes).index(c) for c in classes]
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, np.asarray(prob, dtype=np.float32)[:, order])
    state.wait_for_everyone()


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
) -> dict[str, Any]:
    """Evaluate every arm/seed on the same test rows (held-out phantom rows included) and assemble results.json.

    Every arm but the baseline is paired with ``real_only`` (``paired_over_seeds``, per class in
    ``per_class_paired``, the significantly harmed classes in ``harmed``); when ``real_resampled`` ran,
    every synthetic arm is also paired with it (``paired_vs_resampled``), the verdict's reference.
    """
    train = real[real["split"] == "train"]
    y_train = label_matrix(train, classes)
    prevalence = {c: float(np.nanmean(y_train[:, i])) for i, c in enumerate(classes)}
    groups = frequency_groups(prevalence)
    y_test = label_matrix(test, classes)
    patients = test["subject_id"].astype(str).to_numpy()
    arms = []
    for name in cfg.arms:
        arm = ARMS[name]
        seeds = {
            str(seed): stages.evaluate(cfg, y_test, probs[name, seed], classes, groups, patients) for seed in cfg.seeds
        }
        for seed in cfg.seeds:
            if rows is not None and (name, seed) in rows:
                seeds[str(seed)]["train_rows"] = rows[name, seed]
        arm_entry: dict[str, Any] = {"name": name, "label": arm.label, "seeds": seeds}
        if name != BASELINE:
            base = [probs[BASELINE, s] for s in cfg.seeds]
            mine = [probs[name, s] for s in cfg.seeds]
            pooled = stages.paired(cfg, y_test, base, mine, classes, groups, patients)
            for i, seed in enumerate(cfg.seeds):  # each seed's own difference; the interval is the pooled one
                seeds[str(seed)]["paired"] = {g: {"diff": row["run_diffs"][i]} for g, row in pooled.items()}
            arm_entry["paired_over_seeds"] = {
                g: {k: v for k, v in row.items() if k != "run_diffs"} for g, row in pooled.items()
            }
            per_class = stages.paired_per_class(cfg, y_test, base, mine, classes, patients)
            arm_entry["per_class_paired"] = per_class
            judged = {c: v for c, v in per_class.items() if v["n_pos"] >= stages.HARM_MIN_TEST_POSITIVES}
            arm_entry["harmed"] = sorted(c for c, v in judged.items() if v["ci"][1] is not None and v["ci"][1] < 0)
            arm_entry["harm_not_judged"] = sorted(
                c for c, v in per_class.items() if 0 < v["n_pos"] < stages.HARM_MIN_TEST_POSITIVES
            )
            if arm.uses_synthetic and RESAMPLED_BASELINE in cfg.arms:
                vs = stages.paired(
                    cfg, y_test, [probs[RESAMPLED_BASELINE, s] for s in cfg.seeds], mine, classes, groups, patients
                )
                arm_entry["paired_vs_resampled"] = {g: {k: v for k, v in row.items()} for g, row in vs.items()}
        if arm.resample and resampling is not None:
            arm_entry["resampling"] = resampling.summary()
        arms.append(arm_entry)
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
        "target": {"tail_gain": cfg.target.tail_gain, "max_head_drop": cfg.target.max_head_drop},
        "provenance": stages.provenance(cfg),
    }
    if filter_dir is not None:
        results["filter"] = stages.filter_summary(filter_dir)
    if generated:
        results["grids"] = export_grid_samples(cfg, train, synthetic, filter_dir, generated)
    return results


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
