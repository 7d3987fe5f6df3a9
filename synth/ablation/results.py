"""The ``results.json`` contract between the ablation runner and the report.

The report is rendered only from this file (plus the sample images it
references), so ``synth report NAME`` can re-render without retraining, and a
results file written by hand or by another tool renders the same way.

Layout (all numbers are floats; ``ci`` is a ``[low, high]`` 95% interval)::

    {
      "name": "phantom-cpu",
      "question": "Does synthetic tail data help, where, and by how much?",
      "dataset": {"name": ..., "manifest": ..., "n_train": .., "n_val": .., "n_test": .., "n_test_patients": ..},
      "classes": [...],                      # evaluated classes, CXR-LT spelling
      "groups": {class: "head"|"medium"|"tail"},
      "train_prevalence": {class: fraction of real training images},
      "generated_classes": [...],
      "baseline": "real_only",
      "arms": [{
          "name": "real_only", "label": "Real only",
          "seeds": {"0": {
              "groups": {"overall"|"head"|"medium"|"tail": {"value": .., "ci": [..]}},
              "per_class": {class: {"ap": .., "auroc": .., "f1": .., "fnr": .., "n_pos": ..}},
              "paired": {group: {"diff": ..}},  # vs baseline, same seed; not on the baseline (older files: + ci, p)
              "train_rows": {"synthetic_offered": .., "real_train": .., "val": .., "synthetic": ..}  # what the arm
              trained on
          }},
          "paired_over_seeds": {group: {"diff": .., "ci": [..], "p": ..}},  # seed-averaged; not on the baseline
          "paired_vs_resampled": {group: {"diff": .., "ci": [..], "p": .., "run_diffs": [..]}},  # synthetic arms, when
                                             # real_resampled ran: the verdict's reference ("verdict_baseline")
          "per_class_paired": {class: {"diff": .., "ci": [..], "run_diffs": [..]}},   # vs real_only, same bootstrap
          "harmed": [class, ...],            # classes whose per_class_paired interval lies below 0 ("do no harm"),
                                             # among those with >= 5 test positives (harm.HARM_MIN_TEST_POSITIVES)
          "harm_not_judged": [class, ...],   # classes with 1-4 test positives: too few to call harm
          "resampling": {...}                # real_resampled only: threshold t, per-class presentations
          (resampling.py)
      }],
      "verdict_baseline": "real_resampled" | "real_only",
      "evidence": {"min_test_positives": 10, "min_effect": 0.005, "test_positives": {class: n | null (not annotated)},
                   "groups": {group: {"judged": [class, ...], "not_judged": {class: n_pos}}}, ...},
                                             # the evidence rule (evidence.py); each arm may then carry
                                             # "judged_paired": {"against": arm, "groups": {group: paired row}}:
                                             # its verdict Δ over the judged classes only. Paired rows also
                                             # carry "n_distinct" and "modal_share" (degenerate bootstrap check)
      "external": [{"name": .., "manifest": .., "fingerprint": .., "dataset": {"n_test": .., "n_test_patients": ..},
                    "not_scored": [class, ...], "no_positives": [class, ...], "evidence": {...},
                    "arms": [...]}],         # optional: evaluation.external sets, arms laid out as above (same
                                             # classes, groups and baselines as the main split)
      "timings": {"steps": [{"step": .., "seconds": .., "cached": ..}], "this_run_seconds": .., ...},
      "filter": {"extractor": "...", "classes": {class: {"n": .., "kept": .., "rejected": {reason: count}, "flagged":
      {reason: count},
                 "fid": .., "kid": .., "fid_floor": .., "fid_ci": [..], "oracle_fidelity": ..,
                 "transfer": {"judged": .., "passed": .., "auroc": .., "ci": [..], "n_real_pos": .., "reason": ..}}}},
                 # optional
      "fidelity": {"rule": "...", "classes": {class: {"oracle_val_ap": .., "real": .., "generated": .., "kept": ..,
                   "rejected": .., "n_real": .., "n_generated": ..}}},   # optional: phantom oracle (ablation
                   oracle.config)
      "grids": {class: {"real": [path], "kept": [path], "rejected": [path]}},   # paths relative to results.json
      "provenance": {"commands": [...], "config": {...}, "seeds": [...], "versions": {...}, "git_commit": ...}
    }

How seeds are combined (documented in the report too): a group's headline
value is the mean over seeds of each seed's point estimate; its interval is
the mean over seeds of each seed's patient-bootstrap bounds (test-set
uncertainty of a typical seed), shown next to the seed standard deviation
(training uncertainty). A paired difference is the mean over seeds of
(arm − baseline trained with the same seed); its interval and p come from one
joint bootstrap that scores every seed on the same resampled patients and
averages the differences, so "significant" means the same thing in the
interval, the p-value and the verdict.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synth.ablation.arms import ARMS, SYNTHETIC_FILTERED
from synth.ablation.evidence import evidence_of, is_degenerate
from synth.errors import UserError
from synth.io import read_json_file

GROUPS: tuple[str, ...] = ("overall", "head", "medium", "tail")
PER_CLASS_METRICS: tuple[str, ...] = ("ap", "auroc", "f1", "fnr")
ARM_LABELS: dict[str, str] = {a.name: a.label for a in ARMS.values()}
RESULTS_FILE = "results.json"
_MISSING = "{path} not found: run `synth ablate --config configs/ablation/NAME.yaml` first"
_INVALID = "{path} is not valid JSON ({err}); re-run `synth ablate` to rewrite it"


@dataclass(frozen=True)
class Estimate:
    """A seed-combined estimate: mean, seed std, mean bootstrap interval, seeds used."""

    mean: float
    std: float
    ci: tuple[float, float]
    n_seeds: int
    p: float | None = None
    p_is_bound: bool = False  #: p is the largest per-seed p (older results.json), an upper bound, not the pooled p
    n_distinct: int | None = None  #: distinct values of the paired bootstrap (None: not recorded)
    modal_share: float | None = None  #: share of its resamples on its most common value

    @property
    def excludes_zero(self) -> bool:
        return self.ci[0] > 0 or self.ci[1] < 0

    @property
    def degenerate(self) -> bool:
        """Too few distinct resampled values for an interval or p to mean anything (synth/ablation/evidence.py)."""
        return is_degenerate(self.n_distinct, self.modal_share)


def load_results(path: str | Path) -> dict[str, Any]:
    """Read and validate a results.json; a broken file is one clear error."""
    path, results = read_json_file(path, RESULTS_FILE, missing=_MISSING, invalid=_INVALID)
    validate_results(results, path)
    return results


def validate_results(results: dict[str, Any], where: str | Path = RESULTS_FILE) -> None:
    """Check the fields the report needs, naming the first missing one."""
    for key in ("name", "classes", "groups", "train_prevalence", "arms", "baseline"):
        if key not in results:
            raise UserError(f"{where}: missing key {key!r} (see synth/ablation/results.py for the layout)")
    names = [arm.get("name") for arm in results["arms"]]
    if results["baseline"] not in names:
        raise UserError(f"{where}: baseline arm {results['baseline']!r} is not among the arms {names}")
    for arm in results["arms"]:
        if not arm.get("seeds"):
            raise UserError(f"{where}: arm {arm.get('name')!r} has no finished seeds")
        for seed, entry in arm["seeds"].items():
            missing = [g for g in GROUPS if g not in entry.get("groups", {})]
            if missing:
                raise UserError(f"{where}: arm {arm['name']!r} seed {seed} lacks group metrics {missing}")
            if arm["name"] != results["baseline"] and "paired" not in entry:
                raise UserError(
                    f"{where}: arm {arm['name']!r} seed {seed} lacks its paired comparison with the baseline"
                )


def combine(values: list[float], lows: list[float], highs: list[float], ps: list[float] | None = None) -> Estimate:
    """Combine per-seed estimates by the rule in the module docstring (NaNs = class/group absent)."""
    keep = [i for i, v in enumerate(values) if v is not None and not math.isnan(v)]
    if not keep:
        return Estimate(math.nan, math.nan, (math.nan, math.nan), 0)
    vals = [values[i] for i in keep]
    mean = sum(vals) / len(vals)
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
    ci = (sum(lows[i] for i in keep) / len(keep), sum(highs[i] for i in keep) / len(keep))
    # The largest p over seeds: a difference is only called significant if every seed agrees.
    p = max(ps[i] for i in keep) if ps and all(ps[i] is not None for i in keep) else None
    return Estimate(mean, std, ci, len(keep), p)


def group_estimate(arm: dict[str, Any], group: str) -> Estimate:
    entries = list(arm["seeds"].values())
    return combine(
        [_num(e["groups"][group]["value"]) for e in entries],
        [_num(e["groups"][group]["ci"][0]) for e in entries],
        [_num(e["groups"][group]["ci"][1]) for e in entries],
    )


def paired_estimate(arm: dict[str, Any], group: str) -> Estimate:
    """The seed-averaged difference vs the baseline, its interval and p from one joint bootstrap.

    results.json files written before ``paired_over_seeds`` existed fall back
    to combining the per-seed comparisons (mean of intervals, largest p).
    """
    entries = [e["paired"][group] for e in arm["seeds"].values() if group in e.get("paired", {})]
    pooled = arm.get("paired_over_seeds", {}).get(group)
    if pooled is not None:
        if pooled.get("diff") is None:
            return Estimate(math.nan, math.nan, (math.nan, math.nan), 0)
        diffs = [_num(e["diff"]) for e in entries]
        seed_std = combine(diffs, diffs, diffs).std  # the same seed spread the fallback reports
        return Estimate(
            float(pooled["diff"]),
            seed_std,
            (_num(pooled["ci"][0]), _num(pooled["ci"][1])),
            len(arm["seeds"]),
            pooled.get("p"),
            n_distinct=pooled.get("n_distinct"),
            modal_share=pooled.get("modal_share"),
        )
    old = combine(
        [_num(e["diff"]) for e in entries],
        [_num(e["ci"][0]) for e in entries],
        [_num(e["ci"][1]) for e in entries],
        [e.get("p") for e in entries],
    )
    return dataclasses.replace(old, p_is_bound=True)


def paired_vs_resampled(arm: dict[str, Any], group: str) -> Estimate | None:
    """The seed-averaged difference vs ``real_resampled`` (one joint bootstrap), or None when that arm did not run."""
    row = arm.get("paired_vs_resampled", {}).get(group)
    return None if row is None else row_estimate(arm, row)


def row_estimate(arm: dict[str, Any], row: dict[str, Any]) -> Estimate:
    """A pooled paired row (``diff``, ``ci``, ``p``, ``run_diffs``) as an :class:`Estimate`."""
    if row.get("diff") is None:
        return Estimate(math.nan, math.nan, (math.nan, math.nan), 0)
    diffs = [_num(d) for d in row.get("run_diffs", [])]
    seed_std = combine(diffs, diffs, diffs).std if diffs else math.nan
    return Estimate(
        float(row["diff"]),
        seed_std,
        (_num(row["ci"][0]), _num(row["ci"][1])),
        len(arm["seeds"]),
        row.get("p"),
        n_distinct=row.get("n_distinct"),
        modal_share=row.get("modal_share"),
    )


def harmed_classes(
    arm: dict[str, Any], groups: dict[str, str] | None = None, group: str | None = None
) -> list[str] | None:
    """Classes whose AP is significantly below real_only (paired interval below 0); None for older results.json."""
    if "harmed" not in arm:
        return None
    return [c for c in arm["harmed"] if group is None or (groups or {}).get(c) == group]


def per_class_mean(arm: dict[str, Any], cls: str, metric: str) -> float:
    """Mean over seeds of one per-class metric; NaN where the class was not scored."""
    vals = [_num(e["per_class"].get(cls, {}).get(metric)) for e in arm["seeds"].values() if "per_class" in e]
    vals = [v for v in vals if not math.isnan(v)]
    return sum(vals) / len(vals) if vals else math.nan


def arm_by_name(results: dict[str, Any], name: str) -> dict[str, Any]:
    for arm in results["arms"]:
        if arm["name"] == name:
            return arm
    raise KeyError(name)


def _num(value: Any) -> float:
    return math.nan if value is None else float(value)


JUDGEABLE_ORACLE_AP = 0.5  #: below this oracle val AP a class's fidelity is not reported as evidence
GATE_MIN_SPEARMAN = 0.6  #: the gate's score must rank classes as the oracle's fidelity does (issue #18's bar)
GATE_MUST_DROP_BELOW = 0.10  #: a class set whose images carry the finding this rarely must be dropped
GATE_MUST_KEEP_FROM = 0.50  #: a class set this faithful must be kept


def is_judgeable(fidelity_row: dict[str, Any]) -> bool:
    """Whether the oracle is good enough on this class for its fidelity to count."""
    return (fidelity_row.get("oracle_val_ap") or 0) >= JUDGEABLE_ORACLE_AP


@dataclass(frozen=True)
class GateAgreement:
    """How the real-data-only transfer gate's decisions compare with the phantom oracle's fidelity.

    The oracle never feeds the gate; this is the check that the gate would have decided as the oracle
    would, on the judgeable tail classes (the only place a user without an oracle has to trust it).
    """

    rows: list[tuple[str, float, float, bool]]  # (class, gate AUROC, oracle fidelity of generated images, kept)
    spearman: float | None  # None with fewer than 3 classes
    unfaithful_kept: list[str]  # fidelity < GATE_MUST_DROP_BELOW but kept
    faithful_dropped: list[str]  # fidelity >= GATE_MUST_KEEP_FROM but dropped

    @property
    def met(self) -> bool:
        return (
            self.spearman is not None
            and self.spearman >= GATE_MIN_SPEARMAN
            and not self.unfaithful_kept
            and not self.faithful_dropped
        )


def gate_agreement(results: dict[str, Any]) -> GateAgreement | None:
    """Gate vs oracle on judgeable tail classes the gate judged; None when either is missing."""
    filt = (results.get("filter") or {}).get("classes", {})
    fid = (results.get("fidelity") or {}).get("classes", {})
    rows = []
    for cls, f in fid.items():
        gate = (filt.get(cls) or {}).get("transfer") or {}
        if (
            results["groups"].get(cls) != "tail"
            or not is_judgeable(f)
            or f.get("generated") is None
            or not gate.get("judged")
        ):
            continue
        rows.append((cls, float(gate["auroc"]), float(f["generated"]), bool(gate.get("passed"))))
    if not rows:
        return None
    return GateAgreement(
        rows=rows,
        spearman=_spearman([r[1] for r in rows], [r[2] for r in rows]),
        unfaithful_kept=[r[0] for r in rows if r[2] < GATE_MUST_DROP_BELOW and r[3]],
        faithful_dropped=[r[0] for r in rows if r[2] >= GATE_MUST_KEEP_FROM and not r[3]],
    )


def _spearman(xs: list[float], ys: list[float]) -> float | None:
    """Spearman's rho, or None with fewer than 3 pairs or a constant side."""
    if len(xs) < 3:
        return None
    from scipy.stats import spearmanr

    stat = spearmanr(xs, ys).statistic
    return None if stat is None or math.isnan(stat) else float(stat)


