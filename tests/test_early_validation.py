"""#35 "checked late": every value of every stage config is checked before the first stage runs.

Three layers, each tested here: the shared loader refuses a NaN, infinite or negative number in any field of any
stage config (YAML, ``--set`` or an ablation's ``overrides:``); each stage's ``validated()`` refuses a zero where it
has no meaning; ``synth ablate`` (and ``--dry-run``) runs every stage's checks on the values it will hand that stage
before any stage runs. Every case below passed those checks on the code before this test (or failed hours later,
or with another message), so each assertion can fail.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest
import yaml
from ablation_fakes import tiny_manifest, write_config
from typer.testing import CliRunner

from classifier.config import EnsembleConfig, load_ensemble_config
from synth.ablation import stages
from synth.ablation.config import AblationConfig, load_ablation_config
from synth.cli import app
from synth.config import RawText
from synth.errors import UserError
from synth.filtering.config import FilterConfig, VerifierConfig, load_filter_config, load_verifier_config
from synth.generator.config import FinetuneConfig, load_finetune_config
from synth.inference import GenerateConfig
from synth.prepare import PrepareConfig

NEGATIVE = "must be >= 0 (counts, sizes, rates, seeds and thresholds cannot be negative)"
NOT_FINITE = "is not a finite number"


# ---------------------------------------------------------------- 1. the shared loader, every numeric field


def _numbers(cls: type, prefix: str = "") -> list[tuple[str, type, bool]]:
    """``(dotted key, int or float, a list of them)`` of every numeric field of ``cls``, nested sections and list
    items included."""
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        is_list = typing.get_origin(hint) is list
        args = [a for a in (typing.get_args(hint) or (hint,)) if a is not type(None)]
        if len(args) == 1 and dataclasses.is_dataclass(args[0]):
            out += _numbers(args[0], f"{prefix}{f.name}{'[]' if is_list else ''}.")
        elif float in args or int in args:
            out.append((prefix + f.name, float if float in args else int, is_list))
    return out


def _override(key: str, text: str) -> dict:
    """``members[].lr`` -> ``{"members": [{"lr": <value>}]}`` (a list of sections is replaced whole); a dotted leaf
    nests (``external[].phantom.n`` -> ``{"external": [{"phantom": {"n": <value>}}]}``)."""
    if "[]." in key:
        section, _, leaf = key.partition("[].")
        item: dict = {}
        *parents, last = leaf.split(".")  # a section inside the list item: external[].phantom.n
        node = item
        for name in parents:
            node = node.setdefault(name, {})
        node[last] = yaml.safe_load(text)
        return {section: [item]}
    return {key: RawText(text)}


def _load_ablation(tmp_path: Path, overrides: dict) -> None:
    load_ablation_config(write_config(tmp_path), sets=overrides)


#: stage -> (its config class, its own loader taking (YAML path, overrides)); the loaders the commands call
LOADERS = {
    "classifier": (EnsembleConfig, load_ensemble_config),
    "filter": (FilterConfig, load_filter_config),
    "verifier": (VerifierConfig, load_verifier_config),
    "generate": (GenerateConfig, lambda path, overrides: GenerateConfig.from_yaml(path, **overrides)),
    "finetune": (FinetuneConfig, load_finetune_config),
    "prepare": (PrepareConfig, lambda path, overrides: PrepareConfig.from_yaml(path, **overrides)),
    "ablation": (AblationConfig, None),
}
SWEEP = [
    pytest.param(stage, key, text, is_list, id=f"{stage}-{key}={text}")
    for stage, (cls, _) in LOADERS.items()
    for key, kind, is_list in _numbers(cls)
    for text in (("-1", "nan", ".inf") if kind is float else ("-1",))
]


@pytest.mark.parametrize("stage, key, text, is_list", SWEEP)
def test_every_numeric_field_refuses_negative_and_non_finite(tmp_path, stage, key, text, is_list):
    cls, load = LOADERS[stage]
    overrides = _override(key, f"[{text}]" if is_list else text)
    with pytest.raises(UserError) as err:
        _load_ablation(tmp_path, overrides) if load is None else load(None, overrides)
    message = str(err.value)
    assert key.split(".")[-1] in message and (NEGATIVE in message if text == "-1" else NOT_FINITE in message)


def test_the_sweep_covers_every_stage_config():
    """A new numeric field is swept without editing this file; a stage config with none would be a wrong walk."""
    per_stage = {stage: len(_numbers(cls)) for stage, (cls, _) in LOADERS.items()}
    assert all(n >= 5 for n in per_stage.values()), per_stage
    assert ("members[].lr", float, False) in _numbers(EnsembleConfig)
    assert ("seeds", int, True) in _numbers(AblationConfig)


# ---------------------------------------------------------------- 2. zero (or too large) where a stage cannot use it


RANGE = [
    ("classifier", {"train.lr": "0"}, "train.lr must be > 0"),
    ("classifier", {"members": [{"lr": 0}]}, "members[0].lr must be > 0"),
    ("classifier", {"members": [{"batch_size": 0}]}, "members[0].batch_size must be >= 1"),
    ("classifier", {"loss.max_class_weight": "0"}, "loss.max_class_weight must be > 0"),
    ("classifier", {"augment.scale": "1"}, "augment.scale must be in [0, 1)"),
    ("classifier", {"members": [{"drop_path_rate": 1.0}]}, "drop_path_rate must be in [0, 1)"),
    ("verifier", {"lr": "0"}, "verifier lr must be > 0"),
    ("generate", {"n": 0}, "--n must be >= 1"),
    ("filter", {"batch_size": "0"}, "batch_size must be >= 1"),
    ("filter", {"bootstrap": "0"}, "bootstrap must be >= 1"),
    ("filter", {"kid_subsets": "0"}, "kid_subsets must be >= 1"),
    ("filter", {"kid_subset_size": "0"}, "kid_subset_size must be >= 1"),
    ("filter", {"outlier_knn": "0"}, "outlier_knn must be >= 1"),
    ("filter", {"outlier_reference_max": "0"}, "outlier_reference_max must be >= 1"),
    ("filter", {"nearcopy_pixel_size": "0"}, "nearcopy_pixel_size must be >= 1"),
    ("filter", {"nearcopy_calibration_images": "0"}, "nearcopy_calibration_images must be >= 1"),
    ("filter", {"max_fid_images": "5"}, "max_fid_images must be >= min_fid_images"),
    ("finetune", {"learning_rate": "0"}, "--learning_rate must be > 0"),
    ("finetune", {"vae_learning_rate": "0"}, "--vae_learning_rate must be > 0"),
    ("finetune", {"text_encoder_lr": "0"}, "--text_encoder_lr must be > 0"),
    ("finetune", {"adam_epsilon": "0"}, "--adam_epsilon must be > 0"),
    ("finetune", {"max_grad_norm": "0"}, "--max_grad_norm must be > 0"),
    ("finetune", {"ema_power": "0"}, "--ema_power must be > 0"),
    ("finetune", {"adam_beta2": "1"}, "--adam_beta2 must be in [0, 1)"),
    ("finetune", {"ema_decay": "1"}, "--ema_decay must be in [0, 1)"),
    ("finetune", {"norm_num_groups": "0"}, "--norm_num_groups must be >= 1"),  # was a ZeroDivisionError
    ("finetune", {"logging_steps": "0"}, "--logging_steps must be >= 1"),
    ("finetune", {"latent_channels": "0"}, "--latent_channels must be >= 1"),
    ("finetune", {"unet_attention_head_dim": "0"}, "--unet_attention_head_dim must be >= 1"),
    ("finetune", {"vae_block_out_channels": "[]"}, "--vae_block_out_channels must list channel counts >= 1"),
    ("filter", {"extractor": "/no/such/encoder"}, "extractor '/no/such/encoder': expected 'verifier' or a folder"),
    ("filter", {"transfer_extractor": "/no/such/encoder"}, "transfer_extractor '/no/such/encoder': expected"),
    ("finetune", {"seed": str(2**31)}, "--seed must be <= 2147483647"),  # was a traceback from numpy's seeding
    ("verifier", {"seed": str(2**31)}, "verifier seed must be <= 2147483647"),
    ("classifier", {"members": [{"seed": 5_000_000}]}, "members[0].seed must be <= 2147483"),
    ("prepare", {"tail_threshold": "0"}, "expected 0 < tail_threshold < head_threshold < 1"),
    ("prepare", {"head_threshold": "0.005"}, "expected 0 < tail_threshold < head_threshold < 1"),
]


@pytest.mark.parametrize("stage, overrides, message", RANGE, ids=[f"{s}-{m}" for s, _, m in RANGE])
def test_values_outside_a_stages_range_are_refused_at_load(stage, overrides, message):
    load = LOADERS[stage][1]
    overrides = {k: RawText(v) if isinstance(v, str) else v for k, v in overrides.items()}
    with pytest.raises(UserError) as err:
        load(None, overrides)
    assert message in str(err.value)


# ---------------------------------------------------------------- 3. every command, one error line


def _one_error_line(result, *needles: str) -> str:
    """Exit status != 0 from the CLI's handler (no exception escaped), no traceback, exactly one ``error:`` line."""
    assert result.exit_code != 0, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def _commands(tmp_path: Path) -> list[tuple[list[str], tuple[str, ...]]]:
    """Every command that takes ``--set`` (and the numeric flags that skip the loader), each with a bad number."""
    ablation = str(write_config(tmp_path))  # also writes the stage YAMLs, classifier.yaml among them
    x, classifier = str(tmp_path / "missing"), str(tmp_path / "classifier.yaml")
    filter_ = ["filter", "--synthetic", x, "--data", x, "--verifier", x, "--out", x]
    return [
        (["classify", "train", "--config", classifier, "--set", "train.lr=-0.1"], ("train.lr",)),
        (["classify", "train", "--config", classifier, "--set", "train.lr=nan"], ("train.lr",)),
        (["prepare", "--format", "cxrlt", "--labels", x, "--images", x, "--out", x, "--set", "seed=-1"], ("seed",)),
        (["prepare", "--format", "cxrlt", "--labels", x, "--images", x, "--out", x, "--val", "nan"], ("val",)),
        (["generate", "--model", x, "--class", "Mass", "--out", x, "--set", "guidance_scale=nan"], ("guidance",)),
        (["generate", "--model", x, "--class", "Mass", "--out", x, "--n", "0"], ("--n", ">= 1")),
        ([*filter_, "--set", "fid_reject_factor=nan"], ("fid_reject_factor",)),
        ([*filter_, "--seed", "-1"], ("seed",)),
        (["verifier", "train", "--data", x, "--out", x, "--set", "lr=-0.1"], ("lr",)),
        (["oracle", "train", "--data", x, "--out", x, "--set", "lr=nan"], ("lr",)),
        (["finetune", "--set", "learning_rate=nan"], ("--learning_rate",)),
        (["finetune", "--learning_rate", "-0.1"], ("--learning_rate",)),
        (["ablate", "--config", ablation, "--dry-run", "--set", "evaluation.bootstrap_seed=-1"], ("bootstrap_seed",)),
        (["ablate", "--config", ablation, "--dry-run", "--seeds", "-1"], ("seeds", "[0, 2**32 - 1]")),
        (["evaluate", "--model", x, "--data", x, "--out", x, "--batch-size", "0"], ("--batch-size",)),
        (["evaluate", "--model", x, "--data", x, "--out", x, "--seed", "-1"], ("--seed",)),
    ]


