"""Label-set sampling for the phantom: real PadChest co-occurrence, CXR-LT-like long tail.

Labels are drawn as whole *sets* (never class by class) from the PadChest
study label-set frequency table mapped to the CXR-LT taxonomy
(``synth/resources/padchest-cxrlt-labelsets.csv``), so co-occurrence is real
(effusion with support devices, cardiomegaly with tortuous aorta ...).

Three documented adjustments turn the raw table into a CXR-LT-like benchmark:

1. Studies whose PadChest findings all lie outside the taxonomy (the empty
   set, 22 % of studies) are dropped: the phantom has nothing to draw for them
   and they would be pixel-identical to Normal images with a different label.
   "Normal" is made exclusive: in the ~60 studies that list it with a finding
   the finding wins (Normal is dropped from that set).
2. The two classes PadChest lacks get plausible rare sets
   (:data:`EXTRA_SETS`: pulmonary embolism with effusion / atelectasis /
   infarction / pulmonary hypertension; infarction nearly always with PE).
3. Set weights are re-fitted by iterative proportional fitting (raking) so
   the class marginals follow a monotone power transform of PadChest's own
   class prevalence (:class:`Reshape`). PadChest has 42 % Normal studies, few
   labels per study and a shallow head (3 head classes instead of CXR-LT's
   ~9). The transform keeps every class's *rank*, is anchored so that the
   9th most frequent class lands at 12 % and the boundary between the 24th
   and 25th at 1 % (CXR-LT's 9 head / 15 medium / 16 tail), is softer above
   the head anchor (no class above ~30 %), and floors every class at 0.08 %
   (16 images at n = 20,000, so every class appears). Raking only rescales
   *real* sets (it is the KL-closest reweighting with those marginals), so
   the co-occurrence structure stays PadChest's; labels per study rise from
   1.3 to ~2.8, close to MIMIC-CXR's.

Every set is closed under the hierarchy (:func:`synth.taxonomy.expand_parents`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import resources
from typing import Sequence

import numpy as np

from synth.errors import UserError
from synth.taxonomy import CXR_LT_CLASSES, expand_parents

RESOURCE = "padchest-cxrlt-labelsets.csv"


@dataclass(frozen=True)
class Reshape:
    """The prevalence transform of step 3 (see the module docstring)."""

    head_rank: int = 9  #: this rank (1 = most frequent, Normal included) lands at head_at
    head_at: float = 0.12
    tail_rank: int = 25  #: the boundary between this rank and the one before lands at tail_at
    tail_at: float = 0.01
    head_exponent: float = 0.8  #: softer power above the head anchor
    floor: float = 0.0008
    normal: float = 0.18  #: Normal's own target (it is exclusive, so outside the power law)
    iterations: int = 200


RESHAPE = Reshape()

#: Plausible rare label sets for the two classes PadChest does not label,
#: with their (PadChest-scale) study counts before reshaping.
EXTRA_SETS: tuple[tuple[tuple[str, ...], int], ...] = (
    (("Pulmonary Embolism",), 60),
    (("Pulmonary Embolism", "Pleural Effusion"), 30),
    (("Pulmonary Embolism", "Atelectasis"), 20),
    (("Pulmonary Embolism", "Pulmonary Hypertension"), 8),
    (("Pulmonary Embolism", "Lung Opacity"), 10),
    (("Pulmonary Embolism", "Infarction", "Pleural Effusion"), 14),
    (("Pulmonary Embolism", "Infarction", "Lung Opacity"), 10),
    (("Pulmonary Embolism", "Infarction"), 12),
    (("Infarction", "Consolidation"), 4),
    (("Infarction", "Pleural Effusion"), 4),
)


@dataclass(frozen=True)
class LabelSetTable:
    """The sampling table: each row a label set (tuple of classes) and its probability."""

    sets: tuple[tuple[str, ...], ...]
    probs: np.ndarray  # float64, sums to 1
    reshape: "Reshape | None"

    def prevalence(self) -> dict[str, float]:
        """Expected marginal prevalence of each class under this table."""
        out = dict.fromkeys(CXR_LT_CLASSES, 0.0)
        for s, p in zip(self.sets, self.probs):
            for c in s:
                out[c] += float(p)
        return out


def _clean(labels: Sequence[str]) -> tuple[str, ...]:
    s = expand_parents(x.strip() for x in labels if x.strip())
    unknown = s - set(CXR_LT_CLASSES)
    if unknown:
        raise UserError(f"{RESOURCE}: unknown class(es) {sorted(unknown)} in the label-set table")
    if "Normal" in s and len(s) > 1:
        s.discard("Normal")
    return tuple(c for c in CXR_LT_CLASSES if c in s)


def _set_matrix(sets: Sequence[tuple[str, ...]]) -> np.ndarray:
    index = {c: j for j, c in enumerate(CXR_LT_CLASSES)}
    m = np.zeros((len(sets), len(CXR_LT_CLASSES)), dtype=bool)
    for i, s in enumerate(sets):
        m[i, [index[c] for c in s]] = True
    return m


def reshape_targets(prevalence: np.ndarray, r: Reshape = RESHAPE) -> np.ndarray:
    """Target marginal per class: rank-preserving power transform of ``prevalence``."""
    normal = CXR_LT_CLASSES.index("Normal")
    order = [j for j in np.argsort(-prevalence, kind="stable")]
    ranked = [j for j in order if j != normal]
    # ranks count Normal as one of the head classes, as CXR-LT does
    p_head = prevalence[ranked[r.head_rank - 2]]
    p_tail = float(np.sqrt(prevalence[ranked[r.tail_rank - 3]] * prevalence[ranked[r.tail_rank - 2]]))
    b = np.log(r.head_at / r.tail_at) / np.log(p_head / p_tail)
    p = np.maximum(prevalence, 1e-12)
    tgt = np.where(p > p_head, r.head_at * (p / p_head) ** r.head_exponent, r.tail_at * (p / p_tail) ** b)
    tgt = np.clip(tgt, r.floor, 0.95)
    tgt[normal] = r.normal
    return tgt


def _rake(w: np.ndarray, m: np.ndarray, target: np.ndarray, iterations: int) -> np.ndarray:
    """Iterative proportional fitting of set weights to binary class marginals."""
    w = w / w.sum()
    for _ in range(iterations):
        for j in range(m.shape[1]):
            col = m[:, j]
            q = w[col].sum()
            if q <= 0.0:
                continue
            w = np.where(col, w * (target[j] / q), w * ((1.0 - target[j]) / (1.0 - q)))
            w = w / w.sum()
    return w


@functools.lru_cache(maxsize=4)
def label_set_table(reshape: Reshape | None = RESHAPE) -> LabelSetTable:
    """PadChest sets (+ PE / infarction sets), cleaned, merged and reshaped (``None``: raw frequencies)."""
    import csv

    counts: dict[tuple[str, ...], float] = {}
    with resources.files("synth").joinpath("resources", RESOURCE).open("r", newline="") as fh:
        for row in csv.DictReader(fh):
            labels = _clean(row["labels"].split("|")) if row["labels"] else ()
            if not labels:
                continue
            counts[labels] = counts.get(labels, 0.0) + float(row["studies"])
    for labels, n in EXTRA_SETS:
        key = _clean(labels)
        counts[key] = counts.get(key, 0.0) + n
    sets = tuple(sorted(counts, key=lambda s: (-counts[s], s)))  # deterministic order
    f = np.array([counts[s] for s in sets], dtype=np.float64)
    f = f / f.sum()
    if reshape is not None:
        m = _set_matrix(sets)
        f = _rake(f, m, reshape_targets(f @ m, reshape), reshape.iterations)
    return LabelSetTable(sets=sets, probs=f, reshape=reshape)


def sample_label_sets(n: int, seed: int, reshape: Reshape = RESHAPE) -> list[tuple[str, ...]]:
    """``n`` label sets drawn i.i.d. from the table (reshaped to ``reshape``'s prevalence, e.g. a phantom site's);
    deterministic in (n, seed, reshape)."""
    table = label_set_table(reshape)
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(int(seed), spawn_key=(101,))))
    idx = rng.choice(len(table.sets), size=int(n), p=table.probs)
    return [table.sets[i] for i in idx]


def sample_balanced_label_sets(n: int, per_class: int, seed: int, reshape: Reshape = RESHAPE) -> list[tuple[str, ...]]:
    """``n`` sets where image ``i`` targets class ``i mod 40`` (a set that contains it, drawn by frequency).

    Each class is thus present in at least ``n // 40 >= per_class`` images
    (more where it co-occurs with other targets); co-occurrence stays real.
    """
    if n < per_class * len(CXR_LT_CLASSES):
        raise UserError(
            f"--n {n} is too small for --balanced --per-class {per_class}: needs at least "
            f"{per_class * len(CXR_LT_CLASSES)} (40 classes x {per_class}); raise --n or lower --per-class"
        )
    table = label_set_table(reshape)
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(int(seed), spawn_key=(102,))))
    by_class = []
    for c in CXR_LT_CLASSES:
        rows = np.array([i for i, s in enumerate(table.sets) if c in s])
        p = table.probs[rows]
        by_class.append((rows, p / p.sum()))
    out = []
    targets = np.arange(n) % len(CXR_LT_CLASSES)
    for t in targets:
        rows, p = by_class[t]
        out.append(table.sets[rows[rng.choice(len(rows), p=p)]])
    return out


def add_label_noise(sets: Sequence[tuple[str, ...]], p: float, seed: int) -> list[tuple[str, ...]]:
    """Report-mining-like noise: each positive is missed with prob ``p``; with prob ``p`` a spurious
    label (drawn by marginal prevalence) is added. The result is re-closed under the hierarchy and
    Normal stays exclusive (an emptied set becomes Normal), as a rule-based labeller would output."""
    if not 0.0 <= p < 1.0:
        raise UserError(f"--label-noise {p}: must be in [0, 1)")
    if p == 0.0:
        return [tuple(s) for s in sets]
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(int(seed), spawn_key=(103,))))
    prev = label_set_table().prevalence()
    names = [c for c in CXR_LT_CLASSES if c != "Normal"]
    w = np.array([prev[c] for c in names])
    w = w / w.sum()
    out = []
    for s in sets:
        keep = [c for c in s if c == "Normal" or rng.random() >= p]
        if rng.random() < p:
            keep.append(names[rng.choice(len(names), p=w)])
        out.append(_clean(keep) or ("Normal",))
    return out


def label_matrix(sets: Sequence[Sequence[str]]) -> np.ndarray:
    """(n, 40) uint8 0/1 matrix in CXR_LT_CLASSES column order."""
    index = {c: j for j, c in enumerate(CXR_LT_CLASSES)}
    y = np.zeros((len(sets), len(CXR_LT_CLASSES)), dtype=np.uint8)
    for i, s in enumerate(sets):
        for c in s:
            y[i, index[c]] = 1
    return y