#: The arm that judges the gate after the run: real rows plus exactly the class sets the filter kept, trained as
#: ``real_only`` is, so a kept class's ΔAP vs ``real_only`` is what its set did to that class.
GATE_BENEFIT_ARM = SYNTHETIC_FILTERED.name


@dataclass(frozen=True)
class GateBenefit:
    """Did the gate's score rank the kept tail class sets as their effect on the classifier does?

    This is the check a user without an oracle can make on their own run: the per-class AP change is measured
    on test rows after everything has run, and nothing here feeds a stage back. On the phantom the oracle's
    fidelity is shown beside it, as the same question asked of the judge the gate is meant to approximate.
    """

    arm: str
    rows: list[tuple[str, float, dict[str, Any], float | None]]  # (class, gate AUROC, per_class_paired row, fidelity)
    spearman_gate: float | None  # gate AUROC vs ΔAP; None with fewer than 3 classes
    spearman_fidelity: float | None  # oracle fidelity vs ΔAP over the judgeable classes; None without an oracle


def gate_benefit(results: dict[str, Any]) -> GateBenefit | None:
    """Per tail class the gate judged and kept: its score, the :data:`GATE_BENEFIT_ARM` ΔAP vs real only, and the
    oracle's fidelity where judgeable; None when the gate or that arm did not run."""
    try:
        arm = arm_by_name(results, GATE_BENEFIT_ARM)
    except KeyError:
        return None
    filt = (results.get("filter") or {}).get("classes", {})
    fid = (results.get("fidelity") or {}).get("classes", {})
    rows = []
    for cls in results.get("generated_classes") or list(filt):
        gate = (filt.get(cls) or {}).get("transfer") or {}
        paired = (arm.get("per_class_paired") or {}).get(cls) or {}
        if results["groups"].get(cls) != "tail" or not (gate.get("judged") and gate.get("passed")):
            continue
        if paired.get("diff") is None or math.isnan(_num(paired["diff"])):
            continue
        f = fid.get(cls) or {}
        fidelity = float(f["generated"]) if is_judgeable(f) and f.get("generated") is not None else None
        rows.append((cls, float(gate["auroc"]), paired, fidelity))
    if not rows:
        return None
    judged = [r for r in rows if r[3] is not None]
    return GateBenefit(
        arm=GATE_BENEFIT_ARM,
        rows=rows,
        spearman_gate=_spearman([r[1] for r in rows], [_num(r[2]["diff"]) for r in rows]),
        spearman_fidelity=_spearman([r[3] for r in judged], [_num(r[2]["diff"]) for r in judged]),
    )


