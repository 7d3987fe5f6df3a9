"""A short ``README.md`` card in every output folder a user may find on a disk later.

In the style of diffusers' ``save_model_card``: YAML front matter a hub or a script can read (kind, tags, commit),
then what made the folder (commit, whether the tree held uncommitted edits, package versions, the config, a data
fingerprint from :mod:`synth.provenance`), what it measured, and a sample grid where the folder holds images. Each
writer (generator export, classifier ensemble, ``synth generate``, ``synth filter``, ``synth ablate``) makes one
call, before the file that marks its folder complete, so a complete folder always carries its card. The card is
written atomically (temp + rename) like every other file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Sequence

from synth.io import save_image_atomic, write_text_atomic
from synth.provenance import environment

CARD_NAME = "README.md"
GRID_NAME = "sample_grid.png"
#: the folder kinds that carry a card, and the tags their front matter gets
KINDS: dict[str, tuple[str, ...]] = {
    "generator": ("diffusers", "text-to-image", "chest-x-ray", "cxr-synth"),
    "classifier": ("timm", "image-classification", "multi-label", "chest-x-ray", "cxr-synth"),
    "generated-set": ("synthetic-data", "chest-x-ray", "cxr-synth"),
    "filter": ("synthetic-data", "data-filtering", "chest-x-ray", "cxr-synth"),
    "ablation": ("ablation", "evaluation", "chest-x-ray", "cxr-synth"),
}


def sample_grid(folder: Path, images: Iterable[str | Path], cols: int = 4, n: int = 16, cell: int = 96) -> str | None:
    """Tile up to ``n`` of ``images`` (paths relative to ``folder`` or absolute) into ``folder/sample_grid.png``;
    returns the grid's name, or None when there is no readable image."""
    from PIL import Image

    tiles = []
    for path in images:
        path = Path(path) if Path(path).is_absolute() else folder / path
        try:
            with Image.open(path) as im:
                tiles.append(im.convert("L").resize((cell, cell)))
        except OSError:
            continue
        if len(tiles) == n:
            break
    if not tiles:
        return None
    rows = (len(tiles) + cols - 1) // cols
    grid = Image.new("L", (cell * min(cols, len(tiles)), cell * rows))
    for i, tile in enumerate(tiles):
        grid.paste(tile, (cell * (i % cols), cell * (i // cols)))
    save_image_atomic(folder / GRID_NAME, grid)
    return GRID_NAME


def write_card(
    folder: str | Path,
    kind: str,
    title: str,
    *,
    summary: str,
    config: dict[str, Any] | str | None = None,
    data: dict[str, str] | None = None,
    measured: Sequence[str] = (),
    grid: str | None = None,
) -> Path:
    """Write ``folder/README.md``: front matter, what made the folder, what it measured, the sample grid."""
    if kind not in KINDS:
        raise ValueError(f"unknown card kind {kind!r}; one of {sorted(KINDS)}")
    folder = Path(folder)
    env = environment()
    commit = env.get("git_commit") or "unknown"
    front = ["---", f"kind: {kind}", f"commit: {commit}", "library_name: cxr-synth", "tags:"]
    front += [f"- {tag}" for tag in KINDS[kind]] + ["---", ""]
    dirty = " (with uncommitted edits)" if env.get("worktree_dirty") else ""
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items() if k in ("torch", "diffusers", "timm"))
    lines = [f"# {title}", "", summary, "", "## What made it", ""]
    lines += [f"- code: cxr-synth at commit `{commit}`{dirty}; {versions}; written {env['when_utc']}"]
    lines += [f"- {name}: `{value}`" for name, value in (data or {}).items()]
    if config is not None:
        text = config if isinstance(config, str) else json.dumps(config, indent=2, sort_keys=True, default=str)
        lines += ["", "<details><summary>config</summary>", "", "```json", text, "```", "", "</details>"]
    if measured:
        lines += ["", "## What it measured", "", *measured]
    if grid:
        lines += ["", "## Sample", "", f"![sample grid]({grid})"]
    write_text_atomic(folder / CARD_NAME, "\n".join(front + lines) + "\n")
    return folder / CARD_NAME


def file_fingerprint(path: str | Path | None) -> str:
    """A card's line for one input file: its path and content hash (or that it is gone)."""
    from synth.provenance import data_fingerprint

    if path is None or not Path(path).is_file():
        return "not found"
    return f"{path} (sha256 {data_fingerprint(path)})"


def generator_card(out: Path, meta: dict[str, Any]) -> Path:
    """The exported diffusers pipeline (``synth/finetune.py``): its training data, steps and last validation grid."""
    grids = sorted((out / "validation").glob("step-*.png"), key=lambda p: int(p.stem.split("-")[-1] or 0))
    loss = out / "loss_summary.json"
    measured = [f"- steps trained: {meta.get('steps')}; prediction type {meta.get('prediction_type')}"]
    if loss.is_file():
        measured.append(f"- loss summary (`loss_summary.json`): {loss.read_text().strip()[:400]}")
    return write_card(
        out,
        "generator",
        f"Chest X-ray generator ({meta.get('resolution')} px, from {meta.get('source')})",
        summary="A diffusers pipeline: load it with `DiffusionPipeline.from_pretrained(folder)`; generate with "
        "`synth generate --model FOLDER`.",
        config=meta,
        data={"training manifest": file_fingerprint(meta.get("train_manifest"))},
        measured=measured,
        grid=str(grids[-1].relative_to(out)) if grids else None,
    )


def classifier_card(out: Path, spec: dict[str, Any], data_rows: str) -> Path:
    """A trained classifier ensemble (``ensemble.json``): members, validation mAP, training rows."""
    members = [
        f"- `{m['dir']}`: {m['arch']} at {m['image_size']} px, seed {m['seed']}, weight {m['weight']:.3f}, "
        f"val mAP {m['val_map'] if m['val_map'] is None else round(m['val_map'], 4)}"
        for m in spec["members"]
    ]
    val = spec.get("val_map")
    return write_card(
        out,
        "classifier",
        f"Chest X-ray classifier ensemble ({len(spec['members'])} member(s), {len(spec['classes'])} classes)",
        summary="Score it with `synth evaluate --model FOLDER` or predict with `synth predict --model FOLDER`.",
        config=spec.get("config"),
        data={"training rows (dicom_id|fpath sha256)": data_rows, "rows": json.dumps(spec.get("rows"))},
        measured=[f"- ensemble val mAP (real val rows): {val if val is None else round(val, 4)}", *members],
    )


def generated_set_card(out_dir: Path, settings: dict[str, Any], manifest: Path) -> Path:
    """A ``synth generate`` folder: the model and settings that drew it, images per class, a grid of the first."""
    import pandas as pd

    df = pd.read_csv(manifest, usecols=["fpath", "target_class"])
    counts = df["target_class"].value_counts().sort_index()
    return write_card(
        out_dir,
        "generated-set",
        f"Synthetic chest X-rays: {len(df)} images of {len(counts)} class(es)",
        summary="Images drawn by `synth generate`; `manifest.csv` holds each image's labels, prompt and seed, "
        "so `synth.inference.regenerate` re-renders any one of them.",
        config=settings,
        data={"manifest": file_fingerprint(manifest)},
        measured=[f"- {cls}: {n} images" for cls, n in counts.items()],
        grid=sample_grid(out_dir, df.groupby("target_class").head(2)["fpath"]),
    )


def filter_card(out_dir: Path, synth: Any, summary: dict[str, Any]) -> Path:
    """A ``synth filter`` folder: kept / rejected per class and why, the transfer gate, a grid of kept images."""
    from synth.provenance import data_fingerprint

    measured = [f"- kept {summary['kept']} of {summary['n']} images ({summary['metric_label']})"]
    for cls, entry in summary["classes"].items():
        gate = entry.get("transfer") or {}
        passed = "" if not gate.get("judged") else f"; transfer gate {'passed' if gate.get('passed') else 'dropped'}"
        measured.append(f"- {cls}: kept {entry['kept']} of {entry['n']}, rejected {entry['rejected']}{passed}")
    import pandas as pd

    kept = out_dir / "kept.csv"  # written before the card, with absolute image paths
    fpaths = pd.read_csv(kept, usecols=["fpath"])["fpath"] if kept.is_file() else []
    return write_card(
        out_dir,
        "filter",
        f"Filtered synthetic set: {summary['kept']} of {summary['n']} images kept",
        summary="`kept.csv` is the manifest to train on; `rejected.csv` says why each other image was rejected, "
        "`summary.json` the rules in words with this run's numbers.",
        config=summary.get("config"),
        data={"judged rows (dicom_id|fpath sha256)": data_fingerprint(synth), "verifier": summary.get("verifier")},
        measured=measured,
        grid=sample_grid(out_dir, fpaths),
    )
