"""The regime curve (issue #36, lever 5): as a class has more real positives, does a synthetic recipe still add
what re-sampling does not, and at what count does its gain reach 0?

One run answers it only *across* classes (the report's gain-by-positives table), and classes differ in difficulty
as well as in count. Runs of one recipe at several data sizes (e.g. ``data.phantom_n`` 10,000 and 40,000) give
each class several counts, so the slope can be read *within* classes: demean ΔAP and log10(positives) per class
and fit one line through the deviations (a fixed-effects slope: a class's difficulty cancels). The break-even
count is where the average class's gain, moving along that slope, reaches 0. Its interval comes from a bootstrap
over classes (each class's points resampled together), which is the unit the slope is learnt from.

A user reads it as: with fewer real positives per class than the break-even, the diffusion half adds to
re-sampling; with more, re-sample and skip it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from synth.ablation.gains import break_even, class_gains, resampled_positives
from synth.errors import UserError

#: config sections that may differ between the runs of one regime curve: what the curve varies, bookkeeping, and
#: the evaluation-only oracle (nothing it says reaches a model). ``variants`` is compared for the curve's arm only.
VARYING = (
    "name",
    "data",
    "seeds",
    "arms",
    "variants",
    "evaluation",
    "oracle",
    "output_root",
    "results_store",
    "target",
)


#: where a break-even interval's end is written when the crossing lies beyond it ("more positives than any data
#: set has"; the summary prints it as such)
COUNT_CAP = 1e9


@dataclass(frozen=True)
class RegimePoint:
    """One generated class in one run: its real training positives and the arm's ΔAP over re-sampling."""

    run: str
    cls: str
    positives: int
    gain: float


@dataclass(frozen=True)
class RegimeFit:
    """The within-class line through the points (see the module docstring)."""

    slope: float  #: ΔAP per 10× more real positives, within a class
    slope_interval: tuple[float, float]  #: 95 % bootstrap over classes
    intercept: float  #: of the line through the mean point with that slope: ΔAP at 1 positive
    break_even: float | None  #: count where the line reaches 0 (falling line, crossing near observed counts)
    break_even_interval: tuple[float, float] | None  #: 95 % over the bootstrap draws whose line falls
    falling_share: float  #: share of bootstrap draws whose line falls
    mean_gain: float
    n_classes: int  #: classes with points at two or more distinct counts (what the slope stands on)
    n_points: int
    n_boot: int


def read_run(path: str | Path) -> dict[str, Any]:
    """A finished run's results.json (the file, or the report folder holding it)."""
    import json

    path = Path(path)
    file = path / "results.json" if path.is_dir() else path
    if not file.is_file():
        raise UserError(f"{path}: no results.json there; give a report folder (outputs/reports/NAME) or the JSON")
    return json.loads(file.read_text())


def run_label(results: dict[str, Any]) -> str:
    """The run's name and its real training rows (what a regime point's data size is)."""
    n_train = (results.get("dataset") or {}).get("n_train")
    return f"{results.get('name', '?')} (n_train {n_train})" if n_train is not None else str(results.get("name", "?"))


def regime_points(runs: list[dict[str, Any]], arm: str) -> list[RegimePoint]:
    """Every (run, generated class) with an AP in both ``arm`` and re-sampling; an error for a run without either."""
    points = []
    for results in runs:
        label = run_label(results)
        resampled, n_pos = resampled_positives(results)
        chosen = next((a for a in results["arms"] if a["name"] == arm), None)
        if resampled is None or not n_pos:
            raise UserError(f"{label}: no real_resampled arm with per-class positives; the curve compares with it")
        if chosen is None:
            names = ", ".join(a["name"] for a in results["arms"])
            raise UserError(f"{label}: no arm {arm!r} (it has {names}); pass --arm with an arm every run trained")
        gains = class_gains(chosen, resampled, n_pos)
        points += [RegimePoint(label, c, n_pos[c], g) for c, g in gains.items()]
    return points


def config_differences(runs: list[dict[str, Any]], arm: str) -> list[str]:
    """The config sections, outside what a regime curve varies (:data:`VARYING`), on which the runs disagree, and
    ``variants[arm]`` when the arm is defined differently: a curve through different recipes is not the regime's
    answer."""
    configs = [((r.get("provenance") or {}).get("config") or {}) for r in runs]
    keys = sorted({k for c in configs for k in c} - set(VARYING))
    differ = [k for k in keys if any(c.get(k) != configs[0].get(k) for c in configs[1:])]
    specs = [next((v for v in c.get("variants") or [] if v.get("name") == arm), None) for c in configs]
    return differ + ([f"variants[{arm}]"] if any(v != specs[0] for v in specs[1:]) else [])


