"""The report's answer in sentences: one verdict per arm, how much evidence the tail has, whether the generator
drew what it was asked for, and whether the issue's target is met."""

from __future__ import annotations

from typing import Any

from synth.ablation.evidence import LIST_AT_MOST, evidence_of, verdict_word
from synth.ablation.report.formatting import arm_label, fmt_diff
from synth.ablation.results import (
    ARM_LABELS,
    harmed_classes,
    is_judgeable,
    paired_estimate,
    target_arm,
    target_check,
    verdict_tail,
    vs_verdict_baseline,
)

#: the report's subtitle unless results.json names its own question
QUESTION = "Does synthetic tail data help, where, and by how much?"


def headline(results: dict[str, Any]) -> list[str]:
    """One sentence per non-baseline arm on the tail group: the product's answer."""
    lines = arm_verdicts(results)
    lines.append(evidence_line(results))
    for extra in (_fidelity_summary(results), interval_scope(results)):
        if extra:
            lines.append(extra)
    check, arm = target_check(results), _label_of(results, target_arm(results))
    if check is None and results.get("target"):
        lines.append(f"Target: not checked — its arm ({arm}) did not run (target.arm in the config, or --arms).")
    if check is not None:
        target = results["target"]
        against = _verdict_against(results, check.against_resampled)
        lines.append(
            f"Target ({arm}: "
            f"tail ΔmAP{' vs ' + against if against else ''} "
            f"≥ +{target['tail_gain']:.2f} with its "
            f"interval above 0, head ΔmAP ≥ -{target['max_head_drop']:.2f}"
            f"{', no tail class significantly below real only' if check.harm_judged else ''}): "
            f"{'MET' if check.met else 'NOT MET'}"
            + ("" if evidence_of(results).groups["tail"].is_judged else " (the tail is not judged)")
            + "."
        )
    return lines


def arm_verdicts(results: dict[str, Any]) -> list[str]:
    """Per non-baseline arm: its tail verdict under the evidence rule (synth/ablation/evidence.py), the numbers it
    stands on, and "do no harm". ``results`` is the main results or one external set's view."""
    evidence = evidence_of(results)
    tail_ev = evidence.groups["tail"]
    lines = []
    for arm in results["arms"]:
        if arm["name"] == results["baseline"]:
            continue
        tail, head = verdict_tail(results, arm), paired_estimate(arm, "head")
        against = _verdict_against(results, vs_verdict_baseline(results, arm))
        vs = f" vs {against}" if against else ""
        detail = (
            f"vs real only {fmt_diff(paired_estimate(arm, 'tail'))}; head vs real only {fmt_diff(head)}"
            if against
            else f"head {fmt_diff(head)}"
        )
        body = f"{fmt_diff(tail)} ({detail}), {tail.n_seeds} seed(s)."
        numbers = f"ΔmAP{vs} {body}"
        verdict = verdict_word(tail.mean, tail.ci, tail.degenerate, evidence.min_effect)
        not_judged = f"{arm_label(arm)}: tail not judged — {evidence.why_not('tail')}"
        if not tail_ev.is_judged and tail.n_seeds == 0:  # no tail class scored: no number to show either
            line = f"{not_judged} (head vs real only {fmt_diff(head)})."
        elif not tail_ev.is_judged:
            line = f"{not_judged}. For reference only: {numbers}"
        elif verdict is None:
            line = f"{arm_label(arm)}: tail not judged — its bootstrap distribution is degenerate. {numbers}"
        else:
            line = f"{arm_label(arm)} {verdict} the tail{vs}: ΔmAP {body}"
            line += f" It stands on {len(tail_ev.judged)} of {tail_ev.n_classes} tail class(es)"
            line += f"; not judged: {tail_ev.not_judged_text(LIST_AT_MOST)}." if tail_ev.not_judged else "."
            if tail_ev.not_judged and "judged_paired" not in arm and any(tail_ev.not_judged.values()):
                line += " (Δ over every scored tail class: this results.json predates the evidence rule.)"
        harmed = harmed_classes(arm)
        if harmed is not None:
            line += f" Do no harm: {len(harmed)} class(es) significantly below real only" + (
                f" ({', '.join(harmed)})" if harmed else ""
            )
            few = arm.get("harm_not_judged") or []
            line += f"; {len(few)} class(es) with < 5 test positives not judged." if few else "."
        lines.append(line)
    return lines


