"""Acceptance tests of ``synth filter`` (issue 7) on tiny signature images.

One verifier is trained per module (real train rows only, ~1 min of CPU) and
reused. Every test asserts a decision the filter must get right: wrong-class
images rejected, true ones kept, noise sets rejected by FID vs the real floor,
copies of training images flagged, and nothing ever read from the test split.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from filter_fixtures import CLASSES, ReadRecorder, filter_argv, make_real, make_synthetic, render
from typer.testing import CliRunner

from synth.filtering import VerifierConfig, load_filter_config, run_filter, train_verifier
from synth.manifest import read_manifest

#: Loose enough that only the rule under test decides (each test tightens its own rule).
PERMISSIVE = {
    "fid_reject_factor": 1e6,
    "outlier_percentile": 100.0,
    "bootstrap": 5,
    "kid_subsets": 5,
    "nearcopy_calibration_images": 60,
    "batch_size": 64,
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("filter")
    real = make_real(root / "real")
    cfg = VerifierConfig(
        arch="resnet10t", image_size=32, epochs=1, max_steps=60, batch_size=24, lr=3e-3, seed=0, eval_batch_size=64
    )
    verifier = train_verifier(real, root / "verifier", cfg)
    return root, real, verifier


def _filter(trained, tmp_path: Path, items, labels=None, **rules) -> tuple[pd.DataFrame, dict]:
    _, real, verifier = trained
    synthetic = make_synthetic(tmp_path / "synthetic", items, labels)
    summary = run_filter(
        synthetic, real, verifier, tmp_path / "out", load_filter_config(None, {**PERMISSIVE, **rules})
    )
    return pd.read_csv(tmp_path / "out" / "scores.csv"), summary


def test_verifier_accepts_true_images_and_rejects_other_classes(trained, tmp_path):
    true = [("Pneumothorax", render("Pneumothorax", 900_000 + i)) for i in range(20)]
    wrong = [("Pneumothorax", render("Cardiomegaly", 910_000 + i)) for i in range(20)]
    scores, summary = _filter(trained, tmp_path, true + wrong)

    # Measured over verifier seeds 0-7 (this fixture, and with 40 val positives): every true image scores above every
    # wrong one (>= 0.96 vs <= 0.004) and 100 % of wrong ones are rejected. The share of true images kept is 1 minus
    # where the threshold (0.2 quantile of only 12 val positives) falls among near-saturated scores: 0.40-0.95 over
    # those seeds — noise, not a property, so it is bounded loosely here; the threshold rule itself is tested exactly
    # (split-dependent scores, several seeds) by test_thresholds_are_fitted_on_real_val_rows_not_train_or_test.
    p_true, p_wrong = scores["p_target"][:20].to_numpy(), scores["p_target"][20:].to_numpy()
    assert p_true.min() > p_wrong.max() + 0.5, (
        f"verifier does not separate: true >= {p_true.min():.3f}, wrong <= {p_wrong.max():.3f}"
    )
    true_kept = scores["kept"][:20].mean()
    wrong_rejected = scores["reasons"][20:].str.contains("verifier").mean()
    assert true_kept >= 0.25, f"only {true_kept:.0%} of true Pneumothorax images kept"
    assert wrong_rejected >= 0.9, f"only {wrong_rejected:.0%} of Cardiomegaly images labelled Pneumothorax rejected"
    assert summary["classes"]["Pneumothorax"]["threshold_rule"] == "val_positive_quantile"
    kept = read_manifest(tmp_path / "out" / "kept.csv")
    rejected = read_manifest(tmp_path / "out" / "rejected.csv")
    assert len(kept) + len(rejected) == 40 and set(rejected["reject_reason"]) <= {"verifier", "near_copy", "outlier"}


def test_real_vs_real_fid_below_real_vs_noise_and_noise_set_rejected(trained, tmp_path):
    from synth.filtering.extractor import load_extractor
    from synth.filtering.realism import fid
    from synth.filtering.verifier import load_verifier, run_inference

    root, real_manifest, verifier_dir = trained
    extractor = load_extractor("verifier", load_verifier(verifier_dir))
    train = read_manifest(real_manifest).query("split == 'train'")
    feats = run_inference(extractor, train, 64, 8, with_probs=False).features
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(feats))
    half = len(feats) // 2
    noise_items = [("Cardiomegaly", rng.uniform(0, 1, (32, 32))) for _ in range(half)]
    noise_manifest = make_synthetic(tmp_path / "noise", noise_items)
    noise = run_inference(extractor, read_manifest(noise_manifest), 64, 8, with_probs=False).features
    real_vs_real = fid(feats[perm[:half]], feats[perm[half : 2 * half]])
    real_vs_noise = fid(feats[perm[:half]], noise)
    assert real_vs_real < real_vs_noise, (real_vs_real, real_vs_noise)

    scores, summary = _filter(trained, tmp_path / "run", noise_items[:30], fid_reject_factor=3.0)
    card = summary["classes"]["Cardiomegaly"]
    assert card["set_rejected"] and card["fid"] > 3.0 * card["fid_floor"]
    assert (scores["reasons"].str.contains("class_set_fid")).all()
    assert "verifier" in summary["metric_label"] and "Inception" not in summary["metric_label"]


def test_copies_of_training_images_are_flagged(trained, tmp_path):
    from PIL import Image

    _, real_manifest, _ = trained
    train = read_manifest(real_manifest).query("split == 'train' and Pneumothorax == 1").head(6)
    root = Path(train.attrs["root"])
    originals = [np.asarray(Image.open(root / f), dtype=np.float32) / 255.0 for f in train["fpath"]]
    rng = np.random.default_rng(1)
    copies = (
        [("Pneumothorax", img) for img in originals[:2]]
        + [("Pneumothorax", np.clip(img + rng.normal(0, 0.01, img.shape), 0, 1)) for img in originals[2:4]]
        + [("Pneumothorax", img[:, ::-1]) for img in originals[4:6]]
    )
    fresh = [("Pneumothorax", render("Pneumothorax", 920_000 + i)) for i in range(12)]
    scores, summary = _filter(trained, tmp_path, copies + fresh)

    flagged = scores["near_copy"].to_numpy()
    assert flagged[:6].all(), f"copies not flagged: {np.flatnonzero(~flagged[:6])}"
    assert flagged[6:].mean() <= 0.25, "fresh images of new patients flagged as copies"
    assert (scores["reasons"][:6].str.split("|").str[0] == "near_copy").all()
    assert list(scores["nn_pixel_dicom_id"][:2]) == list(train["dicom_id"][:2])


def test_thresholds_never_fit_on_test_and_test_images_never_read(trained, tmp_path, monkeypatch):
    root, real_manifest, verifier_dir = trained
    items = [(cls, render(cls, 930_000 + i)) for i, cls in enumerate(CLASSES * 4)]
    _, before = _filter(trained, tmp_path / "a", items)

    # corrupt every test row: flipped labels, images replaced by noise
    df = read_manifest(real_manifest)
    test = df["split"] == "test"
    corrupt = tmp_path / "corrupt"
    (corrupt / "images").mkdir(parents=True)
    df = df.copy()
    df["fpath"] = [str((Path(df.attrs["root"]) / f).resolve()) for f in df["fpath"]]
    for i in np.flatnonzero(test.to_numpy()):
        path = corrupt / "images" / f"t{i}.png"
        save_noise_png(path, seed=i)
        df.loc[df.index[i], "fpath"] = str(path)
    for cls in CLASSES:
        df.loc[test, cls] = 1.0 - df.loc[test, cls]
    from synth.manifest import write_manifest

    write_manifest(df, corrupt / "manifest.csv")
    test_paths = set(df.loc[test, "fpath"])

    recorder = ReadRecorder(monkeypatch)
    synthetic = make_synthetic(tmp_path / "b" / "synthetic", items)
    after = run_filter(
        synthetic, corrupt / "manifest.csv", verifier_dir, tmp_path / "b" / "out", load_filter_config(None, PERMISSIVE)
    )
    assert not test_paths & set(recorder.paths), "filter read test images"
    assert recorder.paths, "recorder saw no reads (the test would pass vacuously)"
    for cls in CLASSES:
        assert after["classes"][cls]["threshold"] == pytest.approx(before["classes"][cls]["threshold"])


def _split_dependent_scores(df: pd.DataFrame, classes: list[str], seed: int) -> np.ndarray:
    """Verifier scores that tell the splits apart: a threshold fitted on any rows but real val lands far from val's.

    Val positives score 0.45-0.65, val negatives 0.05-0.30; train rows are fitted (positives 0.97-0.99, negatives
    0.00-0.02, as a verifier's own training rows are); test rows score 0.99 everywhere; synthetic rows 0.70 for
    their target. Fitted on val, the threshold sits below 0.70 (all synthetic kept); fitted on train or test it sits
    above 0.95 (all rejected) — no verifier training, no margin to flake.
    """
    rng = np.random.default_rng(seed)
    out = np.zeros((len(df), len(classes)), np.float32)
    for i, (_, row) in enumerate(df.iterrows()):
        for j, cls in enumerate(classes):
            positive = row.get(cls) == 1.0
            if row["source"] == "synthetic":
                out[i, j] = 0.70 if row.get("target_class") == cls else 0.10
            elif row["split"] == "val":
                out[i, j] = rng.uniform(0.45, 0.65) if positive else rng.uniform(0.05, 0.30)
            elif row["split"] == "train":
                out[i, j] = rng.uniform(0.97, 0.99) if positive else rng.uniform(0.0, 0.02)
            else:
                out[i, j] = 0.99
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_thresholds_are_fitted_on_real_val_rows_not_train_or_test(trained, tmp_path, monkeypatch, seed):
    """The rule itself: every threshold equals the configured quantile of the REAL VAL rows' scores."""
    import dataclasses

    import synth.filtering.pipeline as pipeline
    from synth.filtering.verifier import load_verifier

    _, real_manifest, verifier_dir = trained
    classes = list(load_verifier(verifier_dir).classes)
    original = pipeline.run_inference
    scored: list[pd.DataFrame] = []

    def split_dependent(extractor, df, *args, **kwargs):
        out = original(extractor, df, *args, **kwargs)
        if out.probs.size:  # a pass of the verifier head: replace its scores by the split-dependent ones
            scored.append(df)
            out = dataclasses.replace(out, probs=_split_dependent_scores(df, classes, seed))
        return out

    monkeypatch.setattr(pipeline, "run_inference", split_dependent)
    items = [(cls, render(cls, 960_000 + i)) for i, cls in enumerate(CLASSES * 3)]
    # min_val_positives 5: Pneumothorax / Cardiomegaly use the positive quantile; 13 > 12 val positives: the
    # negative-specificity fallback (a tail class) — both rules must read val rows only.
    for rules, rule in (
        ({"threshold_quantile": 0.2}, "val_positive_quantile"),
        ({"min_val_positives": 13, "fallback_specificity": 0.9}, "val_negative_specificity"),
    ):
        scored.clear()
        scores, summary = _filter(trained, tmp_path / rule, items, **rules)
        real = pd.concat([df for df in scored if (df["source"] == "real").any()])
        val = real[real["split"] == "val"]
        assert len(val) and set(real["split"]) == {"val"}, "verifier scores were computed for non-val real rows"
        val_scores = _split_dependent_scores(val, classes, seed)
        for j, cls in enumerate(classes):
            y = val[cls].to_numpy()
            expected = (
                np.quantile(val_scores[y == 1.0, j], 0.2)
                if rule == "val_positive_quantile"
                else np.quantile(val_scores[y == 0.0, j], 0.9)
            )
            got = summary["classes"][cls]
            assert got["threshold_rule"] == rule and got["threshold"] == pytest.approx(expected, abs=1e-6), (cls, got)
            assert got["threshold"] < 0.70  # train-fitted: >= 0.97 (positives) / ~0.02 (negatives, rejects nothing)
        assert scores["verifier_pass"].all() and not scores["reasons"].fillna("").str.contains("verifier").any()


def test_class_not_annotated_in_val_has_no_threshold_and_is_rejected(trained, tmp_path):
    """No real val label for a class = nothing to fit its threshold on: its images are rejected (no_threshold),
    never waved through with a default threshold; the other classes are unaffected."""
    from synth.manifest import write_manifest

    _, real_manifest, verifier_dir = trained
    df = read_manifest(real_manifest).copy()
    df["fpath"] = [str((Path(df.attrs["root"]) / f).resolve()) for f in df["fpath"]]
    df.loc[df["split"] == "val", "Rib Fracture"] = np.nan  # not annotated in val (annotated in train and test)
    data = write_manifest(df, tmp_path / "data" / "manifest.csv")
    items = [(cls, render(cls, 970_000 + i)) for i, cls in enumerate(CLASSES * 4)]
    synthetic = make_synthetic(tmp_path / "synthetic", items)
    summary = run_filter(synthetic, data, verifier_dir, tmp_path / "out", load_filter_config(None, PERMISSIVE))
    scores = pd.read_csv(tmp_path / "out" / "scores.csv")
    rib = scores["target_class"] == "Rib Fracture"
    assert summary["classes"]["Rib Fracture"]["threshold_rule"] == "none"
    assert summary["classes"]["Rib Fracture"]["threshold"] is None
    assert not scores.loc[rib, "kept"].any()
    assert scores.loc[rib, "reasons"].str.split("|").apply(lambda reasons: "no_threshold" in reasons).all()
    for cls in ("Pneumothorax", "Cardiomegaly"):
        assert summary["classes"][cls]["threshold_rule"] == "val_positive_quantile"
        assert not scores.loc[scores["target_class"] == cls, "reasons"].fillna("").str.contains("no_threshold").any()


def test_same_inputs_and_seed_give_the_same_decisions(trained, tmp_path):
    """The filter's sampling (near-copy calibration, FID/KID subsets, bootstrap) follows its seed: a re-run is the
    same run, so an ablation's filtered arm does not change between reruns."""
    items = [("Pneumothorax", render("Pneumothorax", 980_000 + i)) for i in range(12)]
    first, summary_a = _filter(trained, tmp_path / "a", items)
    again, summary_b = _filter(trained, tmp_path / "b", items)
    pd.testing.assert_frame_equal(first.drop(columns=["fpath"]), again.drop(columns=["fpath"]))  # fpath: a/ vs b/
    assert summary_a["classes"] == summary_b["classes"]
    assert summary_a["classes"]["Pneumothorax"]["fid_ci"] is not None  # the bootstrap did run


def test_cli_bad_input_is_one_error_line(trained, tmp_path):
    from synth.cli import app

    _, real, verifier = trained
    result = CliRunner().invoke(app, filter_argv(real, real, verifier, tmp_path / "out"))
    assert result.exit_code == 2
    assert result.output.strip().startswith("error:") and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()

    synthetic = make_synthetic(tmp_path / "syn", [("Pneumothorax", render("Pneumothorax", 3))])
    result = CliRunner().invoke(app, filter_argv(synthetic, real, tmp_path / "nowhere", tmp_path / "out"))
    assert result.exit_code == 2 and "not a verifier folder" in result.output
    assert not (tmp_path / "out").exists()


def save_noise_png(path: Path, seed: int) -> None:
    from PIL import Image

    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (32, 32), dtype=np.uint8)).save(path)