def vs_verdict_baseline(results: dict[str, Any], arm: dict[str, Any]) -> bool:
    """Whether ``arm``'s verdict is against ``real_resampled`` (when that arm ran), not ``real_only``."""
    ref = results.get("verdict_baseline", results["baseline"])
    return ref != results["baseline"] and paired_vs_resampled(arm, "tail") is not None


def verdict_tail(results: dict[str, Any], arm: dict[str, Any], group: str = "tail") -> Estimate:
    """The group ΔmAP the verdict rests on: vs real_resampled when it ran (the headline), else vs real_only; over
    the group's judged classes only when the evidence rule set some aside (``judged_paired``)."""
    judged = (arm.get("judged_paired") or {}).get("groups", {}).get(group)
    if judged is not None and judged.get("diff") is not None:  # None: no judged class in the group
        return row_estimate(arm, judged)
    vs = paired_vs_resampled(arm, group) if vs_verdict_baseline(results, arm) else None
    return vs if vs is not None else paired_estimate(arm, group)


@dataclass(frozen=True)
class TargetCheck:
    """The target arm against ``results["target"]``: one (condition, passed) pair per part of the bar."""

    checks: list[tuple[str, bool]]
    against_resampled: bool
    harm_judged: bool  # False for results.json files written before "harmed" existed

    @property
    def met(self) -> bool:
        return all(ok for _, ok in self.checks)


