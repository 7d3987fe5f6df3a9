"""``synth prepare`` at scale: images/s per worker count, peak memory, and what 377,110 images would take.

Sources: N synthetic grayscale JPEGs, each side 300-3,000 px (MIMIC-CXR-JPG: ~2,500 x 3,000), smooth content plus
grain so compressed sizes and decode costs are those of films. ``--distinct D`` renders D films, the rest are byte
copies (decode cost does not depend on another file holding the same bytes; 50,000 films take an hour on 2 cores).
Each timed run is one fresh process calling the public :func:`synth.prepare.prepare_dataset`, so its peak RSS is
its own (parent and largest decode worker). Runs at a quarter of the rows, and on 64 px sources at N/4 and N rows
(``--rows-check``), show how the parent's memory grows with rows. The load average is recorded with every figure.

    python bench/bench_prepare_scale.py --n 3000 --workers 1 2 --json bench/results/prepare_scale.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from synth.provenance import write_bench_result
from synth.taxonomy import CXR_LT_CLASSES

REPO = Path(__file__).resolve().parents[1]
MIMIC_IMAGES = 377_110  #: MIMIC-CXR-JPG v2.0.0 images

_CHILD = """
import json, resource, sys, time
from synth.prepare import prepare_dataset
labels, images, out, size, workers = sys.argv[1:6]
start = time.perf_counter()
prepare_dataset("cxrlt", labels, images, out, size=int(size), workers=int(workers))
seconds = time.perf_counter() - start
peak = {who: resource.getrusage(getattr(resource, who)).ru_maxrss / 1024 for who in ("RUSAGE_SELF", "RUSAGE_CHILDREN")}
print(json.dumps({"seconds": seconds, "parent_peak_rss_mib": peak["RUSAGE_SELF"],
                  "largest_worker_peak_rss_mib": peak["RUSAGE_CHILDREN"]}))
