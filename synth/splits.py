"""Patient-level train/val/test split, stratified over the label distribution.

Images of one patient are strongly correlated, so the unit of splitting is the
patient (``subject_id``). Patients are assigned by iterative stratification
(Sechidis et al., 2011) on their per-class positive image counts, rarest class
first: with a plain random split a class with 20 positives can easily end up
with none in train, which is exactly the long-tail regime this tool targets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

from synth.errors import UserError, plain
from synth.manifest import SPLITS, annotated_classes


@dataclass(frozen=True)
class SplitFractions:
    """Fractions of *images* per split (train gets the rest)."""

    val: float = 0.1
    test: float = 0.2

    def __post_init__(self) -> None:
        for name, value in (("--val", self.val), ("--test", self.test)):
            if not 0.0 < value < 1.0:
                raise UserError(f"{name} {value}: must be between 0 and 1 (exclusive)")
        if self.val + self.test >= 1.0:
            raise UserError(f"--val {self.val} + --test {self.test} leaves nothing for train; make their sum < 1")

    @property
    def train(self) -> float:
        return 1.0 - self.val - self.test

    def as_array(self) -> np.ndarray:
        return np.array([self.train, self.val, self.test])


def patient_split(
    df: pd.DataFrame,
    fractions: SplitFractions = SplitFractions(),
    seed: int = 0,
    classes: Sequence[str] | None = None,
) -> pd.Series:
    """Split name per row (index aligned with ``df``); every patient in exactly one split."""
    classes = list(classes) if classes is not None else annotated_classes(df)
    rng = np.random.default_rng(seed)
    patients, inverse = np.unique(df["subject_id"].astype(str).to_numpy(), return_inverse=True)
    y = np.nan_to_num(df.reindex(columns=classes).to_numpy(dtype=np.float64), nan=0.0)
    counts = np.zeros((len(patients), len(classes)))
    np.add.at(counts, inverse, y)
    sizes = np.bincount(inverse, minlength=len(patients)).astype(np.float64)

    frac = fractions.as_array()
    wanted = frac[:, None] * counts.sum(axis=0)[None, :]  # (split, class) positives still wanted
    wanted_images = frac * sizes.sum()
    assignment = np.full(len(patients), -1)
    remaining = counts.sum(axis=0)

    def assign(p: int, column: np.ndarray) -> None:
        # most-wanted split for this label; ties go to the split missing most images, then at random
        key = np.lexsort((rng.random(len(SPLITS)), -wanted_images, -column))
        s = int(key[0])
        assignment[p] = s
        wanted[s] -= counts[p]
        wanted_images[s] -= sizes[p]
        remaining[:] -= counts[p]

    while True:
        open_classes = np.flatnonzero(remaining > 0)
        if open_classes.size == 0:
            break
        c = open_classes[np.argmin(remaining[open_classes])]
        for p in rng.permutation(np.flatnonzero((counts[:, c] > 0) & (assignment < 0))):
            assign(int(p), wanted[:, c])
    for p in rng.permutation(np.flatnonzero(assignment < 0)):  # patients without any positive
        assign(int(p), wanted_images)

    return pd.Series(np.asarray(SPLITS, dtype=object)[assignment[inverse]], index=df.index, name="split")


def assert_no_patient_leakage(df: pd.DataFrame) -> None:
    """Raise if any ``subject_id`` appears in more than one split."""
    per_patient = df.groupby(df["subject_id"].astype(str))["split"].nunique()
    leaked = per_patient[per_patient > 1]
    if not leaked.empty:
        raise AssertionError(f"patient {leaked.index[0]!r} is in more than one split ({len(leaked)} patients leak)")


def check_splits(df: pd.DataFrame, where: str) -> list[str]:
    """Every split non-empty and every class with positives positive in train, or a UserError with the fix.

    Returns the annotated classes without any positive image: their labels are
    genuine negatives no split can fix, so they are reported, not refused.
    """
    sizes = df["split"].value_counts()
    for s in SPLITS:
        if sizes.get(s, 0) == 0:
            raise UserError(
                f"{where}: the {s} split is empty ({df['subject_id'].nunique()} patients for {len(df)} images); "
                "use more data or larger --val/--test fractions"
            )
    train = df[df["split"] == "train"]
    without_positives = []
    for c in annotated_classes(df):
        if not (train[c] == 1).any():
            total = int((df[c] == 1).sum())
            if total == 0:
                without_positives.append(c)
                continue
            raise UserError(
                f"{where}: class {c!r} has no positive image in the train split ({total} in val/test); "
                "try another --seed or smaller --val/--test fractions"
            )
    return without_positives


#: Spellings of a given split (case-insensitive), as CXR-LT and other releases name them.
SPLIT_ALIASES: dict[str, str] = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validate": "val",
    "validation": "val",
    "dev": "val",
    "development": "val",
    "test": "test",
    "testing": "test",
}


def normalise_given_split(values: pd.Series, where: str, first_row: int = 2) -> pd.Series:
    """A user's ``split`` column as train / val / test, or one error naming the row and value.

    Why strict: a blank or misspelled cell can only be guessed, and guessing sends a test image to train.
    """
    text = values.astype("string").str.strip().str.lower().fillna("")
    mapped = text.map(SPLIT_ALIASES)
    bad = mapped.isna().to_numpy()
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise UserError(
            f"{where}: column 'split' row {i + first_row} has {plain(values.iloc[i])!r} "
            f"({int(bad.sum())} such row(s)); "
            "expected train, validate/val or test — fill it in, or drop the column to let `synth prepare` split by "
            "patient"
        )
    return mapped.astype(object).rename("split")


def check_given_split(df: pd.DataFrame, where: str) -> None:
    """A given split must be patient-level: a patient in two splits is one error naming the patient and the fix."""
    per_patient = df.groupby(df["subject_id"].astype(str))["split"].agg(lambda s: sorted(set(s)))
    leaked = per_patient[per_patient.map(len) > 1]
    if not leaked.empty:
        patient, splits = leaked.index[0], leaked.iloc[0]
        counts = df[df["subject_id"].astype(str) == patient]["split"].value_counts()
        where_is = ", ".join(f"{s} ({int(counts[s])} image(s))" for s in splits)
        raise UserError(
            f"{where}: patient {patient!r} is in more than one given split: {where_is}; "
            f"{len(leaked)} patient(s) cross splits. Put all of a patient's images in one split "
            "(CXR-LT splits are patient-level), or drop the split column to let `synth prepare` split by patient"
        )


def split_warnings(df: pd.DataFrame) -> dict[str, list[str]]:
    """What a given split lacks, reported rather than refused (the split is the user's, not ours to fix):
    ``empty_splits`` and ``classes_without_train_positives`` (positive somewhere, but never in train)."""
    sizes = df["split"].value_counts()
    train = df[df["split"] == "train"]
    no_train = [c for c in annotated_classes(df) if (df[c] == 1).any() and not (train[c] == 1).any()]
    return {
        "empty_splits": [s for s in SPLITS if sizes.get(s, 0) == 0],
        "classes_without_train_positives": no_train if len(train) else [],
    }
