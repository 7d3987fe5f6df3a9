"""Does the generator draw the findings it is asked for? Oracle fidelity per class, per sampling setting.

    python bench/bench_generator_fidelity.py \
        --model outputs/ablations/phantom-cpu/generator-<key>/pipeline \
        --oracle outputs/ablations/phantom-cpu/oracle-<key>/oracle \
        --data outputs/ablations/phantom-cpu/data-<key>/prepared/manifest.csv \
        --classes tail --n 40 --guidance 4 7.5 12

Generates ``--n`` images per class for every guidance scale (same per-image
seeds, so the settings differ only in guidance) and prints, per class, the
share the phantom oracle detects, beside the same rate on the class's real
training positives (the judge's own sensitivity). It answers the question
the classifier ablation cannot afford to ask per setting: a filtered
synthetic set can only help a class the generator actually draws.
Phantom only (the oracle needs ground truth); CPU minutes at --n 40.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from synth.ablation.report import is_judgeable
from synth.ablation.stages import oracle_fidelity
from synth.generate import GenerateConfig, run
from synth.manifest import read_manifest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True, help="generator pipeline folder (synth finetune output)")
    ap.add_argument("--oracle", type=Path, required=True, help="oracle folder (synth oracle train / synth ablate)")
    ap.add_argument("--data", type=Path, required=True, help="the generator's prepared training manifest")
    ap.add_argument("--classes", nargs="+", default=["tail"], help="class names or a frequency group")
    ap.add_argument("--n", type=int, default=40, help="images per class and setting")
    ap.add_argument("--guidance", type=float, nargs="+", default=[4.0, 7.5, 12.0])
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--out", type=Path, default=Path("outputs/bench/generator_fidelity"))
    args = ap.parse_args()

    real = read_manifest(args.data)
    real_train = real[real["split"] == "train"]
    table: dict[float, dict] = {}
    for g in args.guidance:
        folder = args.out / f"guidance-{g:g}"
        start = time.time()
        manifest = run(args.model, args.classes, folder,
                       GenerateConfig(n=args.n, guidance_scale=g, steps=args.steps, batch_size=16, progress=False))
        seconds = time.time() - start
        generated = read_manifest(manifest)
        table[g] = json.loads(oracle_fidelity(args.oracle, real_train, generated, None, folder).read_text())["classes"]
        print(f"guidance {g:g}: {len(generated)} images in {seconds:.0f} s", flush=True)

    classes = sorted(next(iter(table.values())))
    head = f"{'class':28s} {'oracle AP':>9s} {'real':>6s} " + " ".join(f"{'g=' + format(g, 'g'):>7s}" for g in args.guidance)
    print(head)
    for cls in classes:
        first = table[args.guidance[0]][cls]
        cells = " ".join(f"{_pct(table[g][cls].get('generated')):>7s}" for g in args.guidance)
        print(f"{cls:28s} {_num(first.get('oracle_val_ap')):>9s} {_pct(first.get('real')):>6s} {cells}")
    judged = [c for c in classes if is_judgeable(table[args.guidance[0]][c])]
    for g in args.guidance:
        rates = [table[g][c]["generated"] for c in judged if table[g][c].get("generated") is not None]
        print(f"guidance {g:g}: mean fidelity over {len(rates)} judgeable classes = {sum(rates) / max(len(rates), 1):.3f}")


def _pct(v) -> str:
    return "–" if v is None else f"{100 * v:.0f}%"


def _num(v) -> str:
    return "–" if v is None else f"{v:.2f}"


if __name__ == "__main__":
    main()
