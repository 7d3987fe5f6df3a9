"""The phantom benchmark: determinism, per-class signatures, CXR-LT format, long tail, hierarchy, CLI errors."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from synth.cli import app
from synth.errors import UserError
from synth.phantom import render_dataset, render_image, render_with_regions, sample_label_sets
from synth.phantom.findings import REGISTRY, _dilate
from synth.phantom.labels import add_label_noise, label_matrix, label_set_table, sample_balanced_label_sets
from synth.readers import read_cxrlt
from synth.taxonomy import CXR_LT_CLASSES, HIERARCHY, META_COLUMNS, frequency_groups

#: classes whose signature is legitimately spread over much of the chest
DIFFUSE = {"Edema", "Emphysema", "Pulmonary Hypertension", "Hydropneumothorax", "Cardiomegaly"}


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_render_image_is_deterministic_and_seed_dependent():
    a = render_image(["Pleural Effusion", "Support Devices"], seed=3, size=48)
    b = render_image(["Support Devices", "pleural effusion"], seed=3, size=48)
    c = render_image(["Pleural Effusion", "Support Devices"], seed=4, size=48)
    assert a.dtype == np.uint8 and a.shape == (48, 48)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert render_image([], 3, 48, view="AP").shape == (48, 48)


@pytest.mark.parametrize("cls", CXR_LT_CLASSES)
def test_each_class_changes_pixels_only_in_its_region(cls):
    """With vs without the class on the same patient and exposure: the change lies inside its region."""
    for seed in range(3):
        with_ = render_with_regions([cls], seed, 48)
        without = render_with_regions([], seed, 48)
        if cls == "Normal":  # Normal = no finding at all
            assert np.array_equal(with_.image, without.image)
            continue
        changed = np.abs(with_.image.astype(int) - without.image.astype(int)) > 3
        region = np.zeros_like(changed)
        for mask in with_.regions.values():
            region |= mask
        region = _dilate(region, 2)  # blur spreads an edge by a pixel or two
        assert changed.sum() >= 3, f"{cls} seed {seed}: signature invisible ({changed.sum()} px changed)"
        inside = (changed & region).sum() / changed.sum()
        assert inside >= 0.9, f"{cls} seed {seed}: only {inside:.0%} of the change inside its region"
        assert region.mean() <= (0.8 if cls in DIFFUSE else 0.35), (
            f"{cls}: region covers {region.mean():.0%} of the image"
        )


def test_a_nodule_is_visible_wherever_it_is_drawn():
    """A labelled nodule must show: behind the heart the lung-only fill barely changes the film
    (renderer 4 hid 6 % of nodules there, max change 7-15 grey levels)."""
    faint = []
    for seed in range(5000, 5150):
        with_ = render_image(["Nodule"], seed, 64).astype(np.int16)
        without = render_image([], seed, 64).astype(np.int16)
        if (with_ - without).max() < 40:
            faint.append(seed)
    assert not faint, f"nodules nearly invisible for seeds {faint}"


def test_findings_do_not_move_each_other():
    """Adding a finding leaves another finding's drawing (and the anatomy) where it was."""
    base = render_with_regions(["Nodule"], 11, 48)
    both = render_with_regions(["Nodule", "Support Devices"], 11, 48)
    assert np.array_equal(base.regions["Nodule"], both.regions["Nodule"])
    untouched = ~_dilate(both.regions["Support Devices"], 2)
    assert np.array_equal(base.image[untouched], both.image[untouched])


def test_render_rejects_bad_labels():
    with pytest.raises(UserError, match="Normal"):
        render_image(["Normal", "Mass"], 0, 32)
    with pytest.raises(UserError, match="Did you mean"):
        render_image(["Pneumothorx"], 0, 32)
    assert set(REGISTRY) == set(CXR_LT_CLASSES)