def test_oracle_reports_fidelity_and_verifier_agreement(trained, tmp_path):
    from synth.filtering import train_oracle

    root, real, _ = trained
    oracle = train_oracle(
        real,
        tmp_path / "oracle",
        VerifierConfig(arch="resnet10t", image_size=32, max_steps=150, batch_size=24, lr=3e-3, seed=5),
    )
    true = [("Rib Fracture", render("Rib Fracture", 940_000 + i)) for i in range(10)]
    wrong = [("Cardiomegaly", render("Pneumothorax", 950_000 + i)) for i in range(10)]
    _, summary = _filter(trained, tmp_path, true + wrong, oracle=str(oracle))
    # Measured over oracle seeds 0-7 (this fixture): fidelity of the true images 0.80-1.00 (0.80 at seed 5, the one
    # used here: a 0.8 bar was a coin flip on any change to training), wrong ones 0.00; the verifier's recall is its
    # keep rate, which swings with where its threshold falls (0.40-0.95 over verifier seeds, see the test above).
    assert summary["classes"]["Rib Fracture"]["oracle_fidelity"] >= 0.6
    assert summary["classes"]["Cardiomegaly"]["oracle_fidelity"] <= 0.2
    assert summary["classes"]["Rib Fracture"]["verifier_recall"] >= 0.3

    # the ablation's fidelity step (synth ablate oracle.config): the same judge, real / generated / kept / rejected
    from synth.ablation.stages import oracle_fidelity

    generated = read_manifest(make_synthetic(tmp_path / "generated", true + wrong))
    kept = generated[generated["target_class"] == "Rib Fracture"].iloc[:6]
    real_df = read_manifest(real)
    fid = json.loads(
        oracle_fidelity(oracle, real_df[real_df["split"] == "train"], generated, kept, tmp_path / "fid").read_text()
    )["classes"]
    rib, cardio = fid["Rib Fracture"], fid["Cardiomegaly"]
    assert rib["generated"] >= 0.6 and cardio["generated"] <= 0.2 and cardio["kept"] is None  # none of them kept
    assert rib["real"] >= 0.8 and cardio["real"] >= 0.8  # the judge detects the real positives of both classes
    assert rib["kept"] * 6 + rib["rejected"] * 4 == pytest.approx(rib["generated"] * 10)
    assert rib["n_generated"] == 10 and rib["n_real"] == int(
        (real_df[real_df["split"] == "train"]["Rib Fracture"] == 1).sum()
    )


