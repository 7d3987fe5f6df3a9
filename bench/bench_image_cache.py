"""Throughput of the prepared image cache vs decoding the source images every epoch.

Both sides use the same DataLoader over ``ManifestDataset``; only ``fpath``
differs: the raw side points at the source files (decoded + resized with PIL
on every access), the cache side at ``synth prepare``'s ``images/``.

Sources: the real NIH sample PNGs (64 px, so decoding is already cheap), and
the same images re-encoded as large JPEGs (``--source-size``, MIMIC-CXR-JPG
files are ~2500 px), which is the case the cache exists for.

    python bench/bench_image_cache.py [--data ../shared/data/nih-sample] [--n 400] [--size 256]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pandas as pd
from PIL import Image
from torch.utils.data import DataLoader

from synth.image_datasets import ManifestDataset
from synth.manifest import read_manifest
from synth.prepare import prepare_dataset

REPO = Path(__file__).resolve().parents[1]


def images_per_second(dataset: ManifestDataset, batch_size: int, workers: int, epochs: int) -> float:
    """Best of ``epochs`` full passes (the first also warms the page cache)."""
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, shuffle=False)
    best = 0.0
    for _ in range(epochs):
        start = time.perf_counter()
        n = sum(batch["pixel_values"].shape[0] for batch in loader)
        best = max(best, n / (time.perf_counter() - start))
    return best


def make_jpeg_sources(df: pd.DataFrame, src_root: Path, folder: Path, source_size: int) -> pd.DataFrame:
    """The NIH sample re-encoded as large grayscale JPEGs, with a matching label CSV."""
    folder.mkdir(parents=True)
    for name in df["Image Index"]:
        with Image.open(src_root / name) as im:
            big = im.convert("L").resize((source_size, source_size), Image.Resampling.BICUBIC)
        big.save(folder / (Path(name).stem + ".jpg"), quality=92)
    out = df.copy()
    out["Image Index"] = [Path(n).stem + ".jpg" for n in df["Image Index"]]
    return out


def bench(label: str, labels_csv: Path, images: Path, out: Path, args: argparse.Namespace) -> None:
    start = time.perf_counter()
    manifest = prepare_dataset("nih", labels_csv, images, out, size=args.size, workers=args.prepare_workers)
    prepare_s = time.perf_counter() - start
    cached = read_manifest(manifest)
    raw = cached.copy()
    raw["fpath"] = [str(images / f) for f in raw["source_fpath"]]
    raw_ips = images_per_second(ManifestDataset(raw, image_size=args.size), args.batch_size, args.workers, args.epochs)
    cache_ips = images_per_second(ManifestDataset(cached), args.batch_size, args.workers, args.epochs)
    print(
        f"{label:<28} n={len(cached):<5} raw decode+resize {raw_ips:8.1f} img/s | cache {cache_ips:8.1f} img/s | "
        f"ratio {cache_ips / raw_ips:5.2f}x | one-off prepare {prepare_s:6.1f} s ({len(cached) / prepare_s:.0f} img/s)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "nih-sample")
    parser.add_argument("--n", type=int, default=400, help="images used (first N rows of the sample)")
    parser.add_argument("--size", type=int, default=256, help="training resolution (cache size)")
    parser.add_argument("--source-size", type=int, default=2048, help="side of the re-encoded JPEG sources")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    parser.add_argument(
        "--prepare-workers", type=int, default=0, help="synth prepare decode processes (0 = all cores)"
    )
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()

    labels = pd.read_csv(args.data / "Data_Entry_2017_v2020.csv").head(args.n)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        png_csv = tmp / "png.csv"
        labels.to_csv(png_csv, index=False)
        bench("NIH sample PNG (64 px)", png_csv, args.data / "images", tmp / "cache_png", args)
        jpeg_labels = make_jpeg_sources(labels, args.data / "images", tmp / "jpeg", args.source_size)
        jpeg_csv = tmp / "jpeg.csv"
        jpeg_labels.to_csv(jpeg_csv, index=False)
        bench(f"JPEG {args.source_size} px (MIMIC-like)", jpeg_csv, tmp / "jpeg", tmp / "cache_jpeg", args)


if __name__ == "__main__":
    main()
