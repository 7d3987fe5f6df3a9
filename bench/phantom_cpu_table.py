"""docs/results.md's phantom-cpu verdict blocks, each generated from the committed result of one fresh run.

    # after `synth ablate --config configs/ablation/phantom-cpu.yaml` finished in a fresh output root:
    python bench/phantom_cpu_table.py export outputs/reports/phantom-cpu   # -> bench/results/phantom-cpu.{json,md}
    synth results import bench/results/phantom-cpu.json                   # the arms table: the results store
    # a new block: write its two markers where it belongs in docs/results.md (the begin-marker names its result)
    #   <!-- phantom-cpu:begin bench/results/phantom-cpu.json (bench/phantom_cpu_table.py) -->
    #   <!-- phantom-cpu:end -->
    python bench/phantom_cpu_table.py docs              # rewrites every block from the file its begin-marker names
    python bench/phantom_cpu_table.py docs --check      # exit 1 naming each block that differs from its file's
    python bench/phantom_cpu_table.py show --result bench/results/phantom-cpu.json   # print one file's block

The arms table (mAP and paired Δs per arm) comes from the results store (``synth results docs``); this block adds
what the store does not hold: the target verdict, the generator's fidelity, the gate against the oracle, stage times.

``export`` keeps the run's ``results.json`` whole except the image grids (its ``provenance`` already
names the commit, config, versions and commands; ``timings`` the wall time of every stage) and its
``report.md`` without the image links (the figures are not committed). ``docs`` renders each block only from
the result file its begin-marker names (a ``.json``, relative to the repository, with its report ``.md`` beside
it), so docs/results.md cannot quote a number that file does not hold, and several runs' blocks can stand in
different sections. A begin-marker naming a file that does not exist is an error and nothing is written.
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
RESULT_JSON = REPO / "bench/results/phantom-cpu-61e7fbe.json"  # what ``show`` renders by default
DOC = REPO / "docs" / "results.md"
#: A block: ``<!-- phantom-cpu:begin SOURCE.json (bench/phantom_cpu_table.py) -->`` ... ``<!-- phantom-cpu:end -->``.
BEGIN = "<!-- phantom-cpu:begin {source} (bench/phantom_cpu_table.py) -->"
END = "<!-- phantom-cpu:end -->"
ANY_BEGIN = re.compile(r"<!-- phantom-cpu:begin\b.*?-->")
BLOCK = re.compile(
    r"<!-- phantom-cpu:begin (?P<source>\S+\.json) \(bench/phantom_cpu_table\.py\) -->"
    r"(?P<body>.*?)" + re.escape(END),
    re.S,
)


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


class DocsError(Exception):
    """docs/results.md's phantom-cpu markers cannot be rendered (one line to print)."""


def find_blocks(text: str) -> list[re.Match]:
    """Every block in ``text``, in order; a malformed, unclosed or nested marker raises ``DocsError``."""
    blocks = list(BLOCK.finditer(text))
    for m in blocks:
        if ANY_BEGIN.search(m["body"]):
            raise DocsError(f"line {_line(text, m)}: phantom-cpu block has no {END} before the next begin-marker")
    covered = {m.start() for m in blocks}
    for m in ANY_BEGIN.finditer(text):
        if m.start() not in covered:
            raise DocsError(
                f"line {_line(text, m)}: {m[0]} is not {BEGIN.format(source='SOURCE.json')} followed by {END}"
            )
    if text.count(END) != len(blocks):
        raise DocsError(f"{text.count(END)} {END} marker(s) for {len(blocks)} phantom-cpu block(s)")
    if not blocks:
        raise DocsError(f"no {BEGIN.format(source='SOURCE.json')} ... {END} block")
    return blocks


def _line(text: str, m: re.Match) -> int:
    return text.count("\n", 0, m.start()) + 1


def update_docs(check: bool, doc: Path = DOC) -> int:
    """Rewrite (or with ``check`` compare) every block from the result file its begin-marker names."""
    text = doc.read_text()
    try:
        blocks = find_blocks(text)
    except DocsError as e:
        print(f"{_rel(doc)}: {e}", file=sys.stderr)
        return 1
    missing = [m for m in blocks if not (REPO / m["source"]).is_file()]
    for m in missing:
        print(
            f"{_rel(doc)}:{_line(text, m)}: phantom-cpu block names {m['source']}, which does not exist",
            file=sys.stderr,
        )
    if missing:
        return 1
    pieces, stale, pos = [], [], 0
    for m in blocks:
        result_json = REPO / m["source"]
        body = f"\n{render(json.loads(result_json.read_text()), result_json)}\n"
        if body != m["body"]:
            stale.append(f"{_rel(doc)}:{_line(text, m)} (from {m['source']})")
        pieces += [text[pos : m.start("body")], body]
        pos = m.end("body")
    new = "".join(pieces) + text[pos:]
    if check:
        for name in stale:
            print(f"phantom-cpu block {name} is out of date: python bench/phantom_cpu_table.py docs")
        return 1 if stale else 0
    if new != text:
        write_text_atomic(doc, new)
    print(
        f"{_rel(doc)}: {len(blocks)} phantom-cpu block(s), {len(stale)} updated" + "".join(f"\n  {n}" for n in stale)
    )
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    ex = sub.add_parser("export", help="copy a finished run's results.json / report.md into bench/results")
    ex.add_argument("report_dir", type=Path)
    ex.add_argument("--result", type=Path, default=EXPORT_JSON, help="the .json to write (default %(default)s)")
    rd = sub.add_parser("docs", help="render every docs/results.md block from the result file its begin-marker names")
    rd.add_argument("--check", action="store_true", help="exit 1 naming each block that differs; write nothing")
    show = sub.add_parser("show", help="print one result file's block")
    show.add_argument("--result", type=Path, default=RESULT_JSON, help="the .json to render (default %(default)s)")
    args = ap.parse_args()
    if args.cmd == "export":
        export(args.report_dir, args.result)
        return 0
    if args.cmd == "show":
        print(render(json.loads(args.result.read_text()), args.result))
        return 0
    return update_docs(args.check)


if __name__ == "__main__":
    raise SystemExit(main())
