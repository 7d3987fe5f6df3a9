"""Issue 35: every command that loads a model, a checkpoint or a cache refuses a corrupt one in one line.

Each case damages one file the way a copy cut short, a full disk or a hand edit leaves it, runs the command the
user would, and asserts one ``error:`` line naming the file and what is wrong, a non-zero exit, no traceback --
and for evaluate / predict / filter, that no probability outside [0, 1] (or a normal-looking table) came out.
On the code before this change each case was a traceback or, worse, exit 0 with all-zero / NaN / > 1 numbers.
A damaged cache is not an error but rebuilt with a warning (the classifier's image cache here, the latent cache
in test_latent_cache.py).
"""

from __future__ import annotations

import math
import shutil
import sys
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml
from data_fixtures import assert_one_error_line, invoke, make_cxrlt, prepare_args
from filter_fixtures import CLASSES as FILTER_CLASSES
from filter_fixtures import filter_argv, make_real, make_synthetic, render
from model_fixtures import (
    CLASSES,
    edit_json,
    garbage,
    make_ensemble,
    make_verifier,
    nan_weights,
    other_model_weights,
    truncate,
)
from typer.testing import CliRunner

from synth.cli import app


def _members(change: Callable[[list[dict[str, Any]]], None]) -> Callable[[Path], None]:
    return lambda path: edit_json(path, lambda spec: change(spec["members"]))


def _set(key: str, value: Any) -> Callable[[Path], None]:
    return lambda path: edit_json(path, lambda meta: meta.__setitem__(key, value))


def _other_weights(path: Path) -> None:
    other_model_weights(path, len(CLASSES) + 3)


def _weights(*values: float) -> Callable[[list[dict[str, Any]]], None]:
    def change(members: list[dict[str, Any]]) -> None:
        for entry, value in zip(members, values):
            entry["weight"] = value

    return change


#: (id, file under the ensemble folder, damage, words the error line must hold)
ENSEMBLE_DAMAGE = [
    ("ensemble-truncated", "ensemble.json", truncate, ["ensemble.json", "not valid JSON"]),
    ("ensemble-garbage", "ensemble.json", garbage, ["ensemble.json", "not valid JSON"]),
    ("ensemble-not-object", "ensemble.json", lambda p: p.write_text("[1, 2]"), ["ensemble.json", "JSON object"]),
    ("members-empty", "ensemble.json", _members(lambda m: m.clear()), ["ensemble.json", "members"]),
    ("weight-5", "ensemble.json", _members(_weights(5.0, 0.5)), ["ensemble.json", "sum to 5.5"]),
    ("weight-nan", "ensemble.json", _members(_weights(math.nan, 0.5)), ["members[0].weight", "finite"]),
    ("weight-inf", "ensemble.json", _members(_weights(math.inf, 0.5)), ["members[0].weight", "finite"]),
    ("weight-negative", "ensemble.json", _members(_weights(-0.5, 1.5)), ["members[0].weight", ">= 0"]),
    ("weight-missing", "ensemble.json", _members(lambda m: m[0].pop("weight")), ["members[0].weight"]),
    ("member-json-truncated", "member-0/member.json", truncate, ["member-0/member.json", "not valid JSON"]),
    ("member-arch-unknown", "member-0/member.json", _set("arch", "nope_net"), ["member.json", "'nope_net'"]),
    ("member-image-size-negative", "member-0/member.json", _set("image_size", -5), ["member.json", "image_size"]),
    ("member-image-size-zero", "member-0/member.json", _set("image_size", 0), ["member.json", "image_size"]),
    ("member-classes-empty", "member-0/member.json", _set("classes", []), ["member.json", "classes"]),
    ("weights-truncated", "member-0/model.safetensors", truncate, ["model.safetensors", "truncated or corrupt"]),
    ("weights-garbage", "member-0/model.safetensors", garbage, ["model.safetensors", "truncated or corrupt"]),
    ("weights-empty", "member-0/model.safetensors", lambda p: p.write_bytes(b""), ["model.safetensors"]),
    (
        "weights-shape",
        "member-0/model.safetensors",
        _other_weights,
        ["model.safetensors", "shape"],
    ),
    ("weights-nan", "member-0/model.safetensors", nan_weights, ["model.safetensors", "NaN"]),
]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """A small prepared test-only set (32 px) for evaluate and predict."""
    root = tmp_path_factory.mktemp("prepared")
    csv = make_cxrlt(root, patients=3, per_patient=2)
    result = invoke(*prepare_args(csv, root / "mimic", root / "data", "--size", "32", "--split", "test"))
    assert result.exit_code == 0, result.output
    return root / "data" / "manifest.csv"


