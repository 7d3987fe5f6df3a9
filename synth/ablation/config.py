"""``configs/ablation/*.yaml`` -> a validated :class:`AblationConfig`.

An ablation names the data, the stage configs it reuses (finetune, generate,
filter, classifier YAMLs owned by those stages), the arms and the seeds.
Relative paths are resolved against the working directory (the repository
root in every README command), like ``accelerate`` and the other stages do.

Validation happens before anything runs, so a week-long GPU recipe fails in
the first second on a typo'd path rather than after the generator trained.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from synth.ablation.arms import ARMS as ARM_REGISTRY
from synth.ablation.arms import BASELINE, DEFAULT_ARMS, SYNTHETIC_FILTERED, SyntheticSet
from synth.config import load_config
from synth.config_errors import UnknownKeyError
from synth.errors import UserError
from synth.hashing import hex_hash
from synth.readers import FORMATS
from synth.taxonomy import resolve_class

ARMS: tuple[str, ...] = tuple(ARM_REGISTRY)
DATA_SOURCES: tuple[str, ...] = ("phantom", "prepare", "manifest")
CLASS_GROUPS: tuple[str, ...] = ("tail", "medium", "head")


@dataclass
class DataConfig:
    """Where the real (or phantom) images come from; always ends as one prepared manifest."""

    source: str = (
        "phantom"  #: phantom (render + prepare) | prepare (a CXR-LT/NIH label file) | manifest (already prepared)
    )
    manifest: str | None = None  #: source=manifest: a manifest.csv written by `synth prepare`
    format: str | None = None  #: source=prepare: the reader name of `synth prepare` (cxrlt, nih, ...)
    labels: str | None = None  #: source=prepare: label file
    images: str | None = None  #: source=prepare: image folder
    size: int = 64  #: pixel size of the prepared grayscale cache
    split_seed: int = 0  #: patient split seed: fixed across arms and seeds (same untouched test split)
    val: float = 0.1
    test: float = 0.2
    phantom_n: int = 3000  #: source=phantom: images rendered
    phantom_seed: int = 0


@dataclass
class GeneratorStage:
    config: str | None = None  #: configs/finetune/*.yaml (owned by the finetune stage)
    pretrained: str | None = (
        None  #: local diffusers folder to start from (e.g. SD-2.1-base); checked for model_index.json
    )
    overrides: dict[str, Any] = field(default_factory=dict)  #: fields of the finetune config to override


@dataclass
class GenerateStage:
    config: str | None = None  #: configs/generate/*.yaml
    classes: list[str] = field(default_factory=lambda: ["tail"])  #: class names or frequency groups
    n: int | str = 100  #: images per class, or "auto" (with overrides.target_count)
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class FilterStage:
    verifier_config: str | None = None  #: configs/filter/verifier*.yaml
    config: str | None = None  #: configs/filter/*.yaml
    oracle: str | None = None  #: phantom only: a trained oracle folder, for per-class fidelity in the report
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class OracleStage:
    """Phantom only: an evaluation-only judge the ablation trains itself, for per-class fidelity in the report.

    It is trained on a class-balanced phantom set rendered from its own seed (never the training data) and
    only scores images: which generated images really show the finding they were asked for. Nothing it
    says reaches the filter or the classifiers.
    """

    config: str | None = None  #: configs/filter/oracle*.yaml (verifier keys); null = no oracle
    phantom_n: int = 20000  #: balanced phantom images rendered for it (split train/val/test by patient)
    per_class: int | None = None  #: each class present in >= this many of them (null: phantom_n / 40)
    phantom_seed: int = 2


@dataclass
class ClassifierStage:
    config: str | None = None  #: configs/classifier/*.yaml (an EnsembleConfig)
    overrides: dict[str, Any] = field(default_factory=dict)
    batch_size: int = 64  #: prediction batch size


@dataclass
class EvaluationConfig:
    split: str = "test"
    n_boot: int = 1000
    bootstrap_seed: int = 0
    grid_examples: int = 6  #: images per row in the report's grids
    #: data.source=phantom: this many extra phantom images (new patients, another phantom seed, same renderer and
    #: label-set law) are rendered for evaluation only and scored together with the test split. The trained
    #: models never see them, so adding them to a finished ablation only predicts, it does not retrain.
    heldout_phantom_n: int = 0
    heldout_phantom_seed: int = 1


@dataclass
class Target:
    """The acceptance target the report checks one synthetic arm against (the filtered mix unless told)."""

    tail_gain: float = 0.05
    max_head_drop: float = 0.01
    #: The arm the target judges. ``synthetic_filtered_resampled`` asks the cleaner question against
    #: ``real_resampled``: what does the filtered synthetic set add to the same re-sampled real rows?
    arm: str = SYNTHETIC_FILTERED.name


@dataclass
class AblationConfig:
    name: str
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    arms: list[str] = field(default_factory=lambda: list(DEFAULT_ARMS))
    output_root: str = "outputs"
    data: DataConfig = field(default_factory=DataConfig)
    generator: GeneratorStage = field(default_factory=GeneratorStage)
    generate: GenerateStage = field(default_factory=GenerateStage)
    filter: FilterStage = field(default_factory=FilterStage)
    classifier: ClassifierStage = field(default_factory=ClassifierStage)
    oracle: OracleStage = field(default_factory=OracleStage)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    target: Target = field(default_factory=Target)
    source_path: str | None = None  #: the YAML this came from (provenance; not hashed)
    #: the ``--set KEY=VALUE`` overrides as given (provenance: the report's command repeats them; not hashed —
    #: their effect is in the other fields)
    sets: dict[str, str] = field(default_factory=dict)

    @property
    def ablation_dir(self) -> Path:
        return Path(self.output_root) / "ablations" / self.name

    @property
    def report_dir(self) -> Path:
        return Path(self.output_root) / "reports" / self.name

    @property
    def needs_synthetic(self) -> bool:
        return any(ARM_REGISTRY[a].uses_synthetic for a in self.arms if a in ARM_REGISTRY)

    @property
    def needs_filter(self) -> bool:
        return any(ARM_REGISTRY[a].synthetic == SyntheticSet.FILTERED for a in self.arms if a in ARM_REGISTRY)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("source_path")
        d.pop("sets")
        return d


def load_ablation_config(
    path: str | Path,
    seeds: list[int] | None = None,
    arms: list[str] | None = None,
    output_root: str | None = None,
    sets: Mapping[str, Any] | None = None,
) -> AblationConfig:
    """Read, apply ``--set`` overrides then the CLI flags, validate the values (not yet the paths: see
    :func:`synth.ablation.preflight.check_paths`). Loading and type checks are :func:`synth.config.load_config`'s;
    each ``overrides:`` map is checked against its stage's config here, so a typo in one is an error before any work.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--config {path}: file not found; the shipped ones are in configs/ablation/")
    try:
        cfg = load_config(AblationConfig, path, sets, base={"name": path.stem}, internal=("source_path", "sets"))
    except UnknownKeyError as err:
        if err.section and not err.override:  # the wording this loader has always used for a section's key
            raise UserError(
                f"{path}: unknown key(s) [{err.name!r}] in {err.section!r}; {str(err).split('; ', 1)[1]}"
            ) from None
        raise
    cfg.source_path = str(path)
    cfg.sets = {str(k): str(v) for k, v in (sets or {}).items()}
    if seeds is not None:
        cfg.seeds = list(seeds)
    if arms is not None:
        cfg.arms = list(arms)
    if output_root is not None:
        cfg.output_root = output_root
    check_overrides(cfg, where=str(path))
    validate(cfg, where=str(path))
    return cfg


