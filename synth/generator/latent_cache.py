"""Precomputed VAE posteriors for UNet training, at any dataset size (``cache_latents``).

Why: the VAE is frozen while the UNet trains, so encoding every batch again (as diffusers'
``train_text_to_image.py`` does) repeats the same work each epoch; with a cache a step is
UNet (+ text encoder) only. What is cached is the posterior *distribution* -- mean and std
of the ``DiagonalGaussianDistribution`` -- not one sample, so every step still draws a fresh
``mean + std * eps`` exactly as on-the-fly encoding would: caching changes the cost, not what
is learned.

Where it lives. The arrays are written once, in fp32, as two ``.npy`` files (``mean.npy``,
``std.npy``, shape ``(N, C, h, w)``) in ``<root>/<key>/``; ``root`` is ``latent_cache_dir``
or, by default, ``latent_cache/`` next to the prepared manifest (``<output_dir>/latent_cache``
when that folder is not writable). ``key`` hashes the VAE's weights and architecture, the
resolution, the encode dtype and the image set (every training row's image path, size and
mtime), so the cache is reused by every later run on the same data and VAE and is never used
when any of them changed. When the arrays fit ``latent_cache_max_ram_gb`` (per process) they
are read into RAM; otherwise they stay memory-mapped and a step reads only its batch's rows
(the OS page cache, shared by all processes of a node, keeps the hot part in memory).

Building it. The image set is split into chunks (one encode batch each) dealt round-robin to
the processes: every process encodes only its chunks, streaming the pixels through a
DataLoader (no process ever holds all images or all latents), and writes its rows straight
into the shared memory-mapped files in a work folder, marking each chunk done after it is
flushed. An interrupted build resumes at the first unmarked chunk (any process count). The main
process then checks every chunk is marked, writes ``meta.json`` and renames the work folder to
``<key>``: a folder named by its key is complete, a half-written one is never read. Each array has a content
checksum beside it (:mod:`synth.cache_checksum`), checked on the first use in a process: a folder cut short or
rewritten in place is removed with a warning and built again. Several
processes and nodes must see the same root (a shared filesystem across nodes).

Augmentation: the generator's training images are not flipped or cropped (chest X-ray
laterality matters: a flipped film shows dextrocardia), so one posterior per image is exact.
A future augmentation must either be applied in latent space or cache one entry per variant.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from synth import cache_checksum
from synth.errors import UserError
from synth.generator.latent_encoding import ProcessGroup, encode_chunks
from synth.hashing import Hasher, hex_hash
from synth.io import image_set_fingerprint

CACHE_FORMAT = 1
META = "meta.json"
#: Encode-batch budget in pixels: 128 images at 64 px, 64 at 256 px, 16 at 512 px (SD VAE in fp32 fits a 24 GB GPU).
_ENCODE_PIXELS = 2**22


def encode_batch_size(resolution: int) -> int:
    """Images per VAE encode call (and per resumable chunk): a pure function of the resolution,
    so a resumed or repeated build encodes in the same batches and gives the same numbers."""
    return int(max(1, min(128, _ENCODE_PIXELS // (resolution * resolution))))


# ----------------------------------------------------------------------------- keys


def vae_fingerprint(vae) -> str:
    """Hash of the VAE's architecture config and every weight's bytes (the posterior depends on nothing else).

    Hashing weights rather than a folder's mtimes also covers a VAE trained in this run and one
    loaded from a copied folder; ~1 s for SD's 84 M-parameter VAE.
    """
    h = Hasher("blake2b", hex_chars=32)
    # Private "_" entries are bookkeeping, not architecture: save_pretrained adds "_class_name" to the saved
    # VAE's in-memory config, so the main process (which saves the VAE stage) hashed differently from the others.
    skip = {"scaling_factor", "shift_factor"}
    config = {k: v for k, v in dict(vae.config).items() if k not in skip and not k.startswith("_")}
    h.update(json.dumps(config, sort_keys=True, default=str).encode())
    for name, t in sorted(vae.state_dict().items()):
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def cache_key(vae_fp: str, resolution: int, images_fp: str, encode_dtype: str = "float32") -> str:
    blob = json.dumps(
        {
            "format": CACHE_FORMAT,
            "vae": vae_fp,
            "resolution": resolution,
            "images": images_fp,
            "encode_dtype": encode_dtype,
        },
        sort_keys=True,
    )
    return hex_hash(blob, algorithm="blake2b", hex_chars=24)


def default_cache_root(manifest: Path, output_dir: str | os.PathLike) -> Path:
    """``latent_cache/`` beside the manifest (shared by every run on that data), else under the output dir."""
    beside = Path(manifest).parent / "latent_cache"
    probe = beside if beside.exists() else beside.parent
    if os.access(probe, os.W_OK):
        return beside
    return Path(output_dir) / "latent_cache"


# ----------------------------------------------------------------------------- the cache


@dataclass
class LatentCache:
    """Posterior mean/std of every training image; ``take(indices)`` gives one batch as fp32 tensors."""

    mean: Any  # torch.Tensor (in memory) or np.ndarray / np.memmap (N, C, h, w)
    std: Any
    location: str = "memory"  # memory (built in this process) | ram (read from disk) | disk (memory-mapped)
    path: Path | None = None

    def __len__(self) -> int:
        return len(self.mean)

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return tuple(self.mean.shape[1:])

    @property
    def nbytes(self) -> int:
        return 2 * int(np.prod(self.mean.shape)) * 4

    def take(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(self.mean, torch.Tensor):
            idx = torch.as_tensor(list(indices))
            return self.mean[idx], self.std[idx]
        idx = np.asarray(indices, dtype=np.int64)
        return torch.from_numpy(np.ascontiguousarray(self.mean[idx])), torch.from_numpy(
            np.ascontiguousarray(self.std[idx])
        )

    def describe(self) -> str:
        where = {
            "memory": "in RAM",
            "ram": f"read into RAM from {self.path}",
            "disk": f"memory-mapped from {self.path}",
        }[self.location]
        return (
            f"cached posterior of {len(self)} images, shape {self.latent_shape}, {self.nbytes / 2**30:.2f} GiB, "
            f"{where}"
        )


def take_latents(
    cache: "LatentCache | tuple[torch.Tensor, torch.Tensor]", indices: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) rows of ``indices`` from a :class:`LatentCache` or a plain ``(mean, std)`` tuple."""
    if isinstance(cache, LatentCache):
        return cache.take(indices)
    idx = torch.as_tensor(list(indices))
    return cache[0][idx], cache[1][idx]


