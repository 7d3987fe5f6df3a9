"""CLI commands of the classifier stage: ``synth classify train`` and ``synth evaluate``."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from synth.config import SET_HELP, command_overrides
from synth.errors import resumable


def register(app: typer.Typer) -> None:
    """Add this stage's commands to the synth app."""
    classify = type(app)(name="classify", help="Train the multi-resolution ConvNeXt ensemble.", no_args_is_help=True)

    @classify.command("train")
    @resumable
    def train(
        config: Path = typer.Option(..., "--config", help="configs/classifier/*.yaml (names data.manifest)"),
        sets: Optional[List[str]] = typer.Option(None, "--set", help=SET_HELP),
        out: Optional[Path] = typer.Option(
            None, "--out", help="output folder (default: data.output_dir of the config)"
        ),
        report_to: Optional[str] = typer.Option(
            None,
            "--report_to",
            "--report-to",
            help="tensorboard: per-epoch metrics as event files in OUT/logs (= --set train.report_to=...)",
        ),
    ) -> None:
        """Train (or resume) the ensemble; for several GPUs: accelerate launch classifier/train.py --config ..."""
        from classifier.train import run_from_config

        typer.echo(str(run_from_config(config, command_overrides(sets, {"train.report_to": report_to}), out)))

    app.add_typer(classify, name="classify")

    @app.command("evaluate")
    def evaluate(
        model: Path = typer.Option(..., "--model", help="trained ensemble folder (ensemble.json)"),
        data: Path = typer.Option(
            ...,
            "--data",
            help=(
                "prepared manifest: the model's own, or a test-only set (synth prepare --split test); "
                "head/medium/tail come from the model"
            ),
        ),
        split: str = typer.Option("test", "--split", help="split to score: train / val / test"),
        out: Path = typer.Option(..., "--out", help="folder for metrics.json, probs.csv, submission.csv"),
        n_boot: int = typer.Option(1000, "--n-boot", help="patient-bootstrap resamples for the CIs (0 = none)"),
        seed: int = typer.Option(0, "--seed", help="bootstrap seed"),
        batch_size: int = typer.Option(64, "--batch-size"),
        overwrite: bool = typer.Option(
            False, "--overwrite", help="replace an earlier `synth evaluate` output at --out"
        ),
    ) -> None:
        """CXR-LT metrics of an ensemble: mAP (head/medium/tail) with patient-bootstrap CIs, mAUROC, mF1, ECE, per class."""  # noqa: E501 (--help text: a line break would show)
        from classifier.evaluation import evaluate_model, render_table
        from synth.console import rich_console
        from synth.errors import UserError
        from synth.output_folder import EVALUATE, check_out

        if split not in ("train", "val", "test"):
            raise UserError(f"--split {split!r}: expected train, val or test")
        if n_boot < 0:
            raise UserError(f"--n-boot {n_boot}: expected >= 0")
        if batch_size < 1:
            raise UserError(f"--batch-size {batch_size}: expected >= 1 (images per forward pass)")
        if seed < 0:
            raise UserError(f"--seed {seed}: expected >= 0")
        check_out(out, EVALUATE, overwrite)
        result = evaluate_model(model, data, split, out, n_boot=n_boot, seed=seed, batch_size=batch_size)
        console = rich_console()
        for table in render_table(result):
            console.print(table)
        console.print(f"wrote {out / 'metrics.json'}, {out / 'probs.csv'}, {out / 'submission.csv'}")