def target_arm(results: dict[str, Any]) -> str:
    """The arm the quality target judges (results.json written before ``target.arm`` existed: the filtered mix)."""
    return (results.get("target") or {}).get("arm", SYNTHETIC_FILTERED.name)


def target_check(results: dict[str, Any]) -> TargetCheck | None:
    """The quality target, evaluated once for the report's headline and the README table; None without one."""
    target = results.get("target")
    if not target or not any(a["name"] == target_arm(results) for a in results["arms"]):
        return None
    arm = arm_by_name(results, target_arm(results))
    tail, head = verdict_tail(results, arm), paired_estimate(arm, "head")
    harmed_tail = harmed_classes(arm, results["groups"], "tail")
    against = vs_verdict_baseline(results, arm)
    gain, drop = target["tail_gain"], target["max_head_drop"]
    checks = [
        (f"tail Δ vs {'real re-sampled' if against else 'real only'} ≥ +{gain:.2f}", tail.mean >= gain),
        ("its interval above 0", tail.ci[0] > 0),
        (f"head Δ vs real only ≥ −{drop:.2f}", head.mean >= -drop),
    ]
    if harmed_tail is not None:
        checks.append(("no tail class significantly below real only", not harmed_tail))
    evidence = evidence_of(results)
    if not evidence.groups["tail"].is_judged:
        checks.append((f"the tail judged (a class with ≥ {evidence.min_test_positives} test positives)", False))
    return TargetCheck(checks=checks, against_resampled=against, harm_judged=harmed_tail is not None)
