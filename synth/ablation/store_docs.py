"""The tables in README.md and docs/, generated from the results store (``synth results docs``).

A block is written by hand once as two marker comments naming the run (and, optionally, ``view=levers``: each
group's Δ against re-sampling instead of the group mAPs; ``also=ABLATION@COMMIT:ARM[,ARM]``: arms of another run
*on the same stages*, appended as rows that name their run — so the levers two runs measured on identical data,
generator and baselines read as one table)::

    <!-- results-table ablation=phantom-cpu commit=61e7fbe -->
    <!-- /results-table -->

and everything between them is rendered from the store's rows of that run (the last one recorded, where a commit
and ablation were recorded more than once). ``--check`` renders without writing and names every block whose text
differs, so a number edited by hand, or a store that moved on, fails the test suite instead of going stale.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from synth.errors import UserError
from synth.io import write_text_atomic

BLOCK = re.compile(r"(<!-- results-table (?P<args>[^>]*?) -->\n)(?P<body>.*?)(<!-- /results-table -->)", re.S)
#: the files whose blocks ``synth results docs`` keeps, relative to the repository
DOC_FILES: tuple[str, ...] = ("README.md", "docs/*.md")


#: what a block shows (``view=`` in its marker): every group's mAP and the Δs against both baselines, or, for a
#: run that measures levers of one recipe, each group's Δ against re-sampling (the question every lever asks)
VIEWS = ("groups", "levers")


@dataclass(frozen=True)
class Selector:
    """Which run a block shows (an ablation name and a commit prefix) and how (:data:`VIEWS`)."""

    ablation: str
    commit: str
    view: str = "groups"
    #: (ablation, commit, arms) of another run on the same stages whose arms the block appends
    also: tuple[str, str, tuple[str, ...]] | None = None

    @classmethod
    def parse(cls, args: str, where: str) -> "Selector":
        fields = dict(part.split("=", 1) for part in args.split() if "=" in part)
        if not fields.get("ablation") or not fields.get("commit"):
            raise UserError(f"{where}: a results-table marker needs ablation=NAME commit=HASH, got {args!r}")
        view = fields.get("view", "groups")
        if view not in VIEWS:
            raise UserError(f"{where}: view={view} is not one of {', '.join(VIEWS)}; fix the marker")
        also = None
        if "also" in fields:
            run, _, arms = fields["also"].partition(":")
            ablation, _, commit = run.partition("@")
            if not (ablation and commit and arms):
                raise UserError(f"{where}: also= reads ABLATION@COMMIT:ARM[,ARM], got {fields['also']!r}")
            also = (ablation, commit, tuple(arms.split(",")))
        return cls(fields["ablation"], fields["commit"], view, also)

    def rows(self, store: list[dict[str, str]], where: str) -> list[dict[str, str]]:
        return _run_rows(store, self.ablation, self.commit, where)

    def also_rows(self, store: list[dict[str, str]], where: str) -> list[dict[str, str]]:
        """The appended arms' rows (none without ``also=``); an arm that run lacks is an error naming it."""
        if self.also is None:
            return []
        ablation, commit, arms = self.also
        rows = _run_rows(store, ablation, commit, where)
        missing = [a for a in arms if not any(r["arm"] == a for r in rows)]
        if missing:
            raise UserError(f"{where}: run {ablation}@{commit} has no arm {', '.join(missing)}; fix also=")
        return [r for r in rows if r["arm"] in arms]


def _run_rows(store: list[dict[str, str]], ablation: str, commit: str, where: str) -> list[dict[str, str]]:
    """The store's rows of the last run recorded for this ablation and commit prefix."""
    matching = [r for r in store if r["ablation"] == ablation and r["commit"].startswith(commit)]
    if not matching:
        raise UserError(
            f"{where}: no run of {ablation!r} at commit {commit} in the results store; "
            "add it with `synth results import RUN_FOLDER`"
        )
    last = matching[-1]["run_id"]
    return [r for r in matching if r["run_id"] == last]


def _f(cell: str, fmt: str = "{:.3f}") -> str:
    return fmt.format(float(cell)) if cell else "–"


def _not_judged(row: dict[str, str]) -> bool:
    """The evidence rule judges none of the group's classes ("0/n"; stores written before the rule: never)."""
    return (row.get("judged") or "").startswith("0/")


def _delta(row: dict[str, str], key: str) -> str:
    if _not_judged(row) and row.get(f"d_{key}"):
        return "not judged"
    if not row.get(f"d_{key}"):
        return "–"
    return f"{float(row[f'd_{key}']):+.3f} [{float(row[f'd_{key}_lo']):+.3f}, {float(row[f'd_{key}_hi']):+.3f}]"


_AGAINST = {"real_resampled": "re-sampling", "real_only": "real only"}


def _verdict(row: dict[str, str]) -> str:
    """The tail verdict cell: the evidence rule's word, against which arm (empty for the baseline)."""
    word = row.get("verdict") or ""
    if not word or word == "not judged":
        return word or "–"
    return f"{word} vs {_AGAINST.get(row.get('verdict_against') or '', row.get('verdict_against') or '?')}"


