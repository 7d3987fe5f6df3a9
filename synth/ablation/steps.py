"""The steps of an ablation and their cache keys: each step's folder is named by a hash of what its output
depends on (its config section and the keys of the steps it reads), so an edited stage reruns with its dependants.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synth.ablation.arms import ARMS, SyntheticSet
from synth.ablation.config import AblationConfig, stage_key

DONE = "done.json"


@dataclass(frozen=True)
class Step:
    """One unit of cached work: where it lives and whether it already finished."""

    name: str
    folder: Path

    @property
    def done(self) -> bool:
        return (self.folder / DONE).exists()


def plan(cfg: AblationConfig) -> list[Step]:
    """The steps of this ablation in execution order, with their cache folders."""
    root = cfg.ablation_dir
    keys = _keys(cfg)
    steps = [Step("data", root / f"data-{keys['data']}")]
    if cfg.evaluation.heldout_phantom_n:
        steps.append(Step("heldout", root / f"heldout-{keys['heldout']}"))
    if cfg.needs_synthetic:
        steps += [
            Step("generator", root / f"generator-{keys['generator']}"),
            Step("generate", root / f"generate-{keys['generate']}"),
        ]
    if cfg.needs_filter:
        steps.append(Step("filter", root / f"filter-{keys['filter']}"))
    if cfg.needs_synthetic and cfg.oracle.config:
        steps += [
            Step("oracle", root / f"oracle-{keys['oracle']}"),
            Step("fidelity", root / f"fidelity-{keys['fidelity']}"),
        ]
    for arm in cfg.arms:
        for seed in cfg.seeds:
            steps.append(Step(f"{arm}/seed-{seed}", root / "arms" / f"{arm}-{keys[arm]}" / f"seed-{seed}"))
    return steps


def _keys(cfg: AblationConfig) -> dict[str, str]:
    # A phantom folder records its renderer; the stages built on rendered images must too, or a
    # changed renderer would silently reuse images drawn by the old one.
    from synth.phantom.render import RENDERER_VERSION

    renderer = {"phantom_renderer": RENDERER_VERSION}
    keys = {
        "data": stage_key("data", cfg.data, renderer) if cfg.data.source == "phantom" else stage_key("data", cfg.data)
    }
    keys["heldout"] = stage_key(
        "heldout", cfg.evaluation.heldout_phantom_n, cfg.evaluation.heldout_phantom_seed, keys["data"]
    )
    keys["generator"] = stage_key("generator", cfg.generator, keys["data"])
    keys["generate"] = stage_key("generate", cfg.generate, keys["generator"])
    keys["filter"] = stage_key("filter", cfg.filter, keys["generate"], keys["data"])
    keys["oracle"] = stage_key("oracle", cfg.oracle, cfg.data.size, renderer)
    keys["fidelity"] = stage_key(
        "fidelity", keys["oracle"], keys["generate"], keys["filter"] if cfg.needs_filter else None
    )
    upstream = {
        None: [keys["data"]],
        SyntheticSet.UNFILTERED: [keys["data"], keys["generate"]],
        SyntheticSet.FILTERED: [keys["data"], keys["filter"]],
    }
    for name, arm in ARMS.items():
        classifier = cfg.classifier if arm.uses_synthetic else _baseline_classifier(cfg)
        # the resampled arm's repeats follow from the data and what the generate stage is asked for (see resampling.py)
        resample = (
            [cfg.generate.classes, cfg.generate.n, cfg.generate.config, cfg.generate.overrides.get("target_count")]
            if arm.resample
            else []
        )
        keys[name] = stage_key(
            "arm", name, arm.mode, classifier, cfg.evaluation.split, *upstream[arm.synthetic], *resample
        )
    return keys


def _baseline_classifier(cfg: AblationConfig) -> dict[str, Any]:
    """The classifier settings the real-only arm reads: without the synthetic-mixing section.

    Tuning how synthetic rows are mixed or labelled then retrains only the arms that use them,
    not the baseline they are compared with.
    """
    import yaml

    c = cfg.classifier
    content: Any = None
    if c.config and Path(c.config).is_file():
        content = yaml.safe_load(Path(c.config).read_text())
        if isinstance(content, dict):
            content = {k: v for k, v in content.items() if k != "synthetic"}
    overrides = {k: v for k, v in c.overrides.items() if k.split(".")[0] != "synthetic"}
    return {"classifier_config": content, "overrides": overrides, "batch_size": c.batch_size}
