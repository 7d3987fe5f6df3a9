"""Training data for the ensemble: row selection, a uint8 image cache on disk, batch augmentation.

Why a decoded uint8 cache: on a slow CPU, decoding and resizing PNGs every
epoch costs more than the ConvNeXt-atto step itself; decoding once per member
resolution (threads, PIL releases the GIL) and reading raw rows afterwards
keeps the training loop within a few percent of the bare model step.

Why on disk, not in RAM: at MIMIC scale (~181k training images) one resolution
is 9 GB at 224 px and 27 GB at 384 px, and under DDP every process held its own
copy (plus another for the mixing arms). Now each set (real train, val,
synthetic) has ONE read-only file per resolution (:class:`ImageStore`), written
once by the main process and shared by every process through the OS page cache;
a batch is read row by row with ``os.pread`` (no mmap, so a process's RSS holds
only its batches), and a training set is an :class:`ImageView` -- row indices
into stores -- so mixing arms and repeated rows copy no pixels.

Augmentation runs on whole batches on the training device (one
``affine_grid``/``grid_sample`` and a few element-wise ops), not per image in
Python, for the same reason.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from classifier.config import AugmentConfig, SyntheticMixConfig
from classifier.models import PIXEL_MEAN, PIXEL_STD
from synth import cache_checksum
from synth.errors import UserError
from synth.hashing import hex_hash
from synth.image_datasets import load_gray
from synth.manifest import image_paths, label_matrix
from synth.taxonomy import CXR_LT_CLASSES, expand_parents

# ---------------------------------------------------------------- row selection


def real_rows(df: pd.DataFrame, split: str) -> pd.DataFrame:
    out = df[(df["split"] == split) & (df["source"] == "real")]
    out.attrs.update(df.attrs)
    return out


def synthetic_rows(df: pd.DataFrame, cfg: SyntheticMixConfig, n_real_train: int) -> pd.DataFrame:
    """The synthetic training rows kept by ``per_class_cap`` then ``ratio`` (deterministic in ``cfg.seed``).

    Only ``split == train`` synthetic rows are candidates: a synthetic row
    never stands in for validation or test data.
    """
    syn = df[(df["source"] == "synthetic") & (df["split"] == "train")]
    paired = "pair_role" in syn.columns and syn["pair_role"].eq("control").any()
    if paired and not cfg.controls:
        syn, paired = syn[syn["pair_role"].ne("control")], False
    if cfg.mode == "none" or syn.empty:
        return syn.iloc[:0]
    rng = np.random.default_rng(cfg.seed)
    sample = _sample_pairs if paired else _sample_rows
    out = sample(syn, cfg, n_real_train, rng).sort_index()
    if cfg.labels in ("target", "target_only"):
        out = _target_only_labels(out, negatives=cfg.labels == "target")
    out.attrs.update(df.attrs)
    return out


def _sample_rows(syn: pd.DataFrame, cfg: SyntheticMixConfig, n_real_train: int, rng: np.random.Generator):
    """``per_class_cap`` then ``ratio`` over single rows (in a seeded random order)."""
    syn = syn.iloc[rng.permutation(len(syn))]
    if cfg.per_class_cap is not None:
        key = syn["target_class"].fillna("") if "target_class" in syn.columns else pd.Series("", index=syn.index)
        syn = syn[key.groupby(key).cumcount().to_numpy() < cfg.per_class_cap]
    if cfg.ratio is not None:
        syn = syn.iloc[: int(math.floor(cfg.ratio * n_real_train))]
    return syn


def _sample_pairs(syn: pd.DataFrame, cfg: SyntheticMixConfig, n_real_train: int, rng: np.random.Generator):
    """The same rules over whole pairs: an image and its control are kept or dropped together (``per_class_cap``
    counts pairs, ``ratio`` rows), so no control trains without the image it is the counterfactual of."""
    pairs = syn["pair_id"].astype(str)
    ids = pd.unique(pairs)
    order = ids[rng.permutation(len(ids))]
    target = syn.groupby(pairs)["target_class"].first().reindex(order).fillna("")
    if cfg.per_class_cap is not None:
        order = order[target.groupby(target).cumcount().to_numpy() < cfg.per_class_cap]
    if cfg.ratio is not None:
        size = pairs.value_counts().reindex(order).to_numpy()
        order = order[np.cumsum(size) <= int(math.floor(cfg.ratio * n_real_train))]
    return syn[pairs.isin(set(order))]


def _target_only_labels(syn: pd.DataFrame, negatives: bool = True) -> pd.DataFrame:
    """Synthetic rows whose co-occurring prompt findings become unknown (NaN).

    The filter verified the target finding (kept as a positive, with its hierarchy parents); the
    other findings named in the prompt were asked for but never checked, so they stay out of the
    loss. With ``negatives``, classes the prompt did not name stay negatives: the image was
    generated without them, and a synthetic-only pretraining stage still needs negatives. Without,
    they become unknown too: a generator that draws a look-alike of another finding (on the
    phantom, pulmonary hypertension's enlarged hila look like adenopathy) would otherwise teach
    "this appearance is not adenopathy".
    """
    if "target_class" not in syn.columns or syn["target_class"].isna().any():
        raise UserError(
            "synthetic.labels: target needs a target_class on every synthetic row (rows from `synth generate`)"
        )
    out = syn.copy()
    classes = [c for c in CXR_LT_CLASSES if c in out.columns]
    control = out["pair_role"].eq("control") if "pair_role" in out.columns else pd.Series(False, index=out.index)
    for target, rows in out.groupby("target_class").groups.items():
        verified = expand_parents([target])
        block = out.loc[rows, classes]
        unverified = ~block.columns.isin(sorted(verified))[None, :] & ((block == 1) | (not negatives))
        out.loc[rows, classes] = block.mask(unverified)
        twins, controls = [r for r in rows if not control[r]], [r for r in rows if control[r]]
        out.loc[twins, sorted(verified)] = 1.0
        # a control was rendered without the target: negative for it; its parents were not asked about
        out.loc[controls, sorted(verified - {target})] = np.nan
        out.loc[controls, target] = 0.0
    return out


# ---------------------------------------------------------------- image cache


def read_image(path: Path, size: int) -> np.ndarray:
    """One image as a (size, size) uint8 array (the single place training reads pixels; tests spy on it)."""
    return np.array(load_gray(path, size), dtype=np.uint8)  # a writable copy


def load_images(df: pd.DataFrame, size: int, workers: int = 4) -> torch.Tensor:
    """(N, 1, size, size) uint8 tensor of the rows' images, decoded once."""
    paths = image_paths(df)
    out = torch.empty((len(paths), 1, size, size), dtype=torch.uint8)
    if not paths:
        return out
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for i, arr in enumerate(pool.map(lambda p: read_image(p, size), paths, chunksize=64)):
            out[i, 0] = torch.from_numpy(arr)
    return out


#: Version of the on-disk cache layout (part of every cache file's key).
CACHE_VERSION = 1
#: Images decoded per chunk while a cache file is written (bounded RAM while building).
_BUILD_CHUNK = 2048


class ImageStore:
    """A read-only file of N uint8 images of one resolution, row-major (N, 1, S, S); read with ``os.pread``.

    The file descriptor is opened lazily per process id, so the store can be used in forked DataLoader
    workers. Reading never maps the file, so pages the OS caches are shared, not counted in the RSS.
    """

    def __init__(self, path: Path, n: int, size: int) -> None:
        self.path, self.n, self.size = Path(path), int(n), int(size)
        self.row_bytes = self.size * self.size
        self._fd: int | None = None
        self._pid = -1
        expected = self.n * self.row_bytes
        if self.path.stat().st_size != expected:
            raise UserError(
                f"image cache {self.path} has {self.path.stat().st_size} bytes, expected {expected}; delete it to "
                "rebuild"
            )

    def _file(self) -> int:
        if self._fd is None or self._pid != os.getpid():
            self._fd, self._pid = os.open(self.path, os.O_RDONLY), os.getpid()
        return self._fd

    def read(self, rows: np.ndarray) -> np.ndarray:
        """(len(rows), 1, S, S) uint8 of the given row numbers (consecutive rows are read in one call)."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), 1, self.size, self.size), dtype=np.uint8)
        if not len(rows):
            return out
        flat = out.reshape(len(rows), -1)
        order = np.argsort(rows, kind="stable")
        srt = rows[order]
        breaks = np.flatnonzero(np.diff(srt) != 1) + 1
        fd = self._file()
        for run in np.split(np.arange(len(srt)), breaks):
            first, count = int(srt[run[0]]), len(run)
            buf = os.pread(fd, count * self.row_bytes, first * self.row_bytes)
            flat[order[run]] = np.frombuffer(buf, dtype=np.uint8).reshape(count, -1)
        return out

    def __getstate__(self) -> dict:
        return {"path": self.path, "n": self.n, "size": self.size}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"], state["n"], state["size"])


class ImageView:
    """Rows of one or more :class:`ImageStore` s: indexable like an (N, 1, S, S) uint8 tensor, holding no pixels."""

    def __init__(self, stores: Sequence[ImageStore], store_of_row: np.ndarray, row_in_store: np.ndarray) -> None:
        sizes = {s.size for s in stores}
        if len(sizes) > 1:
            raise ValueError(f"an image view mixes resolutions {sorted(sizes)}")
        self.stores = list(stores)
        self.store_of_row = np.asarray(store_of_row, dtype=np.int32)
        self.row_in_store = np.asarray(row_in_store, dtype=np.int64)
        self.size = next(iter(sizes)) if sizes else 0

    @classmethod
    def of(cls, store: ImageStore, rows: np.ndarray) -> "ImageView":
        return cls([store], np.zeros(len(rows), np.int32), rows)

    @classmethod
    def concat(cls, views: Sequence["ImageView"]) -> "ImageView":
        stores: list[ImageStore] = []
        parts = []
        for v in views:
            offset = len(stores)
            stores.extend(v.stores)
            parts.append(v.store_of_row + offset)
        return cls(stores, np.concatenate(parts), np.concatenate([v.row_in_store for v in views]))

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.row_in_store), 1, self.size, self.size)

    def __len__(self) -> int:
        return len(self.row_in_store)

    def __getitem__(self, index) -> torch.Tensor:
        idx = (
            np.arange(len(self))[index] if isinstance(index, slice) else np.asarray(index, dtype=np.int64).reshape(-1)
        )
        which, rows = self.store_of_row[idx], self.row_in_store[idx]
        out = np.empty((len(idx), 1, self.size, self.size), dtype=np.uint8)
        for k in np.unique(which):
            sel = which == k
            out[sel] = self.stores[int(k)].read(rows[sel])
        return torch.from_numpy(out)


def cache_key(paths: Sequence[Path], size: int) -> str:
    """Key of a cache file: resolution, layout version and every image's path, byte size and mtime.

    An image rewritten in place (``synth prepare --overwrite``) changes its mtime, so a stale cache is
    never reused.
    """
    from synth.io import image_set_fingerprint

    return hex_hash(f"v{CACHE_VERSION}|{size}|{image_set_fingerprint(paths)}", algorithm="sha256", hex_chars=20)


def build_store(
    paths: Sequence[Path],
    size: int,
    cache_dir: Path,
    is_main: bool,
    barrier: Callable[[], None],
    workers: int = 8,
    log: Callable[[str], None] | None = None,
) -> ImageStore:
    """The cache file of ``paths`` at ``size`` px: reused when it exists, else decoded once by the main process.

    The file is written in chunks to a temp name and renamed (atomic); the other processes wait at
    ``barrier`` and then open the same file read-only. Its content checksum is stored beside it and checked on
    the first use in a process (:mod:`synth.cache_checksum`): a file cut short or rewritten in place (zeroed
    pixels keep the size) is rebuilt with a warning instead of trained on.
    """
    from synth.io import atomic_path

    paths = [Path(p) for p in paths]
    missing = next((p for p in paths if not p.is_file()), None)
    if missing is not None:
        raise UserError(f"image not found: {missing}; re-run `synth prepare` (or fix the manifest's fpath)")
    path = Path(cache_dir) / f"{size}px-{cache_key(paths, size)}.u8"
    if is_main and path.exists():
        expected = len(paths) * size * size
        why = (
            f"it has {path.stat().st_size} bytes, expected {expected} (truncated)"
            if path.stat().st_size != expected
            else cache_checksum.damage(path)
        )
        if why is not None:
            cache_checksum.warn(f"image cache {path}: {why}; rebuilding it", log)
            cache_checksum.forget([path])
    if is_main and not path.exists():
        hasher = cache_checksum.ChunkHasher()
        with atomic_path(path) as tmp, open(tmp, "wb") as fh, ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            for start in range(0, len(paths), _BUILD_CHUNK):
                chunk = paths[start : start + _BUILD_CHUNK]
                block = np.stack(list(pool.map(lambda p: read_image(p, size), chunk))) if chunk else None
                if block is not None:
                    data = np.ascontiguousarray(block, dtype=np.uint8).tobytes()
                    fh.write(data)
                    hasher.update(data)
        cache_checksum.write_checksum(path, hasher)
        if log:
            log(
                f"image cache: {len(paths)} images at {size} px -> {path} ({len(paths) * size * size / 2**30:.2f} GiB "
                "on disk)"
            )
    barrier()
    return ImageStore(path, len(paths), size)


def view_of_frame(
    df: pd.DataFrame,
    size: int,
    cache_dir: Path,
    is_main: bool,
    barrier: Callable[[], None],
    log: Callable[[str], None] | None = None,
) -> ImageView:
    """An :class:`ImageView` of ``df``'s rows; repeated rows (same file) are stored once."""
    paths = [p.resolve() for p in image_paths(df)]
    unique, rows = (
        np.unique(np.array([str(p) for p in paths], dtype=object), return_inverse=True)
        if paths
        else ([], np.zeros(0, np.int64))
    )
    store = build_store([Path(u) for u in unique], size, cache_dir, is_main, barrier, log=log)
    return ImageView.of(store, rows)


def prefetch(images, batches: Sequence[torch.Tensor], ahead: int = 2) -> Iterator[torch.Tensor]:
    """``images[idx]`` for each batch, read ``ahead`` batches in advance on a thread (pread releases the GIL)."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = [pool.submit(images.__getitem__, b) for b in batches[:ahead]]
        for i in range(len(batches)):
            if i + ahead < len(batches):
                pending.append(pool.submit(images.__getitem__, batches[i + ahead]))
            yield pending.pop(0).result()


@dataclass
class CachedSet:
    """Images (a tensor in RAM, or an :class:`ImageView` of cache files), labels and annotation mask of a set of
    rows."""

    images: "torch.Tensor | ImageView"  #: (N, 1, H, W) uint8 when indexed
    labels: torch.Tensor  #: (N, C) float32, 0 where not annotated
    mask: torch.Tensor  #: (N, C) float32, 1 = annotated
    sources: list[str]

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @classmethod
    def from_frame(cls, df: pd.DataFrame, classes: Sequence[str], size: int, images=None) -> "CachedSet":
        """Labels and mask of ``df``; ``images`` (e.g. an :class:`ImageView`) or, by default, all decoded into RAM."""
        y = label_matrix(df, classes)
        known = ~np.isnan(y)
        return cls(
            load_images(df, size) if images is None else images,
            torch.from_numpy(np.where(known, y, 0.0).astype(np.float32)),
            torch.from_numpy(known.astype(np.float32)),
            list(df["source"].astype(str)),
        )


def to_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 1, H, W) -> normalised float."""
    return (images.float() / 255.0 - PIXEL_MEAN) / PIXEL_STD


# ---------------------------------------------------------------- batches


def epoch_batches(n: int, batch_size: int, epoch: int, seed: int, rank: int = 0, world: int = 1) -> list[torch.Tensor]:
    """This process's index batches of one epoch: a seeded permutation, split across processes, last partial dropped.

    Deterministic in (seed, epoch), so a resumed run sees exactly the batches an
    uninterrupted one would; every process gets the same number of batches (DDP).
    """
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    perm = torch.randperm(n, generator=g)
    per_step = batch_size * world
    steps = n // per_step
    if steps == 0:  # fewer rows than one global batch: one smaller batch per process
        steps, batch_size = 1, max(1, n // world)
        per_step = batch_size * world
    perm = perm[: steps * per_step].view(steps, world, batch_size)
    return [perm[s, rank] for s in range(steps)]


_BASE_GRIDS: dict[tuple[int, int, str], torch.Tensor] = {}


def _base_grid(h: int, w: int, device: torch.device) -> torch.Tensor:
    """(1, H*W, 3) homogeneous pixel-centre coordinates in [-1, 1] (affine_grid's, built once per size)."""
    key = (h, w, str(device))
    if key not in _BASE_GRIDS:
        ys = (torch.arange(h, dtype=torch.float32, device=device) * 2 + 1) / h - 1
        xs = (torch.arange(w, dtype=torch.float32, device=device) * 2 + 1) / w - 1
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        _BASE_GRIDS[key] = torch.stack([gx, gy, torch.ones_like(gx)], -1).view(1, h * w, 3)
    return _BASE_GRIDS[key]


def augment(x: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Small affine + brightness/contrast (+ optional hflip) on a normalised batch (B, 1, H, W).

    Random parameters come from ``generator`` (CPU), so a resumed epoch
    replays the same augmentation; the pixel work is one batched matmul, one
    ``grid_sample`` and one fused multiply-add (about 1 % of a ConvNeXt step).
    """
    b, _, h, w = x.shape

    def uniform(scale: float) -> torch.Tensor:
        return (torch.rand(b, generator=generator) * 2 - 1) * scale

    angle = uniform(cfg.degrees) * math.pi / 180
    zoom = 1 + uniform(cfg.scale)
    tx, ty = uniform(cfg.translate) * 2, uniform(cfg.translate) * 2  # grid units: the image spans [-1, 1]
    flip = (torch.rand(b, generator=generator) < 0.5).float() * 2 - 1 if cfg.hflip else torch.full((b,), -1.0)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack([torch.stack([-flip * cos, -sin, tx], 1), torch.stack([-flip * sin, cos, ty], 1)], 1)
    bright = uniform(cfg.brightness) / PIXEL_STD
    contrast = 1 + uniform(cfg.contrast)
    if cfg.degrees or cfg.scale or cfg.translate or cfg.hflip:
        theta = theta.to(x.device, torch.float32)
        grid = torch.matmul(_base_grid(h, w, x.device), theta.transpose(1, 2)).view(b, h, w, 2).to(x.dtype)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    c = contrast.to(x.device, x.dtype).view(-1, 1, 1, 1)
    offset = mean * (1 - c) + bright.to(x.device, x.dtype).view(-1, 1, 1, 1)
    return torch.addcmul(offset, x, c)  # (x - mean) * c + mean + bright


def check_rows(train: pd.DataFrame, val: pd.DataFrame, where: str) -> None:
    if train.empty:
        raise UserError(f"{where}: no training rows (split=train); run `synth prepare` on the data first")
    if val.empty:
        raise UserError(
            f"{where}: no real validation rows (split=val); re-prepare with --val > 0 (val picks the model)"
        )
