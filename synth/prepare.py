"""``synth prepare``: label file + images -> manifest, stats and a grayscale image cache.

Every later stage reads the cache (``images/<dicom_id>.png``, 8-bit grayscale,
``size``×``size``) so full-size JPEGs are decoded once, here, in a process
pool. The whole output folder is built in a temporary sibling and renamed into
place at the end: a failure (bad image, empty split, Ctrl-C) leaves nothing
behind, and an existing dataset is only replaced with ``overwrite=True``.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
from PIL import Image

from synth.errors import UserError
from synth.io import read_yaml_mapping, write_json_atomic
from synth.manifest import MANIFEST_COLUMNS, write_manifest
from synth.readers import read_labels
from synth.splits import SplitFractions, assert_no_patient_leakage, check_splits, patient_split
from synth.stats import compute_stats, write_stats
from synth.taxonomy import GroupThresholds

#: Read errors that mean "this file is not a usable image" (not a bug of ours).
IMAGE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


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

    @classmethod
    def from_yaml(cls, path: str | os.PathLike | None = None, **overrides: Any) -> "PrepareConfig":
        values: dict[str, Any] = {}
        if path is not None:
            values.update(read_yaml_mapping(path, missing_hint="pass an existing --config YAML",
                                            known={f.name for f in fields(cls)}))
        values.update({k: v for k, v in overrides.items() if v is not None})
        cfg = cls(**values)
        if not 8 <= cfg.size <= 4096:
            raise UserError(f"--size {cfg.size}: expected a pixel size between 8 and 4096")
        if cfg.workers < 0:
            raise UserError(f"--workers {cfg.workers}: expected 0 (auto) or a positive number")
        return cfg

    @property
    def thresholds(self) -> GroupThresholds:
        return GroupThresholds(head=self.head_threshold, tail=self.tail_threshold)


def prepare_dataset(
    fmt: str,
    labels: Path,
    images: Path,
    out: Path,
    size: int = 256,
    seed: int = 0,
    val: float = 0.1,
    test: float = 0.2,
    skip_bad_images: bool = False,
    *,
    workers: int = 0,
    overwrite: bool = False,
    thresholds: GroupThresholds = GroupThresholds(),
    progress: bool = False,
) -> Path:
    """Build ``out/{manifest.csv, stats.json, images/, prepare.json[, skipped.csv]}``; return the manifest path."""
    cfg = PrepareConfig.from_yaml(
        None, size=size, seed=seed, val=val, test=test, skip_bad_images=skip_bad_images, workers=workers,
        head_threshold=thresholds.head, tail_threshold=thresholds.tail,
    )
    return run(fmt, Path(labels), Path(images), Path(out), cfg, overwrite=overwrite, progress=progress)


def run(fmt: str, labels: Path, images: Path, out: Path, cfg: PrepareConfig, overwrite: bool = False, progress: bool = False) -> Path:
    _check_out(out, overwrite)
    fractions = SplitFractions(val=cfg.val, test=cfg.test)
    if not images.is_dir():
        raise UserError(f"--images {images}: folder not found")
    df = read_labels(fmt, labels, images)
    df["cache_name"] = _cache_names(df, labels)

    skipped: list[dict[str, str]] = []
    present = np.array([Path(p).is_file() for p in df["fpath"]])
    if not present.all():
        first = df["fpath"][~present].iloc[0]
        if not cfg.skip_bad_images:
            raise UserError(
                f"image not found: {first} ({int((~present).sum())} of {len(df)} missing); "
                "check --images (fpath is relative to it) or pass --skip-bad-images"
            )
        skipped += [{"dicom_id": d, "fpath": f, "reason": "not found"} for d, f in zip(df["dicom_id"][~present], df["source_fpath"][~present])]
        df = df[present].reset_index(drop=True)

    df["split"] = patient_split(df, fractions, seed=cfg.seed)
    assert_no_patient_leakage(df)
    no_positives = check_splits(df, where=str(labels))

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        (tmp / "images").mkdir()
        failures = _cache_images(df, tmp / "images", cfg, progress)
        if failures:
            i, err = next(iter(failures.items()))
            if not cfg.skip_bad_images:
                raise UserError(
                    f"cannot read image {df['fpath'][i]}: {err} ({len(failures)} unreadable); "
                    "replace or remove it, or pass --skip-bad-images"
                )
            bad = df.index.isin(list(failures))
            skipped += [
                {"dicom_id": df["dicom_id"][i], "fpath": df["source_fpath"][i], "reason": failures[i]} for i in sorted(failures)
            ]
            df = df[~bad].reset_index(drop=True)
            assert_no_patient_leakage(df)
            no_positives = check_splits(df, where=str(labels))

        df["fpath"] = "images/" + df["cache_name"]
        df = df.drop(columns=["cache_name"])
        manifest = df[list(MANIFEST_COLUMNS) + ["source_fpath"]]
        write_manifest(manifest, tmp / "manifest.csv")
        stats = compute_stats(manifest, cfg.thresholds)
        write_stats(stats, tmp / "stats.json")
        if skipped:
            skipped_path = tmp / "skipped.csv"
            pd.DataFrame(skipped, columns=["dicom_id", "fpath", "reason"]).to_csv(skipped_path, index=False)
        write_json_atomic(
            tmp / "prepare.json",
            {"format": fmt, "labels": str(labels.resolve()), "images": str(images.resolve()), "config": asdict(cfg),
             "rows": len(manifest), "skipped": len(skipped), "classes_without_positives": no_positives},
        )
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out / "manifest.csv"


def _check_out(out: Path, overwrite: bool) -> None:
    if not out.exists():
        return
    if not overwrite:
        raise UserError(f"--out {out} already exists; pass --overwrite to replace it or choose another --out")
    if not out.is_dir() or not ((out / "manifest.csv").is_file() or not any(out.iterdir())):
        # never delete a folder we did not write (e.g. --out pointing at the raw images)
        raise UserError(f"--out {out} exists and is not a `synth prepare` output (no manifest.csv); choose another --out")


def _replace_dir(tmp: Path, out: Path) -> None:
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
        os.replace(out, old / out.name)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


def _cache_names(df: pd.DataFrame, labels: Path) -> pd.Series:
    names = df["dicom_id"].map(lambda d: re.sub(r"[^A-Za-z0-9._-]", "_", d) + ".png")
    dup = names.duplicated()
    if dup.any():
        raise UserError(f"{labels}: image ids {df['dicom_id'][dup].iloc[0]!r} and another map to the same cache file; make dicom_id unique")
    return names


def to_gray8(im: Image.Image) -> Image.Image:
    """8-bit grayscale. 16-bit / float images are min-max scaled (a plain ``convert`` would clip them to white)."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(im, dtype=np.float64)
        lo, hi = float(a.min()), float(a.max())
        a = (a - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(a)
        return Image.fromarray(np.rint(a).astype(np.uint8), mode="L")
    return im.convert("L")


def cache_image(task: tuple[str, str, int]) -> str | None:
    """Decode, grayscale, resize and save one image; the error text instead of raising (pool worker)."""
    src, dst, size = task
    try:
        with Image.open(src) as im:
            im.draft("L", (size, size))  # JPEG: decode at the smallest scale >= size (several-fold faster)
            gray = to_gray8(im)
        if gray.size != (size, size):
            gray = gray.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=3.0)
        gray.save(dst, format="PNG")
    except IMAGE_ERRORS as err:
        return f"{type(err).__name__}: {err}".replace("\n", " ")
    return None


def _cache_images(df: pd.DataFrame, folder: Path, cfg: PrepareConfig, progress: bool) -> dict[int, str]:
    tasks = [(src, str(folder / name), cfg.size) for src, name in zip(df["fpath"], df["cache_name"])]
    failures: dict[int, str] = {}
    for i, err in enumerate(_progress(_map(tasks, cfg.workers), len(tasks), progress)):
        if err is not None:
            failures[i] = err
    return failures


def _map(tasks: list[tuple[str, str, int]], workers: int) -> Iterator[str | None]:
    workers = workers or min(os.cpu_count() or 1, 16)
    if workers <= 1 or len(tasks) < 64:
        yield from map(cache_image, tasks)
        return
    # spawn: the parent may hold torch/OpenMP threads, which fork does not copy safely
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        yield from pool.imap(cache_image, tasks, chunksize=max(1, min(256, len(tasks) // (workers * 8))))


def _progress(items: Iterator[str | None], total: int, show: bool) -> Iterator[str | None]:
    if not show:
        yield from items
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("caching images"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, transient=False) as bar:
        task = bar.add_task("cache", total=total)
        for item in items:
            bar.advance(task)
            yield item
