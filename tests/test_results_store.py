"""The results store (synth/ablation/store.py) and the tables generated from it (synth/ablation/store_docs.py)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

from ablation_fakes import FakeStages, write_config
from card_checks import check_card
from report_fixtures import make_results
from typer.testing import CliRunner

from synth.ablation.config import load_ablation_config
from synth.ablation.runner import run_ablation
from synth.ablation.store import REPO, REPO_STORE, append_rows, read_store, run_rows
from synth.ablation.store_docs import BLOCK, doc_files, update_docs
from synth.cli import app


def _results_file(tmp_path: Path) -> Path:
    results = make_results(tmp_path / "run")
    results["name"] = "toy"
    results["provenance"] = {"git_commit": "abc1234def", "config": {"name": "toy", "seeds": [0, 1, 2]}}
    results["timings"] = {
        "steps": [{"step": "generator", "seconds": 60.0}, {"step": "real_only/seed-0", "seconds": 30}]
    }
    path = tmp_path / "run" / "results.json"
    path.write_text(json.dumps(results))
    return path


def _docs_over(tmp_path: Path, src: Path, results: dict, store: Path) -> tuple[Path, list[str]]:
    """Write ``results`` to ``src``, import it into ``store``; return a README path in an empty repo and the
    ``synth results docs`` arguments that render it from the store."""
    src.write_text(json.dumps(results))
    CliRunner().invoke(app, ["results", "import", str(src), "--store", str(store)])
    repo = tmp_path / "repo"
    repo.mkdir()
    return repo / "README.md", ["results", "docs", "--store", str(store), "--repo", str(repo)]


def test_import_writes_one_header_and_replaces_a_reimported_run(tmp_path: Path):
    src, store = _results_file(tmp_path), tmp_path / "store" / "runs.csv"
    for _ in range(2):
        done = CliRunner().invoke(app, ["results", "import", str(src.parent), "--store", str(store)])
        assert done.exit_code == 0, done.output
    lines = store.read_text().splitlines()
    assert sum(line.startswith("run_id,") for line in lines) == 1
    rows = read_store(store)
    assert len(rows) == 4 * 4  # 4 arms x overall/head/medium/tail, once although imported twice
    tail = next(r for r in rows if r["arm"] == "synthetic_filtered" and r["group"] == "tail")
    assert tail["commit"] == "abc1234def" and tail["classifier_seeds"] == "0,1,2"
    assert float(tail["d_real_only"]) > 0 and float(tail["d_real_only_lo"]) <= float(tail["d_real_only"])
    assert tail["stage_seconds"] == "generator=60.0;real_only=30.0"
    assert not list(store.parent.glob(".*.tmp"))  # nothing half-written left beside it


def test_append_keeps_other_runs(tmp_path: Path):
    store = tmp_path / "runs.csv"
    results = json.loads(_results_file(tmp_path).read_text())
    append_rows(store, run_rows(results))
    results["provenance"]["git_commit"] = "fff0000"
    append_rows(store, run_rows(results))
    assert {r["commit"] for r in read_store(store)} == {"abc1234def", "fff0000"}


def _doc(tmp_path: Path, store: Path) -> Path:
    CliRunner().invoke(app, ["results", "import", str(_results_file(tmp_path)), "--store", str(store)])
    doc = tmp_path / "repo" / "README.md"
    doc.parent.mkdir()
    doc.write_text("# toy\n<!-- results-table ablation=toy commit=abc1234 -->\n<!-- /results-table -->\nend\n")
    return doc


def test_docs_renders_the_block_and_check_fails_when_a_number_is_edited(tmp_path: Path):
    store = tmp_path / "runs.csv"
    doc = _doc(tmp_path, store)
    args = ["results", "docs", "--store", str(store), "--repo", str(doc.parent)]
    done = CliRunner().invoke(app, args)
    assert done.exit_code == 0, done.output
    text = doc.read_text()
    tail = next(r for r in read_store(store) if r["arm"] == "synthetic_filtered" and r["group"] == "tail")
    assert f"{float(tail['map']):.3f}" in text and text.endswith("<!-- /results-table -->\nend\n")
    assert CliRunner().invoke(app, [*args, "--check"]).exit_code == 0

    stated = f"{float(tail['map']):.3f}"
    doc.write_text(text.replace(stated, f"{float(stated) + 0.001:.3f}"))
    done = CliRunner().invoke(app, [*args, "--check"])
    assert done.exit_code == 1 and "out of date: README.md" in done.output


def test_docs_names_a_run_the_store_lacks(tmp_path: Path):
    store = tmp_path / "runs.csv"
    doc = _doc(tmp_path, store)
    doc.write_text(doc.read_text().replace("commit=abc1234", "commit=0000000"))
    done = CliRunner().invoke(app, ["results", "docs", "--store", str(store), "--repo", str(doc.parent)])
    assert done.exit_code != 0 and "synth results import" in done.output


def test_every_table_in_readme_and_docs_matches_the_committed_store():
    files = doc_files(REPO)
    blocks = sum(len(BLOCK.findall(f.read_text())) for f in files)
    assert blocks >= 3  # README's current answer and one per committed run in docs/results.md
    assert update_docs(files, read_store(REPO_STORE), "bench/results/runs.csv", check=True) == []


def test_ablate_records_its_run_in_the_store_under_the_output_root(tmp_path: Path, monkeypatch):
    FakeStages(monkeypatch)
    cfg = load_ablation_config(write_config(tmp_path, seeds=[0], arms=["real_only", "synthetic_filtered"]))
    run_ablation(cfg, log=lambda m: None)
    store = Path(cfg.output_root) / "results" / "runs.csv"
    with store.open() as f:
        rows = list(csv.DictReader(f))
    assert {(r["arm"], r["group"]) for r in rows} >= {("real_only", "tail"), ("synthetic_filtered", "tail")}
    assert rows[0]["ablation"] == cfg.name and rows[0]["classifier_seeds"] == "0"
    run_ablation(cfg, log=lambda m: None)  # a resumed (fully cached) run replaces its rows
    assert len(read_store(store)) == len(rows)
    text = check_card(cfg.report_dir, "ablation", "| Arm | head mAP |", grid=True)  # the report folder's card
    assert f"Ablation `{cfg.name}`" in text


def test_the_phantom_cpu_verdict_block_matches_its_committed_result():
    """docs/results.md's target / fidelity / gate / timing blocks come from the result file each begin-marker names."""
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "phantom_cpu_table.py"), "docs", "--check"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_committed_ablation_result_is_in_the_store():
    """bench/results/README.md says runs.csv holds every committed `synth ablate` result: a results.json committed
    without `synth results import` would leave its numbers out of every generated table."""
    sources = {r["source"] for r in read_store(REPO_STORE)}
    for path in sorted((REPO / "bench" / "results").glob("*.json")):
        data = json.loads(path.read_text())
        if isinstance(data, dict) and "arms" in data and "verdict_baseline" in data:
            assert f"bench/results/{path.name}" in sources, f"{path.name}: run `synth results import {path}`"


