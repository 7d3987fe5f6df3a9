"""Numbers quoted in the prose of README.md and docs/, generated from the results store (``synth results docs``).

A table block (:mod:`synth.ablation.store_docs`) shows a run; prose quotes single figures of it, and a figure typed
by hand goes stale silently. So a quoted figure is written between two markers naming what it is::

    <!--q-run phantom-cpu@61e7fbe-->                       (the run the following quotes read, hidden)
    reaches <!--q synthetic_filtered_resampled tail map-->0.302<!--/q-->:
    <!--q synthetic_filtered_resampled tail d_real_resampled-->+0.002 [−0.010, +0.016]<!--/q--> vs re-sampling,
    p = <!--q synthetic_filtered_resampled tail p_real_resampled-->0.77<!--/q-->;
    Lobar Atelectasis <!--q class synthetic_filtered_resampled "Lobar Atelectasis" real_resampled-->+0.098<!--/q-->

and ``synth results docs`` rewrites the text between them (``--check``: names every quote that differs).

What a quote reads:

* ``ARM GROUP FIELD[:PART]``: a store cell of the run (:data:`synth.ablation.store.COLUMNS`). ``map`` prints
  ``0.302``; a Δ field (``d_real_only``, ``d_real_resampled``, ``d_verdict``) prints ``+0.002 [−0.010, +0.016]``,
  or its ``:mean`` / ``:lo`` / ``:hi`` alone (``:abs``: the mean without its sign, for "0.048 below"); a p field
  prints ``0.77`` or ``< 0.001``.
* ``class ARM CLASS [REF]``: the seed-mean per-class AP of ARM minus REF's (default ``real_only``), and
  ``ap ARM CLASS``: ARM's seed-mean AP, both from the run's results.json (the store row's ``source``), as the
  report's per-class table computes them.

* ``json [AGG] PATH[:FORMAT]``: a value of the run's results.json, or with a first token ``file=FILE`` of any
  committed JSON (a bench result), by a dotted PATH in which ``*`` matches every key (``filter.classes.*.kept``)
  and AGG (``sum``, ``count`` of true values — list items such as class names count —, ``min``, ``max``,
  ``mean``) reduces the matches. FORMAT: ``int`` (``2,527``), ``pct`` (a share as a whole percent, ``66``),
  ``min`` (seconds as minutes, ``53.6``), ``f1``/``f2``/``f3``, ``s2``/``s3`` (signed).
  A step ``KEY[FIELD=GLOB]`` keeps the items of the list at KEY whose FIELD matches GLOB, a shell-style glob over
  the whole value (:func:`fnmatch.fnmatchcase`, no brackets in it): ``?`` is one character, ``*`` any run of them,
  ``:`` and spaces included. So ``json sum timings.steps[step=real_only/seed-*].seconds:min`` is an arm's minutes
  as the report's stage totals count them, its ``real_only/seed-0: held-out predict`` rows included, and
  ``[step=real_only/seed-?]`` its training steps alone (seeds 0-9; ``[step=*/seed-?]``: every arm's).

A first token ``ABLATION@COMMIT`` reads another run than the ``q-run`` in force. Negative numbers print with the
minus sign (U+2212) the prose uses; the tables keep ASCII.
"""

from __future__ import annotations

import fnmatch
import json
import math
import re
import shlex
from pathlib import Path
from typing import Any

from synth.errors import UserError

QUOTE = re.compile(r"<!--q (?P<args>[^>]*?)-->(?P<body>.*?)<!--/q-->", re.S)
RUN = re.compile(r"<!--q-run (?P<run>[^ >]+) ?-->")
DELTA_FIELDS = ("d_real_only", "d_real_resampled", "d_verdict")
FILTER = re.compile(r"(?P<key>[^\[\]]+)\[(?P<field>[^\[\]=]+)=(?P<glob>[^\[\]]*)\]")


def _signed(value: float) -> str:
    return f"{value:+.3f}".replace("-", "−")


def _plain(value: float) -> str:
    return f"{value:.3f}".replace("-", "−")


