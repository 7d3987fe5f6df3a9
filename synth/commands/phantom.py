"""CLI of the phantom stage: ``synth phantom`` renders the built-in CXR-LT-like benchmark."""

from __future__ import annotations

from typing import Optional

import typer

from synth.commands.options import NoProgress, option, out_option, overwrite_option, seed_option, workers_option

N = option(Optional[int], "--n", "Number of images. [default: 20000; with --balanced --per-class K: 40*K]")
Size = option(int, "--size", "Image size in pixels (square, 8-bit grey).")
Balanced = option(bool, "--balanced", "Class-balanced set (image i targets class i mod 40) for the oracle judge only.")
PerClass = option(Optional[int], "--per-class", "With --balanced: every class present in at least K images.")
LabelNoise = option(
    float,
    "--label-noise",
    "Report-mining-like label noise: each positive missed / a spurious label added with this probability.",
)
Site = option(
    str,
    "--site",
    "Acquisition site: A (default: fixed-room PA department) | B (portable/ICU: more AP, under-exposed, noisier, "
    "blurrier, collimated, burned-in markers, sicker population); see synth/phantom/sites.py.",
)
ContactSheet = option(
    bool, "--contact-sheet", "Also write contact_sheets/<class>.png (with / without / difference) and all.png."
)


def phantom(
    out: out_option("Output folder, e.g. outputs/data/phantom (labels.csv, images/, phantom.json, truth.jsonl)."),
    n: N = None,
    size: Size = 128,
    seed: seed_option("Seed: same seed and arguments give byte-identical images and CSV.", kind=int) = 0,
    balanced: Balanced = False,
    per_class: PerClass = None,
    label_noise: LabelNoise = 0.0,
    contact_sheet: ContactSheet = False,
    site: Site = "A",
    workers: workers_option(
        "Render processes; 0 = one per CPU core. Output does not depend on it. [default: 0]"
    ) = None,
    overwrite: overwrite_option("Replace an existing --out made with other arguments.") = False,
    no_progress: NoProgress = False,
) -> None:
    """Render the phantom CXR-LT benchmark (procedural radiographs, PadChest label sets, known ground truth)."""
    import json
    import shlex

    from rich.table import Table

    from synth.console import rich_console
    from synth.phantom.dataset import META_FILE, render_dataset
    from synth.taxonomy import CXR_LT_CLASSES

    if n is None:
        n = len(CXR_LT_CLASSES) * per_class if (balanced and per_class) else 20000
    labels = render_dataset(
        n,
        size,
        seed,
        out,
        balanced=balanced,
        per_class=per_class,
        label_noise=label_noise,
        contact_sheet=contact_sheet,
        workers=workers,
        progress=not no_progress,
        overwrite=overwrite,
        site=site,
    )
    meta = json.loads((labels.parent / META_FILE).read_text())
    groups = meta["groups"]
    table = Table(title=f"phantom {labels.parent}")
    for col in ("images", "patients", "PA / AP", "head", "medium", "tail", "rarest class"):
        table.add_column(col, justify="right")
    counts = {g: sum(1 for v in groups.values() if v == g) for g in ("head", "medium", "tail")}
    rarest = min(meta["positives"].items(), key=lambda kv: kv[1])
    table.add_row(
        str(meta["images"]),
        str(meta["patients"]),
        f"{meta['views']['PA']} / {meta['views']['AP']}",
        str(counts["head"]),
        str(counts["medium"]),
        str(counts["tail"]),
        f"{rarest[0]} ({rarest[1]})",
    )
    console = rich_console()
    console.print(table)
    console.print(
        f"labels: {labels}  (next: synth prepare --format cxrlt --labels {shlex.quote(str(labels))} --images "
        f"{shlex.quote(str(labels.parent))} --out ...)"
    )


def register(app: typer.Typer) -> None:
    """Add this stage's commands to the synth app."""
    app.command("phantom")(phantom)