def _assert_one_error_on_stderr(result, *needles: str) -> None:
    """A training command logs its progress on stdout; what matters is one ``error:`` line, exit 2, no traceback."""
    assert "Traceback" not in result.output and result.exit_code == 2, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def _assert_refused(result, out: Path, *needles: str) -> None:
    assert "Traceback" not in result.output, result.output
    assert_one_error_line(result, *needles)
    assert not out.exists(), f"{out} was written although the model was refused"


@pytest.mark.parametrize("command", ["evaluate", "predict"])
@pytest.mark.parametrize(("name", "target", "damage", "needles"), ENSEMBLE_DAMAGE, ids=[c[0] for c in ENSEMBLE_DAMAGE])
def test_corrupt_ensemble_is_one_error_line(prepared, tmp_path, command, name, target, damage, needles):
    model = make_ensemble(tmp_path / "model")
    damage(model / target)
    out = tmp_path / ("eval" if command == "evaluate" else "submission.csv")
    if command == "evaluate":
        args = ["evaluate", "--model", model, "--data", prepared, "--out", out, "--n-boot", "0"]
    else:
        args = ["predict", "--model", model, "--manifest", prepared, "--out", out, "--no-progress"]
    _assert_refused(CliRunner().invoke(app, [str(a) for a in args]), out, *needles)


def test_intact_ensemble_still_predicts_probabilities(prepared, tmp_path):
    """The control for the cases above: the same folder undamaged scores, within [0, 1]."""
    import pandas as pd

    model = make_ensemble(tmp_path / "model")
    out = tmp_path / "submission.csv"
    result = invoke("predict", "--model", model, "--manifest", prepared, "--out", out)
    assert result.exit_code == 0, result.output
    probs = pd.read_csv(out).drop(columns="dicom_id").to_numpy()
    assert probs.shape[1] == len(CLASSES) and (probs >= 0).all() and (probs <= 1).all() and probs.std() > 0


def test_probabilities_outside_0_1_never_leave_predict(prepared, tmp_path, monkeypatch):
    """The last guard: whatever a member returns, NaN or > 1 stops before a metric or a submission."""
    import numpy as np

    import classifier.ensemble as ensemble

    model = make_ensemble(tmp_path / "model")
    monkeypatch.setattr(ensemble, "predict_images", lambda m, images, *a, **k: np.full((len(images), 4), np.nan))
    out = tmp_path / "eval"
    result = CliRunner().invoke(app, ["evaluate", "--model", str(model), "--data", str(prepared), "--out", str(out)])
    _assert_refused(result, out, "outside [0, 1]")


# ---------------------------------------------------------------- synth filter --verifier

VERIFIER_DAMAGE = [
    ("verifier-json-truncated", "verifier.json", truncate, ["verifier.json", "not valid JSON"]),
    ("verifier-arch-unknown", "verifier.json", _set("arch", "resnet_nope"), ["verifier.json", "'resnet_nope'"]),
    ("verifier-image-size", "verifier.json", _set("image_size", -5), ["verifier.json", "image_size"]),
    ("verifier-pixel-std-zero", "verifier.json", _set("pixel_std", 0), ["verifier.json", "pixel_std"]),
    ("verifier-weights-truncated", "model.safetensors", truncate, ["model.safetensors", "truncated or corrupt"]),
    (
        "verifier-weights-shape",
        "model.safetensors",
        _other_weights,
        ["model.safetensors", "shape"],
    ),
    ("verifier-weights-nan", "model.safetensors", nan_weights, ["model.safetensors", "NaN"]),
]


