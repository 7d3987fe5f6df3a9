"""How long does the patient bootstrap of the ablation's evaluation take per class?

The ablation scores every arm x seed (and every paired comparison, and the per-class "do no harm" check) with
1,000 patient resamples over ~22,000 test patients: with 5 arms x 3 seeds that is ~100 passes over the 40 classes.
This times :func:`classifier.metrics.resampled_ap` for a head-, medium- and tail-like class with the resample
counts in the layout ``patient_resamples`` returns (Fortran order) and in C order (the layout before stop 26, which
made scipy copy the whole (patients, n_boot) matrix on every call), and checks both give the same APs.

    python bench/bench_bootstrap.py --patients 22000 --n-boot 1000
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--patients", type=int, default=22000)
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    from classifier.metrics import patient_resamples, resampled_ap

    rng = np.random.default_rng(0)
    resamples = patient_resamples(np.arange(args.patients), args.n_boot, seed=0)
    c_order = np.ascontiguousarray(resamples.counts)
    rows = []
    for prevalence in (0.2, 0.01, 0.001):
        y = (rng.random(args.patients) < prevalence).astype(np.float64)
        p = np.round(rng.random(args.patients) * 0.5 + 0.5 * y * rng.random(args.patients), 4)
        timings = {}
        values = {}
        for name, counts in (("fortran (current)", resamples.counts), ("c-order (before)", c_order)):
            best = float("inf")
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                values[name] = resampled_ap(y, p, resamples.codes, counts)
                best = min(best, time.perf_counter() - t0)
            timings[name] = best
        same = bool(np.allclose(*values.values(), equal_nan=True))
        rows.append({"prevalence": prevalence, "seconds": timings, "same_aps": same})
        now, before = timings["fortran (current)"], timings["c-order (before)"]
        print(
            f"prevalence {prevalence:<6} current {now * 1e3:7.1f} ms   before {before * 1e3:7.1f} ms   "
            f"x{before / now:.1f}   same APs: {same}"
        )
    print(json.dumps({"patients": args.patients, "n_boot": args.n_boot, "rows": rows}))


if __name__ == "__main__":
    main()
