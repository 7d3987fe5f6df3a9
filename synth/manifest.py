"""The one manifest format that flows through every stage.

A manifest is a CSV with

* the CXR-LT identifier columns (``dicom_id, subject_id, study_id, ViewPosition, fpath``),
* the 40 CXR-LT label columns, each ``1`` / ``0`` / empty (empty = *not annotated*,
  e.g. a class NIH ChestX-ray14 does not label — never silently a negative),
* ``split`` (train / val / test) and ``source`` (real / synthetic),
* optional generation metadata for synthetic rows (``GENERATION_COLUMNS``, and ``PAIR_COLUMNS`` for
  counterfactual pairs).

``fpath`` is relative to the manifest's own directory (or absolute), so a
prepared dataset folder can be moved as a unit.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from synth.csv_files import read_csv_file
from synth.errors import UserError, plain
from synth.io import atomic_path
from synth.taxonomy import CXR_LT_CLASSES, META_COLUMNS

SPLITS: tuple[str, ...] = ("train", "val", "test")
SOURCES: tuple[str, ...] = ("real", "synthetic")

#: Recorded for every synthetic row so any image can be regenerated exactly.
GENERATION_COLUMNS: tuple[str, ...] = (
    "target_class",
    "prompt",
    "negative_prompt",
    "seed",
    "guidance_scale",
    "num_inference_steps",
    "scheduler",
    "model_fingerprint",
)

#: Counterfactual pairs (``synth generate --controls``): both images of a pair carry the image's ``dicom_id`` as
#: ``pair_id``; ``pair_role`` is ``image`` (prompted with its target class) or ``control`` (the same seed, view and
#: co-occurring findings, the target class left out of the prompt and labelled negative).
PAIR_COLUMNS: tuple[str, ...] = ("pair_id", "pair_role")

MANIFEST_COLUMNS: tuple[str, ...] = META_COLUMNS + CXR_LT_CLASSES + ("split", "source")


class ManifestError(UserError, ValueError):
    """A manifest that does not follow the format; the message names the fix."""


def empty_manifest() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=_dtype(c)) for c in MANIFEST_COLUMNS})


def _dtype(column: str) -> str:
    return "float64" if column in CXR_LT_CLASSES else "object"


def annotated_classes(df: pd.DataFrame) -> list[str]:
    """Classes the dataset actually labels (at least one non-empty cell), in taxonomy order."""
    return [c for c in CXR_LT_CLASSES if c in df.columns and df[c].notna().any()]


def label_matrix(df: pd.DataFrame, classes: Sequence[str] | None = None) -> np.ndarray:
    """(N, C) float32 labels with NaN where a class is not annotated."""
    classes = list(classes) if classes is not None else list(CXR_LT_CLASSES)
    return df.reindex(columns=classes).to_numpy(dtype=np.float32)


def label_sets(df: pd.DataFrame, classes: Sequence[str] | None = None) -> list[tuple[str, ...]]:
    """Each row's positive findings, in taxonomy order (empty tuple = no finding labelled)."""
    classes = list(classes) if classes is not None else annotated_classes(df)
    y = df.reindex(columns=classes).to_numpy(dtype=np.float32)
    return [tuple(c for c, v in zip(classes, row) if v == 1.0) for row in y]


#: What a ``-1`` (CheXpert-style "uncertain") label cell becomes: ``error`` refuses the file, ``ignore``
#: makes it not annotated (empty), ``zero`` / ``one`` a negative / positive.
UNCERTAIN_POLICIES: tuple[str, ...] = ("error", "ignore", "zero", "one")
_UNCERTAIN_VALUE = {"ignore": np.nan, "zero": 0.0, "one": 1.0}

_INTEGER_FLOAT = re.compile(r"^([+-]?\d+)\.0*$")


def parse_label_column(
    values: pd.Series,
    column: str,
    where: str,
    uncertain: str = "error",
    first_row: int = 2,
    uncertain_fix: str = "pass --uncertain ignore (not annotated), zero or one to decide what it means",
) -> pd.Series:
    """One label column as float64 1 / 0 / NaN (empty = not annotated).

    Why strict: ``pd.to_numeric(errors="coerce")`` turns ``TRUE``, ``uncertain`` or ``1 (probable)`` into NaN,
    i.e. silently "not annotated" — a file of True/False labels would prepare with no annotated class. Any
    non-empty cell other than 1/0 (``1.0``/``0.0`` included) is one error naming column, row and value; ``-1``
    follows ``uncertain`` (:data:`UNCERTAIN_POLICIES`). ``first_row`` is the file row of the first value
    (2 = after a CSV header), so the message points at the line a user opens.
    """
    if uncertain not in UNCERTAIN_POLICIES:
        raise UserError(f"--uncertain {uncertain!r}: expected one of {', '.join(UNCERTAIN_POLICIES)}")
    if pd.api.types.is_float_dtype(values.dtype) or pd.api.types.is_integer_dtype(values.dtype):
        text = None
        blank = values.isna().to_numpy()
        numbers = values.astype("float64")
    else:  # strings, booleans, mixed objects
        text = values.astype("string").str.strip()
        blank = (values.isna() | (text == "")).fillna(True).to_numpy(dtype=bool)
        numbers = pd.to_numeric(text.where(~blank, None).astype("object"), errors="coerce").astype("float64")
    arr = numbers.to_numpy(dtype=np.float64, copy=True)
    bad = ~blank & ~np.isin(arr, (0.0, 1.0, -1.0))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise UserError(
            f"{where}: column {column!r} row {i + first_row} has {plain(values.iloc[i])!r} "
            f"({int(bad.sum())} such cell(s)); labels must be 1, 0 or empty (or -1 = uncertain)"
        )
    minus = arr == -1.0
    if minus.any():
        if uncertain == "error":
            i = int(np.flatnonzero(minus)[0])
            raise UserError(
                f"{where}: column {column!r} row {i + first_row} has -1 (uncertain; {int(minus.sum())} such cell(s)); "
                f"{uncertain_fix}"
            )
        arr[minus] = _UNCERTAIN_VALUE[uncertain]
    arr[blank] = np.nan
    return pd.Series(arr, index=values.index, name=column, dtype="float64")


