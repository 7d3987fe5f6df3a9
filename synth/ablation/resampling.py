"""Repeat-factor re-sampling of the real rows: the ``real_resampled`` arm's recipe.

Why this arm exists: every synthetic mixing arm adds hundreds of tail-positive rows per class,
so part of its tail gain may be "tail images seen more often", which re-sampling the real data
gives for free (the non-generative CXR-LT 2024 teams got their tail mAP that way). The arm
repeats real tail-positive images, LVIS style (Gupta et al. 2019), with the repeat-factor code
the generator already uses (:func:`synth.generator.row_sampling.image_weights`):

    r(c) = max(1, sqrt(t / f(c)))       f(c): fraction of real training images positive for c
    r(image) = max over its positive classes among the generated ones (1 for an image without any)

Only the generated classes (``generate.classes``, usually the tail) are re-sampled: the mixing arm
adds positives of those alone, so repeating medium-class images too would change more than
"how often the tail is seen".

**How t is chosen** (derived from the ablation config, never from test rows): in the synthetic
mixing arm a generated class c is presented per epoch n_pos(c) + n_gen(c) times (its real
positives plus the images generated for it: ``generate.n``, or for ``n: auto`` what tops the
class up to ``target_count``). Repeat-factor sampling presents it about sqrt(t / f(c)) * n_pos(c)
times, so class c alone would need

    t(c) = f(c) * ((n_pos(c) + n_gen(c)) / n_pos(c)) ** 2

and the arm uses the median of t(c) over the generated classes: the median generated class is
presented as often as in the mixing arm, rarer ones somewhat less, commoner ones more (one t
cannot match every class: repeat factors grow with 1/sqrt(f), synthetic counts are flat).
``n_gen`` counts every generated image, i.e. the unfiltered arm; the filtered arm keeps fewer,
so this is the generous side. The plan records, per class, both presentation counts.

Integer repeats come from stochastic rounding of r(image) with a fixed seed (independent of
the training seed), so every seed of the arm trains on the same rows, as the synthetic arms do.
The classifier gets them as ``row_repeats`` (dicom_id -> times per epoch); its loss, class
weights (from the real prevalence), augmentation and validation rows are those of ``real_only``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from synth.errors import UserError
from synth.generator.row_sampling import image_weights

NO_FINDING = "<none>"  #: image_weights' class for an image without positive findings


@dataclass
class ResamplePlan:
    """What the arm repeats, and why (saved in results.json under the arm's ``resampling``)."""

    threshold: float  #: t of r(c) = max(1, sqrt(t / f(c)))
    rule: str
    rounding_seed: int
    n_rows: int  #: real training rows
    n_presented: int  #: rows per epoch after repeating
    per_class: dict[str, dict[str, float]] = field(default_factory=dict)
    repeats: dict[str, int] = field(default_factory=dict)  #: dicom_id -> times per epoch (rows repeated > 1 only)

    def summary(self) -> dict[str, Any]:
        """The plan without the per-row repeats (for results.json)."""
        d = asdict(self)
        d.pop("repeats")
        d["n_rows_repeated"] = len(self.repeats)
        return d


def positive_sets(real_train: pd.DataFrame, classes: Sequence[str]) -> list[tuple[str, ...]]:
    """Each row's positive classes (1.0); empty and 0 cells are not positives."""
    y = real_train[list(classes)].to_numpy(dtype=np.float64)
    return [tuple(c for c, v in zip(classes, row) if v == 1.0) for row in y]


def derive_threshold(real_train: pd.DataFrame, generated: Mapping[str, int]) -> float:
    """Median over the generated classes (with a real positive) of t(c) = f(c) * ((n_pos + n_gen) / n_pos)^2."""
    n = len(real_train)
    per_class = []
    for cls, n_gen in generated.items():
        n_pos = int((real_train[cls] == 1.0).sum()) if cls in real_train else 0
        if n_pos == 0 or n == 0:
            continue
        per_class.append((n_pos / n) * ((n_pos + n_gen) / n_pos) ** 2)
    if not per_class:
        raise UserError(
            "real_resampled: no generated class has a real training positive to repeat; "
            "check generate.classes or drop the arm"
        )
    return float(np.median(per_class))


def plan_resampling(
    real_train: pd.DataFrame,
    classes: Sequence[str],
    generated: Mapping[str, int],
    threshold: float | None = None,
    seed: int = 0,
) -> ResamplePlan:
    """Repeat factors of the real training rows (``split == train``, real) for the mixing-matched threshold."""
    if not (real_train["split"] == "train").all() or not (real_train["source"] == "real").all():
        raise ValueError("plan_resampling takes the real training rows only")
    t = derive_threshold(real_train, generated) if threshold is None else float(threshold)
    sets = positive_sets(real_train, classes)
    # only the generated classes are re-sampled (the mixing arm adds positives of those alone): an image's
    # factor is the max over its generated positive classes, and 1 for an image without any
    generated_sets = [tuple(c for c in s if c in generated) for s in sets]
    r = image_weights(generated_sets, "repeat_factor", t)
    r[[not s for s in generated_sets]] = 1.0
    rng = np.random.default_rng(seed)
    reps = np.floor(r).astype(int) + (rng.random(len(r)) < r - np.floor(r)).astype(int)
    ids = real_train["dicom_id"].astype(str).to_numpy()
    n = len(real_train)
    per_class: dict[str, dict[str, float]] = {}
    for cls, n_gen in generated.items():
        pos = np.array([cls in s for s in sets])
        n_pos = int(pos.sum())
        if n_pos == 0:
            continue
        per_class[cls] = {
            "n_pos": n_pos,
            "f": n_pos / n,
            "r_class": max(1.0, math.sqrt(t / (n_pos / n))),
            "presented_expected": float(r[pos].sum()),
            "presented": int(reps[pos].sum()),
            "mixing_arm": n_pos + int(n_gen),
        }
    rule = (
        "r(c) = max(1, sqrt(t / f(c))) for the generated classes, r(image) = max over its positive generated "
        "classes (1 without any), stochastic rounding; "
        "t = median over generated classes of f(c) * ((n_pos(c) + n_gen(c)) / n_pos(c))^2"
    )
    return ResamplePlan(
        threshold=t,
        rule=rule,
        rounding_seed=seed,
        n_rows=n,
        n_presented=int(reps.sum()),
        per_class=per_class,
        repeats={i: int(k) for i, k in zip(ids, reps) if k != 1},
    )
