"""CLI commands of the data stage: class listing (prepare comes with the readers)."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from synth.taxonomy import CXR_LT_CLASSES, HIERARCHY, ZERO_SHOT_CLASSES


def classes() -> None:
    """List the CXR-LT 2024 classes (40 trained + 5 zero-shot)."""
    table = Table(title="CXR-LT 2024 taxonomy")
    table.add_column("class")
    table.add_column("task")
    table.add_column("implies")
    for c in CXR_LT_CLASSES:
        table.add_row(c, "train", HIERARCHY.get(c, ""))
    for c in ZERO_SHOT_CLASSES:
        table.add_row(c, "zero-shot", "")
    Console().print(table)


def register(app: typer.Typer) -> None:
    app.command("classes")(classes)
