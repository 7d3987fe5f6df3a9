"""CLI commands of the data stage: ``synth classes`` and ``synth prepare``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from synth.commands.options import (
    ConfigFlag,
    NoProgress,
    config_option,
    option,
    out_option,
    overwrite_option,
    set_option,
    with_config_flags,
)
from synth.config import command_overrides
from synth.console import rich_console
from synth.errors import resumable
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
    rich_console().print(table)


Format = option(
    str, "--format", "Label file format: cxrlt (challenge train_labeled.csv) | nih (Data_Entry_2017_v2020.csv)."
)
Labels = option(
    Path,
    "--labels",
    "Label CSV (.csv or .csv.gz). A 'split' column (train / validate|val / test) is kept as given; with "
    "--val-labels/--test-labels this is the train file.",
)
ValLabels = option(
    Optional[Path],
    "--val-labels",
    "Label CSV of the given validation split (e.g. CXR-LT development_labeled.csv); every row goes to val.",
)
TestLabels = option(Optional[Path], "--test-labels", "Label CSV of the given test split; every row goes to test.")
Images = option(
    Path,
    "--images",
    "Image root: MIMIC-CXR-JPG root (cxrlt, fpath relative to it) or the NIH image folder (searched recursively).",
)

#: Flags that set the :class:`~synth.prepare.PrepareConfig` field of their name (thresholds: ``--set``).
PREPARE_FLAGS = {
    "split": ConfigFlag(
        Optional[str],
        "auto: keep a given split, else split by patient | test (or train/val): every row in that split, e.g. an "
        "external test-only set. [default: auto]",
    ),
    "uncertain": ConfigFlag(
        Optional[str],
        "What a -1 (uncertain) label means: error | ignore (not annotated) | zero | one. [default: error]",
    ),
    "size": ConfigFlag(Optional[int], "Cache resolution in pixels (square grayscale PNG). [default: 256]"),
    "seed": ConfigFlag(Optional[int], "Seed of the patient-level split. [default: 0]"),
    "val": ConfigFlag(Optional[float], "Fraction of images in val. [default: 0.1]"),
    "test": ConfigFlag(Optional[float], "Fraction of images in test. [default: 0.2]"),
    "skip_bad_images": ConfigFlag(
        bool, "Leave out missing/unreadable images (listed in skipped.csv) instead of failing."
    ),
    "workers": ConfigFlag(
        Optional[int], "Decode processes; 0 = one per CPU core (max 16); output does not depend on it. [default: 0]"
    ),
}


@resumable  # an interrupted run's cached images are kept in .<out>.partial and reused
@with_config_flags(PREPARE_FLAGS)
def prepare(
    *,  # keyword-only: the options keep their --help order, required ones included
    fmt: Format,
    labels: Labels,
    val_labels: ValLabels = None,
    test_labels: TestLabels = None,
    images: Images,
    out: out_option("Output folder, e.g. outputs/data/NAME: manifest.csv, stats.json, images/."),
    overwrite: overwrite_option("Replace an existing --out dataset (only one synth prepare wrote).") = False,
    config: config_option("YAML of defaults (configs/data/prepare.yaml); flags override.") = None,
    sets: set_option("head_threshold=0.2") = None,
    no_progress: NoProgress = False,
    flags: dict[str, Any],
) -> None:
    """Read a CXR-LT or NIH label file, keep its given split (or split by patient), cache resized grayscale images, write stats."""  # noqa: E501 (--help text: a line break would show)
    from synth.prepare import PrepareConfig, prepare_dataset
    from synth.stats import load_stats

    cfg = PrepareConfig.from_yaml(config, **command_overrides(sets, flags))
    split_files = {name: f for name, f in (("val", val_labels), ("test", test_labels)) if f is not None}
    split_flags = [f"--{name}" for name in ("seed", "val", "test") if flags[name] is not None]
    manifest = prepare_dataset(
        fmt,
        labels,
        images,
        out,
        cfg,
        overwrite=overwrite,
        progress=not no_progress,
        split_files=split_files,
        split_flags=split_flags,
    )
    _summary(load_stats(manifest.parent), manifest)


def _summary(stats: dict, manifest: Path) -> None:
    table = Table(title=f"prepared {manifest.parent}")
    for column in ("split", "images", "patients", "head", "medium", "tail"):
        table.add_column(column, justify="left" if column == "split" else "right")
    groups = stats["groups"]
    for split in ("train", "val", "test", "all"):
        positives = stats["positives"][split]
        per_group = {g: sum(n for c, n in positives.items() if groups.get(c) == g) for g in ("head", "medium", "tail")}
        table.add_row(
            split,
            str(stats["images"][split]),
            str(stats["patients"][split]),
            *(str(per_group[g]) for g in ("head", "medium", "tail")),
        )
    console = rich_console()
    console.print(table)
    counts = stats["group_counts"]
    tail = sorted(c for c, g in groups.items() if g == "tail")
    console.print(
        f"classes: {len(stats['classes'])} annotated — head {counts['head']}, medium {counts['medium']}, tail "
        f"{counts['tail']}"
        f"{' (' + ', '.join(tail) + ')' if tail else ''}; group columns count positive labels"
    )
    empty = [c for c in stats["classes"] if stats["positives"]["all"][c] == 0]
    if empty:
        console.print(f"warning: annotated but no positive image: {', '.join(empty)}", style="yellow")
    provenance = manifest.parent / "prepare.json"
    if provenance.is_file():
        info = json.loads(provenance.read_text())
        source = info.get("split_source", "patient_split")
        console.print(
            "split: "
            + {
                "patient_split": "by patient (no split given)",
                "column": "as given by the split column",
                "files": "as given by the label files",
            }.get(source, f"as given ({source})")
        )
        if info.get("empty_splits"):
            console.print(f"warning: the given split has no {' / '.join(info['empty_splits'])} rows", style="yellow")
        if info.get("classes_without_train_positives"):
            console.print(
                "warning: positive outside train only (a model cannot learn them from this split): "
                f"{', '.join(info['classes_without_train_positives'])}",
                style="yellow",
            )
    skipped = manifest.parent / "skipped.csv"
    if skipped.exists():
        console.print(f"skipped images listed in {skipped}", style="yellow")
    console.print(f"manifest: {manifest}")


def register(app: typer.Typer) -> None:
    app.command("classes")(classes)
    app.command("prepare")(prepare)
