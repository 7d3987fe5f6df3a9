"""End-to-end timing of `synth demo` (README command 1): must fit ~12 min of compute on 2 CPU cores.

Runs the demo in a fresh output folder in a subprocess, then prints the wall time, the time of
each cached step (from its done.json) and the ratio to the budget. Not a test: it takes minutes.

    python bench/bench_demo.py [--output-root /tmp/demo-bench] [--budget-min 12]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--output-root", type=Path, default=None, help="Fresh folder for the demo outputs (default: a temp dir)."
    )
    parser.add_argument("--budget-min", type=float, default=12.0, help="Compute budget of the demo in minutes.")
    args = parser.parse_args()
    root = args.output_root or Path(tempfile.mkdtemp(prefix="synth-demo-bench-"))
    if root.exists() and any(root.iterdir()):
        print(f"{root} is not empty: a cached demo would not measure anything; pass a fresh --output-root")
        return 2

    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "synth", "demo", "--output-root", str(root)])
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        print(f"synth demo failed (exit {proc.returncode}) after {wall:.0f} s")
        return proc.returncode

    print(
        f"\nsynth demo wall time: {wall:.0f} s ({wall / 60:.1f} min); budget {args.budget_min:.0f} min; "
        f"ratio {wall / 60 / args.budget_min:.2f} ({'within' if wall / 60 <= args.budget_min else 'OVER'} budget)"
    )
    for marker in sorted((root / "ablations").rglob("done.json"), key=lambda p: p.stat().st_mtime):
        info = json.loads(marker.read_text())
        print(f"  {info['step']:<28} {info['seconds']:>7.1f} s")
    print(f"report: {root / 'reports' / 'demo' / 'report.html'}")
    if args.output_root is None:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