def evidence_line(results: dict[str, Any]) -> str:
    """The evidence rule as applied: its settings and, per group, how many classes the verdicts stand on."""
    evidence = evidence_of(results)
    parts = []
    for g, ev in evidence.groups.items():
        if not ev.n_classes:
            continue
        part = f"{g} {len(ev.judged)} of {ev.n_classes} class(es) judged"
        parts.append(part + (f" (not judged: {ev.not_judged_text(LIST_AT_MOST)})" if ev.not_judged else ""))
    return evidence.rule_text() + (" " + "; ".join(parts) + "." if parts else "")


def _label_of(results: dict[str, Any], name: str) -> str:
    """An arm's report label: its own (a variant's is in results.json), else the registered one."""
    entry = next((a for a in results["arms"] if a["name"] == name), None)
    return arm_label(entry) if entry else ARM_LABELS.get(name, name)


def interval_scope(results: dict[str, Any]) -> str | None:
    """Which randomness the synthetic arms' intervals include, in words (none: no synthetic arm ran)."""
    if not any(a.get("synthetic", a["name"].startswith("synthetic")) for a in results["arms"]):
        return None
    scope = results.get("generators") or {}
    k = int(scope.get("k", 1))
    if k > 1:
        return (
            f"Intervals of the synthetic arms include the generator's own randomness: {k} generators "
            f"(finetune seeds {', '.join(map(str, scope.get('seeds', [])))}), combined with the patient and "
            "classifier-seed bootstrap by Rubin's rules (T = W + (1 + 1/K)·B)."
        )
    return (
        "Intervals of the synthetic arms cover test patients and classifier seeds for ONE trained generator: they "
        "leave the generator's own randomness out (set generator.seeds to two or more seeds to include it)."
    )


def _verdict_against(results: dict[str, Any], vs_stronger: bool) -> str | None:
    """The label of the stronger baseline a synthetic arm's verdict is against (None: real only).

    ``vs_stronger`` comes from the caller so the target line reuses the :class:`TargetCheck`'s own answer.
    """
    if not vs_stronger:
        return None
    ref = results.get("verdict_baseline", results["baseline"])
    return ARM_LABELS.get(ref, ref).lower()


def _fidelity_summary(results: dict[str, Any]) -> str | None:
    """Whether the generator drew what it was asked for: the first thing to check when synthetic data does not help."""
    classes = (results.get("fidelity") or {}).get("classes", {})
    judged = {c: v for c, v in classes.items() if is_judgeable(v) and v.get("generated") is not None}
    if not judged:
        return None

    def mean(key: str) -> str:
        vals = [v[key] for v in judged.values() if v.get(key) is not None]
        return f"{100 * sum(vals) / len(vals):.0f}%" if vals else "–"

    return (
        f"Generator fidelity (phantom oracle, {len(judged)} judgeable class(es)): the prompted finding is "
        f"detected in {mean('generated')} of generated and {mean('kept')} of kept images on average, "
        f"vs {mean('real')} of real training positives."
    )


def dataset_line(ds: dict[str, Any]) -> str:
    line = "Dataset: " + ", ".join(f"{k} = {v}" for k, v in ds.items())
    if ds.get("n_heldout"):
        line += (
            f". The test rows include {ds['n_heldout']} held-out phantom images (new patients from another "
            "phantom seed, rendered for evaluation only; no model saw them)."
        )
    return line