"""


def _make_one(task: tuple[int, int, str, int, int]) -> tuple[int, int, int]:
    """One synthetic film: a smooth random field (lungs, mediastinum-like blobs) upsampled, plus grain."""
    from PIL import Image, ImageChops

    index, seed, path, low, high = task
    rng = np.random.default_rng([seed, index])
    side = int(rng.integers(low, high + 1))
    aspect = float(rng.uniform(0.8, 1.25))
    w, h = side, int(np.clip(round(side * aspect), low, high))
    base = (rng.random((12, 12)) * 160 + 50).astype(np.uint8)
    film = Image.fromarray(base, mode="L").resize((w, h), Image.Resampling.BICUBIC)
    tile = rng.integers(0, 16, (256, 256), dtype=np.uint8)  # grain, tiled (per-pixel noise costs more than the JPEG)
    grain = Image.fromarray(np.tile(tile, (h // 256 + 1, w // 256 + 1))[:h, :w], mode="L")
    film = ImageChops.add(film, grain, offset=-8)
    film.save(path, format="JPEG", quality=90)
    return w, h, os.path.getsize(path)


def make_sources(n: int, root: Path, seed: int, sides: tuple[int, int] = (300, 3000), distinct: int = 0) -> dict:
    """``n`` JPEGs (sides within ``sides``; file i a copy of film i mod ``distinct``) and a random CXR-LT label CSV."""
    files = root / "files"
    files.mkdir(parents=True)
    rendered = min(n, distinct) if distinct > 0 else n
    tasks = [(i, seed, str(files / f"img{i:07d}.jpg"), *sides) for i in range(rendered)]
    start = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(os.cpu_count() or 1) as pool:  # films in parallel, copies after
        shapes = pool.map(_make_one, tasks, chunksize=16)
    for i in range(rendered, n):
        shutil.copyfile(files / f"img{i % rendered:07d}.jpg", files / f"img{i:07d}.jpg")
    shapes = [shapes[i % rendered] for i in range(n)]
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, len(CXR_LT_CLASSES))) < 0.15).astype(int)
    df = pd.DataFrame(labels, columns=list(CXR_LT_CLASSES))
    meta = pd.DataFrame(
        {
            "dicom_id": [f"img{i:07d}" for i in range(n)],
            "subject_id": [str(10_000_000 + i // 3) for i in range(n)],
            "study_id": [str(50_000_000 + i) for i in range(n)],
            "ViewPosition": "PA",
            "fpath": [f"files/img{i:07d}.jpg" for i in range(n)],
        }
    )
    pd.concat([meta, df], axis=1).to_csv(root / "labels.csv", index=False)
    return {
        "images": n,
        "distinct_films": rendered,
        "seconds_to_make": round(time.perf_counter() - start, 1),
        "side_px_range": [int(min(min(s[:2]) for s in shapes)), int(max(max(s[:2]) for s in shapes))],
        "mean_megapixels": round(float(np.mean([w * h for w, h, _ in shapes])) / 1e6, 3),
        "mean_jpeg_kib": round(float(np.mean([s[2] for s in shapes])) / 1024, 1),
    }


def timed_prepare(root: Path, rows: int, size: int, workers: int) -> dict:
    """One fresh process preparing the first ``rows`` rows with ``workers`` decode processes."""
    labels = root / "labels.csv"
    if rows < sum(1 for _ in labels.open()) - 1:
        labels = root / f"labels_{rows}.csv"
        pd.read_csv(root / "labels.csv", dtype=str).head(rows).to_csv(labels, index=False)
    out = root / f"out_{rows}_{workers}"
    load_before = os.getloadavg()[0]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    argv = [sys.executable, "-c", _CHILD, str(labels), str(root), str(out), str(size), str(workers)]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    if done.returncode:
        raise SystemExit(f"prepare failed ({rows} rows, {workers} workers): {done.stderr[-2000:]}")
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    shutil.rmtree(out)
    rate = rows / figures["seconds"]
    return {
        "rows": rows,
        "workers": workers,
        "seconds": round(figures["seconds"], 2),
        "images_per_s": round(rate, 1),
        "images_per_s_per_worker": round(rate / workers, 1),
        "parent_peak_rss_mib": round(figures["parent_peak_rss_mib"], 1),
        "largest_worker_peak_rss_mib": round(figures["largest_worker_peak_rss_mib"], 1),
        "load_average_1min_before": round(load_before, 2),
        "load_average_1min_after": round(os.getloadavg()[0], 2),
        "hours_for_377110_images": round(MIMIC_IMAGES / rate / 3600, 2),
    }


def _growth(small: dict | None, large: dict | None) -> tuple[float | None, int | None]:
    """(KiB of parent peak RSS per extra row, the peak extrapolated to 377,110 rows) between two runs."""
    if not small or not large or large["rows"] <= small["rows"]:
        return None, None
    kib = (large["parent_peak_rss_mib"] - small["parent_peak_rss_mib"]) * 1024 / (large["rows"] - small["rows"])
    return round(kib, 2), round(large["parent_peak_rss_mib"] + kib * (MIMIC_IMAGES - large["rows"]) / 1024)


def _rows_check(root: Path, args: argparse.Namespace) -> dict:
    """Peak RSS of the parent at N/4 and N rows of 64 px sources: decoding is cheap, so rows dominate."""
    make_sources(args.rows_check, root, args.seed, sides=(64, 64))
    quarter = timed_prepare(root, args.rows_check // 4, args.size, 1)
    full = timed_prepare(root, args.rows_check, args.size, 1)
    growth, extrapolated = _growth(quarter, full)
    return {  # what grows: the label table and pandas' copies of it; the cache streams (tests/test_prepare_resume.py)
        "rows": [quarter["rows"], full["rows"]],
        "parent_peak_rss_mib": [quarter["parent_peak_rss_mib"], full["parent_peak_rss_mib"]],
        "growth_kib_per_row": growth,
        "parent_peak_rss_mib_extrapolated_to_377110_rows": extrapolated,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=50_000, help="synthetic source JPEGs (the issue asks >= 50,000)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4, 8, 16], help="decode processes to time")
    parser.add_argument("--size", type=int, default=256, help="cache resolution")
    parser.add_argument("--distinct", type=int, default=0, help="films rendered; the rest are byte copies (0: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--root", type=Path, default=None, help="where the sources go (default: a temporary folder)")
    parser.add_argument("--json", type=Path, default=None, help="write the figures (with provenance) here")
    parser.add_argument("--note", default="", help="a sentence stored with the figures")
    parser.add_argument("--rows-check", type=int, default=24_000, help="rows of 64 px sources (0: skip that check)")
    args = parser.parse_args()
    if args.n < 64 or min(args.workers) < 1:
        raise SystemExit("error: --n must be >= 64 and every --workers >= 1")
    root = Path(tempfile.mkdtemp(prefix="prepare_scale.", dir=args.root))
    try:
        sources = make_sources(args.n, root, args.seed, distinct=args.distinct)
        print(f"sources: {sources}", flush=True)
        runs = [timed_prepare(root, args.n, args.size, workers) for workers in args.workers]
        print(runs, flush=True)
        flat = timed_prepare(root, max(64, args.n // 4), args.size, args.workers[0])
        rows_check = _rows_check(root / "tiny", args) if args.rows_check else None
        print(flat, rows_check, flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    one, (growth, extrapolated) = runs[0], _growth(flat, runs[0])  # full and quarter runs: the same workers
    figures = {
        "note": args.note,
        "sources": sources,
        "cache_size_px": args.size,
        "runs": runs,
        "memory_flat_check": {
            "quarter_rows": flat,
            "parent_peak_rss_ratio_full_vs_quarter": round(
                one["parent_peak_rss_mib"] / flat["parent_peak_rss_mib"], 2
            ),
            "parent_peak_rss_growth_kib_per_row": growth,  # the label table grows, not the cache (see memory_vs_rows)
            "parent_peak_rss_mib_extrapolated_to_377110_rows": extrapolated,
        },
        "memory_vs_rows": rows_check,
        "extrapolation": {
            "images": MIMIC_IMAGES,
            "hours_by_workers": {str(r["workers"]): r["hours_for_377110_images"] for r in runs},
            "assumes": "the measured images/s holds over 377,110 rows (the cache streams; the label table grows, see "
            "memory_vs_rows) and MIMIC films decode like this mix; MIMIC-CXR-JPG files are larger (~7-8 MP vs "
            "mean_megapixels here), so scale the hours by their decode cost before planning",
        },
    }
    if args.json:
        write_bench_result(args.json, "bench_prepare_scale", figures)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
