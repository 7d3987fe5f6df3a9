"""The precomputed-latent cache (synth/generator/latent_cache.py): reuse, invalidation, disk mode, crash safety.

Tiny random VAE at 16 px over the ~300-image test manifest: each build is well under a second.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_pipeline import write_tiny_manifest

from synth.generator import latent_cache as lc
from synth.generator.data import TrainingSet, encode_latents, load_pixels, pixel_dataset

RES = 16


def _vae(seed: int = 0):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=RES,
    )


class _Counting:
    """Wraps ``vae.encode`` to count the images it encodes (and optionally fail after ``fail_after`` calls)."""

    def __init__(self, vae, fail_after: int | None = None) -> None:
        self.vae, self.images, self.calls, self.fail_after = vae, 0, 0, fail_after
        self.orig = vae.encode
        vae.encode = self

    def __call__(self, x, *a, **k):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt("simulated kill")
        self.calls += 1
        self.images += len(x)
        return self.orig(x, *a, **k)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    return write_tiny_manifest(tmp_path_factory.mktemp("lcdata"))


def _build(vae, manifest: Path, root: Path, res: int = RES, max_ram_gb: float = 1.0, **kw) -> lc.LatentCache:
    data = TrainingSet.load(manifest)
    ds = pixel_dataset(data, res)
    return lc.build_latent_cache(
        vae, ds, ds.paths, res, root, max_ram_gb=max_ram_gb, log=lambda m: None, progress=False, **kw
    )


def test_cache_equals_in_memory_encode_and_is_reused_across_runs(manifest, tmp_path):
    vae = _vae()
    count = _Counting(vae)
    first = _build(vae, manifest, tmp_path)
    n = len(TrainingSet.load(manifest))
    assert count.images == n and first.location == "ram"
    vae.encode = count.orig
    mean, std = encode_latents(vae, load_pixels(TrainingSet.load(manifest), RES))  # the old in-RAM path
    vae.encode = count
    torch.testing.assert_close(first.mean, mean, rtol=0, atol=0)
    torch.testing.assert_close(first.std, std, rtol=0, atol=0)
    again = _build(vae, manifest, tmp_path)  # a second run: same VAE, resolution, images
    assert count.images == n, "the second run encoded again instead of reusing the cache"
    assert again.path == first.path
    torch.testing.assert_close(again.mean, first.mean, rtol=0, atol=0)
    assert [p.name for p in tmp_path.iterdir()] == [first.path.name]  # one complete folder, no leftovers


def test_cache_is_invalidated_by_vae_resolution_and_image_set(manifest, tmp_path):
    vae = _vae()
    base = _build(vae, manifest, tmp_path)
    other_vae = _vae()
    with torch.no_grad():
        next(other_vae.encoder.parameters()).view(-1)[0] += 1e-3  # one weight changed
    assert _build(other_vae, manifest, tmp_path).path != base.path
    assert _build(vae, manifest, tmp_path, res=8).path != base.path
    # the image set: one training image re-rendered (new bytes and mtime) -> new key
    data = TrainingSet.load(manifest)
    img = Path(pixel_dataset(data, RES).paths[5])
    from PIL import Image

    Image.fromarray(np.full((RES, RES), 200, dtype=np.uint8), mode="L").save(img)
    os.utime(img, ns=(time.time_ns(), time.time_ns() + 10**9))
    changed = _build(vae, manifest, tmp_path)
    assert changed.path != base.path
    assert not torch.equal(changed.mean[5], base.mean[5]) and torch.equal(changed.mean[6], base.mean[6])
    assert len({p.name for p in tmp_path.iterdir()}) == 4


def test_small_ram_budget_memory_maps_the_same_numbers(manifest, tmp_path):
    vae = _vae()
    ram = _build(vae, manifest, tmp_path, max_ram_gb=1.0)
    disk = lc.open_cache(ram.path, max_ram_gb=0.0)
    assert ram.location == "ram" and disk.location == "disk"
    assert isinstance(disk.mean, np.memmap) and not isinstance(ram.mean, np.ndarray)
    idx = [7, 3, 250, 3]
    for a, b in zip(ram.take(idx), disk.take(idx)):
        assert a.dtype == b.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_interrupted_build_is_never_used_and_resumes_where_it_stopped(manifest, tmp_path, monkeypatch):
    monkeypatch.setattr(lc, "_ENCODE_PIXELS", 32 * RES * RES)  # chunks of 32 images: ~10 chunks
    vae = _vae()
    n = len(TrainingSet.load(manifest))
    killed = _Counting(vae, fail_after=3)
    with pytest.raises(KeyboardInterrupt):
        _build(vae, manifest, tmp_path)
    vae.encode = killed.orig
    assert not [p for p in tmp_path.iterdir() if not p.name.startswith(".")], "a half-written cache was published"
    (partial,) = list(tmp_path.iterdir())
    assert len(list((partial / "done").iterdir())) == 3
    resumed = _Counting(vae)
    cache = _build(vae, manifest, tmp_path)
    assert resumed.images == n - 3 * 32  # only the unfinished chunks
    clean = _build(vae, manifest, tmp_path / "clean")
    torch.testing.assert_close(cache.mean, clean.mean, rtol=0, atol=0)
    torch.testing.assert_close(cache.std, clean.std, rtol=0, atol=0)
    # a folder named like a complete cache but without meta.json (e.g. copied half-way) is rebuilt, not read
    (cache.path / lc.META).unlink()
    again = _Counting(vae)
    _build(vae, manifest, tmp_path)
    assert again.images == n


def test_config_cache_latents_values():
    from synth.errors import UserError
    from synth.generator.config import load_finetune_config

    assert load_finetune_config(None, {}).cache_latents == "auto"
    assert load_finetune_config(None, {"cache_latents": False}).cache_latents == "false"
    assert load_finetune_config(None, {"cache_latents": "yes"}).cache_latents == "true"
    with pytest.raises(UserError, match="cache_latents"):
        load_finetune_config(None, {"cache_latents": "sometimes"})


_TWO_PROC = r"""
import sys, json, torch
sys.path.insert(0, sys.argv[3])
from synth.distributed import make_accelerator
from synth.generator import latent_cache as lc
from synth.generator.data import TrainingSet, pixel_dataset
import test_latent_cache as t
lc._ENCODE_PIXELS = 32 * t.RES * t.RES
acc, _ = make_accelerator("no")
vae = t._vae()
count = t._Counting(vae)
data = TrainingSet.load(sys.argv[1])
ds = pixel_dataset(data, t.RES)
cache = lc.build_latent_cache(vae, ds, ds.paths, t.RES, sys.argv[2], max_ram_gb=0.0, accelerator=acc,
                              log=lambda m: None, progress=False)