def test_readme_stays_short_and_keeps_its_two_commands():
    readme = (REPO / "README.md").read_text().splitlines()
    assert len(readme) <= 250
    assert "pip install torch==2.14.1 torchvision==0.29.1 -e . && synth demo" in readme
    assert "pip install torch==2.14.1 torchvision==0.29.1 -e '.[dev]' && python -m pytest -q" in readme


def _store_with_evidence(tmp_path: Path, tail_positives: int) -> Path:
    """The toy run with the evidence rule applied: every tail class has ``tail_positives`` test positives."""
    from synth.ablation.evidence import evidence_section

    src = _results_file(tmp_path)
    results = json.loads(src.read_text())
    positives = {c: (tail_positives if g == "tail" else 40) for c, g in results["groups"].items()}
    results["evidence"] = evidence_section(results["groups"], positives, 10, 0.005)
    src.write_text(json.dumps(results))
    store = tmp_path / "runs.csv"
    append_rows(store, run_rows(results))
    return store


def _rendered_table(tmp_path: Path, store: Path) -> str:
    doc = tmp_path / "repo" / "README.md"
    doc.parent.mkdir(exist_ok=True)
    doc.write_text("<!-- results-table ablation=toy commit=abc1234 -->\n<!-- /results-table -->\n")
    update_docs([doc], read_store(store), "runs.csv", check=False)
    return doc.read_text()


