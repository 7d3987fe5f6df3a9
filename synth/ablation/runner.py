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
    arms/<arm>-<key>/seed-<s>/   classifier ensemble + test probabilities (+ heldout-<key>_probs.npy, and
                           external-<manifest sha>_probs.npy per evaluation.external set)

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

import functools
import json
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from synth.ablation import stages, store
from synth.ablation.arms import Arm, SyntheticSet
from synth.ablation.card import ablation_card
from synth.ablation.claims import free_first, hold
from synth.ablation.collect import build_results
from synth.ablation.config import AblationConfig
from synth.ablation.external import check_external_classes, read_external_sets
from synth.ablation.preflight import check_paths
from synth.ablation.report import render_report
from synth.ablation.results import RESULTS_FILE
from synth.ablation.steps import DONE, Source, Step, arm_step, external_step, folder_done, plan, source_of, sources
from synth.errors import UserError
from synth.io import atomic_path, write_json_atomic
from synth.manifest import annotated_classes, concat_manifests, read_manifest


def run_ablation(cfg: AblationConfig, log: Callable[[str], None] | None = None) -> Path:
    """Run (or resume) every step, write results.json and render the report; return the report folder."""
    from synth.distributed import process_state

    state = process_state()
    log = log or _rich_log(state.is_main_process)
    check_paths(cfg)  # prepared external sets included: read once there, once below for their rows
    started = time.time()
    timer = _Timings()
    steps = {s.name: s for s in plan(cfg)}
    data_manifest, real, synthetic, filter_dir, fidelity = _shared_stages(cfg, steps, log, timer)

    classes = annotated_classes(real[real["split"] == "train"])
    test = real[real["split"] == cfg.evaluation.split].reset_index(drop=True)
    heldout = _heldout_set(cfg, steps, log, timer)
    externals = read_external_sets(cfg, _rendered_external_sets(cfg, steps, log, timer))
    for ext in externals:
        check_external_classes(ext, classes)
    resampling = stages.resample_plan(cfg, real, classes) if any(a.resample for a in cfg.run_arms) else None
    probs: dict[tuple[str, int], np.ndarray] = {}
    rows: dict[tuple[str, int], dict[str, Any]] = {}
    claims = _claims_on()
    jobs = [(arm, i, seed) for arm in cfg.run_arms for i, seed in enumerate(cfg.seeds)]
    folder_of = lambda job: [steps[arm_step(job[0].name, job[2])].folder]  # noqa: E731
    for arm, i, seed in free_first(jobs, folder_of, folder_done, claims):
        step = steps[arm_step(arm.name, seed)]
        with hold(step.folder, log, enabled=claims):  # the model and its extra predictions, as one unit
            repeats = resampling.repeats if arm.resample else None
            arm_cfg = cfg.for_arm(arm)
            offered = _offered_synthetic(arm, synthetic.get(source_of(cfg, arm, i)) if arm.uses_synthetic else None)
            train_df = concat_manifests([real, offered], data_manifest.parent) if offered is not None else real
            model_dir = _cached(
                step,
                log,
                lambda out: _train_and_predict(arm_cfg, arm, seed, train_df, test, classes, out, repeats),
                timer=timer,
            )
            probs[arm.name, seed] = np.load(step.folder / "test_probs.npy")
            rows[arm.name, seed] = {"synthetic_offered": 0 if offered is None else int(len(offered))}
            if arm.uses_synthetic and cfg.n_generators > 1:
                rows[arm.name, seed]["generator"] = cfg.generator_of(i)
            rows[arm.name, seed].update(stages.training_rows(Path(model_dir)) or {})
            label = f"{arm.name}/seed-{seed}"
            if heldout is not None:
                held = step.folder / f"{steps['heldout'].folder.name}_probs.npy"
                extra = _extra_probs(cfg, Path(model_dir), heldout, classes, held, label, log, timer)
                probs[arm.name, seed] = np.concatenate([probs[arm.name, seed], extra])
            for ext in externals:  # cached per (model, manifest content): adding a set to a finished run only predicts
                cache = step.folder / f"external-{ext.fingerprint}_probs.npy"
                what = f"external set {ext.name}"
                ext.probs[arm.name, seed] = _extra_probs(
                    arm_cfg, Path(model_dir), ext.rows, classes, cache, label, log, timer, what
                )
    if heldout is not None:
        test = concat_manifests([test, heldout], data_manifest.parent)

    if state.is_main_process:
        with hold(cfg.report_dir, log, enabled=claims) as waited:
            written = cfg.report_dir / RESULTS_FILE
            if waited and written.exists() and written.stat().st_mtime > started:  # by the other invocation, now
                log(f"report written by the other invocation: {cfg.report_dir / 'report.html'}")
                state.wait_for_everyone()
                return cfg.report_dir
            t0 = time.time()
            n_heldout = 0 if heldout is None else len(heldout)
            results = build_results(
                cfg,
                real,
                test,
                classes,
                probs,
                filter_dir,
                synthetic.get(Source(), {}),
                n_heldout=n_heldout,
                rows=rows,
                resampling=resampling,
                external=externals,
            )
            timer.add("evaluate (bootstrap) + results", time.time() - t0, cached=False)
            _write_report(cfg, results, fidelity, timer.summary(time.time() - started), log)
    state.wait_for_everyone()
    return cfg.report_dir


