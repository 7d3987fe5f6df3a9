"""``synth results import`` and ``synth results docs``: the results store and the tables generated from it."""

from __future__ import annotations

from pathlib import Path

import typer

from synth.commands.options import option

StoreOption = option(
    Path,
    "--store",
    "The results store (CSV). Default: the repository's bench/results/runs.csv; synth ablate records into "
    "<output_root>/results/runs.csv unless its config sets results_store.",
)


def import_command(
    target: Path = typer.Argument(..., help="A run folder holding results.json (outputs/reports/NAME), or the JSON."),
    store: StoreOption = None,
) -> None:
    """Add a finished ablation's results.json to the store (its earlier rows, if any, are replaced)."""
    from synth.ablation.store import REPO_STORE, import_results

    store = store or REPO_STORE
    run_id, n = import_results(target, store)
    typer.echo(f"run {run_id}: {n} rows in {store}")


def docs_command(
    store: StoreOption = None,
    check: bool = typer.Option(
        False, "--check", help="Write nothing; exit 1 if a table or quoted figure differs from the store."
    ),
    repo: Path = typer.Option(None, "--repo", help="Repository whose README.md and docs/*.md to update."),
) -> None:
    """Regenerate the marked tables and quoted figures in README.md and docs/*.md from the results store."""
    from synth.ablation.store import REPO, REPO_STORE, read_store
    from synth.ablation.store_docs import doc_files, update_docs

    repo, store = repo or REPO, store or REPO_STORE
    try:
        name = str(store.resolve().relative_to(repo.resolve()))
    except ValueError:
        name = str(store)
    changed = update_docs(doc_files(repo), read_store(store), name, check=check, repo=repo)
    for where in changed:
        typer.echo(f"{'out of date' if check else 'updated'}: {where}")
    if check and changed:
        typer.echo(
            "error: tables or quoted figures differ from the results store; `synth results docs` regenerates them",
            err=True,
        )
        raise typer.Exit(1)
    if not changed:
        typer.echo("every table and quoted figure matches the results store")


def regime_command(
    runs: list[Path] = typer.Argument(
        ..., help="Two or more finished runs of one recipe at different data sizes: report folders or results.json."
    ),
    arm: str = typer.Option(..., "--arm", help="The synthetic arm whose gain over real_resampled is plotted."),
    n_boot: int = typer.Option(2000, "--n-boot", min=100, help="Bootstrap draws over classes."),
    json_out: Path = typer.Option(
        None, "--json", help="Also write the points, the fit and the summary here, with provenance (a bench result)."
    ),
) -> None:
    """The regime curve: the arm's gain over re-sampling against each class's real positives, within classes
    across the runs, and the break-even count."""
    from synth.ablation.regime import RegimePoint, read_run, regime_result, regime_table
    from synth.ablation.report.markdown_page import md_table
    from synth.provenance import write_bench_result

    result = regime_result([read_run(r) for r in runs], arm, n_boot=n_boot)
    header, rows = regime_table([RegimePoint(**p) for p in result["points"]])
    typer.echo(md_table(header, rows))
    if result["config_differences"]:
        typer.echo(f"warning: the runs differ in {', '.join(result['config_differences'])}, not only in their data")
    typer.echo(result["summary"])
    if json_out is not None:
        write_bench_result(json_out, "synth results regime", result)
        typer.echo(f"written: {json_out}")


def register(app: typer.Typer) -> None:
    """Add this stage's commands to the synth app (a sub-app sharing the app's error handling)."""
    results = type(app)(help="The results store and the tables generated from it.", no_args_is_help=True)
    results.command("import")(import_command)
    results.command("docs")(docs_command)
    results.command("regime")(regime_command)
    app.add_typer(results, name="results")
