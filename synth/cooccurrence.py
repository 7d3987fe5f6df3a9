"""Label sets for synthetic images, drawn from the real co-occurrence of the training data.

A rib fracture is rarely seen alone: it comes with other fractures, pneumothorax,
subcutaneous emphysema, effusion. Conditioning every synthetic image on the
target alone would teach the classifier a label distribution that never occurs,
so each image's label set is drawn from the *real* label sets of training images
that contain the target (optionally flattened by a temperature), and the view is
drawn from the rows that carry that set. The manifest label vector is exactly
the drawn set, so the classifier learns the co-occurring findings too.

Every draw is a pure function of ``(run seed, class, index)``, so a resumed or
sharded run assigns the same label set to the same image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from synth.errors import UserError
from synth.hashing import Hasher
from synth.manifest import annotated_classes, label_sets
from synth.taxonomy import frequency_groups


def derive_seed(run_seed: int, *parts: object) -> int:
    """Stable 63-bit seed from the run seed and a key (``hash()`` is salted per process, this is not)."""
    key = ":".join(str(p) for p in (run_seed, *parts)).encode()
    return int.from_bytes(Hasher("blake2b", hex_chars=16).update(key).digest(), "big") & (2**63 - 1)


@dataclass(frozen=True)
class LabelSetDraw:
    findings: tuple[str, ...]
    view: str


@dataclass(frozen=True)
class CooccurrenceSampler:
    """Empirical distribution of the label sets (and views) of train rows containing ``target``.

    ``p(set) ∝ count(set) ** (1 / temperature)``: T = 1 reproduces the training
    co-occurrence, T > 1 flattens it towards rarer combinations, T -> 0 keeps
    only the most common one.
    """

    target: str
    sets: tuple[tuple[str, ...], ...]
    counts: tuple[int, ...]
    views: tuple[tuple[str, ...], ...]  # per set: the ViewPosition of each training row with it
    temperature: float = 1.0

    @property
    def probabilities(self) -> np.ndarray:
        logits = np.log(np.asarray(self.counts, dtype=np.float64)) / self.temperature
        p = np.exp(logits - logits.max())
        return p / p.sum()

    def draw(self, rng: np.random.Generator) -> LabelSetDraw:
        k = int(rng.choice(len(self.sets), p=self.probabilities))
        views = self.views[k]
        return LabelSetDraw(findings=self.sets[k], view=views[int(rng.integers(len(views)))])


class TrainingLabels:
    """The training split of the generator's training manifest, as the generate stage needs it."""

    def __init__(self, manifest: pd.DataFrame, source: str = "training manifest") -> None:
        train = manifest[manifest["split"] == "train"].reset_index(drop=True)
        if train.empty:
            raise UserError(f"{source}: no rows with split=train; generate samples label sets from the training split")
        self.source = source
        self.classes: list[str] = annotated_classes(train)
        self.train = train
        self._sets = label_sets(train, self.classes)

    def positives(self) -> dict[str, int]:
        """Positive train images per annotated class."""
        return {c: int((self.train[c] == 1.0).sum()) for c in self.classes}

    def prevalence(self) -> dict[str, float]:
        """Positive share of the train rows that ANNOTATE each class (an empty cell is not a negative), as
        stats.json."""
        annotated = self.train.reindex(columns=self.classes).notna().sum()
        return {c: k / int(annotated[c]) for c, k in self.positives().items()}

    def groups(self) -> dict[str, str]:
        """head / medium / tail per annotated class, from train-split prevalence only."""
        return frequency_groups(self.prevalence())

    def sampler(self, target: str, temperature: float = 1.0) -> CooccurrenceSampler:
        if temperature <= 0:
            raise UserError(f"--temperature must be > 0, got {temperature}")
        if target not in self.classes:
            raise UserError(
                f"class {target!r} is not annotated in {self.source}; generate only classes the model was trained on: "
                f"{', '.join(self.classes)}"
            )
        views_by_set: dict[tuple[str, ...], list[str]] = {}
        view_column = self.train["ViewPosition"].fillna("").astype(str).tolist()
        for findings, view in zip(self._sets, view_column):
            if target in findings:
                views_by_set.setdefault(findings, []).append(view)
        if not views_by_set:
            raise UserError(
                f"class {target!r} has no positive image in the train split of {self.source}; its co-occurring "
                "findings cannot be sampled (drop it or add positives)"
            )
        sets = tuple(sorted(views_by_set, key=lambda s: (-len(views_by_set[s]), s)))
        return CooccurrenceSampler(
            target=target,
            sets=sets,
            counts=tuple(len(views_by_set[s]) for s in sets),
            views=tuple(tuple(views_by_set[s]) for s in sets),
            temperature=temperature,
        )

    def label_vector(self, findings: Sequence[str]) -> Mapping[str, float]:
        """Manifest labels for a drawn set: 1 for its findings, 0 for other annotated classes (rest stays empty)."""
        return {c: float(c in findings) for c in self.classes}
