"""Render speed of the phantom benchmark (target: >= 100 images/s at 128 px on the 2-core CPU machine).

    python bench/bench_phantom.py [--n 2000] [--size 128]

Three figures, each on the same label sets (sampled like ``synth phantom``):

* ``render_image`` alone, in this process (pure numpy rendering);
* ``render_dataset`` with 1 worker (rendering + PNG encoding + CSV/truth/meta writes);
* ``render_dataset`` with 2 workers (spawned processes; output byte-identical to 1 worker,
  which the bench also checks).
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import tempfile
import time
from pathlib import Path

from synth.phantom import render_dataset, render_image, sample_label_sets


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(p.name.encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--size", type=int, default=128)
    args = parser.parse_args()

    sets = sample_label_sets(args.n, 0)
    render_image(sets[0], 0, args.size)  # warm caches (grids, marking table)
    t = time.perf_counter()
    for i, s in enumerate(sets):
        render_image(s, i, args.size)
    render_only = args.n / (time.perf_counter() - t)

    tmp = Path(tempfile.mkdtemp(prefix="bench_phantom_"))
    try:
        rates, digests = {}, {}
        for workers in (1, 2):
            t = time.perf_counter()
            labels = render_dataset(args.n, args.size, 0, tmp / f"w{workers}", workers=workers)
            rates[workers] = args.n / (time.perf_counter() - t)
            digests[workers] = _digest(labels.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"phantom render speed at {args.size} px, n={args.n}")
    print(f"  render_image only (1 process):        {render_only:8.1f} images/s")
    print(f"  render_dataset, 1 worker (with PNGs): {rates[1]:8.1f} images/s")
    print(
        f"  render_dataset, 2 workers:            {rates[2]:8.1f} images/s  (x{rates[2] / rates[1]:.2f} vs 1 worker)"
    )
    print(
        f"  target >= 100 images/s: {'met' if max(rates.values()) >= 100 else 'NOT met'} "
        f"(best {max(rates.values()):.1f}); 1 vs 2 workers byte-identical: {digests[1] == digests[2]}"
    )


if __name__ == "__main__":
    main()