def open_cache(folder: Path, max_ram_gb: float) -> LatentCache:
    """A complete cache folder -> LatentCache, in RAM if both arrays fit ``max_ram_gb`` else memory-mapped."""
    meta = json.loads((folder / META).read_text())
    mean = np.load(folder / "mean.npy", mmap_mode="r")
    std = np.load(folder / "std.npy", mmap_mode="r")
    if mean.shape != tuple(meta["shape"]) or std.shape != mean.shape:
        raise UserError(
            f"latent cache {folder}: arrays {mean.shape}/{std.shape} do not match meta.json {meta['shape']}; delete "
            "the folder to rebuild it"
        )
    if 2 * mean.nbytes <= max_ram_gb * 2**30:
        return LatentCache(torch.from_numpy(np.array(mean)), torch.from_numpy(np.array(std)), "ram", folder)
    return LatentCache(mean, std, "disk", folder)


def build_latent_cache(
    vae,
    dataset: torch.utils.data.Dataset,
    paths: Sequence[str | os.PathLike],
    resolution: int,
    root: Path,
    max_ram_gb: float = 16.0,
    accelerator=None,
    num_workers: int = 0,
    log: Callable[[str], None] = print,
    progress: bool = True,
) -> LatentCache:
    """Reuse the complete cache for (VAE, resolution, image set) under ``root``, or build it, then open it.

    ``dataset[i]["pixel_values"]`` is image ``i`` as (1, H, W) in [0, 1] (``ManifestDataset``);
    ``paths[i]`` its file (for the key). Every process of ``accelerator`` must call this.
    """
    from synth.generator.data import to_vae_input

    ctx = ProcessGroup(accelerator)
    n = len(dataset)
    if n != len(paths):
        raise ValueError(f"dataset has {n} rows, paths {len(paths)}")
    key = ctx.main_key(cache_key(vae_fingerprint(vae), resolution, image_set_fingerprint(paths)), log)
    final = Path(root) / key
    if ctx.main:
        drop_if_damaged(final, log)
    ctx.barrier()
    if (final / META).exists():
        log(f"latents: reusing cache {final}")
        return open_cache(final, max_ram_gb)

    down = 2 ** (len(vae.config.block_out_channels) - 1)
    shape = (n, int(vae.config.latent_channels), resolution // down, resolution // down)
    work = Path(root) / f".{key}.partial"
    if ctx.main:
        _open_work_folder(work, shape)
    ctx.barrier()
    bs = encode_batch_size(resolution)
    n_chunks = math.ceil(n / bs)
    done = {int(p.name) for p in (work / "done").iterdir() if p.name.isdigit()}
    mine = [c for c in range(ctx.rank, n_chunks, ctx.world) if c not in done]
    if ctx.main:
        log(
            f"latents: encoding {n} images at {resolution} px into {work} ({n_chunks} chunks of {bs}, "
            f"{len(done)} already done, {ctx.world} process(es))"
        )
    if mine:
        with torch.random.fork_rng(
            devices=[]
        ):  # the DataLoader draws a seed: leave the training's global RNG untouched
            encode_chunks(vae, dataset, work, shape, mine, bs, ctx, num_workers, progress and ctx.main, to_vae_input)
    ctx.barrier()
    if ctx.main:
        meta = {
            "format": CACHE_FORMAT,
            "shape": list(shape),
            "dtype": "float32",
            "resolution": resolution,
            "images": n,
            "encode_batch": bs,
        }
        _complete(work, final, n_chunks, meta)
        log(f"latents: cache complete at {final}")
    ctx.barrier()
    return open_cache(final, max_ram_gb)


ARRAYS = ("mean.npy", "std.npy")


def damage(folder: Path) -> str | None:
    """What is wrong with a complete cache folder (unreadable meta.json, an array cut short or not of the recorded
    shape, content that differs from its checksum), or None when it can be used."""
    try:
        shape = tuple(json.loads((folder / META).read_text())["shape"])
        for name in ARRAYS:
            if np.load(folder / name, mmap_mode="r").shape != shape:
                return f"{name} is not of the shape {list(shape)} meta.json records"
    except (OSError, ValueError, KeyError, TypeError, EOFError) as err:
        return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''} (truncated or corrupt)"
    for name in ARRAYS:
        why = cache_checksum.damage(folder / name)
        if why is not None:
            return f"{name}: {why}"
    return None