def _evidence_line(rows: list[dict[str, str]]) -> str:
    """Which groups the verdicts stand on: judged classes per group (the rule: evaluation.min_test_positives)."""
    judged = {r["group"]: r.get("judged") for r in rows if r.get("judged")}
    averaged = {r["group"]: r.get("verdict_classes") for r in rows if r.get("verdict_classes")}
    if not judged:
        return "Evidence rule: not recorded for this run (stored before the rule existed)."
    parts = []
    for g in (g for g in ("head", "medium", "tail") if g in judged):
        wider = averaged.get(g) not in (None, judged[g].split("/")[0])
        note = f" (its Δ over {averaged[g]}: the run predates the rule's per-class bootstrap)" if wider else ""
        parts.append(f"{g} {judged[g].replace('/', ' of ')}{note}")
    return (
        "Classes judged by the evidence rule (enough test positives; synth/ablation/evidence.py): "
        + ", ".join(parts)
        + ". A group judged on none shows no Δ; the tail verdict is the report's (interval excludes 0 and "
        "|Δ| ≥ the minimum effect, over the judged classes)."
    )


def _stage_minutes(cell: str) -> str:
    total = sum(float(part.split("=", 1)[1]) for part in cell.split(";") if "=" in part)
    return f"{total / 60:.1f} min"


def render_block(
    rows: list[dict[str, str]], store_name: str, view: str = "groups", also: list[dict[str, str]] | None = None
) -> str:
    """One run as Markdown: a provenance line, then per arm either head / medium / tail mAP and the paired Δs
    (``groups``) or tail mAP and each group's paired Δ vs re-sampling (``levers``); ``also``: another run's arms on
    the same stages, appended with their run named in the label and in the provenance line."""
    first = rows[0]
    by_arm: dict[str, dict[str, dict[str, str]]] = {}
    for row in rows:
        by_arm.setdefault(row["arm"], {})[row["group"]] = row
    for row in also or []:
        tagged = {**row, "label": f"{row['label']} ({row['ablation']}@{row['commit'][:7]})"}
        by_arm.setdefault(f"{row['run_id']}/{row['arm']}", {})[row["group"]] = tagged
    lines = [
        f"Run `{first['run_id']}` of `{first['ablation']}` at commit `{first['commit'][:10]}` (config "
        f"`{first['config_hash']}`, {first['dataset']} data, {first['n_test']} test rows, classifier seeds "
        f"{first['classifier_seeds'] or '?'}, generator seed(s) {first['generator_seed'] or '?'}; stage time "
        f"{_stage_minutes(first['stage_seconds'])}). Generated from `{store_name}` by `synth results docs`.",
        "",
    ]
    if also:
        other = also[0]
        arms = ", ".join(dict.fromkeys(f"`{r['arm']}`" for r in also))
        lines[0] += (
            f" Appended: {arms} from run `{other['run_id']}` of `{other['ablation']}` at `{other['commit'][:10]}`, "
            "on the same stages (the marker's `also=`; the prose says how that was checked)."
        )
    if view == "levers":
        lines += [
            "| Arm | tail mAP | tail Δ vs re-sampled | medium Δ vs re-sampled | head Δ vs re-sampled | tail verdict |",
            "|---|---|---|---|---|---|",
        ]
        for groups in by_arm.values():
            tail = groups["tail"]
            deltas = " | ".join(_delta(groups[g], "real_resampled") for g in ("tail", "medium", "head"))
            lines.append(f"| {tail['label']} | {_f(tail['map'])} | {deltas} | {_verdict(tail)} |")
    else:
        lines += [
            "| Arm | head mAP | medium mAP | tail mAP | tail Δ vs real only | tail Δ vs real re-sampled "
            "| head Δ vs real only | tail verdict |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for groups in by_arm.values():
            head, medium, tail = groups["head"], groups["medium"], groups["tail"]
            lines.append(
                f"| {tail['label']} | {_f(head['map'])} | {_f(medium['map'])} | {_f(tail['map'])} | "
                f"{_delta(tail, 'real_only')} | {_delta(tail, 'real_resampled')} | {_delta(head, 'real_only')} | "
                f"{_verdict(tail)} |"
            )
    lines += ["", _evidence_line(rows)]
    return "\n".join(lines) + "\n"


def doc_files(repo: Path) -> list[Path]:
    files: list[Path] = []
    for pattern in DOC_FILES:
        files += sorted(repo.glob(pattern))
    return files


def update_docs(
    files: list[Path], store: list[dict[str, str]], store_name: str, check: bool, repo: Path | None = None
) -> list[str]:
    """Re-render every marked block and quoted figure (:mod:`synth.ablation.store_quotes`; a run's results.json is
    found from ``repo``, default this repository); with ``check`` write nothing. Returns ``file: what`` for each
    block or quote that was (or, with ``check``, would be) changed."""
    from synth.ablation.store import REPO
    from synth.ablation.store_quotes import QuoteSource, render_quotes

    quotes = QuoteSource(store, repo or REPO)
    changed: list[str] = []
    for path in files:
        text = path.read_text()

        def render(match: re.Match, path: Path = path) -> str:
            where = f"{path.name}: results-table {match['args']}"
            selector = Selector.parse(match["args"], where)
            rows, also = selector.rows(store, where), selector.also_rows(store, where)
            body = render_block(rows, store_name, selector.view, also)
            if body != match["body"]:
                changed.append(where)
            return match.group(1) + body + match.group(4)

        new, quoted = render_quotes(BLOCK.sub(render, text), quotes, path.name)
        changed += quoted
        if new != text and not check:
            write_text_atomic(path, new)
    return changed
