"""The CXR-LT 2024 label taxonomy, in one place.

Class names are spelled exactly as the challenge CSV columns so that a user's
``train_labeled.csv`` round-trips through every stage without renaming.
Frequency groups (head / medium / tail) are *always* computed from the
training split's prevalence, never from val/test, because the challenge
defines them that way and anything else leaks the evaluation split.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Iterable, Mapping

from synth.errors import UserError

#: The 40 CXR-LT 2024 training classes (task 1/2), in challenge column order.
CXR_LT_CLASSES: tuple[str, ...] = (
    "Adenopathy",
    "Atelectasis",
    "Azygos Lobe",
    "Calcification of the Aorta",
    "Cardiomegaly",
    "Clavicle Fracture",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Enlarged Cardiomediastinum",
    "Fibrosis",
    "Fissure",
    "Fracture",
    "Granuloma",
    "Hernia",
    "Hydropneumothorax",
    "Infarction",
    "Infiltration",
    "Kyphosis",
    "Lobar Atelectasis",
    "Lung Lesion",
    "Lung Opacity",
    "Mass",
    "Nodule",
    "Normal",
    "Pleural Effusion",
    "Pleural Other",
    "Pleural Thickening",
    "Pneumomediastinum",
    "Pneumonia",
    "Pneumoperitoneum",
    "Pneumothorax",
    "Pulmonary Embolism",
    "Pulmonary Hypertension",
    "Rib Fracture",
    "Round(ed) Atelectasis",
    "Subcutaneous Emphysema",
    "Support Devices",
    "Tortuous Aorta",
    "Tuberculosis",
)

#: The 5 CXR-LT 2024 zero-shot classes (task 3); never trained on.
ZERO_SHOT_CLASSES: tuple[str, ...] = ("Bulla", "Cardiomyopathy", "Hilum", "Osteopenia", "Scoliosis")

ALL_CLASSES: tuple[str, ...] = CXR_LT_CLASSES + ZERO_SHOT_CLASSES

#: Identifier / metadata columns of the challenge CSV (``train_labeled.csv``).
META_COLUMNS: tuple[str, ...] = ("dicom_id", "subject_id", "study_id", "ViewPosition", "fpath")

#: Child finding => parent finding. A positive child implies a positive parent.
HIERARCHY: Mapping[str, str] = {
    "Rib Fracture": "Fracture",
    "Clavicle Fracture": "Fracture",
    "Lobar Atelectasis": "Atelectasis",
    "Round(ed) Atelectasis": "Atelectasis",
    "Nodule": "Lung Lesion",
    "Mass": "Lung Lesion",
}

GROUPS: tuple[str, ...] = ("head", "medium", "tail")

_BY_LOWER = {name.lower(): name for name in ALL_CLASSES}


class UnknownClassError(UserError, ValueError):
    """A user-supplied class name that is not in the taxonomy."""


def closest_classes(name: str, n: int = 3, candidates: Iterable[str] = ALL_CLASSES) -> list[str]:
    """Nearest valid names, for error messages (case-insensitive fuzzy match)."""
    candidates = list(candidates)
    lower = {c.lower(): c for c in candidates}
    hits = difflib.get_close_matches(name.lower().strip(), list(lower), n=n, cutoff=0.3)
    if not hits:  # fall back to substring matches ("fracture" -> all fractures)
        hits = [k for k in lower if name.lower().strip() in k][:n]
    return [lower[h] for h in hits]


def resolve_class(name: str, allowed: Iterable[str] = ALL_CLASSES) -> str:
    """Canonical spelling of ``name`` (matched case-insensitively), or raise.

    The error lists the closest valid names so a typo is fixed in one go; a zero-shot class where only
    trained classes are allowed says so instead.
    """
    allowed = tuple(allowed)
    key = " ".join(name.split()).lower()
    canonical = _BY_LOWER.get(key)
    if canonical in ZERO_SHOT_CLASSES and canonical not in allowed:
        # a real class name, not a typo: "did you mean Granuloma" would send the user the wrong way
        raise UnknownClassError(
            f"{canonical!r} is a CXR-LT zero-shot class (task 3: it has no training labels), so it cannot be "
            f"generated or trained on yet; choose one of the {len(CXR_LT_CLASSES)} trained classes (see `synth "
            "classes`)"
        )
    if canonical is None or canonical not in allowed:
        close = closest_classes(name, candidates=allowed)
        hint = f" Did you mean: {', '.join(repr(c) for c in close)}?" if close else ""
        raise UnknownClassError(f"unknown class {name!r}.{hint} (see `synth classes` for all names)")
    return canonical


@dataclass(frozen=True)
class GroupThresholds:
    """Prevalence cut-offs; CXR-LT 2024 uses head > 10 %, tail < 1 %."""

    head: float = 0.10
    tail: float = 0.01

    def __post_init__(self) -> None:
        if not 0.0 < self.tail < self.head < 1.0:  # NaN fails it too
            raise UserError(
                f"head_threshold {self.head} / tail_threshold {self.tail}: expected 0 < tail_threshold < "
                "head_threshold < 1 (prevalence cut-offs, e.g. 0.10 and 0.01)"
            )


def frequency_groups(
    train_prevalence: Mapping[str, float], thresholds: GroupThresholds = GroupThresholds()
) -> dict[str, str]:
    """Map each class to head / medium / tail from *training-split* prevalence.

    Classes absent from the mapping (e.g. not annotated in NIH) are left out.
    """
    groups: dict[str, str] = {}
    for name, p in train_prevalence.items():
        if p > thresholds.head:
            groups[name] = "head"
        elif p < thresholds.tail:
            groups[name] = "tail"
        else:
            groups[name] = "medium"
    return groups


def expand_parents(labels: Iterable[str]) -> set[str]:
    """Close a label set under the hierarchy (Rib Fracture => Fracture, ...)."""
    out = set(labels)
    for child, parent in HIERARCHY.items():
        if child in out:
            out.add(parent)
    return out


def class_slug(name: str) -> str:
    """A class name as a file / folder name: lower case, each run of other characters one ``-``.

    Names the generated images (``images/<slug>/<slug>_000000.png``, ``synth-<slug>-<seed>`` dicom ids; resume finds
    finished images by it) and the phantom's contact sheets: ``"Round(ed) Atelectasis"`` -> ``round-ed-atelectasis``.
    """
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def report_class_slug(name: str) -> str:
    """A class name as the ablation report names its files: one ``-`` per other character, not per run.

    A second rule because report folders already hold files named by it (``figures/grid_<slug>.png``,
    ``samples/<slug>/``, and the Markdown that links them); among the 45 class names it differs from
    :func:`class_slug` only for ``"Round(ed) Atelectasis"`` -> ``round-ed--atelectasis``.
    """
    return "".join(ch.lower() if ch.isalnum() else "-" for ch in name).strip("-")
