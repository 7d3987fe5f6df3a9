"""Ablation variants: config-named arms (the levers of issue #36) run through the same stages and report (faked)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from ablation_fakes import FakeStages, write_config

from synth.ablation.config import load_ablation_config
from synth.ablation.runner import run_ablation
from synth.ablation.steps import plan
from synth.errors import UserError

WEIGHTED = {"name": "weighted", "arm": "synthetic_filtered", "classifier": {"synthetic.loss_weight": 0.5}}
DECOUPLED = {
    "name": "decoupled",
    "arm": "synthetic_filtered_resampled",
    "label": "+ synthetic, re-sampled, head re-trained on real",
    "classifier": {"synthetic.mode": "mix_then_head"},
}
SINGLE = {"name": "single_prompts", "arm": "synthetic_filtered", "generate": {"prompt_style": "single", "n": 4}}
BASE_ARMS = ["real_only", "real_resampled", "synthetic_filtered"]


def _config(tmp_path: Path, variants: list[dict], arms: list[str], **changes):
    return load_ablation_config(write_config(tmp_path, variants=variants, arms=arms, **changes))


def _folders(cfg) -> dict[str, str]:
    return {s.name: str(s.folder) for s in plan(cfg)}


def test_variants_leave_the_registered_arms_cache_keys_alone(tmp_path: Path):
    plain = _folders(_config(tmp_path, [], BASE_ARMS))
    with_variants = _folders(_config(tmp_path, [WEIGHTED, DECOUPLED, SINGLE], BASE_ARMS + ["weighted", "decoupled"]))
    assert all(with_variants[name] == folder for name, folder in plain.items())
    assert with_variants["weighted/seed-0"] != with_variants["synthetic_filtered/seed-0"]


def test_a_variant_trains_with_its_classifier_settings_and_mode(tmp_path: Path, monkeypatch):
    fake = FakeStages(monkeypatch)
    cfg = _config(tmp_path, [WEIGHTED, DECOUPLED], BASE_ARMS + ["weighted", "decoupled"], seeds=[0])
    report = run_ablation(cfg, log=lambda m: None)
    by_arm = dict(zip(["real_only", "real_resampled", "synthetic_filtered", "weighted", "decoupled"], fake.overrides))
    assert by_arm["weighted"] == {"synthetic.loss_weight": 0.5} and by_arm["synthetic_filtered"] == {}
    assert fake.modes[-2:] == ["mix", "mix_then_head"]
    assert fake.repeats["synthetic_filtered_resampled"], "the decoupled variant keeps its base arm's re-sampling"
    results = json.loads((report / "results.json").read_text())
    entry = next(a for a in results["arms"] if a["name"] == "decoupled")
    assert entry["label"] == DECOUPLED["label"] and entry["variant"]["arm"] == "synthetic_filtered_resampled"
    assert "paired_vs_resampled" in entry, "a synthetic variant is judged against re-sampling like its base arm"
    assert DECOUPLED["label"] in (report / "report.md").read_text()


def test_a_variant_with_generate_settings_gets_its_own_generate_and_filter(tmp_path: Path, monkeypatch):
    fake = FakeStages(monkeypatch)
    cfg = _config(tmp_path, [SINGLE], ["real_only", "synthetic_filtered", "single_prompts"], seeds=[0])
    run_ablation(cfg, log=lambda m: None)
    assert fake.calls.count("generator") == 1 and fake.calls.count("generate") == 2
    assert fake.calls.count("filter") == 2
    assert fake.generate_overrides[1]["prompt_style"] == "single" and fake.generate_overrides[1]["n"] == 4
    folders = _folders(cfg)
    assert folders["generate[single_prompts]"] != folders["generate"]


def test_the_target_may_name_a_variant(tmp_path: Path, monkeypatch):
    FakeStages(monkeypatch)
    cfg = _config(tmp_path, [WEIGHTED], ["real_only", "weighted"], seeds=[0], target={"arm": "weighted"})
    md = (run_ablation(cfg, log=lambda m: None) / "report.md").read_text()
    assert "Target (+ synthetic, filtered (weighted)" in md


@pytest.mark.parametrize(
    "variant, message",
    [
        ({"name": "real_only", "arm": "synthetic_filtered"}, "already an arm"),
        ({"name": "x", "arm": "no_such_arm"}, "unknown arm"),
        ({"name": "x", "arm": "real_only", "generate": {"n": 5}}, "need a synthetic base arm"),
        ({"name": "x", "arm": "synthetic_filtered", "classifier": {"synthetic.no_such": 1}}, "no_such"),
        ({"name": "x", "arm": "synthetic_filtered", "generate": {"no_such": 1}}, "no_such"),
        ({"name": "../x", "arm": "synthetic_filtered"}, "folder name"),
    ],
)
def test_a_bad_variant_is_one_error_at_load(tmp_path: Path, variant: dict, message: str):
    with pytest.raises(UserError, match=message):
        _config(tmp_path, [variant], ["real_only", variant["name"]])


def test_an_arm_that_is_neither_registered_nor_a_variant_is_refused(tmp_path: Path):
    with pytest.raises(UserError, match="or add a variant"):
        _config(tmp_path, [WEIGHTED], ["real_only", "weighted", "typo"])
