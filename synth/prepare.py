"""``synth prepare``: label file + images -> manifest, stats and a grayscale image cache.

Every later stage reads the cache (``images/<dicom_id>.png``, 8-bit grayscale,
``size``×``size``) so full-size JPEGs are decoded once, here, in a process
pool. The output folder is built in ``.<out>.partial`` beside ``--out`` and renamed into place at the end,
so ``--out`` is always either absent, the old dataset, or the whole new one.

Resumable: a run that stops (kill, Ctrl-C, full disk, an unreadable image) leaves ``.<out>.partial`` with
the images it cached and their journal (:mod:`synth.prepare_journal`); the same command again keeps every
image whose source and bytes still match and decodes only the rest, ending byte-identical to a run that
was never interrupted. Delete ``.<out>.partial`` to start over. One writer per ``--out``
(:mod:`synth.writer_lock`), and ``--overwrite`` replaces only a folder ``synth prepare`` wrote itself.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from contextlib import suppress
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from synth.config import load_config
from synth.errors import UserError
from synth.io import atomic_path, current_umask, write_json_atomic
from synth.manifest import MANIFEST_COLUMNS, UNCERTAIN_POLICIES, annotated_classes, write_manifest
from synth.output_folder import remove_stale_temporaries as _remove_stale_temporaries  # one helper for every --out
from synth.output_folder import replace_dir as _replace_dir
from synth.prepare_images import cache_images
from synth.prepare_journal import JOURNAL_FILE, CacheJournal
from synth.readers import read_labels
from synth.splits import (
    SplitFractions,
    assert_no_patient_leakage,
    check_given_split,
    check_splits,
    normalise_given_split,
    patient_split,
    split_warnings,
)
from synth.stats import compute_stats, write_stats
from synth.taxonomy import GroupThresholds
from synth.writer_lock import writer_lock

#: ``--split`` values: ``auto`` uses the user's split when there is one, else a patient-level split.
SPLIT_MODES: tuple[str, ...] = ("auto", "train", "val", "test")


@dataclass
class PrepareConfig:
    """Options of ``synth prepare`` (``configs/data/prepare.yaml``; CLI flags override)."""

    size: int = 256
    seed: int = 0
    val: float = 0.1
    test: float = 0.2
    skip_bad_images: bool = False
    workers: int = 0  #: 0 = one per CPU core (at most 16); 1 = no pool
    head_threshold: float = 0.10
    tail_threshold: float = 0.01
    #: ``auto``: honour a ``split`` column (or per-split label files) if given, else split by patient;
    #: ``train`` / ``val`` / ``test``: every row in that split (``test`` for an external, test-only set)
    split: str = "auto"
    #: a ``-1`` (uncertain) label cell: ``error`` | ``ignore`` (not annotated) | ``zero`` | ``one``
    uncertain: str = "error"

    @classmethod
    def from_yaml(cls, path: str | os.PathLike | None = None, /, **overrides: Any) -> "PrepareConfig":
        """Defaults <- YAML <- overrides (flags: None = not given; ``--set`` texts typed), via
        :func:`synth.config.load_config`."""
        cfg = load_config(cls, path, overrides, missing_hint="pass an existing --config YAML")
        if not 8 <= cfg.size <= 4096:
            raise UserError(f"--size {cfg.size}: expected a pixel size between 8 and 4096")
        if cfg.workers < 0:
            raise UserError(f"--workers {cfg.workers}: expected 0 (auto) or a positive number")
        cfg.split = str(cfg.split).strip().lower()
        if cfg.split not in SPLIT_MODES:
            raise UserError(f"--split {cfg.split!r}: expected one of {', '.join(SPLIT_MODES)}")
        cfg.uncertain = str(cfg.uncertain).strip().lower()
        if cfg.uncertain not in UNCERTAIN_POLICIES:
            raise UserError(f"--uncertain {cfg.uncertain!r}: expected one of {', '.join(UNCERTAIN_POLICIES)}")
        cfg.thresholds  # noqa: B018 (checks the group cut-offs now, not after the labels are read)
        return cfg

    @property
    def thresholds(self) -> GroupThresholds:
        return GroupThresholds(head=self.head_threshold, tail=self.tail_threshold)


def prepare_dataset(
    fmt: str,
    labels: Path,
    images: Path,
    out: Path,
    cfg: PrepareConfig | None = None,
    *,
    overwrite: bool = False,
    progress: bool = False,
    split_files: Mapping[str, Path] | None = None,
    split_flags: Sequence[str] = (),
    **settings: Any,
) -> Path:
    """Prepare ``labels`` (plus, with ``split_files``, one label file per split: ``{"val": ..., "test": ...}``,
    ``labels`` then being the train file) into ``out/{manifest.csv, stats.json, images/, prepare.json[,
    skipped.csv]}``; return the manifest path.

    The options are ``cfg`` (``synth prepare``'s, from its YAML and flags) or, from Python, its fields as keywords
    (``size=64, seed=1``), checked and typed as a YAML's would be: the defaults live in :class:`PrepareConfig` only.
    A split the user gives (a ``split`` column, per-split files or ``cfg.split``) is kept as given and
    only checked (patient-level, values); without one, patients are split by :func:`patient_split`.
    ``split_flags`` names the patient-split options the user set on the command line (``--seed``, ``--val``,
    ``--test``): with a given split they would be silently ignored, so they are an error instead.
    """
    if cfg is not None and settings:
        raise TypeError(f"prepare_dataset: give cfg or its fields ({', '.join(settings)}), not both")
    cfg = cfg or PrepareConfig.from_yaml(None, **settings)
    labels, images, out = Path(labels), Path(images), Path(out)
    with writer_lock(out, "synth prepare"):
        files = dict(split_files or {})
        return _prepare_locked(fmt, labels, images, out, cfg, overwrite, progress, files, split_flags)


def _prepare_locked(
    fmt: str,
    labels: Path,
    images: Path,
    out: Path,
    cfg: PrepareConfig,
    overwrite: bool,
    progress: bool,
    split_files: dict[str, Path],
    split_flags: Sequence[str],
) -> Path:
    """:func:`prepare_dataset` while holding ``out``'s writer lock."""
    _check_out(out, overwrite)
    _remove_stale_temporaries(out)
    if not images.is_dir():
        raise UserError(f"--images {images}: folder not found")
    where = str(labels)
    df, split_source = _read_with_splits(fmt, labels, images, cfg, split_files)
    _check_split_flags(split_flags, split_source)
    df["cache_name"] = _cache_names(df, labels)

    skipped: list[dict[str, str]] = []
    df = _drop_missing_images(df, cfg, skipped)

    if split_source == "patient_split":
        df["split"] = patient_split(df, SplitFractions(val=cfg.val, test=cfg.test), seed=cfg.seed)
    split_report = _check_split(df, split_source, where)

    work = _work_dir(out)
    with CacheJournal(work / JOURNAL_FILE) as journal:
        failures = cache_images(df, work / "images", cfg.size, cfg.workers, progress, journal)
    if failures:
        i, err = next(iter(failures.items()))
        if not cfg.skip_bad_images:
            raise UserError(
                f"cannot read image {df['fpath'][i]}: {err} ({len(failures)} unreadable); "
                "replace or remove it, or pass --skip-bad-images (a rerun keeps the images already cached)"
            )
        bad = df.index.isin(list(failures))
        skipped += [
            {"dicom_id": df["dicom_id"][i], "fpath": df["source_fpath"][i], "reason": failures[i]}
            for i in sorted(failures)
        ]
        df = df[~bad].reset_index(drop=True)
        split_report = _check_split(df, split_source, where)

    _keep_only(work, set(df["cache_name"]))
    df["fpath"] = "images/" + df["cache_name"]
    df = df.drop(columns=["cache_name"])
    record = {
        "format": fmt,
        "labels": str(labels.resolve()),
        "images": str(images.resolve()),
        "config": asdict(cfg),
        "split_files": {s: str(Path(f).resolve()) for s, f in split_files.items()},
    }
    _write_dataset(work, df[list(MANIFEST_COLUMNS) + ["source_fpath"]], cfg, skipped, record, split_report)
    (work / JOURNAL_FILE).unlink()
    _replace_dir(work, out)
    return out / "manifest.csv"


def _work_dir(out: Path) -> Path:
    """``.<out>.partial``: the folder being built, kept across an interruption (what a rerun resumes from).

    Hidden temporaries of PNG writes a kill cut short are removed: only renamed, whole files stay.
    """
    work = out.parent / f".{out.name}.partial"
    (work / "images").mkdir(parents=True, exist_ok=True)
    for folder in (work, work / "images"):
        os.chmod(folder, 0o777 & ~current_umask())  # the dataset it becomes is readable by the lab
    with os.scandir(work / "images") as entries:
        for entry in entries:
            if entry.name.startswith(".") and entry.name.endswith(".tmp"):
                with suppress(FileNotFoundError):
                    os.unlink(entry.path)
    return work


def _keep_only(work: Path, names: set[str]) -> None:
    """Remove what the finished dataset does not list: the images of rows an earlier run had and this one has not
    (another label file, a now-unreadable source), and an earlier run's ``skipped.csv``."""
    with os.scandir(work / "images") as entries:
        for entry in entries:
            if entry.name not in names:
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path)
                else:
                    os.unlink(entry.path)
    (work / "skipped.csv").unlink(missing_ok=True)