print(json.dumps({"rank": acc.process_index, "world": acc.num_processes, "images": count.images,
                  "location": cache.location, "sum": float(cache.take(range(len(cache)))[0].double().sum())}),
      flush=True)
"""


def test_two_processes_each_encode_their_own_chunks(manifest, tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2` on CPU (gloo): the encode is split, the cache is the 1-process
    one."""
    script = tmp_path / "two.py"
    script.write_text(_TWO_PROC)
    from two_processes import LAUNCH_TWO_CPU_PROCESSES

    cmd = [
        *LAUNCH_TWO_CPU_PROCESSES,
        str(script),
        str(manifest),
        str(tmp_path / "cache"),
        str(Path(__file__).parent),
    ]
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
    }
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    import json
    import re

    reports = sorted(
        (json.loads(m) for m in re.findall(r"\{[^{}]*\}", done.stdout)), key=lambda r: r["rank"]
    )  # lines may interleave
    n = len(TrainingSet.load(manifest))
    assert [r["world"] for r in reports] == [2, 2]
    assert sum(r["images"] for r in reports) == n and all(0 < r["images"] < n for r in reports)
    assert all(r["location"] == "disk" for r in reports)
    single = _build(_vae(), manifest, tmp_path / "single")
    assert reports[0]["sum"] == reports[1]["sum"] == pytest.approx(float(single.mean.double().sum()), rel=1e-6)


def _losses(out: Path) -> list[float]:
    with open(out / "loss.csv", newline="") as f:
        return [float(r["loss"]) for r in csv.DictReader(f)]


