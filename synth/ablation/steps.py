"""The steps of an ablation and their cache keys: each step's folder is named by a hash of what its output
depends on (its config section and the keys of the steps it reads), so an edited stage reruns with its dependants.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synth.ablation.arms import Arm, SyntheticSet
from synth.ablation.config import AblationConfig, generate_section, stage_key

DONE = "done.json"


@dataclass(frozen=True)
class Step:
    """One unit of cached work: where it lives and whether it already finished."""

    name: str
    folder: Path

    @property
    def done(self) -> bool:
        return folder_done(self.folder)


def folder_done(folder: Path) -> bool:
    """Whether the step in ``folder`` finished (its marker is written last)."""
    return (folder / DONE).exists()


@dataclass(frozen=True)
class Source:
    """Where a synthetic arm's images come from: generator ``k`` and, for a variant with its own generate
    settings, that variant (None: the ablation's generate section)."""

    k: int = 0
    variant: str | None = None

    @property
    def suffix(self) -> str:
        """Appended to the generate/filter step names ('' for the first generator and the shared generate)."""
        return (f"@{self.k}" if self.k else "") + (f"[{self.variant}]" if self.variant else "")


def sources(cfg: AblationConfig) -> list[Source]:
    """Every synthetic source the run's arms read, in execution order (generator by generator)."""
    variants = [None] if any(a.uses_synthetic and not a.generate for a in cfg.run_arms) else []
    variants += [a.name for a in cfg.run_arms if a.uses_synthetic and a.generate]
    return [Source(k, v) for k in range(cfg.n_generators) for v in variants]


def source_of(cfg: AblationConfig, arm: Arm, seed_index: int) -> Source:
    """The source the ``seed_index``-th seed of a synthetic ``arm`` trains on."""
    return Source(cfg.generator_of(seed_index), arm.name if arm.generate else None)


def external_step(name: str) -> str:
    """The step that renders the external phantom cohort ``name``."""
    return f"external:{name}"


def arm_step(arm: str, seed: int) -> str:
    return f"{arm}/seed-{seed}"


def plan(cfg: AblationConfig) -> list[Step]:
    """The steps of this ablation in execution order, with their cache folders."""
    root = cfg.ablation_dir
    keys = _keys(cfg)
    steps = [Step("data", root / f"data-{keys['data']}")]
    if cfg.evaluation.heldout_phantom_n:
        steps.append(Step("heldout", root / f"heldout-{keys['heldout']}"))
    for ext in cfg.evaluation.external:
        if ext.phantom is not None:
            steps.append(Step(external_step(ext.name), root / f"external-{keys[external_step(ext.name)]}"))
    if cfg.needs_synthetic:
        for k in range(cfg.n_generators):
            name = "generator" + Source(k).suffix
            steps.append(Step(name, root / f"generator-{keys[name]}"))
        for src in sources(cfg):
            steps.append(Step("generate" + src.suffix, root / f"generate-{keys['generate' + src.suffix]}"))
            if cfg.needs_filter:
                steps.append(Step("filter" + src.suffix, root / f"filter-{keys['filter' + src.suffix]}"))
    if cfg.needs_synthetic and cfg.oracle.config:
        steps += [
            Step("oracle", root / f"oracle-{keys['oracle']}"),
            Step("fidelity", root / f"fidelity-{keys['fidelity']}"),
        ]
    for arm in cfg.run_arms:
        for i, seed in enumerate(cfg.seeds):
            key = keys[arm.name + (source_of(cfg, arm, i).suffix if arm.uses_synthetic else "")]
            steps.append(Step(arm_step(arm.name, seed), root / "arms" / f"{arm.name}-{key}" / f"seed-{seed}"))
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
    for ext in cfg.evaluation.external:
        if ext.phantom is not None:  # keyed by what is rendered, not the set's name: a renamed set is not re-rendered
            keys[external_step(ext.name)] = stage_key("external", ext.phantom, cfg.data.size, renderer)
    for k in range(cfg.n_generators):
        keys["generator" + Source(k).suffix] = stage_key("generator", cfg.generator.key_fields(k), keys["data"])
    specs = cfg.arm_specs
    all_sources = [
        Source(k, v) for k in range(cfg.n_generators) for v in [None, *(n for n, a in specs.items() if a.generate)]
    ]
    for src in all_sources:
        section = generate_section(cfg.generate, specs[src.variant] if src.variant else None)
        generator = keys["generator" + Source(src.k).suffix]
        generate = keys["generate" + src.suffix] = stage_key("generate", section, generator)
        keys["filter" + src.suffix] = stage_key("filter", cfg.filter, generate, keys["data"])
    keys["oracle"] = stage_key("oracle", cfg.oracle, cfg.data.size, renderer)
    keys["fidelity"] = stage_key(
        "fidelity", keys["oracle"], keys["generate"], keys["filter"] if cfg.needs_filter else None
    )
    for name, arm in specs.items():
        classifier = cfg.for_arm(arm).classifier if arm.uses_synthetic else _baseline_classifier(cfg.for_arm(arm))
        # the resampled arm's repeats follow from the data and what the generate stage is asked for (see resampling.py)
        resample = (
            [cfg.generate.classes, cfg.generate.n, cfg.generate.config, cfg.generate.overrides.get("target_count")]
            if arm.resample
            else []
        )
        if not arm.uses_synthetic:
            keys[name] = stage_key("arm", name, arm.mode, classifier, cfg.evaluation.split, keys["data"], *resample)
            continue
        for k in range(cfg.n_generators):
            src = Source(k, name if arm.generate else None)
            rows = keys[("generate" if arm.synthetic == SyntheticSet.UNFILTERED else "filter") + src.suffix]
            key = stage_key("arm", name, arm.mode, classifier, cfg.evaluation.split, keys["data"], rows, *resample)
            keys[name + src.suffix] = key
            if k == 0 and not arm.generate:
                keys[name] = key
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
