"""Issue 20, the stages after ``synth prepare``: bad stage configs refused by ``synth ablate`` before any work
(defect 4), ``synth generate`` reruns and class names (defects 9-11), ``synth filter`` on a missing image (12).

Every test here failed on the code before its fix (checked by running it against that revision).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from data_fixtures import assert_one_error_line

from synth.commands.ablate import STAGE_CONFIG_PATHS
from synth.manifest import read_manifest

# ---------------------------------------------------------------- defect 4

REPO = Path(__file__).resolve().parents[1]


def _ablation_yaml(tmp_path: Path, edit) -> Path:
    """configs/ablation/demo.yaml with absolute stage paths, changed by ``edit(cfg)``."""
    import yaml

    cfg = yaml.safe_load((REPO / "configs" / "ablation" / "demo.yaml").read_text())
    for section, key in STAGE_CONFIG_PATHS:
        if (cfg.get(section) or {}).get(key):  # demo.yaml has no oracle section
            cfg[section][key] = str(REPO / cfg[section][key])
    cfg["output_root"] = str(tmp_path / "outputs")
    edit(cfg)
    path = tmp_path / "ablation.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _classifier_typo(tmp_path: Path):
    def edit(cfg):
        text = (REPO / "configs" / "classifier" / "demo.yaml").read_text()
        typo = tmp_path / "classifier.yaml"
        typo.write_text(text + "\nepochz: 3\n")
        cfg["classifier"]["config"] = str(typo)

    return edit


@pytest.mark.parametrize(
    "case, needles",
    [
        ("classifier_typo", ("classifier stage", "epochz")),
        ("n_twenty", ("generate stage", "twenty")),
        ("scheduler", ("generate stage", "dpm+")),
        ("n_boot_string", ("evaluation.n_boot", "'200'")),
        ("classifier_override", ("classifier stage", "epochz")),
    ],
)
def test_defect4_ablate_dry_run_loads_every_stage_config(tmp_path, case, needles):
    from typer.testing import CliRunner

    from synth.cli import app

    edits = {
        "classifier_typo": _classifier_typo(tmp_path),
        "n_twenty": lambda cfg: cfg["generate"].update(n="twenty"),
        "scheduler": lambda cfg: cfg["generate"]["overrides"].update(scheduler="dpm+"),
        "n_boot_string": lambda cfg: cfg["evaluation"].update(n_boot="200"),
        "classifier_override": lambda cfg: cfg["classifier"].update(overrides={"train.epochz": 3}),
    }
    config = _ablation_yaml(tmp_path, edits[case])
    result = CliRunner().invoke(app, ["ablate", "--config", str(config), "--dry-run"])
    assert_one_error_line(result, *needles)


def test_defect4_ablate_refuses_before_any_work(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import synth.ablation.stages as stages
    from synth.cli import app

    def no_work(*a, **kw):
        raise AssertionError("a stage started before the configs were checked")

    monkeypatch.setattr(stages, "prepare_data", no_work)
    config = _ablation_yaml(tmp_path, lambda cfg: cfg["generate"]["overrides"].update(scheduler="dpm+"))
    assert_one_error_line(CliRunner().invoke(app, ["ablate", "--config", str(config)]), "dpm+")
    assert not (tmp_path / "outputs").exists()


# ---------------------------------------------------------------- defects 9-11 (generate)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    from tiny_pipeline import build_tiny_pipeline

    return build_tiny_pipeline(tmp_path_factory.mktemp("tiny"))


GEN_FAST = dict(steps=2, guidance_scale=3.0, batch_size=2, progress=False)


def test_defect9_rerun_of_killed_generate_leaves_no_tmp(tiny_model, tmp_path):
    import synth.inference as gen

    out = tmp_path / "gen"
    gen.generate(tiny_model, ["Rib Fracture"], 2, out, **GEN_FAST)
    (out / ".manifest.csv.k1ll3d.tmp").write_text("half a manifest")  # kill -9 during a manifest write
    (out / ".run_settings.json.k1ll3d.tmp").write_text("{")
    (out / "images" / "rib-fracture" / ".rib-fracture_000002.png.k1ll3d.tmp").write_bytes(b"torn")
    gen.generate(tiny_model, ["Rib Fracture"], 3, out, **GEN_FAST)
    assert not list(out.rglob("*.tmp"))
    assert len(read_manifest(out / "manifest.csv")) == 3


def test_defect10_generate_into_a_folder_with_other_classes_says_what_it_keeps(tiny_model, tmp_path, capfd):
    import synth.inference as gen

    out = tmp_path / "gen"
    gen.generate(tiny_model, ["Rib Fracture"], 2, out, **GEN_FAST)
    capfd.readouterr()
    gen.generate(tiny_model, ["Pneumothorax"], 1, out, **GEN_FAST)
    err = capfd.readouterr().err
    assert "Rib Fracture 2" in err and "kept" in err, err
    df = read_manifest(out / "manifest.csv")
    assert df["target_class"].value_counts().to_dict() == {"Rib Fracture": 2, "Pneumothorax": 1}
    gen.generate(tiny_model, ["Rib Fracture"], 1, out, **GEN_FAST)
    err = capfd.readouterr().err
    assert "2 Rib Fracture image(s), 1 asked" in err and "Pneumothorax 1" in err, err


@pytest.mark.parametrize("name", ["Bulla", "cardiomyopathy", "Hilum", "Osteopenia", "scoliosis"])
def test_defect11_zero_shot_class_is_named_as_such(tiny_model, tmp_path, name):
    from typer.testing import CliRunner

    from synth.cli import app

    out = tmp_path / "gen"
    result = CliRunner().invoke(
        app, ["generate", "--model", str(tiny_model), "--class", name, "--n", "5", "--out", str(out)]
    )
    assert_one_error_line(result, "zero-shot", "synth classes")
    assert "Did you mean" not in result.output
    assert not out.exists()


# ---------------------------------------------------------------- defect 12 (filter)


@pytest.mark.parametrize("which", ["synthetic", "real"])
def test_defect12_filter_missing_image_fails_before_work_with_a_real_hint(tmp_path, monkeypatch, which):
    from filter_fixtures import filter_argv, make_real, make_synthetic, render
    from typer.testing import CliRunner

    import synth.filtering.pipeline as pipeline
    from synth.cli import app

    def no_work(*a, **kw):
        raise AssertionError("the verifier was loaded before the images were checked")

    monkeypatch.setattr(pipeline, "load_verifier", no_work)
    real = make_real(tmp_path / "real", per_class={"train": 3, "val": 2})
    synthetic = make_synthetic(tmp_path / "syn", [("Rib Fracture", render("Rib Fracture", seed=i)) for i in range(3)])
    folder = (tmp_path / "syn") if which == "synthetic" else (tmp_path / "real")
    victim = sorted((folder / "images").glob("*.png"))[1]
    victim.unlink()
    hint = "synth generate" if which == "synthetic" else "synth prepare"
    result = CliRunner().invoke(app, filter_argv(synthetic, real, tmp_path / "verifier", tmp_path / "out"))
    assert_one_error_line(result, "image not found", victim.name, hint)
    assert "--skip-bad-images" not in result.output  # an option `synth filter` does not have
    assert not (tmp_path / "out").exists()
