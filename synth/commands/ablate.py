"""``synth ablate``, ``synth report`` and ``synth demo``: the product's answer and its report."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from synth.commands.options import set_option
from synth.config import parse_sets
from synth.errors import UserError, resumable

REPO = Path(__file__).resolve().parents[2]
DEMO_CONFIG = REPO / "configs" / "ablation" / "demo.yaml"
#: (section, key) of every stage-config path in an ablation YAML: relative ones are relative to the repository
STAGE_CONFIG_PATHS: tuple[tuple[str, str], ...] = (
    ("generator", "config"),
    ("generate", "config"),
    ("filter", "verifier_config"),
    ("filter", "config"),
    ("classifier", "config"),
    ("oracle", "config"),
)


def _int_list(text: Optional[str], option: str) -> Optional[list[int]]:
    if text is None:
        return None
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise UserError(f"{option} {text!r}: expected comma-separated integers, e.g. 0,1,2") from None


@resumable
def ablate_command(
    config: Path = typer.Option(..., "--config", help="Ablation YAML, e.g. configs/ablation/phantom-cpu.yaml."),
    seeds: Optional[str] = typer.Option(None, "--seeds", help="Override the seeds, comma-separated (e.g. 0,1,2)."),
    arms: Optional[str] = typer.Option(
        None, "--arms", help="Override the arms, comma-separated (real_only must be one)."
    ),
    output_root: Optional[str] = typer.Option(
        None, "--output-root", help=r"Root of ablations/ and reports/. \[default: outputs]"
    ),
    sets: set_option("evaluation.n_boot=200 or --set generator.overrides.max_train_steps=100") = None,
    dry_run: bool = typer.Option(False, "--dry-run", help="Check every path and print the plan; run nothing."),
) -> None:
    """Run real-only, real re-sampled and +synthetic (unfiltered, filtered, pretrain) over seeds; resumable; writes the report."""  # noqa: E501 (--help text: a line break would show)
    from synth.ablation.config import load_ablation_config
    from synth.ablation.preflight import check_paths

    cfg = load_ablation_config(
        config,
        seeds=_int_list(seeds, "--seeds"),
        arms=[a.strip() for a in arms.split(",")] if arms else None,
        output_root=output_root,
        sets=parse_sets(sets),
    )
    check_paths(cfg)
    _print_plan(cfg)
    if dry_run:
        typer.echo("dry run: all paths found; nothing was run")
        return
    from synth.ablation.runner import run_ablation

    report_dir = run_ablation(cfg)
    _print_timings(report_dir)
    typer.echo(f"report: {report_dir / 'report.html'}")


def report_command(
    name: str = typer.Argument(..., help="Ablation name (its folder under the reports root), or a report folder."),
    reports_root: Path = typer.Option(Path("outputs/reports"), "--reports-root", help="Where reports live."),
) -> None:
    """Re-render report.md / report.html from results.json, without retraining anything."""
    from synth.ablation.report import render_report

    folder = Path(name) if Path(name).is_dir() else reports_root / name
    paths = render_report(folder)
    typer.echo(f"report: {paths['html']}")
    typer.echo(f"markdown: {paths['md']}")


@resumable
def demo_command(
    output_root: str = typer.Option("outputs", "--output-root", help="Root of ablations/ and reports/."),
) -> None:
    """Phantom -> generator -> tail images -> filter -> 1-seed ablation -> report, sized for a 2-core CPU."""
    from synth.ablation.config import load_ablation_config
    from synth.ablation.runner import run_ablation

    # SYNTH_DEMO_CONFIG names another demo YAML: the tests run this very command on a tiny one
    cfg = load_ablation_config(os.environ.get("SYNTH_DEMO_CONFIG") or DEMO_CONFIG, output_root=output_root)
    # The demo runs from any folder: its stage configs are the repository's own.
    for section, key in STAGE_CONFIG_PATHS:
        stage = getattr(cfg, section)
        value = getattr(stage, key)
        if value and not Path(value).is_absolute():
            setattr(stage, key, str(REPO / value))
    _print_plan(cfg)
    report_dir = run_ablation(cfg)
    _print_timings(report_dir)
    typer.echo(f"report: {report_dir / 'report.html'}")


def _print_timings(report_dir: Path) -> None:
    """Per-stage wall times of the run (results.json ``timings``): where the time went, cached steps marked."""
    import json

    from rich.table import Table

    from synth.console import rich_console

    timings = json.loads((report_dir / "results.json").read_text()).get("timings") or {}
    table = Table(
        title=f"stage wall times (this run {timings.get('this_run_seconds', 0):.0f} s; "
        f"all steps when they ran {timings.get('all_steps_seconds', 0):.0f} s)"
    )
    table.add_column("step")
    table.add_column("seconds", justify="right")
    table.add_column("this run")
    for row in timings.get("steps", []):
        seconds = row.get("seconds")
        table.add_row(
            row["step"], "–" if seconds is None else f"{seconds:.1f}", "cached" if row.get("cached") else "ran"
        )
    rich_console(stderr=True).print(table)


def _print_plan(cfg) -> None:
    from rich.table import Table

    from synth.ablation.runner import plan
    from synth.console import rich_console

    table = Table(title=f"ablation {cfg.name}: {len(cfg.arms)} arm(s) × {len(cfg.seeds)} seed(s)")
    table.add_column("step")
    table.add_column("folder")
    table.add_column("status")
    for step in plan(cfg):
        table.add_row(step.name, str(step.folder), "cached" if step.done else "to run")
    table.add_row("report", str(cfg.report_dir), "")
    rich_console(stderr=True).print(table)


def register(app: typer.Typer) -> None:
    """Add this stage's commands to the synth app."""
    app.command("ablate")(ablate_command)
    app.command("report")(report_command)
    app.command("demo")(demo_command)