def drop_if_damaged(final: Path, log: Callable[[str], None]) -> None:
    """Remove a damaged cache folder with a warning, so it is rebuilt (main process); one error if it cannot be."""
    if not (final / META).exists():
        return
    why = damage(final)
    if why is None:
        return
    cache_checksum.warn(f"latent cache {final}: {why}; rebuilding it", log)
    try:
        shutil.rmtree(final)
    except OSError as err:
        raise UserError(
            f"latent cache {final} is damaged ({why}) and cannot be removed ({err.strerror}); delete it, or set "
            "--latent_cache_dir to a writable folder"
        ) from None


def _open_work_folder(work: Path, shape: tuple[int, ...]) -> None:
    """``<work>/mean.npy`` and ``std.npy`` of ``shape`` (kept if already so: a resumed build) and ``done/``."""
    try:
        (work / "done").mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(
            f"latent cache: cannot write {work} ({err}); set --latent_cache_dir to a writable folder "
            f"or --cache_latents false"
        ) from None
    for name in ("mean", "std"):
        f = work / f"{name}.npy"
        if not f.exists() or _shape_of(f) != shape:
            with_tmp = work / f".{name}.npy.tmp"
            np.lib.format.open_memmap(with_tmp, mode="w+", dtype=np.float32, shape=shape).flush()
            os.replace(with_tmp, f)
            for marker in (work / "done").iterdir():  # rows of a re-created array are gone
                marker.unlink()


def _shape_of(path: Path) -> tuple[int, ...] | None:
    """The shape of an ``.npy`` file, or None when it is cut short (a killed build): it is then re-created."""
    try:
        return np.load(path, mmap_mode="r").shape
    except (OSError, ValueError, EOFError):
        return None