def _heldout_set(cfg: AblationConfig, steps: dict[str, Step], log: Callable[[str], None], timer: "_Timings"):
    """The extra test-only phantom patients (``evaluation.heldout_phantom_n``), or None when not configured."""
    if "heldout" not in steps:
        return None
    return read_manifest(
        _cached(steps["heldout"], log, lambda out: stages.prepare_heldout(cfg, out), main_only=True, timer=timer)
    )


def _rendered_external_sets(
    cfg: AblationConfig, steps: dict[str, Step], log: Callable[[str], None], timer: "_Timings"
) -> dict[str, Path]:
    """The external cohorts the ablation renders itself (``evaluation.external[].phantom``): set name -> manifest."""
    rendered = {}
    for ext in cfg.evaluation.external:
        if ext.phantom is not None:
            work = functools.partial(stages.prepare_phantom_external, cfg, ext.phantom)
            rendered[ext.name] = Path(_cached(steps[external_step(ext.name)], log, work, main_only=True, timer=timer))
    return rendered


def _offered_synthetic(arm: Arm, synthetic: dict[str, pd.DataFrame] | None) -> pd.DataFrame | None:
    """The synthetic rows the arm trains on (None: a real-only arm); an empty set is an error, not a silent no-op."""
    offered = synthetic[arm.synthetic] if arm.uses_synthetic and synthetic is not None else None
    if offered is not None and len(offered) == 0:
        raise UserError(
            f"arm {arm.name}: the {arm.synthetic.value} synthetic set has 0 images, so this arm would train on "
            "real rows only; check the generate/filter summaries or drop the arm with --arms"
        )
    return offered


def _write_report(
    cfg: AblationConfig, results: dict[str, Any], fidelity: Path | None, timings: dict[str, Any], log: Callable
) -> None:
    """results.json (plus the oracle's fidelity.json and the step timings) and the report rendered from it."""
    if fidelity is not None:
        results["fidelity"] = json.loads(fidelity.read_text())
    results["timings"] = timings
    write_json_atomic(cfg.report_dir / RESULTS_FILE, results)
    render_report(cfg.report_dir)
    ablation_card(cfg, results)
    log(f"report written: {cfg.report_dir / 'report.html'}; run recorded in {store.record_run(cfg, results)}")