def test_a_group_the_evidence_rule_does_not_judge_gets_no_delta_in_the_store_tables(tmp_path: Path):
    """The NIH sample's table printed "+0.043 [+0.029, +0.138]" for a tail of one test positive: the store keeps
    the all-class Δ (a number measured) but its tables say "not judged", as the report does."""
    store = _store_with_evidence(tmp_path, tail_positives=3)
    tail = next(r for r in read_store(store) if r["arm"] == "synthetic_filtered" and r["group"] == "tail")
    assert tail["judged"].startswith("0/") and tail["verdict"] == "not judged" and tail["d_verdict"] == ""
    assert tail["d_real_only"] != ""  # measured, stored, not shown as a verdict
    text = _rendered_table(tmp_path, store)
    row = next(line for line in text.splitlines() if line.startswith("| synthetic_filtered |"))
    assert row.count("not judged") == 2 and f"{float(tail['d_real_only']):+.3f}" not in row
    assert ", tail 0 of " in text


def test_a_judged_tail_carries_the_reports_verdict_into_the_store_tables(tmp_path: Path):
    store = _store_with_evidence(tmp_path, tail_positives=40)
    rows = read_store(store)
    tail = next(r for r in rows if r["arm"] == "synthetic_filtered" and r["group"] == "tail")
    n_tail = int(tail["judged"].split("/")[1])
    assert tail["judged"] == f"{n_tail}/{n_tail}" and tail["verdict_classes"] == str(n_tail)
    assert tail["verdict"] == "helps" and tail["verdict_against"] == "real_only"  # the fixture gains +0.08
    assert tail["d_verdict"] == tail["d_real_only"]
    base = next(r for r in rows if r["arm"] == "real_only" and r["group"] == "tail")
    assert base["verdict"] == "" and base["judged"] == tail["judged"]
    row = next(
        line for line in _rendered_table(tmp_path, store).splitlines() if line.startswith("| synthetic_filtered |")
    )
    assert row.endswith("| helps vs real only |") and "not judged" not in row


def test_a_levers_view_shows_every_groups_delta_against_re_sampling(tmp_path: Path):
    """view=levers: per arm its tail mAP and the tail / medium / head Δ vs real_resampled with intervals (what
    every lever of issue #36 is judged by); a view the renderer lacks is one error line naming the marker."""
    from synth.ablation.store_docs import render_block

    store = _store_with_evidence(tmp_path, tail_positives=40)
    rows = read_store(store)
    deltas = {"tail": 0.031, "medium": -0.012, "head": 0.004}
    for row in rows:
        if row["arm"] == "synthetic_filtered" and row["group"] in deltas:
            d = deltas[row["group"]]
            row.update(d_real_resampled=str(d), d_real_resampled_lo=str(d - 0.02), d_real_resampled_hi=str(d + 0.02))
    text = render_block(rows, "runs.csv", view="levers")
    assert "| Arm | tail mAP | tail Δ vs re-sampled | medium Δ vs re-sampled | head Δ vs re-sampled |" in text
    line = next(x for x in text.splitlines() if x.startswith("| synthetic_filtered |"))
    assert "| +0.031 [+0.011, +0.051] | -0.012 [-0.032, +0.008] | +0.004 [-0.016, +0.024] |" in line
    assert "tail Δ vs real only" not in text and "head mAP" not in text

    doc = tmp_path / "repo" / "README.md"
    doc.parent.mkdir(exist_ok=True)
    doc.write_text("<!-- results-table ablation=toy commit=abc1234 view=wide -->\n<!-- /results-table -->\n")
    done = CliRunner().invoke(app, ["results", "docs", "--store", str(store), "--repo", str(doc.parent)])
    assert done.exit_code != 0 and "view=wide is not one of groups, levers" in done.output


