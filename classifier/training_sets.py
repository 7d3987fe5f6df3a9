"""The image sets a member trains on: cached pixel files at the member's resolution, joined without copying."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

import pandas as pd
import torch

from classifier.config import EnsembleConfig
from classifier.data import CachedSet, ImageView, view_of_frame
from synth.errors import UserError


def concat_sets(parts: Sequence[CachedSet]) -> CachedSet:
    """One set of several (real + synthetic): row indices into the same cache files, no pixel copied."""
    if len(parts) == 1:
        return parts[0]
    if all(isinstance(p.images, ImageView) for p in parts):
        images = ImageView.concat([p.images for p in parts])
    else:
        images = torch.cat([p.images if isinstance(p.images, torch.Tensor) else p.images[:] for p in parts])
    return CachedSet(
        images,
        torch.cat([p.labels for p in parts]),
        torch.cat([p.mask for p in parts]),
        [s for p in parts for s in p.sources],
    )


def weighted_set(data: CachedSet, weight: float) -> CachedSet:
    """The same rows with every annotated cell weighted ``weight`` in the loss (the mask scaled; no pixel copied)."""
    if weight == 1.0:
        return data
    return CachedSet(data.images, data.labels, data.mask * weight, data.sources)


def image_cache_dir(ens: EnsembleConfig, df: pd.DataFrame, out: Path) -> Path:
    """``train.image_cache_dir``, else ``image-cache/`` beside the manifest (shared by the ablation's arms), else in
    ``out``."""
    if ens.train.image_cache_dir:
        return Path(ens.train.image_cache_dir)
    root = Path(df.attrs.get("root") or out)
    for candidate in (root / "image-cache", out / "image-cache"):
        try:
            candidate.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(candidate, os.W_OK):
            return candidate
    raise UserError(
        f"classifier: cannot write the image cache in {root / 'image-cache'} or {out / 'image-cache'}; "
        "set train.image_cache_dir to a writable folder"
    )


def cached_set(
    df: pd.DataFrame, classes: Sequence[str], size: int, cache_dir: Path, log: Callable[[str], None]
) -> CachedSet:
    """Labels in RAM, images as a view of this set's cache file at ``size`` (built once, by the main process)."""
    from synth.distributed import process_state, running_alone

    state = process_state()
    barrier = (lambda: None) if running_alone() else state.wait_for_everyone
    view = view_of_frame(df, size, cache_dir, state.is_main_process, barrier, log=log)
    return CachedSet.from_frame(df, classes, size, images=view)
