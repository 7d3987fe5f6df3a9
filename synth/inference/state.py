"""An output folder's state on disk: the finished PNGs are the truth and ``manifest.csv`` follows them.

Resume starts from :func:`finished_images`; during a run :class:`ManifestSync` keeps the manifest (and, under
several processes, one shard per rank) in step with the PNGs.
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from synth.inference.planning import CONTROL, CONTROLS_DIR, IMAGES_DIR, ImageJob, Planner
from synth.manifest import read_manifest, write_manifest
from synth.taxonomy import CXR_LT_CLASSES, class_slug

MANIFEST_NAME = "manifest.csv"

_CLASS_BY_SLUG = {class_slug(c): c for c in CXR_LT_CLASSES}


def finished_images(out_dir: Path) -> dict[tuple, Path]:
    """:attr:`ImageJob.key` -> path of every completed PNG (``(class, index)``, a control's
    ``(class, index, "control")``); stray temp files of killed writes are removed."""
    done: dict[tuple, Path] = {}
    for folder, role in ((IMAGES_DIR, ()), (CONTROLS_DIR, (CONTROL,))):
        images = out_dir / folder
        if not images.exists():
            continue
        for stray in images.glob("*/.*.tmp"):
            stray.unlink(missing_ok=True)
        for path in images.glob("*/*.png"):
            match = re.fullmatch(r"(.+)_(\d{6})\.png", path.name)
            target = _CLASS_BY_SLUG.get(path.parent.name)
            if match and target and match.group(1) == path.parent.name:
                done[(target, int(match.group(2)), *role)] = path
    return done


def note_kept_images(out_dir: Path, done: dict[tuple[str, int], Path], counts: dict[str, int]) -> None:
    """Say what an existing ``--out`` keeps beyond this run's request (nothing is deleted, and the manifest
    lists every image in the folder): other classes' images and more images of a class than ``--n`` asks."""
    per_class: dict[str, int] = {}
    for c, *_ in (key for key in done if len(key) == 2):  # prompted images; controls follow them
        per_class[c] = per_class.get(c, 0) + 1
    other = {c: k for c, k in sorted(per_class.items()) if c not in counts}
    beyond = {c: k for c, k in per_class.items() if c in counts and k > counts[c]}
    if other:
        listed = ", ".join(f"{c} {k}" for c, k in other.items())
        print(
            f"note: --out {out_dir} already holds {sum(other.values())} image(s) of classes this run does not "
            f"ask for ({listed}); they are kept and stay in its manifest.csv. Use another --out for a separate set.",
            file=sys.stderr,
        )
    for c, k in beyond.items():
        print(
            f"note: --out {out_dir} already holds {k} {c} image(s), {counts[c]} asked: all {k} are kept "
            "(a smaller --n deletes nothing)",
            file=sys.stderr,
        )


def _shard_path(out_dir: Path, rank: int) -> Path:
    return out_dir / f"manifest.rank{rank}.csv"


def write_merged_manifest(out_dir: Path, frames: Sequence[pd.DataFrame], class_order: Sequence[str]) -> Path:
    """In-memory rows + every shard on disk, restricted to files that exist, one row per file."""
    shards = [read_manifest(p) for p in sorted(out_dir.glob("manifest.rank*.csv"))]
    parts = [f for f in [*frames, *shards] if not f.empty]
    df = pd.concat(parts, ignore_index=True) if parts else frames[0]
    df = df.drop_duplicates("fpath", keep="last")
    df = df.loc[np.array([(out_dir / f).exists() for f in df["fpath"]], dtype=bool)]
    order = {c: i for i, c in enumerate(class_order)}
    df = df.assign(_o=df["target_class"].map(lambda c: order.get(c, len(order))))
    df = df.sort_values(["_o", "fpath"]).drop(columns="_o")
    return write_manifest(df.reset_index(drop=True), out_dir / MANIFEST_NAME)


class ManifestSync:
    """Keeps the on-disk manifest in step with the PNGs while costing at most ~5 % of the run.

    The main process rewrites ``manifest.csv`` (its rows + the other ranks' shards);
    other ranks rewrite their shard. A write happens after a batch unless the last
    one was less than ``20 x its own duration`` ago, so a 10k-row manifest does not
    throttle a fast GPU; at a crash the manifest can lag the PNGs by those batches,
    which the reconciliation on restart recovers from the files.
    """

    def __init__(
        self,
        out_dir: Path,
        planner: Planner,
        fingerprint: str,
        base: pd.DataFrame,
        class_order: Sequence[str],
        rank: int,
    ) -> None:
        self.out_dir, self.planner, self.fingerprint = out_dir, planner, fingerprint
        self.base, self.class_order, self.rank = base, class_order, rank
        self.rows: list[dict[str, Any]] = []
        self._last_end = self._last_cost = 0.0

    def add(self, jobs: Sequence[ImageJob], force: bool = False) -> None:
        self.rows += [self.planner.row(j, self.fingerprint) for j in jobs]
        start = time.perf_counter()
        if not force and start - self._last_end < 20 * self._last_cost:
            return
        own = self.planner.frame_from_rows(self.rows)
        if self.rank == 0:
            write_merged_manifest(self.out_dir, [self.base, own], self.class_order)
        else:
            write_manifest(own, _shard_path(self.out_dir, self.rank))
        self._last_end = time.perf_counter()
        self._last_cost = self._last_end - start