@pytest.fixture(scope="module")
def filter_inputs(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("filter")
    real = make_real(root / "real", {"train": 2, "val": 1, "test": 1})
    synthetic = make_synthetic(root / "syn", [(c, render(c, 7_000 + i)) for i, c in enumerate(FILTER_CLASSES)])
    return synthetic, real


@pytest.mark.parametrize(("name", "target", "damage", "needles"), VERIFIER_DAMAGE, ids=[c[0] for c in VERIFIER_DAMAGE])
def test_corrupt_verifier_is_one_error_line(filter_inputs, tmp_path, name, target, damage, needles):
    synthetic, real = filter_inputs
    verifier = make_verifier(tmp_path / "verifier", list(FILTER_CLASSES))
    damage(verifier / target)
    out = tmp_path / "out"
    _assert_refused(CliRunner().invoke(app, filter_argv(synthetic, real, verifier, out)), out, *needles)


# ---------------------------------------------------------------- synth generate --model

GENERATOR_DAMAGE = [
    ("unet-weights-truncated", "unet/diffusion_pytorch_model.safetensors", truncate, ["unet/diffusion_pytorch_model"]),
    ("vae-weights-garbage", "vae/diffusion_pytorch_model.safetensors", garbage, ["vae/diffusion_pytorch_model"]),
    ("model-index-truncated", "model_index.json", truncate, ["model_index.json", "not valid JSON"]),
    ("unet-config-garbage", "unet/config.json", garbage, ["unet/config.json", "not valid JSON"]),
    ("synth-meta-truncated", "synth_meta.json", truncate, ["synth_meta.json", "not valid JSON"]),
    ("component-missing", "vae", shutil.rmtree, ["'vae'", "missing"]),
]


@pytest.fixture(scope="module")
def tiny_generator(tmp_path_factory) -> Path:
    from tiny_pipeline import build_tiny_pipeline

    return build_tiny_pipeline(tmp_path_factory.mktemp("gen"))


@pytest.mark.parametrize(
    ("name", "target", "damage", "needles"), GENERATOR_DAMAGE, ids=[c[0] for c in GENERATOR_DAMAGE]
)
def test_broken_generator_folder_names_the_file_and_leaves_no_out(
    tiny_generator, tmp_path, name, target, damage, needles
):
    model = tmp_path / "model"
    shutil.copytree(tiny_generator, model)
    damage(model / target)
    out = tmp_path / "out"
    _assert_refused(CliRunner().invoke(app, _generate_argv(model, out)), out, *needles)


def _generate_argv(model: Path, out: Path) -> list[str]:
    args = ["generate", "--model", model, "--class", "rib fracture", "--n", "1", "--out", out, "--no-progress"]
    return [str(a) for a in args]


# ---------------------------------------------------------------- classify train: a truncated resume state


class _Stop(Exception):
    pass


@pytest.fixture(scope="module")
def classifier_config(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("clf")
    manifest = make_real(root / "data", {"train": 8, "val": 4, "test": 1})
    config = root / "c.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "members": [{"arch": "convnext_atto", "image_size": 32}],
                "train": {"epochs": 2, "batch_size": 8, "ema_decay": 0.9},
                "data": {"manifest": str(manifest)},
            }
        )
    )
    return config


