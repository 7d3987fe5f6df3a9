"""An ablation's preflight: every path and stage config the enabled stages will read, checked before any work.

Apart from :mod:`synth.ablation.config` (which only reads and validates the ablation's own YAML) because these
checks reach into every stage's loader; ``synth ablate`` and ``--dry-run`` run them first, so a week-long GPU
recipe fails in the first second on a typo'd path or value rather than after the generator trained.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from synth.ablation.config import AblationConfig
from synth.ablation.external import read_external_sets
from synth.errors import UserError


def check_paths(cfg: AblationConfig) -> None:
    """Every input path the enabled stages will read exists; the first missing one is one error line."""
    where = cfg.source_path or "config"
    needed: list[tuple[str, str | None, str]] = []
    if cfg.data.source == "manifest":
        needed.append(("data.manifest", cfg.data.manifest, "run `synth prepare` first or fix the path"))
    if cfg.data.source == "prepare":
        needed += [
            ("data.labels", cfg.data.labels, "point it at the label CSV"),
            ("data.images", cfg.data.images, "point it at the image folder"),
        ]
    if cfg.needs_synthetic:
        needed += [
            ("generator.config", cfg.generator.config, "see configs/finetune/"),
            ("generate.config", cfg.generate.config, "see configs/generate/"),
        ]
        if cfg.generator.pretrained:
            needed.append(
                (
                    "generator.pretrained",
                    str(Path(cfg.generator.pretrained) / "model_index.json"),
                    "download the diffusers folder (e.g. stabilityai/stable-diffusion-2-1-base) there, or fix the "
                    "path",
                )
            )
    if cfg.needs_filter:
        needed += [
            ("filter.verifier_config", cfg.filter.verifier_config, "see configs/filter/"),
            ("filter.config", cfg.filter.config, "see configs/filter/"),
            ("filter.oracle", cfg.filter.oracle, "train one with `synth oracle train` or remove the key"),
        ]
    needed.append(("classifier.config", cfg.classifier.config, "see configs/classifier/"))
    if cfg.needs_synthetic:
        needed.append(("oracle.config", cfg.oracle.config, "see configs/filter/oracle-64px.yaml or remove the key"))
    for i, ext in enumerate(cfg.evaluation.external):
        if ext.phantom is not None:  # rendered by the ablation itself: no file to find
            continue
        needed.append(
            (f"evaluation.external[{i}].manifest", ext.manifest, "prepare it with `synth prepare --split test`")
        )
    for key, value, fix in needed:
        if value is not None and not Path(value).exists():
            raise UserError(f"{where}: {key} {value} not found; {fix}")
    read_external_sets(cfg)  # each set test-only and readable (the run reads them again for their rows)
    check_stage_configs(cfg)


def check_stage_configs(cfg: AblationConfig) -> None:
    """Load every stage config the enabled stages will load, with the ablation's overrides, the way they load it.

    Why here: each stage reads its YAML only when it starts, so a typo in the classifier YAML, ``generate.n:
    twenty`` or ``scheduler: dpm+`` used to surface after the generator had trained for hours. This runs in
    ``check_paths`` (``synth ablate`` and ``--dry-run``) before any work; the first bad value is one error line.
    """
    where = cfg.source_path or "config"

    def generator(view: AblationConfig) -> None:
        from synth.generator.config import load_finetune_config

        overrides = {
            **view.generator.overrides,
            "train_manifest": "<the ablation's data manifest>",
            "output_dir": "<stage folder>",
        }
        if view.generator.pretrained:
            overrides["pretrained_model_name_or_path"] = view.generator.pretrained
        from synth.generator.finetune_plan import plan

        _, problems = plan(load_finetune_config(view.generator.config, overrides), data=False)  # finetune's own
        if problems:  # e.g. a missing prompt_templates or vae_model_path, an incomplete pretrained folder
            raise UserError(problems[0])

    def generate(view: AblationConfig) -> None:
        from synth.inference import GenerateConfig

        GenerateConfig.from_yaml(view.generate.config, n=view.generate.n, **view.generate.overrides)

    def verifier() -> None:
        from synth.filtering.config import load_verifier_config

        load_verifier_config(cfg.filter.verifier_config)

    def filter_() -> None:
        from synth.filtering.config import load_filter_config

        load_filter_config(cfg.filter.config, {**cfg.filter.overrides, "oracle": cfg.filter.oracle})

    def oracle() -> None:
        from synth.filtering.config import load_verifier_config

        load_verifier_config(cfg.oracle.config)

    def classifier(view: AblationConfig, arms: list[Any]) -> None:
        from synth.ablation.stages import arm_ensemble_config

        for arm in arms:  # the config each arm and seed trains with (train_arm's own)
            for seed in cfg.seeds:
                arm_ensemble_config(view, arm.mode, seed)

    checks: list[tuple[str, str | None, Any]] = []
    if cfg.needs_synthetic:
        for k in range(cfg.n_generators):  # each generator's finetune config (its seed among the overrides)
            label = "generator" if cfg.n_generators == 1 else f"generator {k} (seed {cfg.generator.seeds[k]})"
            checks.append((label, cfg.generator.config, lambda k=k: generator(cfg.for_synthetic(k))))
        for label, view in generate_views(cfg):
            checks.append((label, view.generate.config, lambda view=view: generate(view)))
    if cfg.needs_filter:
        checks += [
            ("filter.verifier_config", cfg.filter.verifier_config, verifier),
            ("filter", cfg.filter.config, filter_),
        ]
    if cfg.needs_synthetic and cfg.oracle.config:
        checks.append(("oracle", cfg.oracle.config, oracle))
    plain = [arm for arm in cfg.run_arms if not arm.classifier]
    checks.append(("classifier", cfg.classifier.config, lambda: classifier(cfg, plain)))
    for arm in cfg.run_arms:  # a variant's classifier keys on top of the ablation's, as its arm trains with them
        if arm.classifier:
            view = cfg.for_arm(arm)
            label = f"variant {arm.name!r} classifier"
            checks.append((label, view.classifier.config, lambda v=view, a=arm: classifier(v, [a])))
    for stage, path, load in checks:
        _check(f"{where}: {stage} stage" + (f" ({path})" if path else "") + " with its overrides", load)
    check_stage_values(cfg)


def check_stage_values(cfg: AblationConfig) -> None:
    """The ablation's own values that feed a stage, checked by that stage's own rules before any work.

    Why: ``data.size``, the phantom counts and seeds, ``data.val``/``data.test`` and which classes the data can
    generate were first checked by the stage that used them, after the shared stages had run. Each check here is
    the stage's own (``synth phantom``'s, ``synth prepare``'s, ``synth generate``'s), so the rules are not copied.
    """
    from synth.phantom.dataset import check_render_args
    from synth.prepare import PrepareConfig
    from synth.splits import SplitFractions

    where, d, ev, o = cfg.source_path or "config", cfg.data, cfg.evaluation, cfg.oracle
    if d.source != "manifest":
        _check(
            f"{where}: data.size / data.split_seed / data.val / data.test (synth prepare's --size / --seed / --val / "
            "--test)",
            lambda: (
                PrepareConfig.from_yaml(None, size=d.size, seed=d.split_seed, val=d.val, test=d.test),
                SplitFractions(d.val, d.test),
            ),
        )
    renders: list[tuple[str, int, int, dict[str, Any]]] = []
    if d.source == "phantom":  # the held-out set and the oracle need data.source phantom (validate() says so)
        renders.append(("data.phantom_n / data.size / data.phantom_seed", d.phantom_n, d.phantom_seed, {}))
        if ev.heldout_phantom_n:
            keys = "evaluation.heldout_phantom_n / heldout_phantom_seed"
            renders.append((keys, ev.heldout_phantom_n, ev.heldout_phantom_seed, {}))
        if cfg.needs_synthetic and o.config:
            extra = {"balanced": True, "per_class": o.per_class}
            renders.append(("oracle.phantom_n / per_class / phantom_seed", o.phantom_n, o.phantom_seed, extra))
    for keys, n, seed, extra in renders:
        _check(
            f"{where}: {keys} (synth phantom's --n / --size / --seed)",
            lambda: check_render_args(n, d.size, seed, **extra),  # noqa: B023 (called at once)
        )
    for label, view in generate_views(cfg) if cfg.needs_synthetic else []:
        check_generate_classes(view, label)


def generate_views(cfg: AblationConfig) -> list[tuple[str, AblationConfig]]:
    """``(label, the config as that generate stage sees it)`` for each generate stage the run arms use: the
    ablation's own section and each variant's with generate keys (the stages :mod:`synth.ablation.steps` plans)."""
    synthetic = [a for a in cfg.run_arms if a.uses_synthetic]
    views = [("generate", cfg)] if any(not a.generate for a in synthetic) else []
    return views + [(f"variant {a.name!r} generate", cfg.for_synthetic(0, a)) for a in synthetic if a.generate]


def _annotated_by_format(fmt: str | None) -> tuple[str, ...] | None:
    """The classes a ``data.format`` annotates where fewer than the 40 CXR-LT ones (the rest stay empty, so a
    generator trained on it cannot draw them); None = all of them."""
    from synth.readers import NIH_TO_CXRLT

    return tuple(NIH_TO_CXRLT.values()) if fmt == "nih" else None


def check_generate_classes(cfg: AblationConfig, label: str = "generate") -> None:
    """``generate.classes`` against the data the generator will learn from, as ``synth generate`` checks them.

    A named class the data does not annotate (or, for a prepared manifest, has no train positive of) cannot be
    drawn: ``synth generate`` refused it only after the generator had trained. A prepared manifest is read now, so
    the generate stage's own rules run on it (groups resolved on the train split, ``n: auto`` counts).
    """
    from synth.inference.planning import validate_class_names
    from synth.taxonomy import GROUPS

    where = cfg.source_path or "config"
    named = [c for c in validate_class_names(cfg.generate.classes) if c not in GROUPS]
    annotated = _annotated_by_format(cfg.data.format) if cfg.data.source == "prepare" else None
    missing = [c for c in named if annotated is not None and c not in annotated]
    if missing:
        raise UserError(
            f"{where}: {label}.classes {missing}: not annotated by data.format {cfg.data.format} data, so no "
            f"image can be generated for them; choose from {', '.join(annotated)}"
        )
    if cfg.data.source == "manifest":
        _check(f"{where}: {label}.classes / n on data.manifest {cfg.data.manifest}", lambda: _plan(cfg))


def _plan(cfg: AblationConfig) -> None:
    """The generate stage's targets and counts on the prepared manifest: every target samplable, some image made."""
    import warnings

    from synth.ablation.stages import mixing_counts
    from synth.cooccurrence import TrainingLabels
    from synth.inference import resolve_targets
    from synth.manifest import read_manifest

    real = read_manifest(cfg.data.manifest)
    labels = TrainingLabels(real[real["source"] == "real"], source="its train split")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a group's classes without positives are skipped, as generate does
        for target in resolve_targets(cfg.generate.classes, labels):
            labels.sampler(target)
    if not any(mixing_counts(cfg, real).values()):
        raise UserError(
            "no image would be generated (every class already has target_count train positives); raise "
            "generate.overrides.target_count or give generate.n a number"
        )


def _check(label: str, check: Any) -> None:
    """Run one stage's check; its UserError (or a wrong type it did not check itself) becomes one line after
    ``label``."""
    try:
        check()
    except UserError as err:
        raise UserError(f"{label}: {err}") from None
    except (TypeError, ValueError) as err:  # a value of the wrong type a loader did not check itself
        raise UserError(f"{label}: {err}; fix that value's type in the YAML or the overrides") from None