def normalise_ids(values: pd.Series) -> pd.Series:
    """Identifiers as clean strings: ``10000032``, ``10000032.0`` and `` 10000032 `` are one patient.

    Why: a spreadsheet or pandas round-trip writes integer ids as floats, and the patient split groups by
    the string — one person would otherwise be two patients and could land in train and test.
    Blank cells become ``""`` (callers refuse them where an id is required).
    """
    text = values.astype("string").str.strip().fillna("")
    return text.str.replace(_INTEGER_FLOAT, r"\1", regex=True).astype(object)


def require_values(df: pd.DataFrame, columns: Sequence[str], where: str, first_row: int = 2) -> None:
    """A blank required cell (``subject_id``, ``fpath``, ...) is one error naming column and row."""
    for c in columns:
        text = df[c].astype("string").str.strip().fillna("")
        blank = (text == "") | text.str.lower().isin(["nan", "none"])
        if blank.any():
            i = int(np.flatnonzero(blank.to_numpy())[0])
            raise UserError(
                f"{where}: column {c!r} row {i + first_row} is empty ({int(blank.sum())} such row(s)); "
                f"every image needs a {c}: fill it in or remove those rows"
            )


def validate_manifest(df: pd.DataFrame, where: str = "manifest") -> pd.DataFrame:
    """Check the columns and values every stage relies on; return a normalised copy."""
    missing = [c for c in ("dicom_id", "subject_id", "fpath", "split", "source") if c not in df.columns]
    if missing:
        raise ManifestError(f"{where}: missing column(s) {', '.join(missing)}; re-create it with `synth prepare`")
    df = df.copy()
    for c in MANIFEST_COLUMNS:
        if c not in df.columns:
            df[c] = np.nan if c in CXR_LT_CLASSES else ""
    for c in CXR_LT_CLASSES:
        try:
            df[c] = parse_label_column(
                df[c],
                c,
                where,
                uncertain_fix="re-create the manifest with `synth prepare --uncertain "
                "ignore|zero|one`, which decides what -1 means",
            )
        except UserError as err:
            raise ManifestError(str(err)) from None
    bad_split = ~df["split"].isin(SPLITS)
    if bad_split.any():
        raise ManifestError(f"{where}: split must be one of {SPLITS}, got {plain(df['split'][bad_split].iloc[0])!r}")
    bad_source = ~df["source"].isin(SOURCES)
    if bad_source.any():
        got = plain(df["source"][bad_source].iloc[0])
        raise ManifestError(f"{where}: source must be one of {SOURCES}, got {got!r}")
    for c in ("dicom_id", "fpath"):
        df[c] = df[c].astype(str)
    for c in ("subject_id", "study_id"):
        df[c] = normalise_ids(df[c])
    extra = [c for c in df.columns if c not in MANIFEST_COLUMNS]
    return df[list(MANIFEST_COLUMNS) + extra]


def read_manifest(path: str | os.PathLike) -> pd.DataFrame:
    """Read and validate a manifest; ``df.attrs['root']`` is its directory."""
    path = Path(path)
    if path.is_dir():
        path = path / "manifest.csv"
    if not path.exists():
        raise ManifestError(f"manifest not found: {path}; run `synth prepare` (or `synth phantom`) first")
    df = read_csv_file(
        path,
        str(path),
        "re-create it with `synth prepare`",
        dtype={"dicom_id": str, "subject_id": str, "study_id": str, "fpath": str},
        keep_default_na=True,
    )
    absent = [c for c in CXR_LT_CLASSES if c not in df.columns]
    df = validate_manifest(df, where=str(path))
    # validate_manifest adds a missing class column as "not annotated"; a stage that scores a class must
    # refuse that instead (an absent column is a damaged file, an empty cell is the format's "not annotated")
    df.attrs["absent_classes"] = absent
    df.attrs["root"] = str(path.parent.resolve())
    return df


def write_manifest(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Validate and write atomically; labels as 1/0/empty."""
    path = Path(path)
    df = validate_manifest(df, where=str(path))
    out = df.copy()
    # nullable 8-bit ints print as 1 / 0 / empty, the same bytes as per-cell strings at a fraction of the memory
    # (40 object columns were the peak of `synth prepare` at MIMIC scale: ~2 KB a row)
    out[list(CXR_LT_CLASSES)] = out[list(CXR_LT_CLASSES)].astype("Int8")
    with atomic_path(path) as tmp:
        out.to_csv(tmp, index=False)
    return path


def image_paths(df: pd.DataFrame, root: str | os.PathLike | None = None) -> list[Path]:
    """Absolute image paths (``fpath`` is relative to the manifest directory)."""
    root = Path(root if root is not None else df.attrs.get("root", "."))
    return [p if (p := Path(f)).is_absolute() else root / p for f in df["fpath"]]


def concat_manifests(frames: Iterable[pd.DataFrame], root: str | os.PathLike) -> pd.DataFrame:
    """Concatenate manifests from different folders, rewriting ``fpath`` as absolute paths."""
    parts = []
    for df in frames:
        df = df.copy()
        df["fpath"] = [str(p.resolve()) for p in image_paths(df)]
        parts.append(df)
    out = pd.concat(parts, ignore_index=True)
    out.attrs["root"] = str(Path(root).resolve())
    return out