def _complete(work: Path, final: Path, n_chunks: int, meta: dict) -> None:
    """Every chunk encoded: write ``meta.json`` and rename the work folder into place (unless another run did)."""
    done = {int(p.name) for p in (work / "done").iterdir() if p.name.isdigit()}
    missing = sorted(set(range(n_chunks)) - done)
    if missing:
        raise UserError(f"latent cache {work}: chunks {missing[:5]}... were not encoded; re-run to resume")
    for name in ARRAYS:
        cache_checksum.write_checksum(work / name)
    (work / META).write_text(json.dumps(meta, indent=2))
    shutil.rmtree(work / "done")
    if (final / META).exists():  # another run finished the same key first: theirs is complete, keep it
        shutil.rmtree(work)
    else:
        shutil.rmtree(final, ignore_errors=True)  # an incomplete folder of that name (no meta.json) is never read
        os.replace(work, final)


def store_latent_cache(
    vae,
    paths: Sequence[str | os.PathLike],
    resolution: int,
    root: Path,
    mean: torch.Tensor,
    std: torch.Tensor,
    max_ram_gb: float = 16.0,
    accelerator=None,
    log: Callable[[str], None] = print,
) -> LatentCache:
    """Publish posteriors computed elsewhere (the from-scratch VAE stage encodes every image when it ends)
    under the same key :func:`build_latent_cache` would use, then open them like any cache: a later run
    with ``--vae_model_path`` reuses them, and both runs train from the same arrays."""
    ctx = ProcessGroup(accelerator)
    key = ctx.main_key(cache_key(vae_fingerprint(vae), resolution, image_set_fingerprint(paths)), log)
    final = Path(root) / key
    if ctx.main:
        drop_if_damaged(final, log)
    if ctx.main and not (final / META).exists():
        work = Path(root) / f".{key}.partial"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        for name, arr in (("mean", mean), ("std", std)):
            np.save(work / f"{name}.npy", arr.detach().float().cpu().numpy())
            cache_checksum.write_checksum(work / f"{name}.npy")
        (work / META).write_text(
            json.dumps(
                {
                    "format": CACHE_FORMAT,
                    "shape": list(mean.shape),
                    "dtype": "float32",
                    "resolution": resolution,
                    "images": len(mean),
                    "encode_batch": None,
                },
                indent=2,
            )
        )
        shutil.rmtree(final, ignore_errors=True)
        os.replace(work, final)
        log(f"latents: stored the VAE stage's posteriors at {final}")
    ctx.barrier()
    return open_cache(final, max_ram_gb)


def _root(cfg, data) -> Path:
    return Path(cfg.latent_cache_dir) if cfg.latent_cache_dir else default_cache_root(data.manifest, cfg.output_dir)


def latent_cache_for(
    cfg,
    vae,
    data,
    accelerator=None,
    log: Callable[[str], None] = print,
    computed: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> LatentCache | None:
    """The training run's cache as ``cfg.cache_latents`` asks (``auto``/``true``), or None (encode on the fly).

    ``computed``: posteriors the caller already has (the VAE stage's), stored instead of re-encoded.
    ``auto`` falls back to on-the-fly encoding (with a note) when the cache folder cannot be
    written; ``true`` makes that an error.
    """
    from synth.generator.data import pixel_dataset

    if cfg.cache_latents == "false":
        return None
    root = _root(cfg, data)
    dataset = pixel_dataset(data, cfg.resolution)
    try:
        if computed is not None:
            return store_latent_cache(
                vae, dataset.paths, cfg.resolution, root, *computed, cfg.latent_cache_max_ram_gb, accelerator, log
            )
        return build_latent_cache(
            vae,
            dataset,
            dataset.paths,
            cfg.resolution,
            root,
            cfg.latent_cache_max_ram_gb,
            accelerator,
            cfg.dataloader_num_workers,
            log,
        )
    except UserError as err:
        if cfg.cache_latents == "true":
            raise
        if computed is not None:
            return LatentCache(*computed)
        log(f"note: --cache_latents auto: {err}; encoding every batch on the fly instead")
        return None