def test_hierarchy_renders_parent_when_child_drawn():
    r = render_with_regions(["Rib Fracture"], 2, 32)
    assert r.labels == ("Fracture", "Rib Fracture")
    assert r.params["Fracture"] == {"drawn_by_child": True}


def test_long_tail_at_20000_sampled_labels():
    """CXR-LT-like split from sampled labels only (no rendering): ~9 head, ~15 medium, ~16 tail."""
    for seed in (0, 1):
        y = label_matrix(sample_label_sets(20000, seed))
        prevalence = dict(zip(CXR_LT_CLASSES, y.mean(0)))
        groups = frequency_groups(prevalence)
        counts = {g: sum(v == g for v in groups.values()) for g in ("head", "medium", "tail")}
        assert 8 <= counts["head"] <= 10 and 14 <= counts["tail"] <= 17, counts
        assert y.sum(0).min() >= 5, "every class must appear"
        rarest16 = sorted(prevalence, key=prevalence.get)[:16]
        assert sum(prevalence[c] < 0.01 for c in rarest16) >= 15
        for c in (
            "Pneumomediastinum",
            "Round(ed) Atelectasis",
            "Infarction",
            "Pulmonary Embolism",
            "Hydropneumothorax",
        ):
            assert prevalence[c] < 0.01, c
    # the table itself: expected split exactly as designed
    expected = frequency_groups(label_set_table().prevalence())
    assert sum(v == "tail" for v in expected.values()) == 16 and sum(v == "head" for v in expected.values()) == 9


def _check_consistent(sets):
    for s in sets:
        assert len(s) >= 1
        for child, parent in HIERARCHY.items():
            if child in s:
                assert parent in s, s
        if "Normal" in s:
            assert s == ("Normal",), s


def test_hierarchy_consistency_of_sampled_and_noisy_labels():
    sets = sample_label_sets(5000, 0)
    _check_consistent(sets)
    noisy = add_label_noise(sets, 0.2, 0)
    _check_consistent(noisy)
    assert noisy != sets
    _check_consistent(sample_balanced_label_sets(400, 10, 0))
    y = label_matrix(sample_balanced_label_sets(400, 10, 0))
    assert y.sum(0).min() >= 10


