"""The ablation's arms: one registry, so the runner, the config check and the report agree on what an arm is.

An arm is a recipe for one classifier's training rows. Everything else (architecture,
augmentation, loss, seeds, evaluation rows) is shared by every arm, so a difference between
two arms is the difference of their rows:

- ``real_only``: the real training rows as they are (the baseline every arm is paired with).
- ``real_resampled``: the same real rows, tail-positive images repeated by LVIS repeat-factor
  sampling (:mod:`synth.ablation.resampling`) so a tail class's positives are presented about as
  often per epoch as in the synthetic mixing arm. It answers "is the synthetic gain only
  'tail images seen more often'?": the headline verdict of a synthetic arm is against it.
- ``synthetic_unfiltered`` / ``synthetic_filtered``: real rows plus every generated / every kept
  synthetic row, mixed (``SyntheticMixConfig.mode = mix``).
- ``synthetic_pretrain``: synthetic-only pretraining on the kept rows, then real-only fine-tuning.
- ``synthetic_filtered_resampled``: the filtered mix with ``real_resampled``'s repeat plan on its real rows. Against
  ``real_resampled`` it asks whether generated images add anything ON TOP of re-presenting the real tail; the plain
  mixing arms answer "instead of". Opt-in (not in the default arm list) until a fresh committed run includes it;
  on the phantom-cpu run's stages ``bench/results/resampled_mix.json`` measured tail +0.042 [+0.026, +0.057] vs
  ``real_resampled``.
- ``synthetic_unfiltered_resampled``: the same with every generated image. Opt-in: on both fresh phantom-cpu runs the
  unfiltered mix beat the filtered one (tail -0.018 vs -0.048, then -0.037 vs -0.060, both against
  ``real_resampled``), so the filter's own worth on top of re-sampling is a question of its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from types import MappingProxyType
from typing import Any


class SyntheticSet(str, Enum):
    """Which generated rows an arm adds to the real ones."""

    UNFILTERED = "unfiltered"  #: every generated image
    FILTERED = "filtered"  #: the filter's kept.csv


@dataclass(frozen=True)
class Arm:
    name: str
    label: str  #: shown in the report
    short: str  #: column prefix in the report's per-class table
    synthetic: SyntheticSet | None = None  #: None = real rows only
    mode: str = "none"  #: classifier SyntheticMixConfig.mode (none / mix / pretrain_finetune)
    resample: bool = False  #: real tail-positive rows repeated (repeat-factor sampling)
    #: A config-named variant (:func:`variant`): the registered arm it derives from, else None.
    base: str | None = None
    #: A variant's classifier overrides (``--set``-style keys of the classifier config) on top of the ablation's.
    classifier: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)
    #: A variant's generate settings (``n``, ``classes`` or generate-config fields): its own generate/filter stages.
    generate: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def uses_synthetic(self) -> bool:
        return self.synthetic is not None

    @property
    def registered(self) -> str:
        """The registered arm whose rows this one trains on (itself unless a variant)."""
        return self.base or self.name


REAL_ONLY = Arm("real_only", "Real only", "real")
REAL_RESAMPLED = Arm("real_resampled", "Real, tail re-sampled", "resampled", resample=True)
SYNTHETIC_UNFILTERED = Arm(
    "synthetic_unfiltered", "+ synthetic, unfiltered", "unfilt.", SyntheticSet.UNFILTERED, "mix"
)
SYNTHETIC_FILTERED = Arm("synthetic_filtered", "+ synthetic, filtered", "filt.", SyntheticSet.FILTERED, "mix")
SYNTHETIC_PRETRAIN = Arm(
    "synthetic_pretrain", "Synthetic pretrain → real fine-tune", "pretrain", SyntheticSet.FILTERED, "pretrain_finetune"
)
SYNTHETIC_FILTERED_RESAMPLED = Arm(
    "synthetic_filtered_resampled",
    "+ synthetic, filtered, tail re-sampled",
    "filt.+rs",
    SyntheticSet.FILTERED,
    "mix",
    resample=True,
)
SYNTHETIC_UNFILTERED_RESAMPLED = Arm(
    "synthetic_unfiltered_resampled",
    "+ synthetic, unfiltered, tail re-sampled",
    "unfilt.+rs",
    SyntheticSet.UNFILTERED,
    "mix",
    resample=True,
)

#: Every arm, in the order the report lists them.
ARMS: dict[str, Arm] = {
    a.name: a
    for a in (
        REAL_ONLY,
        REAL_RESAMPLED,
        SYNTHETIC_UNFILTERED,
        SYNTHETIC_FILTERED,
        SYNTHETIC_UNFILTERED_RESAMPLED,
        SYNTHETIC_FILTERED_RESAMPLED,
        SYNTHETIC_PRETRAIN,
    )
}
#: The arms an ablation runs when its config names none.
DEFAULT_ARMS: tuple[str, ...] = (
    REAL_ONLY.name,
    REAL_RESAMPLED.name,
    SYNTHETIC_UNFILTERED.name,
    SYNTHETIC_FILTERED.name,
    SYNTHETIC_PRETRAIN.name,
)
#: The arm every other arm is paired with (must be in every ablation).
BASELINE = REAL_ONLY.name
#: The stronger real-data baseline: the headline verdict of a synthetic arm is against it when it ran.
RESAMPLED_BASELINE = REAL_RESAMPLED.name


def variant(name: str, base: str, label: str | None = None, classifier=None, generate=None) -> Arm:
    """A named arm that trains on ``base``'s rows with other classifier and/or generate settings.

    Why: every lever of a synthetic recipe (loss weight, decoupled head, counterfactual controls, prompt style,
    images per class) is a setting, not new code, so an ablation config names its levers as arms and the report
    pairs each with the same baselines on the same test patients as the registered arms.
    """
    parent = arm(base)
    if parent.base is not None:
        raise KeyError(f"variant {name!r}: base {base!r} is itself a variant; name a registered arm")
    if generate and not parent.uses_synthetic:
        raise KeyError(f"variant {name!r}: generate settings need a synthetic base arm, not {base!r}")
    classifier = dict(classifier or {})
    nested = classifier.get("synthetic") if isinstance(classifier.get("synthetic"), Mapping) else {}
    return Arm(
        name=name,
        label=label or f"{parent.label} ({name})",
        short=name,
        synthetic=parent.synthetic,
        # the classifier's synthetic.mode is the arm's: train_arm sets it from here
        mode=str(classifier.get("synthetic.mode", nested.get("mode", parent.mode))),
        resample=parent.resample,
        base=base,
        classifier=MappingProxyType(classifier),
        generate=MappingProxyType(dict(generate or {})),
    )


def arm(name: str) -> Arm:
    """The registered arm called ``name`` (KeyError names the valid ones)."""
    try:
        return ARMS[name]
    except KeyError:
        raise KeyError(f"unknown arm {name!r}; valid arms: {', '.join(ARMS)}") from None
