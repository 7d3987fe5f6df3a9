"""Does the generator draw the findings it is asked for? Oracle fidelity per class, per sampling setting.

    python research/generator_fidelity.py \
        --model outputs/ablations/phantom-cpu/generator-<key>/pipeline \
        --oracle outputs/ablations/phantom-cpu/oracle-<key>/oracle \
        --data outputs/ablations/phantom-cpu/data-<key>/prepared/manifest.csv \
        --classes tail --n 40 --guidance 4 7.5 12 [--steps 10 15 25] [--json F]

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
from synth.inference import GenerateConfig, run
from synth.manifest import read_manifest


def judge_generator(
    model: Path, oracle: Path, real_train, classes: list[str], n: int, guidance: float, steps: int, folder: Path
) -> tuple[dict, float]:
    """Generate ``n`` images per class into ``folder`` and let the phantom oracle judge them (the ablation's
    :func:`~synth.ablation.stages.oracle_fidelity`): its per-class table and the seconds generation took."""
    start = time.time()
    cfg = GenerateConfig(n=n, guidance_scale=guidance, steps=steps, batch_size=16, progress=False)
    generated = read_manifest(run(model, classes, folder, cfg))
    seconds = time.time() - start
    return json.loads(oracle_fidelity(oracle, real_train, generated, None, folder).read_text())["classes"], seconds


def mean_fidelity(table: dict) -> tuple[float, int]:
    """Mean oracle detection rate over the judgeable classes of a :func:`judge_generator` table, and their count."""
    rates = [v["generated"] for v in table.values() if is_judgeable(v) and v.get("generated") is not None]
    return sum(rates) / max(len(rates), 1), len(rates)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True, help="generator pipeline folder (synth finetune output)")
    ap.add_argument("--oracle", type=Path, required=True, help="oracle folder (synth oracle train / synth ablate)")
    ap.add_argument("--data", type=Path, required=True, help="the generator's prepared training manifest")
    ap.add_argument("--classes", nargs="+", default=["tail"], help="class names or a frequency group")
    ap.add_argument("--n", type=int, default=40, help="images per class and setting")
    ap.add_argument("--guidance", type=float, nargs="+", default=[4.0, 7.5, 12.0])
    ap.add_argument("--steps", type=int, nargs="+", default=[25], help="sampling steps (DPM-Solver++), one or more")
    ap.add_argument("--out", type=Path, default=Path("outputs/research/generator_fidelity"))
    ap.add_argument("--json", type=Path, default=None, help="also write the table (with provenance) here")
    args = ap.parse_args()

    real = read_manifest(args.data)
    real_train = real[real["split"] == "train"]
    settings = [(g, s) for s in args.steps for g in args.guidance]
    table: dict[str, dict] = {}
    seconds: dict[str, float] = {}
    for g, steps in settings:
        name = f"g={g:g} steps={steps}"
        folder = args.out / f"guidance-{g:g}-steps-{steps}"
        table[name], seconds[name] = judge_generator(
            args.model, args.oracle, real_train, args.classes, args.n, g, steps, folder
        )
        print(f"{name}: {args.n} images per class in {seconds[name]:.0f} s", flush=True)

    names = list(table)
    classes = sorted(table[names[0]])
    print(f"{'class':28s} {'oracle AP':>9s} {'real':>6s} " + " ".join(f"{n:>16s}" for n in names))
    for cls in classes:
        first = table[names[0]][cls]
        cells = " ".join(f"{_pct(table[n][cls].get('generated')):>16s}" for n in names)
        print(f"{cls:28s} {_num(first.get('oracle_val_ap')):>9s} {_pct(first.get('real')):>6s} {cells}")
    judged = [c for c in classes if is_judgeable(table[names[0]][c])]
    summary = {}
    for n in names:
        mean, n_judged = mean_fidelity({c: table[n][c] for c in judged})
        summary[n] = {"mean_fidelity": mean, "n_judgeable": n_judged, "generate_seconds": round(seconds[n], 1)}
        print(
            f"{n}: mean fidelity over {n_judged} judgeable classes = {summary[n]['mean_fidelity']:.3f} "
            f"({seconds[n]:.0f} s to generate)"
        )
    if args.json:
        from synth.provenance import write_bench_result

        figures = {"summary": summary, "per_class": table, "n_per_class": args.n, "model": str(args.model)}
        write_bench_result(args.json, "generator_fidelity", figures)


def _pct(v) -> str:
    return "–" if v is None else f"{100 * v:.0f}%"


def _num(v) -> str:
    return "–" if v is None else f"{v:.2f}"


if __name__ == "__main__":
    main()