class QuoteSource:
    """The store's rows and (on demand) each run's results.json, for one file's quotes."""

    def __init__(self, store: list[dict[str, str]], repo: Path):
        self.store, self.repo = store, repo
        self._results: dict[str, dict[str, Any]] = {}

    def run_rows(self, run: str, where: str) -> list[dict[str, str]]:
        from synth.ablation.store_docs import Selector

        ablation, _, commit = run.partition("@")
        if not ablation or not commit:
            raise UserError(f"{where}: a quote's run is ABLATION@COMMIT, got {run!r}")
        return Selector(ablation, commit).rows(self.store, where)

    def results(self, rows: list[dict[str, str]], where: str) -> dict[str, Any]:
        source = rows[0].get("source") or ""
        if not source:
            raise UserError(f"{where}: the store records no results.json for this run")
        return self.document(source, where)

    def document(self, source: str, where: str) -> Any:
        """A JSON file by its store ``source`` or repository-relative path, read once."""
        path = Path(source) if Path(source).is_absolute() else self.repo / source
        if source not in self._results:
            if not path.is_file():
                raise UserError(f"{where}: {source} is not at hand")
            self._results[source] = json.loads(path.read_text())
        return self._results[source]


def _store_value(rows: list[dict[str, str]], args: list[str], where: str) -> str:
    arm, group, field = args
    field, _, part = field.partition(":")
    row = next((r for r in rows if r["arm"] == arm and r["group"] == group), None)
    if row is None:
        raise UserError(f"{where}: the run has no row for arm {arm!r}, group {group!r}")
    if field not in row:
        raise UserError(f"{where}: the store has no column {field!r}")
    if not row[field]:
        raise UserError(f"{where}: {arm} / {group} / {field} is empty in the store (not measured, or not judged)")
    value = float(row[field])
    if field.startswith("p_"):
        return "< 0.001" if value < 0.001 else f"{value:.2f}" if value >= 0.01 else f"{value:.3f}"
    if field in DELTA_FIELDS:
        lo, hi = float(row[f"{field}_lo"]), float(row[f"{field}_hi"])
        parts = {"mean": _signed(value), "lo": _signed(lo), "hi": _signed(hi), "abs": _plain(abs(value)), "": None}
        if part not in parts:
            raise UserError(f"{where}: {field}:{part}: the part is one of mean, lo, hi, abs")
        return parts[part] or f"{_signed(value)} [{_signed(lo)}, {_signed(hi)}]"
    return _signed(value) if field.startswith("d_") else _plain(value)


def _class_value(results: dict[str, Any], kind: str, args: list[str], where: str) -> str:
    from synth.ablation.results import arm_by_name, per_class_mean

    if kind == "ap" and len(args) == 2:
        arm, cls, ref = args[0], args[1], None
    elif kind == "class" and len(args) in (2, 3):
        arm, cls, ref = args[0], args[1], args[2] if len(args) == 3 else "real_only"
    else:
        raise UserError(f"{where}: `{kind}` quotes read `{kind} ARM CLASS{' [REF]' if kind == 'class' else ''}`")
    if cls not in results["classes"]:
        raise UserError(f"{where}: {cls!r} is not a class of the run")
    try:
        mine = per_class_mean(arm_by_name(results, arm), cls, "ap")
        theirs = per_class_mean(arm_by_name(results, ref), cls, "ap") if ref else 0.0
    except KeyError as e:
        raise UserError(f"{where}: the run has no arm {e}") from None
    if math.isnan(mine) or math.isnan(theirs):
        raise UserError(f"{where}: {cls} was not scored in the run")
    return _signed(mine - theirs) if ref else _plain(mine)


AGGREGATES = {
    "sum": sum,
    "count": lambda values: sum(1 for v in values if v),
    "min": min,
    "max": max,
    "mean": lambda values: sum(values) / len(values),
}


def _walk(node: Any, keys: list[str]) -> list[Any]:
    """Every value at the dotted path ``keys`` below ``node``; ``*`` matches each key (or item) of a level, and
    ``KEY[FIELD=GLOB]`` the items of the list at KEY whose FIELD matches GLOB."""
    if not keys:
        return [node]
    key, rest = keys[0], keys[1:]
    kept = FILTER.fullmatch(key)
    key = kept["key"] if kept else key
    if isinstance(node, dict):
        children = list(node.values()) if key == "*" else [node[key]] if key in node else []
    elif isinstance(node, list):
        children = node if key == "*" else [node[int(key)]] if key.isdigit() and int(key) < len(node) else []
    else:
        children = []
    if kept:
        items = [item for child in children if isinstance(child, list) for item in child if isinstance(item, dict)]
        field, glob = kept["field"], kept["glob"]
        children = [i for i in items if field in i and fnmatch.fnmatchcase(str(i[field]), glob)]
    return [v for child in children for v in _walk(child, rest)]