def _shared_stages(cfg: AblationConfig, steps: dict[str, Step], log: Callable[[str], None], timer: "_Timings"):
    """The steps the arms share: data, generator(s), generated images, filter, oracle + fidelity (as configured).

    Returns (data manifest, real rows, {source: synthetic sets by :class:`SyntheticSet`}, the first source's filter
    folder, fidelity.json path). The oracle judges the first source (generator 0, the ablation's generate section).
    """
    data_manifest = Path(
        _cached(steps["data"], log, lambda out: stages.prepare_data(cfg, out), main_only=True, timer=timer)
    )
    real = read_manifest(data_manifest)
    synthetic: dict[Source, dict[str, pd.DataFrame]] = {}
    filter_dir = None
    generators: dict[int, Path] = {}
    specs = cfg.arm_specs
    claims = _claims_on()
    ordered = sources(cfg) if cfg.needs_synthetic else []
    stage_names = ("generator", "generate", "filter")

    def folders(src: Source) -> list[Path]:
        names = [n + (Source(src.k).suffix if n == "generator" else src.suffix) for n in stage_names]
        return [steps[n].folder for n in names if n in steps]

    # another invocation may be training generator 0
    for src in free_first(ordered, folders, folder_done, enabled=claims):
        src_cfg = cfg.for_synthetic(src.k, specs[src.variant] if src.variant else None)
        if src.k not in generators:
            generators[src.k] = Path(
                _cached(
                    steps["generator" + Source(src.k).suffix],
                    log,
                    lambda out: stages.train_generator(src_cfg, data_manifest, out),
                    timer=timer,
                )
            )
        synth_manifest = _cached(
            steps["generate" + src.suffix],
            log,
            lambda out: stages.generate_images(src_cfg, generators[src.k], out),
            timer=timer,
        )
        synthetic[src] = {SyntheticSet.UNFILTERED: read_manifest(synth_manifest)}
        if cfg.needs_filter:
            # every process: the verifier trains under DDP and run_filter has its own barrier (main filters, the
            # others wait)
            folder = Path(
                _cached(
                    steps["filter" + src.suffix],
                    log,
                    lambda out: stages.filter_images(src_cfg, Path(synth_manifest), data_manifest, out),
                    timer=timer,
                )
            )
            synthetic[src][SyntheticSet.FILTERED] = read_manifest(folder / "kept.csv")
            filter_dir = folder if src == ordered[0] else filter_dir
    fidelity = None
    if "oracle" in steps:
        first = synthetic.get(Source()) or next(iter(synthetic.values()))
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
                    first[SyntheticSet.UNFILTERED],
                    first.get(SyntheticSet.FILTERED),
                    out,
                ),
                main_only=True,
                timer=timer,
            )
        )
    return data_manifest, real, synthetic, filter_dir, fidelity


def _extra_probs(
    cfg: AblationConfig,
    model_dir: Path,
    rows: pd.DataFrame,
    classes: list[str],
    cache: Path,
    label: str,
    log: Callable[[str], None],
    timer: "_Timings",
    what: str = "held-out",
) -> np.ndarray:
    """The arm/seed's probabilities of test-only rows beyond its test split (the held-out phantom patients, an
    external set): predicted once by the trained model, then read from ``cache``."""
    from synth.distributed import process_state

    process_state().wait_for_everyone()  # every process checks before the main one may write: all agree
    if not cache.exists():
        log(f"[run] {label}: predict {len(rows)} {what} images")
        t0 = time.time()
        _predict_to(cfg, model_dir, rows, classes, cache)
        timer.add(f"{label}: {what} predict", time.time() - t0, cached=False)
    return np.load(cache)


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
    marker = step.folder / DONE
    cached = marker.exists()
    if not cached:
        with hold(step.folder, log, enabled=_claims_on()):  # another invocation may be running it
            cached = marker.exists()
            if not cached:
                log(f"[run] {step.name} -> {step.folder}")
                _run_step(step, work, main_only)
    if cached:
        log(f"[cached] {step.name}: {step.folder}")
    done = json.loads(marker.read_text())
    if timer is not None:
        timer.add(step.name, done.get("seconds"), cached)
    return done["output"]


def _claims_on() -> bool:
    """Whether steps are claimed against concurrent invocations (synth.ablation.claims): one process per
    invocation; under ``accelerate launch`` the processes of one invocation share each step through barriers."""
    from synth.distributed import process_state

    return process_state().num_processes == 1


def _run_step(step: Step, work: Callable[[Path], Any], main_only: bool) -> None:
    """Do a step's work and write its marker last (main process; the others wait at the barrier)."""
    from synth.distributed import main_process_only, process_state

    state = process_state()
    start = time.time()
    step.folder.mkdir(parents=True, exist_ok=True)
    if state.is_main_process or not main_only:
        with main_process_only(main_only):  # the others wait at the barrier below: no collective may run inside
            output = str(work(step.folder))
        if state.is_main_process:
            write_json_atomic(
                step.folder / DONE,
                {
                    "step": step.name,
                    "output": output,
                    "seconds": round(time.time() - start, 1),
                    "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
                },
            )
    state.wait_for_everyone()


def _rich_log(enabled: bool) -> Callable[[str], None]:
    from synth.console import rich_console

    console = rich_console(stderr=True)
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