COMMAND_IDS = [
    "classify-lr-negative",
    "classify-lr-nan",
    "prepare-set-seed",
    "prepare-val-nan",
    "generate-guidance-nan",
    "generate-n-0",
    "filter-fid-factor-nan",
    "filter-seed",
    "verifier-lr",
    "oracle-lr-nan",
    "finetune-set-nan",
    "finetune-flag-negative",
    "ablate-set",
    "ablate-seeds-flag",
    "evaluate-batch-size-0",
    "evaluate-seed",
]


@pytest.mark.parametrize("index", range(len(COMMAND_IDS)), ids=COMMAND_IDS)
def test_every_command_refuses_a_bad_number_in_one_line_before_any_work(tmp_path, index):
    args, needles = _commands(tmp_path)[index]
    line = _one_error_line(CliRunner().invoke(app, args), *needles)
    assert "not found" not in line and "missing" not in line  # the number, not a later input check
    assert not (tmp_path / "missing").exists() and not (tmp_path / "outputs").exists()


# ---------------------------------------------------------------- 4. synth ablate: caught before any stage


#: the ablation's stages that do work (the others only read settings or results)
WORK = ("prepare_data", "prepare_heldout", "train_generator", "generate_images", "filter_images", "train_oracle")
WORK += ("oracle_fidelity", "train_arm", "predict", "evaluate", "paired")