def test_also_appends_another_runs_arms_on_the_same_stages_naming_that_run(tmp_path: Path):
    """also=ABLATION@COMMIT:ARM: the levers two runs measured on identical stages read as one table; the appended
    row names its run in its label and in the provenance line, and an arm that run lacks is one error line."""
    store = tmp_path / "runs.csv"
    doc = _doc(tmp_path, store)
    other = json.loads(_results_file(tmp_path).read_text())
    other["name"], other["provenance"]["git_commit"] = "toy-sel", "fff0000aaa"
    append_rows(store, run_rows(other))
    doc.write_text(
        "<!-- results-table ablation=toy commit=abc1234 view=levers also=toy-sel@fff0000:synthetic_filtered -->\n"
        "<!-- /results-table -->\n"
    )
    args = ["results", "docs", "--store", str(store), "--repo", str(doc.parent)]
    done = CliRunner().invoke(app, args)
    assert done.exit_code == 0, done.output
    text = doc.read_text()
    rows = [x for x in text.splitlines() if x.startswith("| ") and not x.startswith("| Arm |")]
    own = [r for r in rows if "(toy-sel@fff0000)" not in r]
    appended = [r for r in rows if "(toy-sel@fff0000)" in r]
    assert len(appended) == 1 and len(own) == len({r["arm"] for r in read_store(store) if r["ablation"] == "toy"})
    assert appended[0].split("|")[2:] == next(r for r in own if r.startswith("| synthetic_filtered |")).split("|")[2:]
    assert "Appended: `synthetic_filtered` from run" in text and "of `toy-sel` at `fff0000aaa`" in text

    doc.write_text(text.replace(":synthetic_filtered", ":no_such_arm"))
    done = CliRunner().invoke(app, args)
    assert done.exit_code != 0 and "has no arm no_such_arm; fix also=" in done.output


def test_quoted_figures_in_prose_are_rendered_from_the_store_and_checked(tmp_path: Path):
    """A figure quoted in prose between markers is rewritten from the store (a Δ with its interval, a p, a per-class
    ΔAP from the run's results.json); a hand edit fails --check naming the quote."""
    from synth.ablation.results import arm_by_name, per_class_mean

    store = tmp_path / "runs.csv"
    src = _results_file(tmp_path)
    CliRunner().invoke(app, ["results", "import", str(src), "--store", str(store)])
    results = json.loads(src.read_text())
    cls = next(c for c, g in results["groups"].items() if g == "tail")
    doc = tmp_path / "repo" / "docs" / "results.md"
    doc.parent.mkdir(parents=True)
    doc.write_text(
        "<!--q-run toy@abc1234-->\n"
        "tail <!--q synthetic_filtered tail map-->0.000<!--/q--> "
        "(<!--q synthetic_filtered tail d_real_only-->+9.999 [+9.999, +9.999]<!--/q-->, "
        "p <!--q synthetic_filtered tail p_real_only-->1<!--/q-->); "
        "the mean alone <!--q synthetic_filtered tail d_real_only:mean-->0<!--/q-->, "
        "unsigned <!--q synthetic_filtered tail d_real_only:abs-->0<!--/q-->; "
        f'{cls} <!--q class synthetic_filtered "{cls}"-->0<!--/q-->\n'
    )
    args = ["results", "docs", "--store", str(store), "--repo", str(doc.parents[1])]
    done = CliRunner().invoke(app, [*args, "--check"])
    assert done.exit_code == 1 and done.output.count("out of date: results.md: quote") == 6, done.output
    assert CliRunner().invoke(app, args).exit_code == 0
    tail = next(r for r in read_store(store) if r["arm"] == "synthetic_filtered" and r["group"] == "tail")
    text = doc.read_text()
    d, lo, hi = (float(tail[k]) for k in ("d_real_only", "d_real_only_lo", "d_real_only_hi"))
    sign = lambda v: f"{v:+.3f}".replace("-", "−")  # noqa: E731 — the prose's minus sign
    assert f"-->{float(tail['map']):.3f}<!--/q-->" in text
    assert f"-->{sign(d)} [{sign(lo)}, {sign(hi)}]<!--/q-->" in text and f":mean-->{sign(d)}<!--/q-->" in text
    assert f":abs-->{abs(d):.3f}<!--/q-->" in text
    delta = per_class_mean(arm_by_name(results, "synthetic_filtered"), cls, "ap") - per_class_mean(
        arm_by_name(results, "real_only"), cls, "ap"
    )
    assert f'"{cls}"-->{sign(delta)}<!--/q-->' in text
    assert CliRunner().invoke(app, [*args, "--check"]).exit_code == 0