@pytest.mark.parametrize(
    ("target", "damage"),
    [
        ("state/model.safetensors", truncate),
        ("state/optimizer.bin", truncate),
        ("state/progress.json", truncate),
        ("state/ema.safetensors", garbage),
        ("fingerprint.json", truncate),
    ],
    ids=["model", "optimizer", "progress", "ema", "fingerprint"],
)
def test_truncated_classifier_resume_state_is_one_error_line(classifier_config, tmp_path, monkeypatch, target, damage):
    import classifier.stage as stage

    def stop(stage_name, epoch):
        if epoch == 1:
            raise _Stop

    out = tmp_path / "model"
    argv = ["classify", "train", "--config", str(classifier_config), "--out", str(out)]
    monkeypatch.setattr(stage, "EPOCH_END_HOOK", stop)
    assert isinstance(CliRunner().invoke(app, argv).exception, _Stop)
    monkeypatch.setattr(stage, "EPOCH_END_HOOK", None)
    ckpt = out / "member-0" / "ckpt-train"
    damage(ckpt / target)
    _assert_one_error_on_stderr(CliRunner().invoke(app, argv), str(ckpt), "to start this stage over")
    assert (ckpt / target).exists(), "the user's checkpoint was deleted"


# ---------------------------------------------------------------- synth finetune: a truncated checkpoint

FINETUNE = [
    "--resolution", "16", "--vae_block_out_channels", "8", "16", "--unet_block_out_channels", "16", "32",
    "--unet_attention_head_dim", "4", "--norm_num_groups", "4", "--vae_max_train_steps", "2", "--vae_batch_size", "8",
    "--train_batch_size", "4", "--max_train_steps", "2", "--checkpointing_steps", "2", "--num_validation_images", "0",
    "--text_max_length", "16",
]  # fmt: skip


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory) -> tuple[list[str], Path]:
    from tiny_pipeline import write_tiny_manifest

    root = tmp_path_factory.mktemp("ft")
    manifest = write_tiny_manifest(root / "data")
    out = root / "pipe"
    argv = ["finetune", "--train_manifest", str(manifest), "--output_dir", str(out), *FINETUNE]
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 0, result.output
    assert (out / "checkpoint-2").is_dir()
    return argv, out


@pytest.mark.parametrize(
    ("target", "damage"),
    [("model.safetensors", truncate), ("optimizer.bin", garbage), ("trainer_state.json", truncate)],
    ids=["model", "optimizer", "trainer-state"],
)
def test_truncated_finetune_checkpoint_is_one_error_line(finetuned, tmp_path, target, damage):
    argv, run = finetuned
    out = tmp_path / "pipe"
    shutil.copytree(run, out)
    damage(out / "checkpoint-2" / target)
    argv = [a if a != str(run) else str(out) for a in argv]
    _assert_one_error_on_stderr(CliRunner().invoke(app, argv), "checkpoint-2", "--resume_from_checkpoint none")


# ---------------------------------------------------------------- the classifier's image cache: checksummed


@pytest.fixture()
def cache_images(tmp_path) -> list[Path]:
    from filter_fixtures import save

    paths = [tmp_path / "img" / f"{i}.png" for i in range(6)]
    for i, path in enumerate(paths):
        save(render(FILTER_CLASSES[i % len(FILTER_CLASSES)], 5_000 + i), path)
    return paths


def _store(paths: list[Path], cache_dir: Path):
    from classifier.data import build_store

    return build_store(paths, 32, cache_dir, True, lambda: None, workers=1)


def _new_process() -> None:
    """Forget which cache files this process verified, as a new process starts (no such module before issue 35)."""
    module = sys.modules.get("synth.cache_checksum")
    if module is not None:
        module._VERIFIED.clear()


@pytest.mark.parametrize(
    ("damage", "why"),
    [
        (lambda p: p.write_bytes(bytes(p.stat().st_size)), "checksum mismatch"),  # zeroed: the size is unchanged
        (truncate, "truncated"),
    ],
    ids=["zeroed", "truncated"],
)
def test_damaged_image_cache_is_rebuilt_with_a_warning(cache_images, tmp_path, capsys, damage, why):
    import numpy as np

    store = _store(cache_images, tmp_path / "cache")
    pixels = store.read(np.arange(len(cache_images)))
    assert pixels.any()
    damage(store.path)
    _new_process()
    capsys.readouterr()
    again = _store(cache_images, tmp_path / "cache")
    err = capsys.readouterr().err
    assert "warning: image cache" in err and why in err, err
    assert (again.read(np.arange(len(cache_images))) == pixels).all(), "trained on the damaged pixels"


