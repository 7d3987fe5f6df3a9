"""The prepared image cache: each source image decoded once, 8-bit grayscale, resized to ``size``×``size`` PNG,
in a spawn process pool (``synth prepare`` and ``synth predict``'s raw images).
"""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
from PIL import Image

#: Read errors that mean "this file is not a usable image" (not a bug of ours).
IMAGE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def to_gray8(im: Image.Image) -> Image.Image:
    """8-bit grayscale. 16-bit / float images are min-max scaled (a plain ``convert`` would clip them to white)."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(im, dtype=np.float64)
        lo, hi = float(a.min()), float(a.max())
        a = (a - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(a)
        return Image.fromarray(np.rint(a).astype(np.uint8), mode="L")
    return im.convert("L")


def cache_image(task: tuple[str, str, int]) -> str | None:
    """Decode, grayscale, resize and save one image; the error text instead of raising (pool worker).

    Only *reading* errors are returned (a bad source image, skippable); a failed *write* (permission, disk
    full) raises: skipping every image because the disk is full would be a silent disaster.
    """
    src, dst, size = task
    try:
        with Image.open(src) as im:
            im.draft("L", (size, size))  # JPEG: decode at the smallest scale >= size (several-fold faster)
            gray = to_gray8(im)
        if gray.size != (size, size):
            gray = gray.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=3.0)
    except IMAGE_ERRORS as err:
        return f"{type(err).__name__}: {err}".replace("\n", " ")
    gray.save(dst, format="PNG")
    return None


def cache_images(df: pd.DataFrame, folder: Path, size: int, workers: int, progress: bool) -> dict[int, str]:
    """Every ``df`` row's ``fpath`` as ``folder/<cache_name>`` at ``size`` px; returns {row: read error} of the bad
    ones."""
    tasks = [(src, str(folder / name), size) for src, name in zip(df["fpath"], df["cache_name"])]
    failures: dict[int, str] = {}
    for i, err in enumerate(_progress(_map(tasks, workers), len(tasks), progress)):
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
