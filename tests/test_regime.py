"""The regime curve across runs (synth/ablation/regime.py, `synth results regime`): the within-class slope, the
break-even count, and the errors that keep a curve from mixing recipes or arms silently."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from synth.ablation.regime import (
    COUNT_CAP,
    RegimePoint,
    config_differences,
    fit_regime,
    regime_points,
    regime_result,
    regime_summary,
)
from synth.errors import UserError

SLOPE = -0.04
#: a class's difficulty: its gain at 1 positive. Rising with the class's count, so that ACROSS classes the gain
#: rises with positives while WITHIN each class it falls by SLOPE per 10x: only the within-class fit gets SLOPE.
DIFFICULTY = {"A": 0.00, "B": 0.05, "C": 0.10, "D": 0.15, "E": 0.20}
BASE_POSITIVES = {"A": 3, "B": 8, "C": 20, "D": 50, "E": 120}


def _run(name: str, scale: int, arm: str = "weighted", generator: str = "g.yaml", noise: float = 0.0) -> dict:
    """A results.json of one run: every class has ``scale`` x its base positives; the arm's ΔAP over re-sampling is
    DIFFICULTY + SLOPE * log10(positives) (+ ``noise`` per class)."""
    rng = np.random.default_rng(scale)
    n_pos = {c: n * scale for c, n in BASE_POSITIVES.items()}
    gain = {c: DIFFICULTY[c] + SLOPE * math.log10(n) + noise * rng.standard_normal() for c, n in n_pos.items()}
    resampled = {
        "name": "real_resampled",
        "seeds": {"0": {"per_class": {c: {"ap": 0.5} for c in n_pos}}},
        "resampling": {"per_class": {c: {"n_pos": n} for c, n in n_pos.items()}},
    }
    synthetic = {"name": arm, "seeds": {"0": {"per_class": {c: {"ap": 0.5 + g} for c, g in gain.items()}}}}
    config = {"name": name, "data": {"phantom_n": 10000 * scale}, "generator": {"config": generator}}
    return {
        "name": name,
        "dataset": {"n_train": 7000 * scale},
        "arms": [{"name": "real_only", "seeds": resampled["seeds"]}, resampled, synthetic],
        "provenance": {"config": config, "git_commit": "abc"},
    }


def test_within_class_slope_and_break_even_where_the_across_class_line_rises():
    """Classes whose difficulty rises with their count: the across-class correlation is positive, yet within each
    class the gain falls by exactly SLOPE per 10x; the break-even is where the line with that slope through the
    mean point reaches 0."""
    points = regime_points([_run("small", 1), _run("large", 4)], "weighted")
    assert len(points) == 10 and {p.run for p in points} == {"small (n_train 7000)", "large (n_train 28000)"}
    across = np.polyfit([math.log10(p.positives) for p in points], [p.gain for p in points], 1)[0]
    assert across > 0  # the confound the within-class fit removes

    fit = fit_regime(points, n_boot=200)
    assert fit.slope == pytest.approx(SLOPE)
    assert fit.slope_interval[0] == pytest.approx(SLOPE) and fit.slope_interval[1] == pytest.approx(SLOPE)
    x_bar = np.mean([math.log10(p.positives) for p in points])
    y_bar = np.mean([p.gain for p in points])
    assert fit.break_even == pytest.approx(10 ** (x_bar - y_bar / SLOPE))
    assert fit.falling_share == 1.0 and fit.n_classes == 5 and fit.n_points == 10


def test_noise_widens_the_class_bootstrap_interval_around_the_slope():
    points = regime_points([_run("small", 1, noise=0.02), _run("large", 4, noise=0.02)], "weighted")
    fit = fit_regime(points, n_boot=500)
    lo, hi = fit.slope_interval
    assert lo < fit.slope < hi and hi - lo > 0.01


def test_a_rising_line_names_no_break_even():
    runs = [_run("small", 1), _run("large", 4)]
    for r in runs:  # flip every gain: within each class it now rises with positives
        arm = r["arms"][2]
        arm["seeds"]["0"]["per_class"] = {c: {"ap": 1.0 - v["ap"]} for c, v in arm["seeds"]["0"]["per_class"].items()}
    result = regime_result(runs, "weighted", n_boot=100)
    assert result["fit"]["slope"] == pytest.approx(-SLOPE) and result["fit"]["break_even"] is None
    assert "does not fall: no break-even" in result["summary"]
    json.dumps(result, allow_nan=False)  # strict JSON


def test_a_line_that_barely_falls_crosses_beyond_any_count_without_overflow():
    """Found on the first real curve: a bootstrap draw whose slope is a hair below 0 crosses at 10**(1e7)
    positives, which overflowed a float and crashed `synth results regime`. Such a crossing is no break-even; the
    interval end is written capped (strict JSON) and read as "more than any data set"."""
    points = [
        RegimePoint(run, cls, n * scale, 0.05 + 0.01 * i - 1e-9 * math.log10(n * scale))
        for i, (cls, n) in enumerate(BASE_POSITIVES.items())
        for run, scale in (("small", 1), ("large", 4))
    ]
    fit = fit_regime(points, n_boot=100)
    assert fit.slope < 0 and fit.break_even is None and fit.falling_share == 1.0
    assert fit.break_even_interval == (COUNT_CAP, COUNT_CAP)
    summary = regime_summary(fit, "weighted")
    assert "reaches 0 far outside the observed counts" in summary and "> 1e+09" in summary
    json.dumps(asdict(fit), allow_nan=False)


def test_one_run_has_no_within_class_slope():
    result = regime_result([_run("small", 1)], "weighted")
    assert result["fit"] is None and "fewer than 3 classes have points at two distinct counts" in result["summary"]


def test_a_run_without_the_arm_or_without_re_sampling_is_an_error_naming_the_fix():
    with pytest.raises(UserError, match=r"large \(n_train 28000\): no arm 'weighted' .*pass --arm"):
        regime_points([_run("small", 1), _run("large", 4, arm="other")], "weighted")
    lacking = _run("large", 4)
    lacking["arms"] = [a for a in lacking["arms"] if a["name"] != "real_resampled"]
    with pytest.raises(UserError, match="no real_resampled arm"):
        regime_points([_run("small", 1), lacking], "weighted")


def test_runs_of_different_recipes_are_named_not_runs_of_different_data():
    """Data, arms, other variants and the evaluation-only oracle may differ; the generator or the arm's own
    variant may not."""
    small, large = _run("small", 1), _run("large", 4)
    small["provenance"]["config"].update(oracle={"config": "o.yaml"}, variants=[_variant("other", 0.5)])
    large["provenance"]["config"].update(oracle={"config": None}, arms=["real_only"])
    assert config_differences([small, large], "weighted") == []
    small["provenance"]["config"]["variants"].append(_variant("weighted", 0.25))
    large["provenance"]["config"]["variants"] = [_variant("weighted", 0.5)]
    other = _run("large", 4, generator="other.yaml")
    assert config_differences([small, large, other], "weighted") == ["generator", "variants[weighted]"]


def _variant(name: str, weight: float) -> dict:
    return {"name": name, "arm": "synthetic_filtered_resampled", "classifier": {"synthetic.loss_weight": weight}}


def test_cli_prints_the_table_and_summary_and_writes_the_json(tmp_path: Path):
    from synth.cli import app

    for name, scale in (("small", 1), ("large", 4)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(_run(name, scale, generator=name)))
    out = tmp_path / "regime.json"
    args = ["results", "regime", str(tmp_path / "small"), str(tmp_path / "large" / "results.json")]
    res = CliRunner().invoke(app, [*args, "--arm", "weighted", "--json", str(out), "--n-boot", "100"])
    assert res.exit_code == 0, res.output
    assert "| A | 3, " in res.output and "12, " in res.output
    assert "warning: the runs differ in generator" in res.output
    assert "Break-even ≈" in res.output
    written = json.loads(out.read_text())
    assert written["fit"]["slope"] == pytest.approx(SLOPE) and len(written["points"]) == 10
    assert written["bench"] == "synth results regime"  # argv: the process's (pytest's here)
    assert {"git_commit", "versions"} <= set(written["provenance"])  # a committed curve names what made it

    res = CliRunner().invoke(app, ["results", "regime", str(tmp_path / "nowhere"), "--arm", "weighted"])
    assert res.exit_code != 0 and "no results.json there" in res.output