def fit_regime(points: list[RegimePoint], n_boot: int = 2000, seed: int = 0) -> RegimeFit | None:
    """The within-class slope, the break-even count and their class-bootstrap intervals; None when fewer than 3
    classes have points at two distinct counts."""
    by_class: dict[str, list[RegimePoint]] = {}
    for p in points:
        by_class.setdefault(p.cls, []).append(p)
    classes = [ps for ps in by_class.values() if len({p.positives for p in ps}) >= 2]
    if len(classes) < 3:
        return None
    counts = [p.positives for ps in classes for p in ps]
    slope, intercept, mean_gain = _within_line(classes)
    rng = np.random.default_rng(seed)
    draws = [_within_line([classes[i] for i in rng.integers(0, len(classes), len(classes))]) for _ in range(n_boot)]
    slopes = np.array([d[0] for d in draws])
    # where each falling draw crosses 0, in log10 counts: a draw that barely falls crosses beyond any float
    crossings = np.array([-b0 / b for b, b0, _ in draws if b < 0])
    return RegimeFit(
        slope=slope,
        slope_interval=(float(np.percentile(slopes, 2.5)), float(np.percentile(slopes, 97.5))),
        intercept=intercept,
        break_even=break_even(slope, intercept, counts),
        break_even_interval=(_count(np.percentile(crossings, 2.5)), _count(np.percentile(crossings, 97.5)))
        if len(crossings)
        else None,
        falling_share=len(crossings) / n_boot,
        mean_gain=mean_gain,
        n_classes=len(classes),
        n_points=len(counts),
        n_boot=n_boot,
    )


def _count(log10_count: float) -> float:
    """A crossing as a count, capped at :data:`COUNT_CAP` (JSON has no infinity; no data set reaches it)."""
    return float(10 ** min(log10_count, math.log10(COUNT_CAP)))


def _within_line(classes: list[list[RegimePoint]]) -> tuple[float, float, float]:
    """(slope, intercept, mean ΔAP): the fixed-effects slope of ΔAP on log10(positives), and the line with that
    slope through the mean point of all the points."""
    x = [np.log10([p.positives for p in ps]) for ps in classes]
    y = [np.array([p.gain for p in ps]) for ps in classes]
    sxx = sum(float(((xi - xi.mean()) ** 2).sum()) for xi in x)
    sxy = sum(float(((xi - xi.mean()) * (yi - yi.mean())).sum()) for xi, yi in zip(x, y))
    slope = sxy / sxx if sxx > 0 else 0.0
    x_bar, y_bar = float(np.concatenate(x).mean()), float(np.concatenate(y).mean())
    return slope, y_bar - slope * x_bar, y_bar


def regime_table(points: list[RegimePoint]) -> tuple[list[str], list[list[str]]]:
    """Per class, its positives and ΔAP in each run (in the order given), and its own slope per 10×."""
    runs = list(dict.fromkeys(p.run for p in points))
    header = ["Class", *[f"{r}: positives, ΔAP" for r in runs], "class slope per 10×"]
    rows = []
    for cls in sorted({p.cls for p in points}, key=lambda c: min(p.positives for p in points if p.cls == c)):
        mine = {p.run: p for p in points if p.cls == cls}
        cells = [f"{mine[r].positives}, {mine[r].gain:+.3f}" if r in mine else "–" for r in runs]
        own = _within_line([list(mine.values())])[0] if len({p.positives for p in mine.values()}) >= 2 else None
        rows.append([cls, *cells, "–" if own is None else f"{own:+.3f}"])
    return header, rows


def regime_summary(fit: RegimeFit | None, arm: str) -> str:
    """The answer in words: slope, break-even and how sure."""
    if fit is None:
        return (
            f"{arm}: fewer than 3 classes have points at two distinct counts, so no within-class slope; "
            "give runs of one recipe at different data sizes."
        )
    lo, hi = fit.slope_interval
    text = (
        f"{arm}: ΔAP over re-sampling changes by {fit.slope:+.3f} [{lo:+.3f}, {hi:+.3f}] per 10× more real "
        f"positives within a class ({fit.n_classes} classes, {fit.n_points} points; mean ΔAP {fit.mean_gain:+.3f}; "
        f"95 % bootstrap over classes, {fit.n_boot} draws). "
    )
    if fit.break_even is not None:
        text += f"Break-even ≈ {fit.break_even:.0f} real positives per class"
    elif fit.slope < 0:
        text += "The line falls but reaches 0 far outside the observed counts: no break-even named"
    else:
        text += "The line does not fall: no break-even in this range"
    if fit.break_even_interval is not None:
        b_lo, b_hi = fit.break_even_interval
        text += (
            f"; over the {fit.falling_share:.0%} of draws whose line falls, the crossing lies in "
            f"[{_count_text(b_lo)}, {_count_text(b_hi)}]"
            + (" (the rest never cross)" if fit.falling_share < 1 else "")
        )
    return text + "."


def _count_text(count: float) -> str:
    return f"> {COUNT_CAP:.0e}" if count >= COUNT_CAP else f"{count:.0f}"


def regime_result(runs: list[dict[str, Any]], arm: str, n_boot: int = 2000) -> dict[str, Any]:
    """Everything the curve says, as one JSON-able dict (what ``synth results regime --json`` writes)."""
    points = regime_points(runs, arm)
    fit = fit_regime(points, n_boot=n_boot)
    return {
        "arm": arm,
        "runs": [{"label": run_label(r), "commit": (r.get("provenance") or {}).get("git_commit")} for r in runs],
        "config_differences": config_differences(runs, arm),
        "points": [asdict(p) for p in points],
        "fit": None if fit is None else asdict(fit),
        "summary": regime_summary(fit, arm),
    }
