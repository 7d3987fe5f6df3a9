"""``synth predict``: a trained ensemble on unlabeled images -> a CXR-LT submission CSV.

The CXR-LT workflow: the challenge ships unlabeled development and test images; a participant predicts
them and uploads ``dicom_id`` + one probability column per class. Inference is the one ensemble
prediction of ``synth evaluate`` (:func:`classifier.evaluation.predict_submission`); this module only
turns the user's input into rows:

* ``--manifest`` a prepared manifest (``synth prepare`` output; its cached images are used as they are), or
  a plain CSV with ``dicom_id`` and ``fpath`` (e.g. the challenge's ``development.csv``; ``fpath`` relative
  to ``--images`` when given, else to the CSV's folder);
* ``--images DIR`` every .jpg/.jpeg/.png/.tif/.tiff below DIR, ``dicom_id`` = the file name without extension
  (other files are counted in a warning, never silently dropped).

Raw images go through ``synth prepare``'s own decoding (8-bit grayscale, 16-bit scaled, square ``--size``)
into a temporary cache next to ``--out`` that is removed afterwards (or, after a kill, by the next run), so
predictions see the same pixels a prepared dataset would.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Optional

import pandas as pd
import typer

from synth.commands.options import option, out_option, overwrite_option, workers_option
from synth.errors import UserError
from synth.output_folder import PREDICT, check_out, remove_stale_temporaries, temp_prefix

#: What ``--images DIR`` predicts (PIL decodes all of them; 16-bit TIFF/PNG are scaled like ``synth prepare``'s).
IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".tif", ".tiff")


def predict(
    model: option(Path, "--model", "trained ensemble folder (ensemble.json)"),
    out: out_option("submission CSV to write: dicom_id + the model's class columns"),
    manifest: option(Optional[Path], "--manifest", "prepared manifest, or a CSV with dicom_id + fpath") = None,
    images: option(
        Optional[Path],
        "--images",
        "folder of images (searched recursively); with a plain --manifest CSV: the root its fpath is relative to",
    ) = None,
    split: option(
        Optional[str],
        "--split",
        "prepared manifest only: predict just this split (train/val/test) [default: all rows]",
    ) = None,
    size: option(int, "--size", "raw images: the --size the training data was prepared at") = 256,
    batch_size: option(int, "--batch-size") = 64,
    workers: workers_option("raw images: decode processes; 0 = one per CPU core", kind=int) = 0,
    overwrite: overwrite_option("replace an existing --out file") = False,
    no_progress: option(bool, "--no-progress", "hide the progress bars") = False,
) -> None:
    """Predict unlabeled images with a trained ensemble and write a CXR-LT submission CSV (atomically)."""
    from classifier.ensemble import read_ensemble
    from classifier.evaluation import predict_submission
    from synth.console import rich_console

    if manifest is None and images is None:
        raise UserError("give --manifest CSV or --images DIR (the images to predict)")
    check_out(out, PREDICT, overwrite)  # only a submission CSV this command wrote is ever replaced
    remove_stale_temporaries(out)  # image caches of a predict that was killed (their process is gone)
    if batch_size < 1:
        raise UserError(f"--batch-size {batch_size}: expected >= 1")
    read_ensemble(model)  # a wrong --model fails before any image is decoded
    rows, raw = _rows(manifest, images, split)
    console = rich_console(stderr=True)
    cache: Path | None = None
    try:
        if raw:
            cache = _cache_raw(rows, out, size, workers, progress=not no_progress)
            rows = rows.assign(fpath=[str(cache / name) for name in _cache_names(rows)])
            rows.attrs["root"] = str(cache)
        path, classes = predict_submission(model, rows, out, batch_size=batch_size, progress=not no_progress)
    finally:
        if cache is not None:
            shutil.rmtree(cache.parent, ignore_errors=True)
    console.print(f"wrote {path}: {len(rows)} images x {len(classes)} classes")


def _rows(manifest: Path | None, images: Path | None, split: str | None) -> tuple[pd.DataFrame, bool]:
    """(rows with dicom_id + fpath, whether their images are raw and need decoding)."""
    from synth.manifest import read_manifest, require_values

    if manifest is None:
        assert images is not None
        if not images.is_dir():
            raise UserError(f"--images {images}: folder not found")
        every = sorted(p for p in images.rglob("*") if p.is_file() and not p.name.startswith("."))
        files = [p for p in every if p.suffix.lower() in IMAGE_SUFFIXES]
        if not files:
            raise UserError(f"--images {images}: no {'/'.join(IMAGE_SUFFIXES)} file found below it")
        others = [p for p in every if p.suffix.lower() not in IMAGE_SUFFIXES]
        if others:  # a DICOM or other format left out must not go unnoticed
            typer.echo(
                f"warning: --images {images}: skipped {len(others)} file(s) that are not "
                f"{'/'.join(IMAGE_SUFFIXES)} (e.g. {others[0].name}); convert them to predict them",
                err=True,
            )
        df = pd.DataFrame({"dicom_id": [p.stem for p in files], "fpath": [str(p) for p in files]})
        _unique(df, str(images))
        if split is not None:
            raise UserError("--split selects rows of a prepared manifest; it has no meaning with --images alone")
        return df, True
    head = _read_csv(manifest)
    if {"split", "source"} <= set(head.columns):
        if images is not None:
            raise UserError(f"{manifest} is a prepared manifest (its images are cached beside it); drop --images")
        df = read_manifest(manifest)
        if split is not None:
            if split not in ("train", "val", "test"):
                raise UserError(f"--split {split!r}: expected train, val or test")
            subset = df[df["split"] == split].reset_index(drop=True)
            subset.attrs.update(df.attrs)
            df = subset
        if df.empty:
            raise UserError(f"{manifest}: no rows{'' if split is None else f' with split={split!r}'} to predict")
        return df, False
    missing = [c for c in ("dicom_id", "fpath") if c not in head.columns]
    if missing:
        raise UserError(
            f"{manifest}: missing column(s) {', '.join(missing)}; a list of images to predict needs dicom_id and fpath"
        )
    if split is not None:
        raise UserError("--split selects rows of a prepared manifest; this CSV has no split column")
    if head.empty:
        raise UserError(f"{manifest}: no rows to predict")
    require_values(head, ("dicom_id", "fpath"), str(manifest))
    root = images if images is not None else manifest.parent
    if images is not None and not images.is_dir():
        raise UserError(f"--images {images}: folder not found")
    df = pd.DataFrame(
        {
            "dicom_id": head["dicom_id"].astype(str).str.strip(),
            "fpath": [str(p if (p := Path(f.strip())).is_absolute() else root / p) for f in head["fpath"].astype(str)],
        }
    )
    _unique(df, str(manifest))
    absent = [f for f in df["fpath"] if not Path(f).is_file()]
    if absent:
        raise UserError(
            f"image not found: {absent[0]} ({len(absent)} of {len(df)} missing); fpath is relative to "
            f"{'--images' if images is not None else 'the CSV folder'} — pass --images ROOT"
        )
    return df, True


def _read_csv(path: Path) -> pd.DataFrame:
    from synth.csv_files import read_csv_file

    return read_csv_file(path, f"--manifest {path}", "give a manifest.csv or a CSV with dicom_id, fpath", dtype=str)


def _unique(df: pd.DataFrame, where: str) -> None:
    dup = df["dicom_id"].duplicated()
    if dup.any():
        raise UserError(
            f"{where}: image id {df['dicom_id'][dup].iloc[0]!r} appears twice; every image must appear once"
        )


def _cache_names(rows: pd.DataFrame) -> list[str]:
    return [f"{i:08d}.png" for i in range(len(rows))]


def _cache_raw(rows: pd.DataFrame, out: Path, size: int, workers: int, progress: bool) -> Path:
    """Decode raw images the way ``synth prepare`` does, into a temporary folder beside ``out``."""
    from synth.prepare import PrepareConfig
    from synth.prepare_images import cache_images

    cfg = PrepareConfig.from_yaml(None, size=size, workers=workers)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(out), suffix=".tmp", dir=out.parent)).resolve()  # absolute rows
    folder = tmp / "images"
    folder.mkdir()
    try:
        failures = cache_images(
            rows.assign(cache_name=_cache_names(rows)).reset_index(drop=True), folder, cfg.size, cfg.workers, progress
        )
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if failures:
        i, err = next(iter(failures.items()))
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(
            f"cannot read image {rows['fpath'].iloc[i]}: {err} ({len(failures)} unreadable); replace or remove it"
        )
    return folder


def register(app: typer.Typer) -> None:
    app.command("predict")(predict)