def test_image_cache_without_checksum_is_kept_and_checked_once_per_process(cache_images, tmp_path, monkeypatch):
    import classifier.data as data
    from synth import cache_checksum

    store = _store(cache_images, tmp_path / "cache")
    cache_checksum.sidecar(store.path).unlink()  # a cache built before checksums existed
    _new_process()
    decoded = []
    original = data.read_image
    monkeypatch.setattr(data, "read_image", lambda p, s: decoded.append(p) or original(p, s))
    _store(cache_images, tmp_path / "cache")
    assert not decoded, "an intact cache without a checksum was rebuilt"
    assert cache_checksum.sidecar(store.path).is_file()

    def must_not_read(*a, **k):
        raise AssertionError("a file verified in this process was read again")

    monkeypatch.setattr(cache_checksum, "file_digests", must_not_read)
    _store(cache_images, tmp_path / "cache")  # the same process: verified already


def test_chunk_digests_do_not_depend_on_how_the_bytes_were_written(tmp_path):
    from synth.cache_checksum import ChunkHasher, file_digests

    data = bytes(range(256)) * 41
    path = tmp_path / "f"
    path.write_bytes(data)
    streamed = ChunkHasher(chunk_bytes=1000)
    for start in range(0, len(data), 333):
        streamed.update(data[start : start + 333])
    whole = file_digests(path, chunk_bytes=1000)
    assert streamed.digests() == whole.digests() and len(whole.digests()) == 11 and streamed.size == len(data)


# ---------------------------------------------------------------- the other model folders a command reads


@pytest.mark.parametrize(
    ("flag", "component", "target", "damage"),
    [
        ("--vae_model_path", "vae", "diffusion_pytorch_model.safetensors", truncate),
        ("--pretrained_model_name_or_path", ".", "unet/config.json", garbage),
    ],
    ids=["vae-model-path", "pretrained"],
)
def test_broken_finetune_input_folder_is_one_error_line(tiny_generator, tmp_path, flag, component, target, damage):
    model = tmp_path / "model"
    shutil.copytree(tiny_generator, model)
    damage(model / component / target)
    manifest = tiny_generator.parent / "data" / "manifest.csv"
    argv = ["finetune", "--train_manifest", str(manifest), "--output_dir", str(tmp_path / "pipe"), *FINETUNE]
    result = CliRunner().invoke(app, [*argv, flag, str(model / component)])
    _assert_one_error_on_stderr(result, target, "truncated or corrupt")


def test_truncated_ensemble_json_of_an_earlier_run_is_one_error_line(classifier_config, tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    (out / "ensemble.json").write_text('{"classes": ["Pneumothorax"], "members": [')
    result = CliRunner().invoke(app, ["classify", "train", "--config", str(classifier_config), "--out", str(out)])
    _assert_one_error_on_stderr(result, "ensemble.json", "not valid JSON")


def test_truncated_oracle_record_is_one_error(tmp_path):
    from synth.errors import UserError
    from synth.filtering.oracle import ORACLE_FILE, load_oracle

    folder = make_verifier(tmp_path / "oracle", list(FILTER_CLASSES))
    (folder / ORACLE_FILE).write_text('{"classes": {"Pneumothorax": {"thresh')
    with pytest.raises(UserError, match=ORACLE_FILE):
        load_oracle(folder)


def test_truncated_generate_run_record_is_one_error_line(tiny_generator, tmp_path):
    """The record that lets ``synth generate`` resume an --out folder, cut short: named, nothing else touched."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "generate_run.json").write_text('{"seed": 0, "steps"')
    result = CliRunner().invoke(app, _generate_argv(tiny_generator, out))
    assert "Traceback" not in result.output
    assert_one_error_line(result, "generate_run.json", "not valid JSON")
    assert sorted(p.name for p in out.iterdir()) == ["generate_run.json"]
