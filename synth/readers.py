"""Label-file readers: CXR-LT and NIH ChestX-ray14 into manifest rows.

Each reader returns a DataFrame with the manifest's identifier and label
columns, ``source="real"`` and ``fpath`` set to the *original* image path
(absolute when an image root is given). ``synth prepare`` then caches the
images and rewrites ``fpath`` into the cache; the statistics and the patient
split only need the labels, so both readers also work without images
(``image_root=None``), e.g. on the full 112,120-row NIH label file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from synth.errors import UserError
from synth.manifest import normalise_ids, parse_label_column, require_values
from synth.taxonomy import CXR_LT_CLASSES, META_COLUMNS

FORMATS: tuple[str, ...] = ("cxrlt", "nih")

#: NIH ChestX-ray14 finding => CXR-LT class. These 15 columns are annotated
#: (1/0) for every NIH row; the other 25 CXR-LT classes stay empty (not
#: annotated). Nodule/Mass are *not* propagated to "Lung Lesion": NIH never
#: labels lung lesions as such, and a parent filled only from two children
#: would look annotated while missing every other kind of lesion.
NIH_TO_CXRLT: Mapping[str, str] = {
    "Atelectasis": "Atelectasis",
    "Cardiomegaly": "Cardiomegaly",
    "Consolidation": "Consolidation",
    "Edema": "Edema",
    "Effusion": "Pleural Effusion",
    "Emphysema": "Emphysema",
    "Fibrosis": "Fibrosis",
    "Hernia": "Hernia",
    "Infiltration": "Infiltration",
    "Mass": "Mass",
    "Nodule": "Nodule",
    "Pleural_Thickening": "Pleural Thickening",
    "Pneumonia": "Pneumonia",
    "Pneumothorax": "Pneumothorax",
    "No Finding": "Normal",
}

NIH_COLUMNS: tuple[str, ...] = ("Image Index", "Finding Labels", "Patient ID", "View Position")


def read_labels(
    fmt: str, labels: str | os.PathLike, image_root: str | os.PathLike | None = None, uncertain: str = "error"
) -> pd.DataFrame:
    """Dispatch on ``fmt`` (``cxrlt`` | ``nih``); ``uncertain`` is what a CXR-LT ``-1`` cell means."""
    key = fmt.strip().lower()
    if key == "cxrlt":
        return read_cxrlt(labels, image_root, uncertain=uncertain)
    if key == "nih":
        return read_nih(labels, image_root)
    raise UserError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")


def read_cxrlt(
    labels: str | os.PathLike, image_root: str | os.PathLike | None = None, uncertain: str = "error"
) -> pd.DataFrame:
    """A CXR-LT challenge CSV (``train_labeled.csv`` layout); ``fpath`` relative to ``image_root``.

    All 40 label columns are required (the challenge file always has them);
    extra columns (a given ``split`` among them) are carried along untouched.
    Label cells must be 1 / 0 / empty; ``-1`` follows ``uncertain`` (see
    :func:`synth.manifest.parse_label_column`).
    """
    labels = Path(labels)
    df = _read_csv(labels)
    missing = [c for c in (*META_COLUMNS, *CXR_LT_CLASSES) if c not in df.columns]
    if missing:
        raise UserError(
            f"{labels}: missing column(s) {', '.join(repr(c) for c in missing[:5])}"
            f"{' ...' if len(missing) > 5 else ''}; a CXR-LT CSV needs {', '.join(META_COLUMNS)} and all 40 class "
            "columns "
            "(see `synth classes`), or use --format nih"
        )
    for c in CXR_LT_CLASSES:
        df[c] = parse_label_column(df[c], c, str(labels), uncertain=uncertain)
    require_values(df, ("dicom_id", "subject_id", "fpath"), str(labels))
    for c in ("dicom_id", "fpath"):
        df[c] = df[c].astype(str).str.strip()
    for c in ("subject_id", "study_id"):
        df[c] = normalise_ids(df[c])
    df["ViewPosition"] = df["ViewPosition"].fillna("").astype(str)
    df["source_fpath"] = df["fpath"]
    if image_root is not None:
        root = Path(image_root)
        df["fpath"] = [str(p if (p := Path(f)).is_absolute() else root / p) for f in df["fpath"]]
    return _finish(df, labels)


def read_nih(labels: str | os.PathLike, image_root: str | os.PathLike | None = None) -> pd.DataFrame:
    """NIH ``Data_Entry_2017*.csv`` (.csv or .csv.gz) with findings mapped to CXR-LT names.

    Images are looked up by file name anywhere under ``image_root`` (the
    official download splits them over ``images_001/images`` ... folders).
    """
    labels = Path(labels)
    raw = _read_csv(labels)
    missing = [c for c in NIH_COLUMNS if c not in raw.columns]
    if missing:
        raise UserError(
            f"{labels}: missing column(s) {', '.join(repr(c) for c in missing)}; "
            "expected NIH Data_Entry_2017_v2020.csv columns (or use --format cxrlt)"
        )
    # "Effusion | Mass" (hand-edited files) parses like "Effusion|Mass"
    findings = (
        raw["Finding Labels"].fillna("").astype(str).str.split("|").map(lambda fs: {f.strip() for f in fs} - {""})
    )
    unknown = sorted(set().union(*findings) - set(NIH_TO_CXRLT)) if len(findings) else []
    if unknown:
        raise UserError(
            f"{labels}: column 'Finding Labels' has unknown NIH finding(s) {unknown}; expected {sorted(NIH_TO_CXRLT)}"
        )
    require_values(raw, ("Image Index", "Patient ID"), str(labels))
    names = raw["Image Index"].astype(str).str.strip()
    patients = normalise_ids(raw["Patient ID"])
    df = pd.DataFrame(
        {
            "dicom_id": names.str.rsplit(".", n=1).str[0],
            "subject_id": patients,
            "study_id": patients + "_" + _followup(raw),
            "ViewPosition": raw["View Position"].fillna("").astype(str),
            "fpath": names,
        }
    )
    for c in CXR_LT_CLASSES:
        df[c] = np.nan
    for nih, cxrlt in NIH_TO_CXRLT.items():
        df[cxrlt] = findings.map(lambda fs, nih=nih: 1.0 if nih in fs else 0.0).astype("float64")
    if "split" in raw.columns:  # a given split travels like in a CXR-LT file
        df["split"] = raw["split"]
    df["source_fpath"] = names
    if image_root is not None:
        found = _index_images(Path(image_root))
        df["fpath"] = [str(found.get(n, Path(image_root) / n)) for n in names]
    return _finish(df, labels)


def _finish(df: pd.DataFrame, labels: Path) -> pd.DataFrame:
    if df.empty:
        raise UserError(f"{labels}: no rows; point --labels at a non-empty label file")
    dup = df["dicom_id"].duplicated()
    if dup.any():
        raise UserError(f"{labels}: duplicate image id {df['dicom_id'][dup].iloc[0]!r}; every image must appear once")
    df["source"] = "real"
    df.attrs["labels"] = str(labels)
    return df.reset_index(drop=True)


def _read_csv(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise UserError(f"--labels {path}: file not found")
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=True, compression="infer")
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, EOFError) as err:
        raise UserError(
            f"--labels {path}: cannot parse as CSV ({err}); expected a .csv or .csv.gz label file"
        ) from err


def _followup(raw: pd.DataFrame) -> pd.Series:
    if "Follow-up #" in raw.columns:
        return raw["Follow-up #"].fillna("0").astype(str)
    return pd.Series(np.arange(len(raw)).astype(str), index=raw.index)


def _index_images(root: Path) -> dict[str, Path]:
    """File name => path for every file below ``root`` (one walk, not one stat per row)."""
    if not root.is_dir():
        raise UserError(f"--images {root}: folder not found")
    found: dict[str, Path] = {}
    for folder, _, files in os.walk(root):
        for name in files:
            found.setdefault(name, Path(folder) / name)
    return found
