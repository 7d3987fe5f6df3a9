"""The evidence rule: on which classes a group's verdict may stand, and when a difference is called an effect.

Why: on the NIH sample's own test split the only tail class (Pneumonia) has one positive, and the report said
two arms "help" the tail with p < 0.001. On 621 independent NIH films the same models were all at chance. A
patient bootstrap over one positive only says whether that patient was drawn; it is not evidence. So:

* a class is judged only with at least ``min_test_positives`` positives among the scored rows; a group's
  verdict stands on its judged classes (the Δ is recomputed over them alone when some are not), the others
  are listed with their positive count, and a group with no judged class reads "not judged";
* "helps" / "hurts" needs the interval to exclude 0 *and* ``|Δ| >= min_effect``;
* a bootstrap distribution of fewer than :data:`DEGENERATE_BELOW_DISTINCT` distinct values, or with one value
  in at least :data:`DEGENERATE_MODAL_SHARE` of its resamples, is degenerate: its p-value and interval are
  artefacts of the resampling (whether one or two patients were drawn), so no p is printed and no verdict is
  drawn from it. A class whose positives are one patient sits on one value in ~37 % of resamples (that patient
  left out: e^-1), two patients in ~14 %: the share is set between them.

The collect side (:func:`group_evidence`, :func:`judged_groups`) writes ``results["evidence"]``; the report side
(:func:`evidence_of`, :func:`verdict_word`) reads it, falling back to the default rule on older results.json.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

#: the rule's defaults (also the ablation config's, synth/ablation/config.py EvaluationConfig)
MIN_TEST_POSITIVES = 10
MIN_EFFECT = 0.005
#: a resampled distribution with fewer distinct values than this is degenerate (1 = zero variance)
DEGENERATE_BELOW_DISTINCT = 10
#: ... or one whose most common value holds at least this share of the resamples
DEGENERATE_MODAL_SHARE = 0.2
VERDICT_GROUPS: tuple[str, ...] = ("head", "medium", "tail")
LIST_AT_MOST = 4  #: a verdict line names at most this many not-judged classes (the evidence table lists all)


# ---------------------------------------------------------------- collect side (results.json)


def test_positives(y: np.ndarray, classes: list[str]) -> dict[str, int | None]:
    """Positives per class among the rows that annotate it; None where no row annotates the class (not scored)."""
    y = np.asarray(y, dtype=np.float64)
    out: dict[str, int | None] = {}
    for j, c in enumerate(classes):
        known = ~np.isnan(y[:, j])
        out[c] = int((y[known, j] == 1).sum()) if known.any() else None
    return out


def group_evidence(
    groups: Mapping[str, str], positives: Mapping[str, int | None], min_test_positives: int
) -> dict[str, dict[str, Any]]:
    """Per frequency group: the judged classes and the not-judged ones with their positive count.

    Classes the rows do not annotate (None) are neither: they are not scored at all.
    """
    out: dict[str, dict[str, Any]] = {}
    for g in VERDICT_GROUPS:
        members = [c for c, cg in groups.items() if cg == g and positives.get(c) is not None]
        out[g] = {
            "judged": [c for c in members if positives[c] >= min_test_positives],
            "not_judged": {c: int(positives[c]) for c in members if positives[c] < min_test_positives},
        }
    return out


def evidence_section(
    groups: Mapping[str, str], positives: Mapping[str, int | None], min_test_positives: int, min_effect: float
) -> dict[str, Any]:
    """``results["evidence"]`` (and each external set's): the rule, the positives and the per-group split."""
    return {
        "min_test_positives": int(min_test_positives),
        "min_effect": float(min_effect),
        "degenerate_below_distinct": DEGENERATE_BELOW_DISTINCT,
        "degenerate_modal_share": DEGENERATE_MODAL_SHARE,
        "test_positives": dict(positives),
        "groups": group_evidence(groups, positives, min_test_positives),
    }


def judged_groups(evidence: Mapping[str, Any]) -> dict[str, str] | None:
    """The groups restricted to judged classes, or None when that changes no group's Δ.

    A not-judged class with no positive is already out of every group mean; only one with 1 .. min-1 positives
    in a group that also has judged classes moves the Δ the verdict must stand on.
    """
    per_group = evidence["groups"]
    if not any(v["judged"] and any(n > 0 for n in v["not_judged"].values()) for v in per_group.values()):
        return None
    return {c: g for g, v in per_group.items() for c in v["judged"]}


# ---------------------------------------------------------------- report side


@dataclass(frozen=True)
class GroupEvidence:
    judged: list[str]
    not_judged: dict[str, int]  #: class -> test positives (fewer than the rule's minimum)

    @property
    def is_judged(self) -> bool:
        return bool(self.judged)

    @property
    def n_classes(self) -> int:
        return len(self.judged) + len(self.not_judged)

    def not_judged_text(self, limit: int | None = None) -> str:
        """The not-judged classes with their positive counts; beyond ``limit`` classes, a count and the largest."""
        if limit is not None and len(self.not_judged) > limit:
            most = max(self.not_judged.values())
            return (
                f"{len(self.not_judged)} classes with at most {most} test positive{'' if most == 1 else 's'} each "
                "(listed in the evidence table)"
            )
        return ", ".join(f"{c} ({n} test positive{'' if n == 1 else 's'})" for c, n in self.not_judged.items())


@dataclass(frozen=True)
class Evidence:
    min_test_positives: int
    min_effect: float
    groups: dict[str, GroupEvidence]
    stated: bool  #: False: results.json predates the rule and the defaults were applied to its positive counts

    def why_not(self, group: str) -> str:
        """Why a group with no judged class is not judged (one clause)."""
        ev = self.groups[group]
        if not ev.n_classes:
            return f"no {group} class was scored"
        return (
            f"no {group} class has ≥ {self.min_test_positives} test positives "
            f"(evaluation.min_test_positives): {ev.not_judged_text(LIST_AT_MOST)}"
        )

    def rule_text(self) -> str:
        source = "this run's evaluation settings" if self.stated else "the defaults (results.json predates the rule)"
        return (
            f"Evidence rule ({source}; defaults {MIN_TEST_POSITIVES} and {MIN_EFFECT}): a group's verdict stands only "
            f"on its classes with ≥ {self.min_test_positives} test positives (evaluation.min_test_positives; the Δ "
            f"is recomputed over them when some are not judged); 'helps' / 'hurts' needs the 95% interval to exclude "
            f"0 and |Δ| ≥ {self.min_effect:g} (evaluation.min_effect); a bootstrap distribution of fewer than "
            f"{DEGENERATE_BELOW_DISTINCT} distinct values, or with one value in ≥ {DEGENERATE_MODAL_SHARE:.0%} of "
            "its resamples, is degenerate: no p-value is printed and no verdict drawn from it."
        )


def evidence_of(results: Mapping[str, Any]) -> Evidence:
    """The rule and per-group split a results view was judged by (``results["evidence"]``, else the defaults
    applied to the baseline's per-class positive counts)."""
    stored = results.get("evidence")
    if stored:
        rule = (int(stored["min_test_positives"]), float(stored["min_effect"]))
        per_group = stored["groups"]
    else:
        baseline = next((a for a in results["arms"] if a["name"] == results["baseline"]), results["arms"][0])
        first = next(iter(baseline["seeds"].values()), {})
        positives = {c: m.get("n_pos") for c, m in first.get("per_class", {}).items()}
        rule = (MIN_TEST_POSITIVES, MIN_EFFECT)
        per_group = group_evidence(results["groups"], positives, MIN_TEST_POSITIVES)
    groups = {
        g: GroupEvidence(list(v["judged"]), {c: int(n) for c, n in v["not_judged"].items()})
        for g, v in per_group.items()
    }
    return Evidence(rule[0], rule[1], groups, stated=bool(stored))


def is_degenerate(n_distinct: int | None, modal_share: float | None = None) -> bool:
    few = n_distinct is not None and n_distinct < DEGENERATE_BELOW_DISTINCT
    return few or (modal_share is not None and modal_share >= DEGENERATE_MODAL_SHARE)


def degenerate_text(n_distinct: int | None, modal_share: float | None) -> str:
    """Why a bootstrap distribution is degenerate, in a few words."""
    if n_distinct is not None and n_distinct < DEGENERATE_BELOW_DISTINCT:
        return f"{n_distinct} distinct value{'' if n_distinct == 1 else 's'}"
    return f"one value in {modal_share:.0%} of resamples"


def verdict_word(mean: float, ci: tuple[float, float], degenerate: bool, min_effect: float) -> str | None:
    """ "helps" / "hurts" / "shows no clear effect on"; None when the bootstrap is degenerate (no verdict)."""
    if degenerate:
        return None
    if any(v is None or math.isnan(v) for v in (mean, *ci)):
        return "shows no clear effect on"
    if (ci[0] > 0 or ci[1] < 0) and abs(mean) >= min_effect:
        return "helps" if mean > 0 else "hurts"
    return "shows no clear effect on"