def test_a_quote_naming_what_the_store_lacks_is_one_error_line(tmp_path: Path):
    store = tmp_path / "runs.csv"
    CliRunner().invoke(app, ["results", "import", str(_results_file(tmp_path)), "--store", str(store)])
    doc = tmp_path / "repo" / "README.md"
    doc.parent.mkdir()
    for quote, says in (
        ("<!--q-run toy@abc1234--><!--q no_such_arm tail map-->1<!--/q-->", "no row for arm 'no_such_arm'"),
        ("<!--q synthetic_filtered tail map-->1<!--/q-->", "no run named"),
        ("<!--q toy@abc1234 real_only tail d_real_only-->1<!--/q-->", "is empty in the store"),
    ):
        doc.write_text(quote + "\n")
        done = CliRunner().invoke(app, ["results", "docs", "--store", str(store), "--repo", str(doc.parent)])
        assert done.exit_code != 0 and says in done.output, done.output
        assert doc.read_text() == quote + "\n"  # nothing written


def test_json_quotes_read_a_runs_results_or_a_committed_file_by_path(tmp_path: Path):
    """``json [AGG] PATH[:FORMAT]`` quotes a run's results.json (``*`` over keys, reduced by AGG) and
    ``file=FILE json ...`` any JSON under the repository; a path that matches nothing or several values unreduced
    is one error line."""
    store = tmp_path / "runs.csv"
    src = _results_file(tmp_path)
    results = json.loads(src.read_text())
    results["filter"] = {"classes": {"A": {"n": 1200, "kept": 1000, "ok": True}, "B": {"n": 300, "kept": 0.25}}}
    results["harmed_classes"] = ["Atelectasis", "Edema", "Mass"]
    results["seconds"] = 3218.8
    doc, args = _docs_over(tmp_path, src, results, store)
    (doc.parent / "bench").mkdir()
    (doc.parent / "bench" / "x.json").write_text(json.dumps({"runs": [{"rate": 99.24}, {"rate": -0.5}]}))
    quotes = (
        "<!--q-run toy@abc1234-->kept <!--q json sum filter.classes.*.n-->{}<!--/q-->, ",
        "<!--q json count filter.classes.*.ok-->{}<!--/q--> true, ",
        "<!--q json filter.classes.B.kept:pct-->{}<!--/q--> %, ",
        "rate <!--q file=bench/x.json json runs.0.rate:f1-->{}<!--/q-->, ",
        "<!--q file=bench/x.json json runs.1.rate:s2-->{}<!--/q-->, ",
        "<!--q json count harmed_classes.*-->{}<!--/q--> harmed, ",
        "<!--q json seconds:min-->{}<!--/q--> min\n",
    )
    doc.write_text("".join(q.format("0") for q in quotes))
    assert CliRunner().invoke(app, args).exit_code == 0
    expected = ("1,500", "1", "25", "99.2", "−0.50", "3", "53.6")
    assert doc.read_text() == "".join(q.format(v) for q, v in zip(quotes, expected))
    for quote, says in (
        ("<!--q-run toy@abc1234--><!--q json filter.classes.*.n-->1<!--/q-->", "matches 2 values"),
        ("<!--q-run toy@abc1234--><!--q json filter.nothing-->1<!--/q-->", "nothing at 'filter.nothing'"),
        ("<!--q file=bench/missing.json json a-->1<!--/q-->", "bench/missing.json is not at hand"),
    ):
        doc.write_text(quote + "\n")
        done = CliRunner().invoke(app, args)
        assert done.exit_code != 0 and says in done.output, done.output
        assert doc.read_text() == quote + "\n"