def test_dataset_loads_as_cxrlt_and_is_worker_independent(tmp_path):
    a = render_dataset(48, 32, 5, tmp_path / "a", workers=1)
    b = render_dataset(48, 32, 5, tmp_path / "b", workers=2)
    assert a == tmp_path / "a" / "labels.csv"
    assert _digest(a.parent) == _digest(b.parent)
    df = pd.read_csv(a)
    assert tuple(df.columns) == (*META_COLUMNS, *CXR_LT_CLASSES)
    assert df["dicom_id"].is_unique and df["study_id"].is_unique
    assert df["subject_id"].nunique() < len(df)  # several studies per patient
    assert set(df[list(CXR_LT_CLASSES)].to_numpy().ravel()) <= {0, 1}
    _check_consistent([tuple(c for c in CXR_LT_CLASSES if row[c]) for _, row in df.iterrows()])
    real = read_cxrlt(a, a.parent)
    assert len(real) == 48 and all(Path(p).exists() for p in real["fpath"])
    meta = json.loads((a.parent / "phantom.json").read_text())
    assert meta["arguments"]["seed"] == 5 and sum(meta["positives"].values()) >= 48
    truth = [json.loads(line) for line in (a.parent / "truth.jsonl").read_text().splitlines()]
    assert [t["dicom_id"] for t in truth] == df["dicom_id"].tolist()
    # same arguments: reused as is; other arguments: refused
    assert render_dataset(48, 32, 5, tmp_path / "a") == a
    assert _digest(a.parent) == _digest(b.parent)
    render_dataset(48, 32, 5, tmp_path / "a", contact_sheet=True)  # adds the sheets to the existing set
    assert (a.parent / "contact_sheets" / "all.png").exists() and (a.parent / "images").is_dir()
    with pytest.raises(UserError, match="already exists"):
        render_dataset(40, 32, 5, tmp_path / "a")
    meta["arguments"]["renderer"] -= 1  # a folder from an older renderer is not this renderer's output
    (a.parent / "phantom.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match="already exists"):
        render_dataset(48, 32, 5, tmp_path / "a")


def test_synth_prepare_reads_the_phantom(tmp_path):
    labels = render_dataset(40, 32, 1, tmp_path / "ph", workers=1)
    result = CliRunner().invoke(
        app,
        [
            "prepare",
            "--format",
            "cxrlt",
            "--labels",
            str(labels),
            "--images",
            str(labels.parent),
            "--out",
            str(tmp_path / "prep"),
            "--size",
            "32",
            "--workers",
            "1",
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.output
    from PIL import Image

    from synth.manifest import image_paths, read_manifest

    manifest = read_manifest(tmp_path / "prep" / "manifest.csv")
    source = pd.read_csv(labels).set_index("dicom_id")
    assert sorted(manifest["dicom_id"]) == sorted(source.index)  # every phantom image, nothing else
    prepared = manifest.set_index("dicom_id")
    # labels and patients carried over exactly; split by patient
    for c in CXR_LT_CLASSES:
        assert (prepared[c].astype(float) == source.loc[prepared.index, c].astype(float)).all(), c
    assert (prepared["subject_id"].astype(str) == source.loc[prepared.index, "subject_id"].astype(str)).all()
    assert manifest.groupby("subject_id")["split"].nunique().max() == 1
    assert set(manifest["split"]) == {"train", "val", "test"} and set(manifest["source"]) == {"real"}
    for path in image_paths(manifest)[:5]:
        with Image.open(path) as im:
            assert im.size == (32, 32) and im.mode == "L"


def test_balanced_cli_every_class_at_least_k(tmp_path):
    out = tmp_path / "bal"
    result = CliRunner().invoke(
        app,
        [
            "phantom",
            "--balanced",
            "--per-class",
            "2",
            "--size",
            "32",
            "--seed",
            "0",
            "--out",
            str(out),
            "--workers",
            "1",
            "--no-progress",
            "--label-noise",
            "0",
        ],
    )
    assert result.exit_code == 0, result.output
    df = pd.read_csv(out / "labels.csv")
    assert len(df) == 80
    assert df[list(CXR_LT_CLASSES)].sum().min() >= 2


def test_label_noise_changes_csv_not_images(tmp_path):
    clean = render_dataset(30, 32, 2, tmp_path / "clean", workers=1)
    noisy = render_dataset(30, 32, 2, tmp_path / "noisy", workers=1, label_noise=0.3)
    assert (clean.parent / "images").is_dir()
    assert _digest(clean.parent / "images") == _digest(noisy.parent / "images")
    assert not pd.read_csv(clean).equals(pd.read_csv(noisy))


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--n", "0"], "--n 0"),
        (["--n", "10", "--size", "8"], "--size 8"),
        (["--n", "10", "--label-noise", "1.5"], "--label-noise"),
        (["--n", "10", "--per-class", "3"], "--per-class only applies with --balanced"),
        (["--n", "10", "--balanced", "--per-class", "3"], "too small"),
    ],
)
def test_cli_bad_input_is_one_error_line(tmp_path, args, needle):
    out = tmp_path / "x"
    result = CliRunner().invoke(app, ["phantom", "--out", str(out), "--no-progress", *args])
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], result.output
    assert not out.exists()
    assert not list(tmp_path.glob(".x.*"))


