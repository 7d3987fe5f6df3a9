"""An ablation's preflight: every path and stage config the enabled stages will read, checked before any work.

Apart from :mod:`synth.ablation.config` (which only reads and validates the ablation's own YAML) because these
checks reach into every stage's loader; ``synth ablate`` and ``--dry-run`` run them first, so a week-long GPU
recipe fails in the first second on a typo'd path or value rather than after the generator trained.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from synth.ablation.config import AblationConfig
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
    for key, value, fix in needed:
        if value is not None and not Path(value).exists():
            raise UserError(f"{where}: {key} {value} not found; {fix}")
    check_stage_configs(cfg)


def check_stage_configs(cfg: AblationConfig) -> None:
    """Load every stage config the enabled stages will load, with the ablation's overrides, the way they load it.

    Why here: each stage reads its YAML only when it starts, so a typo in the classifier YAML, ``generate.n:
    twenty`` or ``scheduler: dpm+`` used to surface after the generator had trained for hours. This runs in
    ``check_paths`` (``synth ablate`` and ``--dry-run``) before any work; the first bad value is one error line.
    """
    where = cfg.source_path or "config"

    def generator() -> None:
        from synth.generator.config import load_finetune_config

        overrides = {
            **cfg.generator.overrides,
            "train_manifest": "<the ablation's data manifest>",
            "output_dir": "<stage folder>",
        }
        if cfg.generator.pretrained:
            overrides["pretrained_model_name_or_path"] = cfg.generator.pretrained
        load_finetune_config(cfg.generator.config, overrides)

    def generate() -> None:
        from synth.inference import GenerateConfig

        GenerateConfig.from_yaml(cfg.generate.config, n=cfg.generate.n, **cfg.generate.overrides)

    def verifier() -> None:
        from synth.filtering.config import load_verifier_config

        load_verifier_config(cfg.filter.verifier_config)

    def filter_() -> None:
        from synth.filtering.config import load_filter_config

        load_filter_config(cfg.filter.config, {**cfg.filter.overrides, "oracle": cfg.filter.oracle})

    def oracle() -> None:
        from synth.filtering.config import load_verifier_config

        load_verifier_config(cfg.oracle.config)

    def classifier() -> None:
        from classifier.config import load_ensemble_config

        load_ensemble_config(cfg.classifier.config, cfg.classifier.overrides)

    checks: list[tuple[str, str | None, Any]] = []
    if cfg.needs_synthetic:
        checks += [("generator", cfg.generator.config, generator), ("generate", cfg.generate.config, generate)]
    if cfg.needs_filter:
        checks += [
            ("filter.verifier_config", cfg.filter.verifier_config, verifier),
            ("filter", cfg.filter.config, filter_),
        ]
    if cfg.needs_synthetic and cfg.oracle.config:
        checks.append(("oracle", cfg.oracle.config, oracle))
    checks.append(("classifier", cfg.classifier.config, classifier))
    for stage, path, load in checks:
        label = f"{where}: {stage} stage" + (f" ({path})" if path else "") + " with its overrides"
        try:
            load()
        except UserError as err:
            raise UserError(f"{label}: {err}") from None
        except (TypeError, ValueError) as err:  # a value of the wrong type a loader did not check itself
            raise UserError(f"{label}: {err}; fix that value's type in the YAML or the overrides") from None
