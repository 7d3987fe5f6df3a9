"""Sanity of the phantom's difficulty: does the long tail hurt, and is every signature learnable?

    python research/phantom_difficulty.py                       # the full protocol (~25 min on 2 CPU cores)
    python research/phantom_difficulty.py --n 2000 --epochs 5   # a reduced run
    python research/phantom_difficulty.py --per-class --confusions 5   # + what the 5 weakest are mistaken for

Trains a ConvNeXt-atto (timm, random init, 1 input channel, 40 outputs, BCE)
twice with the same budget (``--n`` images, ``--epochs``) at ``--size`` px:

* natural: on label sets drawn like ``synth phantom`` (PadChest long tail);
* balanced: on ``--balanced`` sets (image i targets class i mod 40).

Both are evaluated on a held-out natural test set (``--n-test``) and on a
held-out balanced test set (``--n-test`` images, so every class has positives).
Groups (head/medium/tail) come from the natural TRAINING prevalence. Expected:
natural -> clearly higher mAP on head than on tail; balanced -> high AP on
every class on the balanced test. Per-class APs are printed with ``--per-class``.
Images are rendered in memory (no PNGs); train / test use disjoint seeds.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from synth.phantom import render_image, sample_balanced_label_sets, sample_label_sets
from synth.phantom.labels import label_matrix
from synth.taxonomy import CXR_LT_CLASSES, frequency_groups


def render(sets, seed_base: int, size: int) -> np.ndarray:
    return np.stack([render_image(s, seed_base + i, size) for i, s in enumerate(sets)])


def train(x: np.ndarray, y: np.ndarray, epochs: int, batch: int, lr: float, seed: int, log: str):
    import timm
    import torch

    torch.manual_seed(seed)
    model = timm.create_model("convnext_atto", pretrained=False, in_chans=1, num_classes=y.shape[1])
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    steps = epochs * ((len(x) + batch - 1) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    xt = torch.from_numpy(x).float().div_(255.0).sub_(0.5).div_(0.25).unsqueeze(1)
    yt = torch.from_numpy(y).float()
    g = torch.Generator().manual_seed(seed)
    model.train()
    t0 = time.perf_counter()
    for ep in range(epochs):
        perm = torch.randperm(len(xt), generator=g)
        total = 0.0
        for i in range(0, len(xt), batch):
            idx = perm[i : i + batch]
            xb = xt[idx]
            if torch.rand(1, generator=g).item() < 0.5:  # tiny augmentation: 1-2 px shifts
                xb = torch.roll(
                    xb,
                    shifts=(
                        int(torch.randint(-2, 3, (1,), generator=g)),
                        int(torch.randint(-2, 3, (1,), generator=g)),
                    ),
                    dims=(2, 3),
                )
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(xb), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        print(
            f"  [{log}] epoch {ep + 1}/{epochs} loss {total / len(xt):.4f} ({time.perf_counter() - t0:.0f}s)",
            flush=True,
        )
    return model


def predict(model, x: np.ndarray, batch: int = 256) -> np.ndarray:
    import torch

    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            xb = torch.from_numpy(x[i : i + batch]).float().div_(255.0).sub_(0.5).div_(0.25).unsqueeze(1)
            out.append(torch.sigmoid(model(xb)).numpy())
    return np.concatenate(out)


def per_class_ap(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import average_precision_score

    return {
        c: float(average_precision_score(y[:, j], p[:, j]))
        for j, c in enumerate(CXR_LT_CLASSES)
        if 0 < y[:, j].sum() < len(y)
    }


def confusions(y: np.ndarray, p: np.ndarray, sets, cls: str, top: int = 60, shown: int = 5) -> str:
    """Labels over-represented among ``cls``'s ``top`` highest-scoring negatives (ratio to their share
    among all negatives): which other signatures the model mistakes for this one."""
    from collections import Counter

    j = CXR_LT_CLASSES.index(cls)
    neg = np.where(y[:, j] == 0)[0]
    hard = neg[np.argsort(-p[neg, j])[:top]]
    in_hard = Counter(c for i in hard for c in sets[i])
    in_neg = Counter(c for i in neg for c in sets[i])
    ratio = sorted(((in_hard[c] / len(hard)) / (in_neg[c] / len(neg)), c) for c in in_hard if in_hard[c] >= 5)
    return ", ".join(f"{c} {r:.1f}x" for r, c in ratio[::-1][:shown])


def group_map(ap: dict[str, float], groups: dict[str, str]) -> dict[str, float]:
    out = {}
    for g in ("head", "medium", "tail"):
        vals = [v for c, v in ap.items() if groups.get(c) == g]
        out[g] = float(np.mean(vals)) if vals else float("nan")
    out["all"] = float(np.mean(list(ap.values())))
    return out


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000, help="training images per model")
    parser.add_argument("--n-test", type=int, default=4000)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--per-class", action="store_true", help="print every class's AP")
    parser.add_argument(
        "--confusions",
        type=int,
        default=0,
        metavar="K",
        help="for the K weakest classes of the balanced model, print what its top false positives contain",
    )
    return parser.parse_args()


def main() -> None:
    args = _parse_args()

    import torch

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    nat_sets = sample_label_sets(args.n, args.seed)
    bal_sets = sample_balanced_label_sets(args.n, 1, args.seed)
    test_nat_sets = sample_label_sets(args.n_test, args.seed + 1000)
    test_bal_sets = sample_balanced_label_sets(args.n_test, 1, args.seed + 1000)
    # disjoint seed ranges: train natural 0.., train balanced 10M.., tests 20M.. / 30M..
    x_nat, x_bal = render(nat_sets, 0, args.size), render(bal_sets, 10_000_000, args.size)
    x_tn, x_tb = render(test_nat_sets, 20_000_000, args.size), render(test_bal_sets, 30_000_000, args.size)
    y_nat, y_bal, y_tn, y_tb = (label_matrix(s) for s in (nat_sets, bal_sets, test_nat_sets, test_bal_sets))
    print(
        f"rendered {len(x_nat) + len(x_bal) + len(x_tn) + len(x_tb)} images at {args.size} px in "
        f"{time.perf_counter() - t0:.0f}s"
    )
    groups = frequency_groups(dict(zip(CXR_LT_CLASSES, y_nat.mean(0))))
    counts = {g: sum(v == g for v in groups.values()) for g in ("head", "medium", "tail")}
    print(
        f"natural training groups: {counts}; tail positives in training: "
        f"{int(sum(y_nat[:, j].sum() for j, c in enumerate(CXR_LT_CLASSES) if groups[c] == 'tail'))}"
    )

    results = {}
    for name, x, y in (("natural", x_nat, y_nat), ("balanced", x_bal, y_bal)):
        model = train(x, y, args.epochs, args.batch_size, args.lr, args.seed, name)
        p_tb = predict(model, x_tb)
        results[name] = {
            "natural test": per_class_ap(y_tn, predict(model, x_tn)),
            "balanced test": per_class_ap(y_tb, p_tb),
        }
        if name == "balanced":
            p_bal = p_tb

    print(
        f"\nConvNeXt-atto, {args.n} training images x {args.epochs} epochs at {args.size} px "
        f"(test: {args.n_test} natural + {args.n_test} balanced); mAP per group (groups from natural train prevalence)"
    )
    print(
        f"{'trained on':10s} {'evaluated on':14s} {'head':>6s} {'medium':>7s} {'tail':>6s} {'all':>6s} {'min AP':>18s}"
    )
    for name, evals in results.items():
        for test, ap in evals.items():
            m = group_map(ap, groups)
            worst = min(ap, key=ap.get)
            print(
                f"{name:10s} {test:14s} {m['head']:6.3f} {m['medium']:7.3f} {m['tail']:6.3f} {m['all']:6.3f} "
                f"{worst[:12]:>12s} {ap[worst]:.2f}"
            )
    if args.per_class:
        print("\nper-class AP (natural model on natural test | balanced model on balanced test)")
        for c in CXR_LT_CLASSES:
            a = results["natural"]["natural test"].get(c, float("nan"))
            b = results["balanced"]["balanced test"].get(c, float("nan"))
            print(f"  {c:28s} {groups[c]:6s} {a:6.3f} | {b:6.3f}")
    if args.confusions:
        ap = results["balanced"]["balanced test"]
        print("\nweakest classes of the balanced model: labels over-represented among its 60 top-scoring negatives")
        for c in sorted(ap, key=ap.get)[: args.confusions]:
            print(f"  {c:28s} {ap[c]:.3f}  {confusions(y_tb, p_bal, test_bal_sets, c)}")
    print(f"total {time.perf_counter() - t0:.0f}s")


if __name__ == "__main__":
    main()
