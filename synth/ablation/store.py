"""One results store: every ablation run as rows of one CSV table (one row per arm and group).

A run folder's ``results.json`` answers one run; the store answers "what have all runs said", so the tables in
README.md and docs/ are generated from it (``synth results docs``) and never typed by hand. It follows timm's
``update_summary``: rows are appended, the header is written once, and the file is replaced atomically (temp +
rename), so a killed write never leaves half a table. Re-recording a run (a resumed ``synth ablate``, or
``synth results import`` of the same file) replaces that run's rows instead of duplicating them: a run is
identified by its commit, config hash, name and test-set figures (``run_id``).

``synth ablate`` records every finished run into ``<output_root>/results/runs.csv`` (or ``results_store:`` in the
ablation YAML); the repository's own store is ``bench/results/runs.csv``.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Iterable

from synth.ablation.evidence import VERDICT_GROUPS, Evidence, evidence_of, verdict_word
from synth.ablation.results import (
    GROUPS,
    group_estimate,
    paired_estimate,
    paired_vs_resampled,
    validate_results,
    verdict_tail,
    vs_verdict_baseline,
)
from synth.errors import UserError
from synth.hashing import hex_hash
from synth.io import atomic_path

REPO = Path(__file__).resolve().parents[2]
#: The repository's committed store, which README.md and docs/ are generated from.
REPO_STORE = REPO / "bench" / "results" / "runs.csv"
STORE_NAME = "runs.csv"
RESAMPLED = "real_resampled"
#: config keys that say where results go, not what was measured: left out of ``config_hash``
_NOT_MEASURED = ("output_root", "results_store")

COLUMNS: tuple[str, ...] = (
    "run_id",
    "when_utc",
    "commit",
    "config_hash",
    "ablation",
    "dataset",
    "n_test",
    "arm",
    "label",
    "group",
    "map",
    "map_lo",
    "map_hi",
    "d_real_only",
    "d_real_only_lo",
    "d_real_only_hi",
    "p_real_only",
    "d_real_resampled",
    "d_real_resampled_lo",
    "d_real_resampled_hi",
    "p_real_resampled",
    "judged",
    "verdict",
    "verdict_against",
    "verdict_classes",
    "d_verdict",
    "d_verdict_lo",
    "d_verdict_hi",
    "generator_seed",
    "classifier_seeds",
    "stage_seconds",
    "source",
)


def default_store(output_root: str | Path) -> Path:
    """Where ``synth ablate`` records a run when the config names no ``results_store``."""
    return Path(output_root) / "results" / STORE_NAME


def _digest(obj: Any) -> str:
    """12 hex of sha256 over canonical JSON: the same config (or run) always gets the same id."""
    return hex_hash(json.dumps(obj, sort_keys=True, default=str), algorithm="sha256", hex_chars=12)


def _cell(value: float | None) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.6f}"


def stage_totals(results: dict[str, Any]) -> dict[str, float]:
    """Each stage's wall seconds from ``timings``, an arm's seeds summed (``real_only/seed-0`` -> ``real_only``)."""
    totals: dict[str, float] = {}
    for step in (results.get("timings") or {}).get("steps") or []:
        key = str(step["step"]).split("/")[0]
        totals[key] = totals.get(key, 0.0) + float(step.get("seconds") or 0.0)
    return totals


def _stage_seconds(results: dict[str, Any]) -> str:
    """``data=27.1;generator=3218.8;...``: the store's one-cell form of :func:`stage_totals`."""
    return ";".join(f"{k}={v:.1f}" for k, v in stage_totals(results).items())


def _generator_seed(config: dict[str, Any]) -> str:
    """The generators' training seeds: ``generator.seeds`` (K generators, comma-joined), an override in the ablation
    config, else the finetune YAML's ``seed``."""
    gen = config.get("generator") or {}
    if gen.get("seeds"):
        return ",".join(map(str, gen["seeds"]))
    if "seed" in (gen.get("overrides") or {}):
        return str(gen["overrides"]["seed"])
    path = gen.get("config")
    if path and (REPO / path).is_file():
        import yaml

        seed = (yaml.safe_load((REPO / path).read_text()) or {}).get("seed")
        return "" if seed is None else str(seed)
    return ""


#: the store's words for :func:`synth.ablation.evidence.verdict_word` (None: a degenerate bootstrap)
_VERDICTS = {"helps": "helps", "hurts": "hurts", "shows no clear effect on": "no clear effect", None: "no verdict"}


