"""generator.seeds: K generators, synthetic arm seed i on generator i mod K, the generator in the interval (faked)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from ablation_fakes import FakeStages, write_config

from synth.ablation.config import load_ablation_config, stage_key
from synth.ablation.runner import run_ablation
from synth.ablation.steps import plan
from synth.errors import UserError

ARMS = ["real_only", "real_resampled", "synthetic_filtered"]


def _config(tmp_path: Path, generator_seeds: list[int] | None, seeds=(0, 1, 2), arms=ARMS):
    cfg = load_ablation_config(write_config(tmp_path, seeds=list(seeds), arms=list(arms)))
    if generator_seeds is not None:
        cfg = load_ablation_config(
            write_config(tmp_path, seeds=list(seeds), arms=list(arms), generator__seeds=generator_seeds)
        )
    return cfg


def test_k_generators_each_with_own_stages_and_arm_seeds_assigned_mod_k(tmp_path: Path, monkeypatch):
    fake = FakeStages(monkeypatch)
    cfg = _config(tmp_path, [3, 4])
    report = run_ablation(cfg, log=lambda m: None)
    assert fake.generator_seeds == [3, 4]
    assert fake.calls.count("generate") == 2 and fake.calls.count("filter") == 2
    folders = {s.name: s.folder for s in plan(cfg)}
    assert folders["generator"] != folders["generator@1"] and folders["filter"] != folders["filter@1"]
    # seeds 0 and 2 train on generator 0, seed 1 on generator 1: two arm folders keyed by their rows
    assert folders["synthetic_filtered/seed-0"].parent == folders["synthetic_filtered/seed-2"].parent
    assert folders["synthetic_filtered/seed-1"].parent != folders["synthetic_filtered/seed-0"].parent
    assert folders["real_only/seed-1"].parent == folders["real_only/seed-0"].parent
    results = json.loads((report / "results.json").read_text())
    assert results["generators"] == {
        "k": 2,
        "seeds": [3, 4],
        "assignment": {"0": 0, "1": 1, "2": 0},
        "interval": "rubin",
    }
    synthetic = next(a for a in results["arms"] if a["name"] == "synthetic_filtered")
    assert [synthetic["seeds"][s]["train_rows"]["generator"] for s in "012"] == [0, 1, 0]
    # every paired call of the synthetic arm (vs real only, vs re-sampling) carries the generators; real arms none
    assert fake.generators == [None, [0, 1, 0], [0, 1, 0]]
    assert "include the generator's own randomness: 2 generators" in (report / "report.md").read_text()


def test_one_generator_is_todays_run_and_says_the_interval_leaves_it_out(tmp_path: Path, monkeypatch):
    fake = FakeStages(monkeypatch)
    cfg = _config(tmp_path, None)
    report = run_ablation(cfg, log=lambda m: None)
    assert fake.generator_seeds == [None] and fake.generators == [None, None, None]
    results = json.loads((report / "results.json").read_text())
    assert results["generators"]["interval"] == "within_generator"
    assert "leave the generator's own randomness out" in (report / "report.md").read_text()


def test_without_seeds_the_generator_key_is_the_one_it_always_had(tmp_path: Path):
    cfg = _config(tmp_path, None)
    before = {"config": cfg.generator.config, "pretrained": None, "overrides": {}}  # GeneratorStage before seeds
    from synth.ablation.steps import _keys

    assert _keys(cfg)["generator"] == stage_key("generator", before, _keys(cfg)["data"])


def test_one_seeded_generator_pins_the_finetune_seed(tmp_path: Path, monkeypatch):
    fake = FakeStages(monkeypatch)
    run_ablation(_config(tmp_path, [7], seeds=(0,)), log=lambda m: None)
    assert fake.generator_seeds == [7] and fake.generators == [None, None, None]


@pytest.mark.parametrize(
    "generator_seeds, seeds, message",
    [([1, 1], (0, 1), "distinct"), ([-1], (0,), ">= 0"), ([1, 2, 3], (0, 1), "needs at least one classifier seed")],
)
def test_bad_generator_seeds_are_one_error_at_load(tmp_path: Path, generator_seeds, seeds, message):
    with pytest.raises(UserError, match=message):
        _config(tmp_path, generator_seeds, seeds=seeds)