def test_a_json_quote_filters_a_list_by_a_fields_glob(tmp_path: Path):
    """``KEY[FIELD=GLOB]`` keeps the list items whose FIELD matches GLOB (fnmatch: ``?`` one character, ``*`` any
    run, ':' included), so an arm's seeds sum without its held-out predict rows; a malformed filter is one error
    line and nothing is written."""
    store = tmp_path / "runs.csv"
    src = _results_file(tmp_path)
    results = json.loads(src.read_text())
    results["timings"]["steps"] = [
        {"step": "generator", "seconds": 3000.0},
        {"step": "real_only/seed-0", "seconds": 120.0},
        {"step": "real_only/seed-0: held-out predict", "seconds": 20.0},
        {"step": "real_only/seed-1", "seconds": 126.0},
        {"step": "real_only/seed-1: held-out predict", "seconds": 22.0},
        {"step": "real_resampled/seed-0", "seconds": 150.0},
        {"step": "real_resampled/seed-0: held-out predict", "seconds": 18.0},
    ]
    doc, args = _docs_over(tmp_path, src, results, store)
    quotes = (
        "<!--q-run toy@abc1234-->real <!--q json sum timings.steps[step=real_only/seed-?].seconds-->{}<!--/q--> s",
        " (<!--q json count timings.steps[step=real_only/seed-?].step-->{}<!--/q--> seeds), ",
        "with predict <!--q json sum timings.steps[step=real_only/seed-*].seconds:min-->{}<!--/q--> min, ",
        "all arms <!--q json sum timings.steps[step=*/seed-?].seconds:min-->{}<!--/q--> min, ",
        "predict <!--q json max 'timings.steps[step=*: held-out predict].seconds'-->{}<!--/q--> s\n",
    )
    doc.write_text("".join(q.format("0") for q in quotes))
    done = CliRunner().invoke(app, args)
    assert done.exit_code == 0, done.output
    expected = ("246", "2", "4.8", "6.6", "22")
    assert doc.read_text() == "".join(q.format(v) for q, v in zip(quotes, expected))
    for quote, says in (
        ("<!--q json sum timings.steps[step].seconds-->1<!--/q-->", "a filter reads `KEY[FIELD=GLOB]`"),
        ("<!--q json sum timings.steps[step=a[0]].seconds-->1<!--/q-->", "a filter reads `KEY[FIELD=GLOB]`"),
        ("<!--q json sum timings.steps[step=nothing/*].seconds-->1<!--/q-->", "nothing at"),
    ):
        doc.write_text("<!--q-run toy@abc1234-->" + quote + "\n")
        done = CliRunner().invoke(app, args)
        assert done.exit_code != 0 and says in done.output and done.output.count("\n") <= 1, done.output
        assert doc.read_text() == "<!--q-run toy@abc1234-->" + quote + "\n"  # nothing written


def test_a_run_with_several_generators_records_every_generator_seed():
    """generator.seeds [0, 1] trained two generators: the store (and its tables) must not say "generator seed 0"."""
    from synth.ablation.store import _generator_seed

    assert _generator_seed({"generator": {"config": "configs/finetune/phantom-cpu.yaml", "seeds": [0, 1]}}) == "0,1"
    assert _generator_seed({"generator": {"overrides": {"seed": 7}, "seeds": []}}) == "7"