def test_finetune_from_a_pretrained_folder_caches_by_default_and_disk_trains_like_ram(tmp_path, capsys):
    """The default (``cache_latents: auto``) caches from a pretrained folder too, beside the manifest; a run
    whose RAM budget is 0 (memory-mapped) gives the same loss sequence as the in-RAM one and reuses its cache."""
    from tiny_pipeline import build_tiny_pipeline

    from synth import finetune

    src = build_tiny_pipeline(tmp_path / "src")
    manifest = tmp_path / "src" / "data" / "manifest.csv"
    base = {
        "pretrained_model_name_or_path": str(src),
        "train_manifest": str(manifest),
        "resolution": 16,
        "train_batch_size": 4,
        "max_train_steps": 4,
        "checkpointing_steps": 100,
        "num_validation_images": 0,
        "learning_rate": 1e-3,
        "snr_gamma": 5.0,
    }
    finetune.run_finetune(finetune.load_finetune_config(None, {**base, "output_dir": str(tmp_path / "ram")}))
    first = capsys.readouterr().out
    caches = list((manifest.parent / "latent_cache").iterdir())
    assert len(caches) == 1 and (caches[0] / lc.META).exists(), first
    assert "read into RAM" in first
    finetune.run_finetune(
        finetune.load_finetune_config(
            None, {**base, "output_dir": str(tmp_path / "disk"), "latent_cache_max_ram_gb": 0}
        )
    )
    second = capsys.readouterr().out
    assert "reusing cache" in second and "memory-mapped" in second and "encoding" not in second
    assert _losses(tmp_path / "disk") == _losses(tmp_path / "ram")
    finetune.run_finetune(
        finetune.load_finetune_config(None, {**base, "output_dir": str(tmp_path / "off"), "cache_latents": False})
    )
    assert "encoded on the fly" in capsys.readouterr().out


# ---------------------------------------------------------------- issue 35: damaged caches are rebuilt, not trusted


def _rebuilt_after(manifest: Path, root: Path, damage, capsys) -> tuple[lc.LatentCache, lc.LatentCache, int]:
    """Build, ``damage(cache folder)``, build again in a fresh process state: (first, second, images re-encoded)."""
    vae = _vae()
    first = _build(vae, manifest, root)
    reference = lc.LatentCache(first.mean.clone(), first.std.clone(), first.location, first.path)
    damage(first.path)
    checksums = sys.modules.get("synth.cache_checksum")  # (absent before issue 35)
    if checksums is not None:
        checksums._VERIFIED.clear()  # a new process: nothing verified yet
    count = _Counting(vae)
    capsys.readouterr()
    second = _build(vae, manifest, root)
    return reference, second, count.images


def test_truncated_latent_cache_file_is_rebuilt_with_a_warning(manifest, tmp_path, capsys):
    def cut(folder: Path) -> None:
        data = (folder / "mean.npy").read_bytes()
        (folder / "mean.npy").write_bytes(data[: len(data) // 2])

    first, second, encoded = _rebuilt_after(manifest, tmp_path, cut, capsys)
    assert encoded == len(first), "the truncated cache was not rebuilt"
    assert "warning: latent cache" in capsys.readouterr().err
    torch.testing.assert_close(second.mean, first.mean, rtol=0, atol=0)


def test_latent_cache_rewritten_in_place_fails_its_checksum_and_is_rebuilt(manifest, tmp_path, capsys):
    """Same size, other values: the size check alone trusted it (the old code reused the zeros)."""

    def zero(folder: Path) -> None:
        arr = np.load(folder / "std.npy", mmap_mode="r+")
        arr[:] = 0.0
        arr.flush()

    first, second, encoded = _rebuilt_after(manifest, tmp_path, zero, capsys)
    assert encoded == len(first)
    assert "checksum mismatch" in capsys.readouterr().err
    torch.testing.assert_close(second.std, first.std, rtol=0, atol=0)


def test_latent_cache_without_checksum_is_trusted_once_and_its_checksum_stored(manifest, tmp_path, capsys):
    """A cache built before checksums existed is not rebuilt on upgrade: its checksum is computed and kept."""
    from synth.cache_checksum import sidecar

    def strip(folder: Path) -> None:
        for name in lc.ARRAYS:
            sidecar(folder / name).unlink()

    first, second, encoded = _rebuilt_after(manifest, tmp_path, strip, capsys)
    assert encoded == 0 and "warning" not in capsys.readouterr().err
    assert all(sidecar(second.path / name).is_file() for name in lc.ARRAYS)
    torch.testing.assert_close(second.mean, first.mean, rtol=0, atol=0)