def test_contact_sheets(tmp_path):
    from PIL import Image

    from synth.phantom.dataset import write_contact_sheets
    from synth.taxonomy import class_slug as slug

    folder = write_contact_sheets(tmp_path / "cs", 32, 0, examples=2)
    with Image.open(folder / "all.png") as im:
        assert im.size == (8 * 32, 5 * (32 + 12))  # 40 labelled tiles, 8 per row
    for c in CXR_LT_CLASSES:
        with Image.open(folder / f"{slug(c)}.png") as im:
            sheet = np.asarray(im).astype(np.int16)
        assert sheet.shape == (3 * 32, 2 * 32), c  # with / without / difference, 2 patients
        with_, without, diff = sheet[:32], sheet[32:64], sheet[64:]
        np.testing.assert_array_equal(diff, np.clip(np.abs(with_ - without) * 4, 0, 255), err_msg=c)
        if c == "Normal":
            assert not diff.any()
        else:  # row 1 shows the class, row 2 the same patients without it
            assert diff.any(), f"{c}: no visible difference on the sheet"
            assert np.array_equal(without[:, :32], render_image([], int(_sheet_seed(c, 0)), 32).astype(np.int16)), c


def _sheet_seed(cls: str, example: int) -> int:
    from synth.phantom.dataset import _seed

    return _seed(0, 7, CXR_LT_CLASSES.index(cls), example)


# ---------------------------------------------------------------- acquisition sites (issue 38)

#: digests of the default site's output taken on the code before sites existed: the default must not move
_DEFAULT_IMAGES_SHA = "2226944903c800b725cb3a5c2ef0b65904225564dcfeac4163e3094926410cb9"
_DEFAULT_DATASET_SHA = "5f4ad2ff9c54f9506cfe3196330ea3936bc952c1627c1e7bd4e60aedaa7e759e"


def _default_images_sha() -> str:
    h = hashlib.sha256()
    cases = [(0, [], None), (1, ["Pleural Effusion", "Support Devices"], None), (7, ["Nodule"], "AP")]
    for seed, labels, view in cases + [(11, ["Cardiomegaly", "Rib Fracture"], "PA")]:
        h.update(render_image(labels, seed, 64, view).tobytes())
    return h.hexdigest()


def _dataset_sha(folder: Path) -> str:
    """Every file's bytes, but phantom.json without its package version (which moves with releases)."""
    h = hashlib.sha256()
    for name, digest in _digest(folder).items():
        if name == "phantom.json":
            meta = json.loads((folder / name).read_text())
            meta.pop("version")
            digest = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()
        h.update(f"{name}:{digest}\n".encode())
    return h.hexdigest()


def test_default_site_is_byte_identical_to_the_renderer_before_sites(tmp_path):
    render_dataset(30, 32, 3, tmp_path / "a", workers=1)
    assert (_default_images_sha(), _dataset_sha(tmp_path / "a")) == (_DEFAULT_IMAGES_SHA, _DEFAULT_DATASET_SHA)


def test_site_b_renders_the_same_findings_where_site_a_draws_them():
    """Same seed and view: the same labels, regions and parameters (the oracle's ground truth), other pixels."""
    for seed, labels in [(1, ["Pleural Effusion", "Support Devices"]), (5, ["Nodule", "Rib Fracture"]), (9, [])]:
        a = render_with_regions(labels, seed, 64, "PA")
        b = render_with_regions(labels, seed, 64, "PA", site="b")
        assert a.labels == b.labels and a.params == b.params and a.regions.keys() == b.regions.keys()
        for c in a.regions:
            assert np.array_equal(a.regions[c], b.regions[c]), c
        assert not np.array_equal(a.image, b.image)
        assert a.acquisition == {} and set(b.acquisition) == {"collimation", "marker"}


@pytest.mark.parametrize("cls", [c for c in CXR_LT_CLASSES if c != "Normal"])
def test_site_b_keeps_every_finding_visible_in_its_region(cls):
    """The shifted acquisition must not erase a label: the with/without change is there and in its region."""
    for seed in range(2):
        with_ = render_with_regions([cls], seed, 48, site="B")
        without = render_with_regions([], seed, 48, site="B")
        changed = np.abs(with_.image.astype(int) - without.image.astype(int)) > 3
        region = np.zeros_like(changed)
        for mask in with_.regions.values():
            region |= mask
        assert changed.sum() >= 3, f"{cls} seed {seed}: invisible at site B ({changed.sum()} px changed)"
        inside = (changed & _dilate(region, 3)).sum() / changed.sum()  # three blur passes spread an edge further
        assert inside >= 0.85, f"{cls} seed {seed}: only {inside:.0%} of the change inside its region at site B"


