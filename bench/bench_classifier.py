"""Training throughput of the classifier's full loop vs the bare model step on the same batches.

* bare: ``model(x) -> ASL -> backward -> AdamW.step`` over pre-normalised
  tensors of exactly the batches the full loop sees (no augmentation, EMA,
  scheduler, Accelerate, validation or checkpointing);
* full: :func:`classifier.stage.fit_stage` (cached uint8 images, batch
  augmentation, Accelerate, warm-up/cosine, EMA, per-epoch val mAP and
  ``save_state`` checkpoint) — its whole wall time, overheads included.

Target: full / bare >= 0.9. Also prints peak memory (RSS; CUDA max allocated on GPU).
One-epoch runs are interleaved (bare, full, bare, full, ...) and the median of
the per-round ratios is reported, by wall clock and by process CPU time (the
latter is steadier when other jobs share the cores).

    python bench/bench_classifier.py [--data ../shared/data/nih-sample] [--size 64] [--n 2048] [--rounds 3]
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from classifier.config import EnsembleConfig, MemberConfig  # noqa: E402
from classifier.data import CachedSet, epoch_batches, real_rows, to_input  # noqa: E402
from classifier.losses import AsymmetricLoss, class_weights_from_prevalence  # noqa: E402
from classifier.models import build_model  # noqa: E402
from classifier.stage import ConsoleLog, Stage, fit_stage  # noqa: E402
from synth.manifest import annotated_classes, label_matrix, read_manifest  # noqa: E402
from synth.prepare import prepare_dataset  # noqa: E402


def bare(
    cfg: EnsembleConfig, member: MemberConfig, data: CachedSet, weights: torch.Tensor, epochs: int
) -> tuple[float, float]:
    """(wall, CPU) seconds per image of the bare step over the same epoch batches (inputs normalised outside the
    timer)."""
    torch.manual_seed(member.seed)
    model = build_model(member.arch, int(data.labels.shape[1]))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay, fused=True)
    loss_fn = AsymmetricLoss(class_weights=weights)
    batches = [
        (to_input(data.images[idx]), data.labels[idx], data.mask[idx])
        for e in range(epochs)
        for idx in epoch_batches(len(data), cfg.train.batch_size, e, member.seed)
    ]
    model.train()
    start, cpu = time.perf_counter(), time.process_time()
    for x, y, m in batches:
        loss = loss_fn(model(x), y, m)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    n = sum(len(b[0]) for b in batches)
    return (time.perf_counter() - start) / n, (time.process_time() - cpu) / n


def full(
    cfg: EnsembleConfig, member: MemberConfig, data: CachedSet, val: CachedSet, weights: torch.Tensor, folder: Path
) -> tuple[float, float]:
    """(wall, CPU) seconds per image of the whole fit_stage (model build, val mAP, checkpoint included)."""
    start, cpu = time.perf_counter(), time.process_time()
    fit_stage(
        cfg,
        member,
        Stage("train", data, cfg.train.epochs, "best"),
        val,
        weights,
        folder,
        None,
        fingerprint=str(time.time()),
        log=ConsoleLog(False),
    )
    n = sum(
        len(b) for e in range(cfg.train.epochs) for b in epoch_batches(len(data), cfg.train.batch_size, e, member.seed)
    )
    return (time.perf_counter() - start) / n, (time.process_time() - cpu) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "nih-sample")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--arch", default="convnext_atto")
    ap.add_argument("--n", type=int, default=2048, help="training rows (the NIH train split repeated to this many)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved (bare epoch, full epoch) pairs")
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        manifest = prepare_dataset(
            "nih", args.data / "Data_Entry_2017_v2020.csv", args.data / "images", tmp / "data", size=args.size
        )
        df = read_manifest(manifest)
        train = real_rows(df, "train")
        classes = annotated_classes(train)
        train = pd.concat([train] * (args.n // len(train) + 1)).head(args.n)
        train.attrs.update(df.attrs)
        t0 = time.perf_counter()
        data = CachedSet.from_frame(train, classes, args.size)
        cache_s = time.perf_counter() - t0
        val = CachedSet.from_frame(real_rows(df, "val"), classes, args.size)
        prevalence = np.nan_to_num(np.nanmean(label_matrix(real_rows(df, "train"), classes), axis=0))
        weights = torch.from_numpy(class_weights_from_prevalence(prevalence))
        cfg = EnsembleConfig(members=[MemberConfig(arch=args.arch, image_size=args.size)])
        cfg = replace(cfg, train=replace(cfg.train, epochs=1, batch_size=args.batch_size))
        member = cfg.members[0]

        bare(cfg, member, data, weights, 1)  # warm-up (allocator, kernels)
        rows = []
        for r in range(args.rounds):
            b, f = bare(cfg, member, data, weights, 1), full(cfg, member, data, val, weights, tmp / f"ckpt{r}")
            rows.append((b, f))
            print(
                f"round {r}: bare {1 / b[0]:6.1f} img/s (cpu {1 / b[1]:6.1f}), full {1 / f[0]:6.1f} img/s (cpu "
                f"{1 / f[1]:6.1f}), "
                f"ratio wall {b[0] / f[0]:.3f}, cpu {b[1] / f[1]:.3f}",
                flush=True,
            )
        rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    wall = float(np.median([b[0] / f[0] for b, f in rows]))
    cpu = float(np.median([b[1] / f[1] for b, f in rows]))
    print(
        f"classifier training, {args.arch} @ {args.size}px, batch {args.batch_size}, {args.n} rows, val {len(val)} "
        "rows, "
        f"{torch.get_num_threads()} threads, device cpu"
    )
    print(
        f"image cache     : {len(data)} images decoded in {cache_s:.1f}s ({data.images.numel() / 2**20:.1f} MiB uint8)"
    )
    print(f"bare model step : {np.median([1 / b[0] for b, _ in rows]):8.1f} img/s wall (median of {args.rounds})")
    print(
        f"full loop       : {np.median([1 / f[0] for _, f in rows]):8.1f} img/s wall (augmentation, EMA, Accelerate, "
        f"val mAP + save_state per epoch, model build)"
    )
    print(f"ratio full/bare : {wall:8.3f} wall, {cpu:.3f} CPU time  (target >= 0.9)")
    print(f"peak RSS        : {rss_mb:8.0f} MiB")
    if torch.cuda.is_available():
        print(f"peak CUDA alloc : {torch.cuda.max_memory_allocated() / 2**20:8.0f} MiB")


if __name__ == "__main__":
    main()