def _check_split_flags(split_flags: Sequence[str], split_source: str) -> None:
    """Patient-split flags given with a split the user already gave would be silently ignored: an error."""
    if split_flags and split_source != "patient_split":
        given = {"column": "by the file's split column", "files": "by --val-labels / --test-labels"}.get(
            split_source, split_source
        )
        raise UserError(
            f"{' / '.join(split_flags)} only shape a patient split, but the split is given {given}: "
            f"drop {' / '.join(split_flags)}, or remove the given split to split by patient"
        )


def _drop_missing_images(df: pd.DataFrame, cfg: PrepareConfig, skipped: list[dict[str, str]]) -> pd.DataFrame:
    """Rows whose image file exists; a missing one is an error, or (``skip_bad_images``) a row of ``skipped``."""
    present = np.array([Path(p).is_file() for p in df["fpath"]])
    if present.all():
        return df
    first = df["fpath"][~present].iloc[0]
    if not cfg.skip_bad_images:
        raise UserError(
            f"image not found: {first} ({int((~present).sum())} of {len(df)} missing); "
            "check --images (fpath is relative to it) or pass --skip-bad-images"
        )
    skipped += [
        {"dicom_id": d, "fpath": f, "reason": "not found"}
        for d, f in zip(df["dicom_id"][~present], df["source_fpath"][~present])
    ]
    return df[present].reset_index(drop=True)


