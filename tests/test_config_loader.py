"""The one config loader (synth/config.py): every stage's YAML, dotted overrides and ``--set`` read the same way."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from tiny_configs import unit_ablation
from typer.testing import CliRunner

from synth.cli import app
from synth.config import RawText, load_config, parse_sets
from synth.errors import UserError

REPO = Path(__file__).resolve().parents[1]


def _loaders():
    from classifier.config import load_ensemble_config
    from synth.ablation.config import load_ablation_config
    from synth.filtering.config import load_filter_config, load_verifier_config
    from synth.generator.config import load_finetune_config
    from synth.inference import GenerateConfig
    from synth.prepare import PrepareConfig

    return {
        "finetune": load_finetune_config,
        "classifier": load_ensemble_config,
        "filter": load_filter_config,
        "verifier": load_verifier_config,
        "generate": GenerateConfig.from_yaml,
        "prepare": PrepareConfig.from_yaml,
        "ablation": load_ablation_config,
    }


def _loader_for(path: Path):
    stage = path.parent.name
    if stage == "filter":
        return _loaders()["filter" if path.stem == "default" else "verifier"]
    return _loaders()[{"data": "prepare"}.get(stage, stage)]


#: classifier/mimic-cxr-lt.yaml names local ImageNet weights at a placeholder path: tests/test_classifier.py checks it
#: (loads where the weights exist, else the one clear error), so it is not listed here, where it would always skip
SHIPPED = sorted(
    p
    for p in (REPO / "configs").rglob("*.yaml")
    if p.relative_to(REPO / "configs").as_posix() != "classifier/mimic-cxr-lt.yaml"
)

#: a few values per shipped file, as written in the YAML
EXPECTED = {
    "finetune/demo.yaml": {"resolution": 64, "max_train_steps": 500, "checkpoints_total_limit": 1},
    "finetune/mimic-sd21.yaml": {"resolution": 512, "max_train_steps": 30000, "latent_cache_max_ram_gb": 16.0},
    "filter/default.yaml": {
        "threshold_quantile": 0.2,
        "transfer_gate": True,
        "outlier_rejects": False,
        "oracle": None,
    },
    "filter/verifier.yaml": {"image_size": 128, "lr": 0.001, "num_workers": 8},
    "data/prepare.yaml": {"size": 256, "head_threshold": 0.1, "split": "auto", "uncertain": "error"},
    "generate/default.yaml": {"n": 100, "target_count": 1000, "scheduler": "dpm++", "guidance_scale": 4.0},
}


def _get(cfg, dotted: str):
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


@pytest.mark.parametrize("path", SHIPPED, ids=[str(p.relative_to(REPO / "configs")) for p in SHIPPED])
def test_every_shipped_config_loads_to_its_values(path: Path):
    raw = yaml.safe_load(path.read_text())
    rel = str(path.relative_to(REPO / "configs"))
    cfg = _loader_for(path)(path)
    for key, value in EXPECTED.get(rel, {}).items():
        assert _get(cfg, key) == value and type(_get(cfg, key)) is type(value), (key, _get(cfg, key))
    for key, value in raw.items():  # every top-level scalar arrives as written
        if not isinstance(value, (dict, list)) and not (path.parent.name == "finetune" and key == "cache_latents"):
            got = getattr(cfg, key)
            assert got == value or (isinstance(value, str) and str(got) == value), (key, got, value)
        elif isinstance(value, dict) and path.parent.name in ("classifier", "ablation"):
            for sub, v in value.items():
                if sub != "overrides" and not isinstance(v, (dict, list)):
                    assert getattr(getattr(cfg, key), sub) == v, (key, sub)


def test_set_values_follow_yaml_scalar_rules_then_the_field_type(tmp_path: Path):
    from classifier.config import load_ensemble_config

    path = tmp_path / "c.yaml"
    path.write_text("members:\n  - {arch: convnext_atto, image_size: 32}\ntrain: {epochs: 2, mixed_precision: 'no'}\n")
    cfg = load_ensemble_config(
        path,
        parse_sets(
            [
                "train.epochs=4",
                "train.lr=0.1",
                "train.ema_decay=null",
                "train.mixed_precision=no",
                "augment.hflip=true",
                "members=[{image_size: 48}, {image_size: 64}]",
                "synthetic.ratio=1",
            ]
        ),
    )
    assert cfg.train.epochs == 4 and cfg.train.lr == 0.1 and cfg.train.ema_decay is None
    assert cfg.train.mixed_precision == "no"  # a str field keeps the text (YAML would read `no` as false)
    assert cfg.augment.hflip is True and [m.image_size for m in cfg.members] == [48, 64]
    assert cfg.synthetic.ratio == 1 and cfg.loss.gamma_neg == 4.0  # untouched sections keep their defaults
    merged = load_ensemble_config(path, parse_sets(["train={lr: 0.5}"]))  # a whole section merges into the YAML's
    assert (merged.train.lr, merged.train.epochs) == (0.5, 2)
    path.write_text("train: {epochs: '2'}\n")  # in a YAML file a quoted number is text: refused, not guessed
    with pytest.raises(UserError, match="train.epochs: cannot read '2' as int .*without quotes"):
        load_ensemble_config(path)
    assert parse_sets(["a.b= x "]) == {"a.b": "x"} and isinstance(parse_sets(["a=1"])["a"], RawText)
    with pytest.raises(UserError, match="expected KEY=VALUE"):
        parse_sets(["train.epochs"])


@pytest.mark.parametrize(
    "stage, yaml_text, sets, message",
    [
        ("finetune", "max_train_step: 5\n", ["max_train_step=5"], "max_train_steps"),
        ("classifier", "train: {epoch: 2}\n", ["train.epoch=2"], "train.epochs"),
        ("filter", "threshold_quantil: 0.3\n", ["threshold_quantil=0.3"], "threshold_quantile"),
        ("verifier", "image_sise: 64\n", ["image_sise=64"], "image_size"),
        ("generate", "stepz: 3\n", ["stepz=3"], "steps"),
        ("prepare", "sise: 64\n", ["sise=64"], "size"),
    ],
)
def test_unknown_key_in_yaml_and_in_set_is_one_error_with_a_suggestion(
    tmp_path: Path, stage, yaml_text, sets, message
):
    load = _loaders()[stage]
    path = tmp_path / "c.yaml"
    path.write_text(yaml_text)
    with pytest.raises(UserError, match="unknown key") as err:
        load(path)
    assert message in str(err.value) and "\n" not in str(err.value)
    overrides = parse_sets(sets)
    with pytest.raises(UserError, match="unknown override key") as err:
        load(None, overrides) if stage not in ("generate", "prepare") else load(None, **overrides)
    assert message in str(err.value) and "did you mean" in str(err.value)


@pytest.mark.parametrize(
    "stage, yaml_text, sets",
    [
        ("finetune", "max_train_steps: many\n", ["max_train_steps=many"]),
        ("classifier", "train: {epochs: two}\n", ["train.epochs=two"]),
        ("filter", "threshold_quantile: [0.3]\n", ["threshold_quantile=[0.3]"]),
        ("verifier", "image_size: 64px\n", ["image_size=64px"]),
        ("generate", "steps: 2.5\n", ["steps=2.5"]),
        ("prepare", "size: big\n", ["size=big"]),
    ],
)
def test_bad_type_in_yaml_and_in_set_is_one_error_naming_the_key(tmp_path: Path, stage, yaml_text, sets):
    load = _loaders()[stage]
    key = sets[0].split("=")[0]
    path = tmp_path / "c.yaml"
    path.write_text(yaml_text)
    with pytest.raises(UserError, match=f"{key}: cannot read"):
        load(path)
    overrides = parse_sets(sets)
    with pytest.raises(UserError, match=f"{key}: cannot read"):
        load(None, overrides) if stage not in ("generate", "prepare") else load(None, **overrides)


@dataclass
class Inner:
    k: int = 1
    xs: list[float] = field(default_factory=list)


@dataclass
class Outer:
    inner: Inner = field(default_factory=Inner)
    free: dict = field(default_factory=dict)
    name: str | None = None


def test_nested_dataclasses_and_sections(tmp_path: Path):
    path = tmp_path / "o.yaml"
    path.write_text("inner: {k: 2}\nfree: {a: 1}\n")
    cfg = load_config(Outer, path, {"inner.xs": RawText("[1, 2.5]"), "free.b.c": RawText("3"), "name": None})
    assert cfg == Outer(Inner(2, [1, 2.5]), {"a": 1, "b.c": 3}, None)
    with pytest.raises(UserError, match="'k' is a single value|k is a single value"):
        load_config(Outer, None, {"inner.k.x": 1})
    with pytest.raises(UserError, match="unknown override key 'k' \\(did you mean 'inner.k'\\?\\)"):
        load_config(Outer, None, {"k": 1})


def _ablation(tmp_path: Path, **sections) -> Path:
    cfg = unit_ablation(tmp_path)
    for key, value in sections.items():
        cfg[key].update(value)
    path = tmp_path / "ablation.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize(
    "section, overrides, message",
    [
        ("generator", {"max_train_step": 10}, "generator stage overrides: unknown override key '--max_train_step'"),
        ("generate", {"stepz": 3}, "generate stage overrides: unknown override key 'stepz'"),
        ("filter", {"threshold_quantile": "high"}, "filter stage overrides: threshold_quantile: cannot read 'high'"),
        ("classifier", {"train.epoch": 1}, "classifier stage overrides: unknown override key 'train.epoch'"),
    ],
)
def test_ablation_overrides_typo_fails_dry_run_before_any_work(tmp_path: Path, section, overrides, message):
    path = _ablation(tmp_path, **{section: {"overrides": overrides}})
    res = CliRunner().invoke(app, ["ablate", "--config", str(path), "--dry-run", "--arms", "real_only"])
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert res.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], (
        res.output
    )
    assert not (tmp_path / "outputs").exists()


def test_ablate_set_overrides_the_yaml_and_reaches_overrides_maps(tmp_path: Path):
    from synth.ablation.config import load_ablation_config

    path = _ablation(tmp_path)
    cfg = load_ablation_config(
        path,
        sets=parse_sets(
            [
                "evaluation.n_boot=200",
                "generator.overrides.max_train_steps=7",
                "classifier.overrides.train.epochs=1",
                "data.val=0.2",
            ]
        ),
    )
    assert cfg.evaluation.n_boot == 200 and cfg.data.val == 0.2
    assert cfg.generator.overrides == {"max_train_steps": 7} and cfg.classifier.overrides == {"train.epochs": 1}
    res = CliRunner().invoke(app, ["ablate", "--config", str(path), "--dry-run", "--set", "evaluation.n_bot=200"])
    assert res.exit_code == 2 and "did you mean 'evaluation.n_boot'" in res.output


@pytest.mark.parametrize(
    "argv",
    [
        ["filter", "--synthetic", "s", "--data", "d", "--verifier", "v", "--out", "o"],
        ["verifier", "train", "--data", "d", "--out", "o"],
        ["oracle", "train", "--data", "d", "--out", "o"],
        ["classify", "train", "--config", str(REPO / "configs/classifier/demo.yaml"), "--out", "o"],
        ["prepare", "--format", "nih", "--labels", "l.csv", "--images", "i", "--out", "o"],
        ["finetune", "--config", str(REPO / "configs/finetune/demo.yaml")],
        ["generate", "--model", "m", "--class", "Rib Fracture", "--out", "o"],
    ],
)
def test_every_config_command_takes_set_and_refuses_an_unknown_key(tmp_path: Path, monkeypatch, argv):
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, [*argv, "--set", "bogus_key=1"])
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert res.exit_code == 2 and len(lines) == 1, res.output
    assert "unknown override key" in lines[0] and "bogus_key" in lines[0]
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_specific_flags_are_aliases_that_win_over_set():
    from synth.config import command_overrides
    from synth.generator.config import parse_args

    assert command_overrides(["seed=1", "steps=3"], {"seed": 5, "steps": None}) == {"seed": 5, "steps": "3"}
    cfg = parse_args(["--set", "max_train_steps=7", "--set", "snr_gamma=null", "--use_ema"])
    assert (cfg.max_train_steps, cfg.snr_gamma, cfg.use_ema) == (7, None, True)
    assert parse_args(["--set", "max_train_steps=7", "--max_train_steps", "9"]).max_train_steps == 9
