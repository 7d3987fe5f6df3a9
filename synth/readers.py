"""Label-file readers: CXR-LT and NIH ChestX-ray14 into manifest rows.

Each reader returns a DataFrame with the manifest's identifier and label
columns, ``source="real"`` and ``fpath`` set to the *original* image path
(absolute when an image root is given). ``synth prepare`` then caches the
images and rewrites ``fpath`` into the cache; the statistics and the patient
split only need the labels, so both readers also work without images
(``image_root=None``), e.g. on the full 112,120-row NIH label file.
"""

from __future__ import annotations

import filecmp
import os
import warnings
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from synth.csv_files import read_csv_file
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
        df["fpath"] = confined_paths(df["fpath"], Path(image_root), str(labels))
    return _finish(df, labels)


def confined_paths(fpaths: pd.Series, root: Path, where: str, first_row: int = 2) -> list[str]:
    """``fpath`` cells joined to ``--images``, each refused unless it resolves inside that root.

    Why: a label file decides which files are read and copied into the dataset; an absolute ``fpath`` or one
    with ``../`` would read (and cache) any file the user can read, far from the images they pointed at.
    A link inside the root that points elsewhere is the user's own choice and is followed.
    """
    base = os.path.abspath(root)
    out = []
    for i, f in enumerate(fpaths):
        path = Path(f)
        inside = not path.is_absolute() and os.path.commonpath([base, os.path.abspath(base / path)]) == base
        if not inside:
            raise UserError(
                f"{where}: column 'fpath' row {i + first_row} is {f!r}, outside --images {root}; fpath must be "
                "a path relative to --images without '..' (point --images at the folder that holds the images)"
            )
        out.append(str(root / path))
    return out


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
    findings = _nih_findings(raw["Finding Labels"], labels)
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
        found = _index_images(Path(image_root), set(names))
        df["fpath"] = [str(found.get(n, Path(image_root) / n)) for n in names]
    return _finish(df, labels)


def _nih_findings(cells: pd.Series, labels: Path, first_row: int = 2) -> pd.Series:
    """Each row's set of NIH findings; ``"Effusion | Mass"`` (hand-edited files) parses like ``"Effusion|Mass"``.

    Why strict: an empty cell would otherwise become 15 negatives (NIH writes ``No Finding`` for a normal
    image, so an empty cell is a damaged row, not a normal one), and ``No Finding|Mass`` would be labelled
    both normal and abnormal. Either is one error naming the row.
    """
    findings = cells.fillna("").astype(str).str.split("|").map(lambda fs: {f.strip() for f in fs} - {""})
    unknown = sorted(set().union(*findings) - set(NIH_TO_CXRLT)) if len(findings) else []
    if unknown:
        raise UserError(
            f"{labels}: column 'Finding Labels' has unknown NIH finding(s) {unknown}; expected {sorted(NIH_TO_CXRLT)}"
        )
    empty = findings.map(len).to_numpy() == 0
    if empty.any():
        i = int(np.flatnonzero(empty)[0])
        raise UserError(
            f"{labels}: column 'Finding Labels' row {i + first_row} is empty ({int(empty.sum())} such row(s)); "
            "write 'No Finding' for a normal image or the findings separated by '|', or remove the row"
        )
    mixed = findings.map(lambda fs: "No Finding" in fs and len(fs) > 1).to_numpy(dtype=bool)
    if mixed.any():
        i = int(np.flatnonzero(mixed)[0])
        raise UserError(
            f"{labels}: column 'Finding Labels' row {i + first_row} has {cells.iloc[i]!r} "
            f"({int(mixed.sum())} such row(s)); 'No Finding' cannot go with a finding: keep one or the other"
        )
    return findings


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
    return read_csv_file(
        path, f"--labels {path}", "expected a .csv or .csv.gz label file", dtype=str, keep_default_na=True
    )


def _followup(raw: pd.DataFrame) -> pd.Series:
    if "Follow-up #" in raw.columns:
        return raw["Follow-up #"].fillna("0").astype(str)
    return pd.Series(np.arange(len(raw)).astype(str), index=raw.index)


def _index_images(root: Path, wanted: set[str]) -> dict[str, Path]:
    """File name => path for every ``wanted`` file below ``root`` (one walk, not one stat per row).

    A wanted name found twice goes through :func:`_same_file_twice`; other files (a README in each
    archive folder) may repeat freely.
    """
    if not root.is_dir():
        raise UserError(f"--images {root}: folder not found")
    found: dict[str, Path] = {}
    for folder, _, files in sorted(os.walk(root)):
        for name in sorted(files):
            if name not in wanted:
                continue
            path = Path(folder) / name
            first = found.setdefault(name, path)
            if first != path:
                _same_file_twice(first, path)
    return found


def _same_file_twice(first: Path, other: Path) -> None:
    """Two images of one name under ``--images``: nothing says which one the label row means.

    Byte-identical copies (a re-extracted archive) are the same image: a warning, and the first in sorted
    order is used. Different files are an error naming both, so a label never silently goes to the wrong image.
    """
    if filecmp.cmp(first, other, shallow=False):
        warnings.warn(f"--images: {other} is a copy of {first} (same bytes); using {first}", stacklevel=3)
        return
    raise UserError(
        f"--images: two different files named {first.name!r}: {first} and {other}; NIH images are found by file "
        "name, so remove or rename one of them (or point --images at one copy of the download)"
    )