def check_overrides(cfg: AblationConfig, where: str) -> None:
    """Every ``overrides:`` map against its stage's config: keys and value types (values: see preflight.py).

    The maps stay as written in ``cfg`` (the stage cache keys hash them); the stages type them when they load.
    """
    from classifier.config import EnsembleConfig
    from synth.filtering.config import FilterConfig
    from synth.generator.config import FINETUNE_STYLE, FinetuneConfig
    from synth.inference import GenerateConfig

    for section, cls in (
        ("generator", FinetuneConfig),
        ("generate", GenerateConfig),
        ("filter", FilterConfig),
        ("classifier", EnsembleConfig),
    ):
        style = FINETUNE_STYLE if cls is FinetuneConfig else {}
        load_config(
            cls,
            None,
            getattr(cfg, section).overrides,
            where=f"{where}: {section} stage overrides",
            drop_none=cls is not EnsembleConfig,
            **style,
        )


def validate(cfg: AblationConfig, where: str = "config") -> None:
    if not cfg.name or "/" in cfg.name:
        raise UserError(f"{where}: name {cfg.name!r} must be a non-empty folder name")
    if not cfg.seeds or not all(isinstance(s, int) for s in cfg.seeds) or len(set(cfg.seeds)) != len(cfg.seeds):
        raise UserError(f"{where}: seeds must be a non-empty list of distinct integers, got {cfg.seeds!r}")
    bad = [a for a in cfg.arms if a not in ARMS]
    if bad or not cfg.arms:
        raise UserError(f"{where}: unknown arm(s) {bad}; valid arms: {', '.join(ARMS)}")
    if BASELINE not in cfg.arms:
        raise UserError(f"{where}: arms must include {BASELINE} (every other arm is compared with it)")
    if cfg.target.arm not in ARM_REGISTRY or not ARM_REGISTRY[cfg.target.arm].uses_synthetic:
        synthetic = [a for a, spec in ARM_REGISTRY.items() if spec.uses_synthetic]
        raise UserError(f"{where}: target.arm {cfg.target.arm!r} must be a synthetic arm: {', '.join(synthetic)}")
    if cfg.data.source not in DATA_SOURCES:
        raise UserError(f"{where}: data.source {cfg.data.source!r}; choose one of {', '.join(DATA_SOURCES)}")
    if cfg.data.source == "manifest" and not cfg.data.manifest:
        raise UserError(f"{where}: data.source manifest needs data.manifest (a manifest.csv from `synth prepare`)")
    if cfg.data.source == "prepare" and not (cfg.data.format and cfg.data.labels and cfg.data.images):
        raise UserError(f"{where}: data.source prepare needs data.format, data.labels and data.images")
    if cfg.data.source == "prepare" and cfg.data.format not in FORMATS:
        raise UserError(f"{where}: data.format {cfg.data.format!r}; choose one of {', '.join(FORMATS)}")
    for name in cfg.generate.classes:
        if name.lower() not in CLASS_GROUPS:
            resolve_class(name)  # unknown -> UnknownClassError (a UserError) listing the closest names
    if cfg.evaluation.split not in ("test", "val"):
        raise UserError(f"{where}: evaluation.split must be test or val, got {cfg.evaluation.split!r}")
    ev = cfg.evaluation
    if ev.heldout_phantom_n < 0:
        raise UserError(f"{where}: evaluation.heldout_phantom_n {ev.heldout_phantom_n} must be >= 0")
    if ev.heldout_phantom_n and cfg.data.source != "phantom":
        raise UserError(
            f"{where}: evaluation.heldout_phantom_n needs data.source phantom (real data cannot be rendered); "
            "remove it or set it to 0"
        )
    if ev.heldout_phantom_n and ev.split != "test":
        raise UserError(f"{where}: evaluation.heldout_phantom_n adds test patients; it needs evaluation.split test")
    if ev.heldout_phantom_n and ev.heldout_phantom_seed == cfg.data.phantom_seed:
        raise UserError(
            f"{where}: evaluation.heldout_phantom_seed {ev.heldout_phantom_seed} equals data.phantom_seed: "
            "the held-out images would repeat the training patients; choose another seed"
        )
    if cfg.oracle.config and cfg.data.source != "phantom":
        raise UserError(
            f"{where}: oracle needs data.source phantom (only the phantom knows the truth); remove oracle.config"
        )
    if cfg.oracle.config and cfg.oracle.phantom_seed in (
        cfg.data.phantom_seed,
        ev.heldout_phantom_seed if ev.heldout_phantom_n else None,
    ):
        raise UserError(
            f"{where}: oracle.phantom_seed {cfg.oracle.phantom_seed} repeats another phantom seed of this "
            "ablation; the oracle must be trained on its own patients"
        )
    if cfg.evaluation.n_boot < 100:
        raise UserError(
            f"{where}: evaluation.n_boot {cfg.evaluation.n_boot} is too small for a 95% interval (use >= 100)"
        )


def stage_key(*parts: Any) -> str:
    """A short content hash of a stage's settings, upstream keys and referenced YAML files.

    Hashing file *contents* (not names) means editing configs/finetune/X.yaml
    retrains the generator instead of silently reusing a stale one; hashing the
    *parsed* YAML means a comment or layout edit does not throw away an hour of
    cached training.
    """
    import yaml

    def expand(obj: Any) -> Any:
        if dataclasses.is_dataclass(obj):
            obj = dataclasses.asdict(obj)
        if isinstance(obj, dict):
            return {k: expand(v) for k, v in sorted(obj.items())}
        if isinstance(obj, (list, tuple)):
            return [expand(v) for v in obj]
        if isinstance(obj, str) and obj.endswith((".yaml", ".yml")) and Path(obj).is_file():
            try:
                return {"file": obj, "content": expand(yaml.safe_load(Path(obj).read_text()))}
            except yaml.YAMLError:  # not ours to judge here: the stage's own loader reports it
                return {"file": obj, "sha256": hex_hash(Path(obj).read_bytes(), algorithm="sha256")}
        return obj

    blob = json.dumps(expand(list(parts)), sort_keys=True, default=str)
    return hex_hash(blob, algorithm="sha256", hex_chars=12)
