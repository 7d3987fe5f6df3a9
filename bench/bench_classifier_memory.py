"""Classifier data path at MIMIC scale: peak RSS per process, and throughput vs the old in-RAM cache.

Issue 17 item 6. The classifier used to decode every resolution of the whole training set into a
uint8 tensor in EVERY process (and copy it again for mixing arms): ~95 GB per process for ~181k +
26k MIMIC images at 224 + 384 px. It now reads batches from one read-only cache file per set and
resolution (classifier.data.ImageStore / ImageView), shared by the processes through the page cache.

Part 1 (memory): a manifest of ``--rows`` rows (default 200,000: MIMIC-CXR-LT train + val) with the
resolutions of ``--config`` (default configs/classifier/mimic-cxr-lt.yaml). Synthetic cache files
stand in for the decoded images (random bytes written straight to the cache layout; no decoding,
so it needs only disk: 200,000 x (224^2 + 384^2) B = 39.5 GB). ``--processes`` worker processes then
each do what a DDP rank does with the data: labels + masks of train and val, a mixing arm's
concatenation with ``--synthetic`` rows, and ``--batches`` training batches (batch 64, prefetch,
normalise, augment) per resolution. Each prints its peak RSS (target <= 8 GiB) next to what the old
in-RAM cache needed for the same rows.

(Its part 2, fit_stage throughput from the cache file vs the in-RAM tensor, answered issue 17 at 0.9x or better
and was retired with the gate experiments: see research/README.md.)

    python bench/bench_classifier_memory.py                        # the full 200,000-row check (~45 GB of disk)
    python bench/bench_classifier_memory.py --sparse               # the same rows, sparse zero files (no disk)
    python bench/bench_classifier_memory.py --rows 20000 --processes 2
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from classifier.data import CachedSet, ImageStore, ImageView, augment, epoch_batches, prefetch, to_input  # noqa: E402
from synth.taxonomy import CXR_LT_CLASSES  # noqa: E402

GiB = 2**30


def _manifest(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, len(CXR_LT_CLASSES))) < 0.05).astype(np.float64)
    df = pd.DataFrame(labels, columns=list(CXR_LT_CLASSES))
    df.insert(0, "dicom_id", [f"d{i:07d}" for i in range(n)])
    df.insert(1, "subject_id", [f"p{i // 3:07d}" for i in range(n)])
    df.insert(2, "fpath", [f"files/p{i // 3:07d}/d{i:07d}.jpg" for i in range(n)])
    df["split"], df["source"] = "train", "real"
    return df


def _write_store(folder: Path, n: int, size: int, seed: int, sparse: bool = False) -> ImageStore:
    """A cache file of n random images (chunks of 2,048, as build_store writes them); ``sparse``: all-zero, no disk
    used."""
    path = folder / f"{size}px-bench{seed}.u8"
    if sparse:
        with open(path, "wb") as fh:
            fh.truncate(n * size * size)
        return ImageStore(path, n, size)
    rng = np.random.default_rng(seed)
    with open(path, "wb") as fh:
        for start in range(0, n, 2048):
            fh.write(rng.integers(0, 256, size=(min(2048, n - start), size * size), dtype=np.uint8).tobytes())
    return ImageStore(path, n, size)


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def _worker(rank: int, folder: str, rows: int, n_val: int, n_syn: int, sizes: list[int], batches: int, queue) -> None:
    torch.set_num_threads(1)
    from classifier.config import AugmentConfig
    from classifier.training_sets import concat_sets

    folder_p = Path(folder)
    df = _manifest(rows + n_val + n_syn)
    train, val, syn = df.iloc[:rows], df.iloc[rows : rows + n_val], df.iloc[rows + n_val :]
    classes = list(CXR_LT_CLASSES)
    gen = torch.Generator().manual_seed(rank)
    for size in sizes:
        stores = {
            name: ImageStore(folder_p / f"{size}px-bench{k}.u8", n, size)
            for k, (name, n) in enumerate((("train", rows), ("val", n_val), ("syn", n_syn)))
        }
        sets = {
            name: CachedSet.from_frame(part, classes, size, images=ImageView.of(stores[name], np.arange(len(part))))
            for name, part in (("train", train), ("val", val), ("syn", syn))
        }
        mixed = concat_sets([sets["train"], sets["syn"]])  # the mixing arm
        idx = epoch_batches(len(mixed), 64, 0, 0, rank, 2)[:batches]
        start = time.perf_counter()
        for b, pixels in zip(idx, prefetch(mixed.images, idx)):
            x = augment(to_input(pixels), AugmentConfig(), gen)
            _ = (x.mean(), mixed.labels[b], mixed.mask[b])
        val_first = sets["val"].images[0:128]
        queue.put((rank, size, _peak_rss(), len(idx) * 64 / (time.perf_counter() - start), int(val_first.numel())))
    queue.put((rank, None, _peak_rss(), 0.0, 0))


def memory(args) -> None:
    import yaml

    members = yaml.safe_load(Path(args.config).read_text())["members"]  # resolutions only (no pretrained file needed)
    sizes = args.sizes or sorted({int(m["image_size"]) for m in members})
    n_val, n_syn = int(args.rows * 0.13), args.synthetic
    need = sum((args.rows + n_val + n_syn) * s * s for s in sizes)
    print(
        f"memory: {args.rows:,} train + {n_val:,} val + {n_syn:,} synthetic rows at {sizes} px, {args.processes} "
        "process(es)"
    )
    old = (args.rows + n_val + n_syn) * sum(s * s for s in sizes) + (args.rows + n_syn) * max(sizes) ** 2
    print(
        f"  old in-RAM cache per process: {old / GiB:.1f} GiB (every resolution of train + val + synthetic, "
        f"plus the mixing arm's torch.cat copy at {max(sizes)} px)"
    )
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        t0 = time.perf_counter()
        print(
            f"  writing {need / GiB:.1f} GiB of synthetic cache files to "
            f"{tmp}{' (sparse: zeros, no disk)' if args.sparse else ''} ...",
            flush=True,
        )
        for size in sizes:
            for k, n in enumerate((args.rows, n_val, n_syn)):
                _write_store(Path(tmp), n, size, k, args.sparse)
        print(f"  written in {time.perf_counter() - t0:.0f} s", flush=True)
        ctx = mp.get_context("spawn")
        queue = ctx.Queue()
        procs = [
            ctx.Process(target=_worker, args=(r, tmp, args.rows, n_val, n_syn, sizes, args.batches, queue))
            for r in range(args.processes)
        ]
        for p in procs:
            p.start()
        results, done = [], 0
        while done < len(procs):
            item = queue.get()
            if item[1] is None:
                done += 1
            results.append(item)
        for p in procs:
            p.join()
    for rank, size, rss, rate, _ in sorted(results, key=lambda r: (r[0], r[1] is None, r[1] or 0)):
        what = f"after {size} px ({args.batches} batches of 64, {rate:,.0f} img/s data path only)" if size else "final"
        print(f"  rank {rank}: peak RSS {rss / GiB:.2f} GiB {what}")
    worst = max(r[2] for r in results)
    print(f"  peak RSS per process: {worst / GiB:.2f} GiB (target <= 8 GiB): {'PASS' if worst <= 8 * GiB else 'FAIL'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "configs/classifier/mimic-cxr-lt.yaml"))
    parser.add_argument(
        "--sizes",
        type=lambda s: [int(x) for x in s.split(",")],
        default=None,
        help="override the config's resolutions",
    )
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument(
        "--synthetic", type=int, default=3_000, help="synthetic rows of a mixing arm (~100 per rare class)"
    )
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--tmp", default=None, help="folder for the synthetic cache files (needs the disk)")
    parser.add_argument(
        "--sparse",
        action="store_true",
        help="sparse all-zero cache files: the full 200,000 rows without the disk (RSS is what is measured)",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    memory(args)


if __name__ == "__main__":
    main()