def _format(value: float, fmt: str, where: str) -> str:
    if fmt == "int" or (not fmt and float(value).is_integer()):
        return f"{round(value):,}".replace("-", "−")
    if fmt == "pct":
        return f"{100 * value:.0f}"
    if fmt == "min":
        return f"{value / 60:.1f}"
    if fmt in ("f1", "f2", "f3", ""):
        return f"{value:.{fmt[1:] or 3}f}".replace("-", "−")
    if fmt in ("s2", "s3"):
        return f"{value:+.{fmt[1]}f}".replace("-", "−")
    raise UserError(f"{where}: format {fmt!r} is one of int, pct, min, f1, f2, f3, s2, s3")


def _json_value(document: Any, args: list[str], where: str) -> str:
    agg = args.pop(0) if len(args) == 2 and args[0] in AGGREGATES else None
    if len(args) != 1:
        raise UserError(f"{where}: a json quote reads `json [sum|count|min|max|mean] PATH[:FORMAT]`")
    head, close, tail = args[0].rpartition("]")  # a filter's glob may hold ':' and '.'
    tail, _, fmt = tail.partition(":")
    path = head + close + tail
    keys = re.split(r"\.(?![^\[]*\])", path)
    for key in keys:
        if ("[" in key or "]" in key) and not FILTER.fullmatch(key):
            raise UserError(f"{where}: a filter reads `KEY[FIELD=GLOB]` (a glob without brackets), got {key!r}")
    values = _walk(document, keys)
    if not values:
        raise UserError(f"{where}: nothing at {path!r}")
    if agg is None and len(values) > 1:
        raise UserError(f"{where}: {path!r} matches {len(values)} values; name how to reduce them (sum, count, ...)")
    try:
        if agg == "count":  # of true values of any kind: class names in a list count too
            value = float(sum(1 for v in values if v))
        else:
            value = AGGREGATES[agg]([float(v) for v in values]) if agg else float(values[0])
    except (TypeError, ValueError):
        raise UserError(f"{where}: {path!r} is not a number") from None
    return _format(value, fmt, where)


def _quote_value(args: list[str], run: str | None, source: QuoteSource, where: str) -> str:
    """What one quote's arguments read, as the prose prints it."""
    if args and args[0].startswith("file="):
        if args[1:2] != ["json"]:
            raise UserError(f"{where}: a file= quote reads `file=FILE json [AGG] PATH[:FORMAT]`")
        return _json_value(source.document(args[0][5:], where), args[2:], where)
    run = args.pop(0) if args and "@" in args[0] else run
    if run is None:
        raise UserError(f"{where}: no run named (put <!--q-run ABLATION@COMMIT--> before it)")
    rows = source.run_rows(run, where)
    if args and args[0] == "json":
        return _json_value(source.results(rows, where), args[1:], where)
    if args and args[0] in ("class", "ap"):
        return _class_value(source.results(rows, where), args[0], args[1:], where)
    if len(args) == 3:
        return _store_value(rows, args, where)
    raise UserError(
        f"{where}: a quote reads `ARM GROUP FIELD`, `class ARM CLASS [REF]`, `ap ARM CLASS` or `json PATH`"
    )


def render_quotes(text: str, source: QuoteSource, name: str) -> tuple[str, list[str]]:
    """``text`` with every quote re-rendered, and ``name: quote`` for each one whose text changed."""
    changed: list[str] = []
    out: list[str] = []
    run: str | None = None
    pos = 0
    for match in QUOTE.finditer(text):
        for marker in RUN.finditer(text, pos, match.start()):
            run = marker["run"]
        where = f"{name}: quote `{match['args']}`"
        value = _quote_value(shlex.split(match["args"]), run, source, where)
        if value != match["body"]:
            changed.append(where)
        out += [text[pos : match.start("body")], value]
        pos = match.end("body")
    return "".join(out) + text[pos:], changed