def _high_frequency(images: np.ndarray) -> float:
    """Mean |pixel - mean of its 4 neighbours|: detector noise (and sharpness) in grey levels."""
    x = images.astype(np.float64)
    mid = x[:, 1:-1, 1:-1]
    neighbours = (x[:, :-2, 1:-1] + x[:, 2:, 1:-1] + x[:, 1:-1, :-2] + x[:, 1:-1, 2:]) / 4
    return float(np.abs(mid - neighbours).mean())


def test_a_site_b_cohort_differs_in_intensity_statistics_and_keeps_its_ground_truth(tmp_path):
    from PIL import Image

    from synth.phantom.sites import SITES

    a = render_dataset(120, 48, 0, tmp_path / "a", workers=1)
    b = render_dataset(120, 48, 0, tmp_path / "b", workers=1, site="B")
    pixels = {}
    for name, labels in (("a", a), ("b", b)):
        df = pd.read_csv(labels, dtype={"subject_id": str, "study_id": str})
        pixels[name] = np.stack([np.asarray(Image.open(labels.parent / f)) for f in df["fpath"]])
        truth = [json.loads(line) for line in (labels.parent / "truth.jsonl").read_text().splitlines()]
        # no label noise asked for: every CSV row is exactly what was drawn
        assert [tuple(c for c in CXR_LT_CLASSES if row[c]) for _, row in df.iterrows()] == [
            tuple(t["labels"]) for t in truth
        ]
        pixels[name + "_views"] = df["ViewPosition"].eq("AP").mean()
        pixels[name + "_ids"] = (set(df["dicom_id"]), set(df["subject_id"]))
    assert pixels["a"].mean() - pixels["b"].mean() > 15  # under-exposed
    assert _high_frequency(pixels["b"]) > 1.3 * _high_frequency(pixels["a"])  # noisier detector
    assert pixels["b_views"] > pixels["a_views"] + 0.15  # the portable service images AP
    assert not pixels["a_ids"][0] & pixels["b_ids"][0] and not pixels["a_ids"][1] & pixels["b_ids"][1]
    meta_a = json.loads((a.parent / "phantom.json").read_text())
    meta_b = json.loads((b.parent / "phantom.json").read_text())
    assert "site" not in meta_a["arguments"] and meta_b["arguments"]["site"] == "B"
    assert meta_b["site"]["blur_passes"] == 3
    prevalence_a = label_set_table().prevalence()
    prevalence_b = label_set_table(SITES["B"].reshape).prevalence()
    assert prevalence_b["Normal"] < prevalence_a["Normal"] - 0.08  # a sicker population
    # the same site and arguments again: reused; site A's arguments at B's folder: refused
    assert render_dataset(120, 48, 0, tmp_path / "b", site="B") == b
    with pytest.raises(UserError, match="already exists"):
        render_dataset(120, 48, 0, tmp_path / "b")


def test_cli_site_option(tmp_path):
    result = CliRunner().invoke(
        app, ["phantom", "--out", str(tmp_path / "x"), "--n", "10", "--size", "32", "--site", "C", "--no-progress"]
    )
    assert result.exit_code == 2 and "--site 'C'" in result.output and "A, B" in result.output, result.output
    assert not (tmp_path / "x").exists()
    result = CliRunner().invoke(
        app,
        [
            "phantom",
            "--out",
            str(tmp_path / "y"),
            "--n",
            "10",
            "--size",
            "32",
            "--site",
            "b",
            "--workers",
            "1",
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "y" / "phantom.json").read_text())["arguments"]["site"] == "B"
