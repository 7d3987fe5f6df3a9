"""The prepared image cache: each source image decoded once, 8-bit grayscale, resized to ``size``×``size`` PNG,
in a spawn process pool (``synth prepare`` and ``synth predict``'s raw images).

Every PNG is written atomically (temporary + rename), so a kill never leaves a short file under a cache name;
with a :class:`~synth.prepare_journal.CacheJournal` a rerun keeps what an interrupted run already cached.
"""

from __future__ import annotations

import contextlib
import io
import multiprocessing
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import pandas as pd
from PIL import Image

from synth.hashing import hex_hash
from synth.io import atomic_path
from synth.prepare_journal import CachedImage, CacheJournal

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
    """Decode, grayscale, resize and save one image (atomically); the error text instead of raising.

    Only *reading* errors are returned (a bad source image, skippable); a failed *write* (permission, disk
    full) raises: skipping every image because the disk is full would be a silent disaster.
    """
    src, dst, size = task
    return _cache_entry(CacheTask(src, dst, size)).error


@dataclass(frozen=True)
class CacheTask:
    """One row's work, picklable for the pool: ``expect`` is the journal's record of an earlier run's file."""

    src: str
    dst: str
    size: int
    expect: CachedImage | None = None


@dataclass(frozen=True)
class CacheResult:
    """A worker's answer: ``error`` (unreadable source) or the ``entry`` of the file now at ``dst``."""

    error: str | None = None
    entry: CachedImage | None = None
    reused: bool = False


def _cache_entry(task: CacheTask) -> CacheResult:
    """Reuse ``task.dst`` when the journal's record still holds (same source file, same bytes), else decode.

    Why a content hash and not only the size: a file of the right size but other bytes (a disk error, an edit)
    must never be reused; the PNG is hashed from memory as it is written, so a fresh image costs no re-read.
    """
    try:
        st = os.stat(task.src)
        if task.expect is not None and task.expect.matches_source(task.src, st, task.size):
            if task.expect.matches_file(task.dst):
                return CacheResult(entry=task.expect, reused=True)
        with Image.open(task.src) as im:
            im.draft("L", (task.size, task.size))  # JPEG: decode at the smallest scale >= size (several-fold faster)
            gray = to_gray8(im)
        if gray.size != (task.size, task.size):
            gray = gray.resize((task.size, task.size), Image.Resampling.BICUBIC, reducing_gap=3.0)
    except IMAGE_ERRORS as err:
        return CacheResult(error=f"{type(err).__name__}: {err}".replace("\n", " "))
    buffer = io.BytesIO()
    gray.save(buffer, format="PNG")
    data = buffer.getvalue()
    with atomic_path(task.dst) as part:  # a kill mid-write leaves a hidden temporary, never a short PNG
        part.write_bytes(data)
    entry = CachedImage(task.src, st.st_size, st.st_mtime_ns, task.size, len(data), hex_hash(data, algorithm="sha256"))
    return CacheResult(entry=entry)


def cache_images(
    df: pd.DataFrame,
    folder: Path,
    size: int,
    workers: int,
    progress: bool,
    journal: CacheJournal | None = None,
) -> dict[int, str]:
    """Every ``df`` row's ``fpath`` as ``folder/<cache_name>`` at ``size`` px; returns {row: read error} of the bad
    ones.

    With a ``journal`` (``synth prepare``), an image an earlier, interrupted run already cached is verified and
    kept instead of decoded again, and each new one is recorded as it lands. Tasks are streamed to the pool
    and only the (small) results come back: memory does not grow with the number of rows.
    """
    tasks = (
        CacheTask(src, str(folder / name), size, journal.expect(name) if journal is not None else None)
        for src, name in zip(df["fpath"], df["cache_name"])
    )
    failures: dict[int, str] = {}
    with _progress(len(df), progress) as advance:
        for i, (name, result) in enumerate(zip(df["cache_name"], _map(tasks, len(df), workers))):
            if result.error is not None:
                failures[i] = result.error
            elif journal is not None and not result.reused:
                journal.record(name, result.entry)
            advance(result.reused)
    return failures


def _map(tasks: Iterable[CacheTask], n: int, workers: int) -> Iterator[CacheResult]:
    workers = workers or min(os.cpu_count() or 1, 16)
    if workers <= 1 or n < 64:
        yield from map(_cache_entry, tasks)
        return
    # spawn: the parent may hold torch/OpenMP threads, which fork does not copy safely
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        yield from pool.imap(_cache_entry, tasks, chunksize=max(1, min(64, n // (workers * 8))))


@contextlib.contextmanager
def _progress(total: int, show: bool) -> Iterator[Callable[[bool], None]]:
    """``advance(reused)`` per row; the bar shows the decode rate (images/s, reused ones not counted) and ETA."""
    if not show:
        yield lambda reused: None
        return
    from synth.progress import progress_bar

    bar = progress_bar("caching images", "{task.fields[rate]}", eta_label="ETA", transient=False)
    started, counts = time.monotonic(), {"decoded": 0, "reused": 0}
    with bar:
        task = bar.add_task("cache", total=total, rate="")
        last = started

        def advance(reused: bool) -> None:
            nonlocal last
            counts["reused" if reused else "decoded"] += 1
            now = time.monotonic()
            if now - last >= 0.5 or sum(counts.values()) == total:
                last = now
                rate = counts["decoded"] / max(now - started, 1e-9)
                kept = f", {counts['reused']} reused" if counts["reused"] else ""
                bar.update(task, completed=sum(counts.values()), rate=f"{rate:,.0f} images/s{kept}")

        yield advance