def _write_dataset(
    tmp: Path,
    manifest: pd.DataFrame,
    cfg: PrepareConfig,
    skipped: list[dict[str, str]],
    record: dict,
    split_report: dict,
) -> None:
    """manifest.csv, stats.json, skipped.csv (if any) and prepare.json (``record`` + rows, skipped, split report)."""
    write_manifest(manifest, tmp / "manifest.csv")
    stats = compute_stats(manifest, cfg.thresholds)
    write_stats(stats, tmp / "stats.json")
    if skipped:
        skipped_path = tmp / "skipped.csv"
        with atomic_path(skipped_path) as part:
            pd.DataFrame(skipped, columns=["dicom_id", "fpath", "reason"]).to_csv(part, index=False)
    write_json_atomic(tmp / "prepare.json", {**record, "rows": len(manifest), "skipped": len(skipped), **split_report})


def _read_with_splits(
    fmt: str, labels: Path, images: Path, cfg: PrepareConfig, split_files: dict[str, Path]
) -> tuple[pd.DataFrame, str]:
    """Read every label file and attach the user's split; return (rows, where the split comes from).

    The split source is ``column`` (a ``split`` column), ``files`` (``--val-labels`` / ``--test-labels``),
    ``--split <name>`` or ``patient_split`` (none given: ``run`` splits by patient). A file's ``split``
    column that contradicts the split its option assigns is an error, never silently overridden.
    """
    unknown = sorted(set(split_files) - {"train", "val", "test"})
    if unknown:
        raise UserError(f"split files for {unknown}: expected train, val or test")
    if split_files and cfg.split != "auto":
        raise UserError(
            f"--split {cfg.split} puts every row of --labels in one split; it cannot be combined with "
            "--val-labels / --test-labels (drop one of them)"
        )
    sources: list[tuple[str | None, Path, str]] = [(None, Path(labels), "--labels")]
    sources += [(s, Path(f), f"--{s}-labels") for s, f in split_files.items()]
    frames = []
    for assigned, path, flag in sources:
        if split_files and assigned is None:
            assigned = "train"
        if cfg.split != "auto":
            assigned, flag = cfg.split, f"--split {cfg.split}"
        part = read_labels(fmt, path, images, uncertain=cfg.uncertain)
        if "split" in part.columns:
            given = normalise_given_split(part["split"], str(path))
            if assigned is not None and (given != assigned).any():
                i = int(np.flatnonzero((given != assigned).to_numpy())[0])
                raise UserError(
                    f"{path}: row {i + 2} has split {part['split'].iloc[i]!r} but {flag} puts every row of this "
                    f"file in {assigned}; drop the file's split column or {flag}"
                )
            part["split"] = given
        elif assigned is not None:
            part["split"] = assigned
        frames.append(part)
    df = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    dup = df["dicom_id"].duplicated()
    if dup.any():
        raise UserError(
            f"dicom_id {df['dicom_id'][dup].iloc[0]!r} appears in more than one label file; every image must appear "
            "once"
        )
    if "split" not in df.columns:
        return df, "patient_split"
    if df["split"].isna().any():  # defensive: every source above sets a split or none
        raise UserError(f"{labels}: some rows have no split; give every row a split")
    if cfg.split != "auto":
        return df, f"--split {cfg.split}"
    return df, ("files" if split_files else "column")