def _verdict_cells(results: dict[str, Any], arm: dict[str, Any], group: str, evidence: Evidence) -> dict[str, str]:
    """The evidence rule's reading of one arm and group, as the report states it: how many of the group's classes
    are judged (``judged`` = "k/n"), the verdict word, the arm it is against, and the Δ it stands on (over the
    judged classes only). Why in the store: a table that printed the all-class Δ of a group the rule does not
    judge (the NIH sample's one-positive tail) would claim what the report refuses to. ``verdict_classes``: the
    classes the Δ averages, more than the judged ones only for results.json written before the rule (no per-class
    bootstrap over the judged classes was stored, so the report's Δ is over every class with a positive)."""
    keys = ("judged", "verdict", "verdict_against", "verdict_classes", "d_verdict", "d_verdict_lo", "d_verdict_hi")
    cells = dict.fromkeys(keys, "")
    ev = evidence.groups.get(group)
    if ev is None or group not in VERDICT_GROUPS:
        return cells
    cells["judged"] = f"{len(ev.judged)}/{ev.n_classes}"
    if arm["name"] == results["baseline"]:
        return cells
    judged_paired = arm.get("judged_paired") or {}
    if judged_paired.get("groups", {}).get(group) is not None:
        against, averaged = str(judged_paired.get("against") or ""), len(ev.judged)
    else:
        against = RESAMPLED if vs_verdict_baseline(results, arm) else str(results["baseline"])
        averaged = len(ev.judged) + sum(n > 0 for n in ev.not_judged.values())
    cells["verdict_against"] = against
    if not ev.is_judged:
        cells["verdict"] = "not judged"
        return cells
    est = verdict_tail(results, arm, group)
    cells["verdict_classes"] = str(averaged)
    cells["verdict"] = _VERDICTS[verdict_word(est.mean, est.ci, est.degenerate, evidence.min_effect)]
    cells.update(d_verdict=_cell(est.mean), d_verdict_lo=_cell(est.ci[0]), d_verdict_hi=_cell(est.ci[1]))
    return cells


def run_rows(results: dict[str, Any], source: str = "") -> list[dict[str, str]]:
    """The store's rows for one results.json: one per arm and group (overall, head, medium, tail)."""
    validate_results(results, source or "results.json")
    prov = results.get("provenance") or {}
    config = prov.get("config") or {}
    dataset = results.get("dataset") or {}
    per_arm = {arm["name"]: {g: round(group_estimate(arm, g).mean, 6) for g in GROUPS} for arm in results["arms"]}
    run_id = _digest([prov.get("git_commit"), config, results["name"], dataset.get("n_test"), per_arm])
    shared = {
        "run_id": run_id,
        "when_utc": str(prov.get("when_utc") or ""),
        "commit": str(prov.get("git_commit") or ""),
        "config_hash": _digest({k: v for k, v in config.items() if k not in _NOT_MEASURED}),
        "ablation": str(results["name"]),
        "dataset": str(dataset.get("name") or ""),
        "n_test": str(dataset.get("n_test") or ""),
        "generator_seed": _generator_seed(config),
        "classifier_seeds": ",".join(str(s) for s in (prov.get("seeds") or config.get("seeds") or [])),
        "stage_seconds": _stage_seconds(results),
        "source": source,
    }
    evidence = evidence_of(results)
    rows = []
    for arm in results["arms"]:
        base = arm["name"] == results["baseline"]
        for group in GROUPS:
            est = group_estimate(arm, group)
            vs_base = None if base else paired_estimate(arm, group)
            vs_res = None if arm["name"] == RESAMPLED else paired_vs_resampled(arm, group)
            row = dict(shared, arm=arm["name"], label=str(arm.get("label") or arm["name"]), group=group)
            row.update(map=_cell(est.mean), map_lo=_cell(est.ci[0]), map_hi=_cell(est.ci[1]))
            for key, e in (("real_only", vs_base), ("real_resampled", vs_res)):
                row[f"d_{key}"] = _cell(e.mean if e else None)
                row[f"d_{key}_lo"] = _cell(e.ci[0] if e else None)
                row[f"d_{key}_hi"] = _cell(e.ci[1] if e else None)
                row[f"p_{key}"] = _cell(e.p if e else None)
            row.update(_verdict_cells(results, arm, group, evidence))
            rows.append(row)
    return rows


def read_store(path: str | Path) -> list[dict[str, str]]:
    """Every row of the store (an empty list when there is none yet)."""
    path = Path(path)
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in ("run_id", "arm", "group") if c not in (reader.fieldnames or [])]
        if missing:
            raise UserError(f"{path}: not a results store (columns {missing} missing); pass another --store")
        return list(reader)


def append_rows(path: str | Path, rows: Iterable[dict[str, str]]) -> int:
    """Add rows to the store, replacing earlier rows of the same runs; header once; atomic. Returns rows added."""
    rows = list(rows)
    new_ids = {r["run_id"] for r in rows}
    kept = [r for r in read_store(path) if r["run_id"] not in new_ids]
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(COLUMNS), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(kept + rows)
    return len(rows)


def record_run(cfg: Any, results: dict[str, Any]) -> Path:
    """Record one finished ``synth ablate`` run in its store: the one call the runner makes. Returns the store."""
    store = Path(cfg.results_store) if cfg.results_store else default_store(cfg.output_root)
    append_rows(store, run_rows(results, source=str(cfg.report_dir / "results.json")))
    return store


def import_results(target: str | Path, store: str | Path) -> tuple[str, int]:
    """``synth results import``: a run folder (holding results.json) or a results JSON file -> its run id, rows."""
    from synth.ablation.results import RESULTS_FILE, load_results

    target = Path(target)
    path = target / RESULTS_FILE if target.is_dir() else target
    results = load_results(path)
    try:
        source = str(path.resolve().relative_to(REPO))
    except ValueError:
        source = str(path)
    rows = run_rows(results, source=source)
    append_rows(store, rows)
    return rows[0]["run_id"], len(rows)
