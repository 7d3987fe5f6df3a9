"""docs/results.md's phantom-cpu verdict block, generated from the committed result of one fresh run.

    # after `synth ablate --config configs/ablation/phantom-cpu.yaml` finished in a fresh output root:
    python bench/phantom_cpu_table.py export outputs/reports/phantom-cpu   # -> bench/results/phantom-cpu.{json,md}
    synth results import bench/results/phantom-cpu.json                   # the arms table: the results store
    python bench/phantom_cpu_table.py docs --result bench/results/phantom-cpu.json   # rewrites docs/results.md's block
    python bench/phantom_cpu_table.py docs --check      # exit 1 if the block differs from RESULT_JSON's (the default)

The arms table (mAP and paired Δs per arm) comes from the results store (``synth results docs``); this block adds
what the store does not hold: the target verdict, the generator's fidelity, the gate against the oracle, stage times.

``export`` keeps the run's ``results.json`` whole except the image grids (its ``provenance`` already
names the commit, config, versions and commands; ``timings`` the wall time of every stage) and its
``report.md`` without the image links (the figures are not committed). ``docs`` renders only from one result file
(``--result``, a ``.json`` with its report ``.md`` beside it; default ``bench/results/phantom-cpu-61e7fbe.json``, the
run the block describes today: move RESULT_JSON with the block), so docs/results.md cannot quote a number that file
does not hold.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from synth.ablation.report.formatting import fmt_rho  # noqa: E402
from synth.ablation.results import (  # noqa: E402
    ARM_LABELS,
    GATE_MIN_SPEARMAN,
    GATE_MUST_DROP_BELOW,
    GATE_MUST_KEEP_FROM,
    gate_agreement,
    gate_benefit,
    is_judgeable,
    target_arm,
    target_check,
)
from synth.ablation.store import stage_totals  # noqa: E402
from synth.io import write_json_atomic, write_text_atomic  # noqa: E402

EXPORT_JSON = REPO / "bench/results/phantom-cpu.json"  # where ``export`` puts a new run (``--result`` to change)
RESULT_JSON = REPO / "bench/results/phantom-cpu-61e7fbe.json"  # what ``docs`` / ``show`` render by default
BEGIN, END = "<!-- phantom-cpu:begin (bench/phantom_cpu_table.py) -->", "<!-- phantom-cpu:end -->"


def _rel(path: Path) -> str:
    """``path`` as the docs name it: relative to the repository when it lies inside."""
    path = path.resolve()
    return path.relative_to(REPO).as_posix() if path.is_relative_to(REPO) else str(path)


def export(report_dir: Path, result_json: Path) -> None:
    results = json.loads((report_dir / "results.json").read_text())
    results.pop("grids", None)
    write_json_atomic(result_json, results)
    md = (report_dir / "report.md").read_text()
    md = "\n".join(line for line in md.splitlines() if not re.search(r"!\[[^\]]*\]\(", line))
    result_json.with_suffix(".md").write_text(md + "\n")
    print(f"wrote {_rel(result_json)} and {_rel(result_json.with_suffix('.md'))}")


def _seeds(results: dict) -> str:
    n = len(results["arms"][0]["seeds"])
    return f"{n} seed{'s' if n != 1 else ''}"


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


def render(results: dict, result_json: Path) -> str:
    """The Markdown block: provenance, target verdict, fidelity, gate vs oracle, stage times."""
    prov = results.get("provenance", {})
    lines = [
        f"One fresh run of `configs/ablation/phantom-cpu.yaml` at commit `{prov.get('git_commit', '?')[:10]}` "
        f"({_seeds(results)}; test = {results['dataset'].get('n_test', '?')} rows). "
        f"Source: `{_rel(result_json)}` (report: `{_rel(result_json.with_suffix('.md'))}`).",
        "",
        _target_line(results),
        "",
    ]
    lines += _fidelity_lines(results)
    lines += _timing_lines(results)
    return "\n".join(lines)


def _target_line(results: dict) -> str:
    check = target_check(results)
    if check is None:
        return ""
    detail = "; ".join(f"{name}: {'yes' if ok else 'no'}" for name, ok in check.checks)
    arm = target_arm(results)
    return f"**Target ({ARM_LABELS.get(arm, arm)}): {'MET' if check.met else 'NOT MET'}** — {detail}."


def _fidelity_lines(results: dict) -> list[str]:
    fid = (results.get("fidelity") or {}).get("classes", {})
    judged = {
        c: v
        for c, v in fid.items()
        if results["groups"].get(c) == "tail" and is_judgeable(v) and v.get("generated") is not None
    }
    lines = []
    if judged:
        mean = sum(v["generated"] for v in judged.values()) / len(judged)
        real = [v["real"] for v in judged.values() if v.get("real") is not None]
        lines.append(
            f"Generator fidelity on the {len(judged)} judgeable tail classes (phantom oracle, evaluation only): "
            f"**{100 * mean:.0f} %** of generated images show the prompted finding (real training positives: "
            f"{100 * sum(real) / max(len(real), 1):.0f} %)."
        )
    gate = gate_agreement(results)
    if gate is not None:
        lines.append(
            f"Transfer gate (real data only) vs oracle fidelity on {len(gate.rows)} classes: "
            f"Spearman ρ = {fmt_rho(gate.spearman, '–')} "
            f"(bar ≥ {GATE_MIN_SPEARMAN}); fidelity < {GATE_MUST_DROP_BELOW:.0%} but kept: "
            f"{', '.join(gate.unfaithful_kept) or 'none'}; fidelity ≥ {GATE_MUST_KEEP_FROM:.0%} but dropped: "
            f"{', '.join(gate.faithful_dropped) or 'none'} — **{'MET' if gate.met else 'NOT MET'}**."
        )
    benefit = gate_benefit(results)
    if benefit is not None:
        lines.append(
            f"Which kept sets helped (per-class ΔAP of {ARM_LABELS.get(benefit.arm, benefit.arm)} vs real only, "
            f"{len(benefit.rows)} tail classes): Spearman ρ with the gate's AUROC = "
            f"{fmt_rho(benefit.spearman_gate, '–')}, "
            f"with the oracle's fidelity = {fmt_rho(benefit.spearman_fidelity, '–')}."
        )
    return lines + [""] if lines else []


def _timing_lines(results: dict) -> list[str]:
    timings = results.get("timings") or {}
    steps = timings.get("steps") or []
    if not steps:
        return []
    groups = stage_totals(results)
    total = sum(groups.values())
    this_run = timings.get("this_run_seconds")
    cells = ", ".join(f"{k} {_minutes(v)}" for k, v in groups.items())
    cached = sum(1 for s in steps if s.get("cached"))
    how = (
        f"; {cached} step(s) came from the runner's own cache of an earlier invocation in the same output root, "
        f"this invocation took {_minutes(this_run)}"
        if cached and this_run
        else ""
    )
    commands = (results.get("provenance") or {}).get("commands") or []
    return [
        f"Sum of the stages' wall times on 2 CPU cores: **{_minutes(total)}**{how} ({cells}).",
        f"Command: `{commands[0]}`." if commands else "",
        "",
    ]


def update_docs(result_json: Path, check: bool) -> int:
    doc = REPO / "docs" / "results.md"
    text = doc.read_text()
    if BEGIN not in text or END not in text:
        print(f"docs/results.md has no {BEGIN} ... {END} block", file=sys.stderr)
        return 1
    block = render(json.loads(result_json.read_text()), result_json)
    new = re.sub(re.escape(BEGIN) + r".*?" + re.escape(END), lambda _: f"{BEGIN}\n{block}\n{END}", text, flags=re.S)
    if check:
        if new != text:
            fix = f"python bench/phantom_cpu_table.py docs --result {_rel(result_json)}"
            print(f"docs/results.md's phantom-cpu block is out of date (or shows another run): {fix}")
            return 1
        return 0
    write_text_atomic(doc, new)
    print("docs/results.md phantom-cpu block updated")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    ex = sub.add_parser("export", help="copy a finished run's results.json / report.md into bench/results")
    ex.add_argument("report_dir", type=Path)
    ex.add_argument("--result", type=Path, default=EXPORT_JSON, help="the .json to write (default %(default)s)")
    rd = sub.add_parser("docs", help="render docs/results.md's block from one committed result file")
    rd.add_argument("--check", action="store_true")
    show = sub.add_parser("show", help="print the block")
    for p in (rd, show):
        p.add_argument("--result", type=Path, default=RESULT_JSON, help="the .json to render (default %(default)s)")
    args = ap.parse_args()
    if args.cmd == "export":
        export(args.report_dir, args.result)
        return 0
    if args.cmd == "show":
        print(render(json.loads(args.result.read_text()), args.result))
        return 0
    return update_docs(args.result, args.check)


if __name__ == "__main__":
    raise SystemExit(main())