@pytest.fixture
def no_stage_runs(monkeypatch):
    """Every working stage of the ablation replaced by one that records its call (none may run)."""
    calls: list[str] = []
    for name in WORK:
        monkeypatch.setattr(stages, name, lambda *a, _name=name, **k: calls.append(_name))
    return calls


def _manifest_config(tmp_path: Path, **generate) -> dict:
    manifest = tiny_manifest(tmp_path / "data", 90, lambda i: ("train", "val", "test")[i % 3])
    return {"data": {"source": "manifest", "manifest": str(manifest)}, **generate}


VARIANT = ["real_only", "v"]  #: an ablation whose only synthetic arm is the variant
ABLATION = [
    ("zero-shot-class", lambda t: {"generate__classes": ["Bulla"]}, "zero-shot class"),
    ("n-0", lambda t: {"generate__n": 0}, "--n must be >= 1"),
    ("seed-negative", lambda t: {"seeds": [-1]}, "seeds[0]: -1 " + NEGATIVE),
    ("no-class", lambda t: {"generate__classes": []}, "no class given"),
    ("predict-batch-0", lambda t: {"classifier__batch_size": 0}, "classifier.batch_size 0 must be >= 1"),
    ("data-size-0", lambda t: {"data__size": 0}, "data.size"),
    ("data-size-too-big-for-phantom", lambda t: {"data__size": 2048}, "must be between 16 and 1024"),
    ("val-plus-test", lambda t: {"data__val": 0.9}, "leaves nothing for train"),
    ("phantom-n-0", lambda t: {"data__phantom_n": 0}, "data.phantom_n"),
    ("target-nan", lambda t: {"target": {"tail_gain": float("nan")}}, "target.tail_gain: nan " + NOT_FINITE),
    ("generate-override", lambda t: {"generate__overrides": {"seed": -1}}, "generate stage overrides: seed"),
    ("generator-override", lambda t: {"generator__overrides": {"learning_rate": 0}}, "--learning_rate must be > 0"),
    ("classifier-override", lambda t: {"classifier__overrides": {"train.lr": 0}}, "train.lr must be > 0"),
    ("filter-override", lambda t: {"filter__overrides": {"batch_size": 0}}, "batch_size must be >= 1"),
    (
        "oracle-per-class-0",
        lambda t: {"oracle": {"config": str(t / "verifier.yaml"), "per_class": 0}},
        "oracle.phantom_n / per_class",
    ),
    (
        "heldout-seed-negative",
        lambda t: {"evaluation__heldout_phantom_n": 5, "evaluation__heldout_phantom_seed": -1},
        "heldout_phantom_seed: -1",
    ),
    (
        "nih-class-not-annotated",
        lambda t: {
            "data": {"source": "prepare", "format": "nih", "labels": str(t / "verifier.yaml"), "images": str(t)},
            "generate__classes": ["Rib Fracture"],
        },
        "not annotated by data.format nih",
    ),
    (
        "manifest-class-not-annotated",
        lambda t: _manifest_config(t, generate__classes=["Hernia"]),
        "'Hernia' is not annotated",
    ),
    ("seed-too-large-for-the-classifier", lambda t: {"seeds": [0, 5_000_000]}, "members[0].seed must be <="),
    (
        "generator-seed-too-large",
        lambda t: {"generator__seeds": [0, 2**31]},
        "generator 1 (seed 2147483648) stage",
    ),
    (
        "generator-prompt-templates-missing",
        lambda t: {"generator__overrides": {"prompt_templates": str(t / "none.yaml")}},
        "generator stage",
    ),
    ("generator-unet-without-vae", lambda t: {"generator__overrides": {"stage": "unet"}}, "--stage unet needs"),
    (
        "generate-prompt-templates-missing",
        lambda t: {"generate__overrides": {"prompt_templates": str(t / "none.yaml")}},
        "--prompt-templates",
    ),
    (
        "variant-generate-n-0",
        lambda t: {"variants": [{"name": "v", "arm": "synthetic_filtered", "generate": {"n": 0}}], "arms": VARIANT},
        "variant 'v' generate stage",
    ),
    (
        "variant-classifier-lr-0",
        lambda t: (
            {"variants": [{"name": "v", "arm": "synthetic_filtered", "classifier": {"train.lr": 0}}]}
            | {"arms": VARIANT}
        ),
        "variant 'v' classifier stage",
    ),
    (
        "variant-class-not-in-manifest",
        lambda t: (
            _manifest_config(t, generate__classes=["Atelectasis"])
            | {"variants": [{"name": "v", "arm": "synthetic_filtered", "generate": {"classes": ["Hernia"]}}]}
            | {"arms": VARIANT}
        ),
        "variant 'v' generate.classes",
    ),
    (
        "manifest-nothing-to-generate",
        lambda t: _manifest_config(
            t, generate__classes=["Atelectasis"], generate__n="auto", generate__overrides={"target_count": 1}
        ),
        "no image would be generated",
    ),
]


@pytest.mark.parametrize("change, message", [a[1:] for a in ABLATION], ids=[a[0] for a in ABLATION])
@pytest.mark.parametrize("dry_run", [True, False], ids=["dry-run", "run"])
def test_ablation_values_fail_before_the_first_stage(tmp_path, no_stage_runs, change, message, dry_run):
    path = write_config(tmp_path, **change(tmp_path))
    result = CliRunner().invoke(app, ["ablate", "--config", str(path), *(["--dry-run"] if dry_run else [])])
    _one_error_line(result, message)
    assert no_stage_runs == [] and not (tmp_path / "outputs").exists()


def test_a_valid_manifest_ablation_still_passes_the_dry_run(tmp_path, no_stage_runs):
    """The manifest check runs the generate stage's rules on real data; a good config must not trip them."""
    path = write_config(tmp_path, **_manifest_config(tmp_path, generate__classes=["Atelectasis", "Cardiomegaly"]))
    result = CliRunner().invoke(app, ["ablate", "--config", str(path), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "dry run: all paths found" in result.output and no_stage_runs == []