def _check_split(df: pd.DataFrame, split_source: str, where: str) -> dict[str, Any]:
    """The split checks of ``prepare.json``: ours must be complete; a given one must be patient-level."""
    if split_source == "patient_split":
        assert_no_patient_leakage(df)
        no_positives = check_splits(df, where=where)
        return {
            "split_source": split_source,
            "classes_without_positives": no_positives,
            "empty_splits": [],
            "classes_without_train_positives": [],
        }
    check_given_split(df, where)
    no_positives = [c for c in annotated_classes(df) if not (df[c] == 1).any()]
    warnings = split_warnings(df)
    if split_source.startswith("--split"):  # one split asked for: the others are empty by request
        warnings = {key: [] for key in warnings}
    return {"split_source": split_source, "classes_without_positives": no_positives, **warnings}


#: What ``synth prepare`` writes into ``--out``: ``--overwrite`` replaces a folder holding nothing else.
OUTPUT_ENTRIES = frozenset({"manifest.csv", "stats.json", "prepare.json", "skipped.csv", "images"})


def _check_out(out: Path, overwrite: bool) -> None:
    """An existing ``out`` is replaced only with ``overwrite`` and only if ``synth prepare`` wrote it.

    Why so strict: ``--overwrite`` deletes the folder, and a mistyped ``--out`` (the raw images, a home folder,
    another tool's output with a manifest.csv) must never cost the user a byte.
    """
    if not out.exists() and not out.is_symlink():
        return
    foreign = _not_a_prepare_output(out)
    if foreign:
        raise UserError(
            f"--out {out} exists and is not a `synth prepare` output ({foreign}); nothing was changed: choose "
            "another --out"
        )
    if not overwrite and any(out.iterdir()):
        raise UserError(f"--out {out} already exists; pass --overwrite to replace it or choose another --out")


def _not_a_prepare_output(out: Path) -> str | None:
    """Why ``out`` is not a folder this command wrote (None: it is one, or an empty folder)."""
    if out.is_symlink() or not out.is_dir():
        return "not a folder"
    entries = {entry.name for entry in out.iterdir()}
    if not entries:
        return None
    try:
        marker = json.loads((out / "prepare.json").read_text())
    except (OSError, ValueError):
        marker = None
    if not isinstance(marker, dict) or not {"format", "config", "rows"} <= set(marker):
        return "no prepare.json of `synth prepare` in it"
    others = sorted(entries - OUTPUT_ENTRIES)
    if others:
        return f"it holds {others[0]!r}, which `synth prepare` did not write"
    images = out / "images"
    if images.is_symlink() or (images.exists() and not images.is_dir()):
        return "its images is not a folder"
    if images.exists():
        try:
            listed = set(pd.read_csv(out / "manifest.csv", usecols=["fpath"], dtype=str)["fpath"])
        except (OSError, ValueError):
            return "its manifest.csv is missing or unreadable"
        stray = sorted(name for name in os.listdir(images) if f"images/{name}" not in listed)
        if stray:
            return f"images/{stray[0]} is not an image of its manifest"
    return None


def _cache_names(df: pd.DataFrame, labels: Path) -> pd.Series:
    names = df["dicom_id"].map(lambda d: re.sub(r"[^A-Za-z0-9._-]", "_", d) + ".png")
    dup = names.duplicated()
    if dup.any():
        raise UserError(
            f"{labels}: image ids {df['dicom_id'][dup].iloc[0]!r} and another map to the same cache file; make "
            "dicom_id unique"
        )
    return names