def test_outliers_are_flagged_and_rejected_only_when_asked(trained, tmp_path):
    """An outlier limit below most real images makes every image an outlier: flagged either way, dropped only on
    request."""
    true = [("Pneumothorax", render("Pneumothorax", 920_000 + i)) for i in range(12)]
    flagged, summary = _filter(trained, tmp_path / "flag", true, outlier_percentile=1.0)
    assert flagged["flags"].str.contains("outlier").mean() >= 0.9
    assert not flagged["reasons"].str.contains("outlier").any()
    assert summary["classes"]["Pneumothorax"]["flagged"]["outlier"] >= 11
    assert "outlier" not in summary["classes"]["Pneumothorax"]["rejected"]

    rejected, summary = _filter(trained, tmp_path / "reject", true, outlier_percentile=1.0, outlier_rejects=True)
    assert rejected["reasons"].str.contains("outlier").mean() >= 0.9
    assert rejected["kept"].mean() <= 0.1


def test_kid_does_not_warn_per_class():
    """torchmetrics warns that KID buffers its features; synth filter computes KID once per class, so a run printed
    the same two-line warning for every generated class (16 times in phantom-cpu)."""
    import warnings

    from synth.filtering.realism import kid

    rng = np.random.default_rng(0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        kid(rng.random((20, 8)), rng.random((20, 8)), subset_size=10, subsets=3)
    assert not [w for w in caught if "buffer" in str(w.message)]


def test_controls_are_not_judged_and_follow_their_twins(trained, tmp_path):
    """``synth generate --controls`` sets: a control (the image without its class) is not judged by the verifier —
    it is meant not to show the class — but goes to kept.csv or rejected.csv with its image."""
    from filter_fixtures import save

    from synth.manifest import write_manifest

    true = [("Pneumothorax", render("Pneumothorax", 920_000 + i)) for i in range(12)]
    wrong = [("Pneumothorax", render("Cardiomegaly", 930_000 + i)) for i in range(12)]
    manifest = make_synthetic(tmp_path / "synthetic", true + wrong)
    images = read_manifest(manifest)
    controls = images.copy()
    for i, row in controls.iterrows():
        save(render(None, 940_000 + i), tmp_path / "synthetic" / f"controls/c{i:05d}.png")
    controls["fpath"] = [f"controls/c{i:05d}.png" for i in range(len(controls))]
    controls["dicom_id"] = images["dicom_id"] + "-control"
    controls["Pneumothorax"] = 0.0
    images["pair_id"], images["pair_role"] = images["dicom_id"], "image"
    controls["pair_id"], controls["pair_role"] = images["dicom_id"], "control"
    write_manifest(pd.concat([images, controls], ignore_index=True), manifest)
    _, real, verifier = trained
    summary = run_filter(manifest, real, verifier, tmp_path / "out", load_filter_config(None, PERMISSIVE))
    kept = read_manifest(tmp_path / "out" / "kept.csv")
    rejected = read_manifest(tmp_path / "out" / "rejected.csv")
    assert summary["classes"]["Pneumothorax"]["n"] == 24  # the images only were judged
    assert summary["controls"] == {"rows": 24, "kept": int(kept["pair_role"].eq("control").sum())}
    for frame in (kept, rejected):
        by_role = frame.groupby("pair_role")["pair_id"].apply(set)
        assert by_role.get("control", set()) == by_role.get("image", set())  # whole pairs only
    assert len(kept) + len(rejected) == 48 and kept["pair_role"].eq("image").sum() >= 3


def test_filter_output_carries_its_card(trained, tmp_path):
    from card_checks import check_card

    items = [(c, render(c, 920_000 + 10 * k + i)) for k, c in enumerate(CLASSES) for i in range(6)]
    _, summary = _filter(trained, tmp_path, items)
    text = check_card(tmp_path / "out", "filter", f"kept {summary['kept']} of {summary['n']} images", grid=True)
    assert all(f"- {c}: kept" in text for c in CLASSES)
