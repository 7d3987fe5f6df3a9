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
from synth.ablation.arms import BASELINE, DEFAULT_ARMS, SYNTHETIC_FILTERED, Arm, SyntheticSet, variant
from synth.config import load_config
from synth.config_errors import UnknownKeyError
from synth.errors import UserError
from synth.hashing import hex_hash
from synth.output_folder import folder_name_problem
from synth.readers import FORMATS

ARMS: tuple[str, ...] = tuple(ARM_REGISTRY)
DATA_SOURCES: tuple[str, ...] = ("phantom", "prepare", "manifest")


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
    #: K generator seeds: K generators trained alike but for the finetune ``seed``, each with its own generate and
    #: filter stages; synthetic arm seed number i trains on generator i mod K, and the paired intervals combine
    #: within- and between-generator variance (Rubin's rules). Empty: one generator, the finetune config's seed,
    #: and the report says the interval leaves the generator's randomness out.
    seeds: list[int] = field(default_factory=list)

    def key_fields(self, k: int = 0) -> dict[str, Any]:
        """What generator ``k`` depends on (its cache key input). Without ``seeds`` exactly the fields this
        section always hashed, so existing generator caches stay valid."""
        overrides = dict(self.overrides)
        if self.seeds:
            overrides["seed"] = self.seeds[k]
        return {"config": self.config, "pretrained": self.pretrained, "overrides": overrides}


@dataclass
class VariantSpec:
    """An arm a config names: a registered arm's rows trained with other settings (see arms.variant)."""

    name: str = ""
    arm: str = ""  #: the registered arm it derives from (e.g. synthetic_filtered_resampled)
    label: str | None = None  #: shown in the report (default: the base arm's label and the variant's name)
    #: classifier config keys on top of classifier.overrides, e.g. {synthetic.loss_weight: 0.5}
    classifier: dict[str, Any] = field(default_factory=dict)
    #: generate settings on top of the ablation's generate section (n, classes, or generate-config fields such as
    #: prompt_style): the variant gets its own generate (and filter) stages
    generate: dict[str, Any] = field(default_factory=dict)


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
class PhantomCohort:
    """data.source=phantom: an external set the ablation renders itself, through another acquisition site.

    Why: "does synthetic data help more out of distribution?" needs a shifted test set whose truth is known; the
    phantom renders the same findings at site B (synth.phantom.sites) for new patients, test-only.
    """

    site: str = "B"  #: a site of synth.phantom.sites other than the training data's A
    n: int = 5000  #: images rendered (all test rows)
    seed: int = 11  #: a phantom seed no other set of this ablation uses


@dataclass
class ExternalSet:
    """A test-only set from another site, scored by every arm/seed: a prepared manifest
    (``synth prepare --split test``) or, on the phantom, a cohort the ablation renders at another site."""

    name: str = ""  #: the report section's title and results.json key (a folder-safe name)
    manifest: str = ""  #: its manifest.csv (or the folder holding it)
    phantom: PhantomCohort | None = None  #: instead of manifest: render this cohort (data.source phantom)


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
    #: the evidence rule (synth/ablation/evidence.py): a group's verdict stands only on classes with at least this
    #: many test positives; "helps" / "hurts" needs the interval to exclude 0 and |Δ| >= min_effect
    min_test_positives: int = 10
    min_effect: float = 0.005
    #: external test sets: every arm and seed is scored on each (predictions cached beside each model, so adding
    #: one to a finished ablation only predicts)
    external: list[ExternalSet] = field(default_factory=list)


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
    #: config-named arms (levers); list a variant's name in ``arms`` to run it
    variants: list[VariantSpec] = field(default_factory=list)
    output_root: str = "outputs"
    #: the CSV every finished run is recorded in (synth/ablation/store.py); null: <output_root>/results/runs.csv
    results_store: str | None = None
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
    def arm_specs(self) -> dict[str, Arm]:
        """Every arm this config can run, by name: the registered arms and its variants."""
        specs = dict(ARM_REGISTRY)
        for v in self.variants:
            specs[v.name] = variant(v.name, v.arm, v.label, v.classifier, v.generate)
        return specs

    @property
    def run_arms(self) -> list[Arm]:
        """The arms this ablation runs, in the order of ``arms``."""
        specs = self.arm_specs
        return [specs[a] for a in self.arms if a in specs]

    @property
    def needs_synthetic(self) -> bool:
        return any(a.uses_synthetic for a in self.run_arms)

    @property
    def needs_filter(self) -> bool:
        return any(a.synthetic == SyntheticSet.FILTERED for a in self.run_arms)

    @property
    def n_generators(self) -> int:
        return max(1, len(self.generator.seeds))

    def generator_of(self, seed_index: int) -> int:
        """The generator whose images the ``seed_index``-th classifier seed of a synthetic arm trains on."""
        return seed_index % self.n_generators

    def for_synthetic(self, k: int = 0, arm: Arm | None = None) -> AblationConfig:
        """This config as generator ``k`` and ``arm``'s generate settings see it: the stages read ``generator``
        and ``generate`` as before, so a K-generator or variant stage is the same stage call."""
        gen = dataclasses.replace(self.generator, overrides=self.generator.key_fields(k)["overrides"], seeds=[])
        return dataclasses.replace(self, generator=gen, generate=generate_section(self.generate, arm))

    def for_arm(self, arm: Arm) -> AblationConfig:
        """This config as ``arm``'s classifier sees it (a variant's classifier keys on top of the ablation's)."""
        if not arm.classifier:
            return self
        overrides = {**self.classifier.overrides, **arm.classifier}
        return dataclasses.replace(self, classifier=dataclasses.replace(self.classifier, overrides=overrides))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("source_path")
        d.pop("sets")
        return d


def generate_section(generate: GenerateStage, arm: Arm | None) -> GenerateStage:
    """The generate section a synthetic arm's images come from (a variant's generate keys applied)."""
    if arm is None or not arm.generate:
        return generate
    extra = dict(arm.generate)
    top = {k: extra.pop(k) for k in ("n", "classes", "config") if k in extra}
    return dataclasses.replace(generate, **top, overrides={**generate.overrides, **extra})


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
    validate_variants(cfg, where=str(path))
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
        maps = [(f"{section} stage overrides", getattr(cfg, section).overrides)]
        if section in ("classifier", "generate"):
            maps += [(f"variant {v.name!r} {section}", _stage_keys(getattr(v, section))) for v in cfg.variants]
        for label, overrides in maps:
            load_config(cls, None, overrides, where=f"{where}: {label}", drop_none=cls is not EnsembleConfig, **style)


def _stage_keys(settings: Mapping[str, Any]) -> dict[str, Any]:
    """A variant's settings that are the stage config's own keys (``n``/``classes``/``config`` are the section's)."""
    return {k: v for k, v in settings.items() if k not in ("classes", "config")}


def validate_variants(cfg: AblationConfig, where: str) -> None:
    """Each variant: a new safe name, a registered base arm, settings only where the base arm can use them."""
    seen: set[str] = set()
    for v in cfg.variants:
        if not v.name or not v.name.replace("_", "").replace("-", "").isalnum():
            raise UserError(f"{where}: variant name {v.name!r} must be letters, digits, '_' or '-' (a folder name)")
        if v.name in ARM_REGISTRY or v.name in seen:
            raise UserError(f"{where}: variant name {v.name!r} is already an arm; choose another name")
        seen.add(v.name)
        try:
            variant(v.name, v.arm, v.label, v.classifier, v.generate)
        except KeyError as err:
            raise UserError(f"{where}: {err.args[0]}") from None
        if not isinstance(v.generate.get("classes", []), list):
            raise UserError(f"{where}: variant {v.name!r} generate.classes must be a list of class names or groups")


def validate(cfg: AblationConfig, where: str = "config") -> None:
    problem = folder_name_problem(cfg.name)
    if problem:
        raise UserError(f"{where}: name {cfg.name!r} {problem}; it must be one folder name such as 'tail_ablation'")
    if not cfg.seeds or not all(isinstance(s, int) for s in cfg.seeds) or len(set(cfg.seeds)) != len(cfg.seeds):
        raise UserError(f"{where}: seeds must be a non-empty list of distinct integers, got {cfg.seeds!r}")
    if not all(0 <= s < 2**32 for s in cfg.seeds):  # numpy's and torch's seeding refuse others: a traceback, hours in
        raise UserError(f"{where}: seeds {cfg.seeds!r}: each must be in [0, 2**32 - 1], e.g. 0,1,2")
    specs = cfg.arm_specs
    bad = [a for a in cfg.arms if a not in specs]
    if bad or not cfg.arms:
        raise UserError(f"{where}: unknown arm(s) {bad}; valid arms: {', '.join(specs)} (or add a variant)")
    if len(set(cfg.arms)) != len(cfg.arms):
        raise UserError(f"{where}: arms lists an arm twice: {cfg.arms}")
    if BASELINE not in cfg.arms:
        raise UserError(f"{where}: arms must include {BASELINE} (every other arm is compared with it)")
    if cfg.target.arm not in specs or not specs[cfg.target.arm].uses_synthetic:
        synthetic = [a for a, spec in specs.items() if spec.uses_synthetic]
        raise UserError(f"{where}: target.arm {cfg.target.arm!r} must be a synthetic arm: {', '.join(synthetic)}")
    g = cfg.generator.seeds
    if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in g) or len(set(g)) != len(g):
        raise UserError(f"{where}: generator.seeds must be distinct integers >= 0, got {g!r}")
    if len(g) > len(cfg.seeds):
        raise UserError(
            f"{where}: {len(g)} generator.seeds but {len(cfg.seeds)} classifier seeds: each generator needs at least "
            "one classifier seed (seed number i trains on generator i mod K); add seeds or drop generators"
        )
    if cfg.data.source not in DATA_SOURCES:
        raise UserError(f"{where}: data.source {cfg.data.source!r}; choose one of {', '.join(DATA_SOURCES)}")
    if cfg.data.source == "manifest" and not cfg.data.manifest:
        raise UserError(f"{where}: data.source manifest needs data.manifest (a manifest.csv from `synth prepare`)")
    if cfg.data.source == "prepare" and not (cfg.data.format and cfg.data.labels and cfg.data.images):
        raise UserError(f"{where}: data.source prepare needs data.format, data.labels and data.images")
    if cfg.data.source == "prepare" and cfg.data.format not in FORMATS:
        raise UserError(f"{where}: data.format {cfg.data.format!r}; choose one of {', '.join(FORMATS)}")
    from synth.inference.planning import validate_class_names

    for label, section in [("generate", cfg.generate)] + [
        (f"variant {a.name!r} generate", generate_section(cfg.generate, a)) for a in cfg.run_arms if a.generate
    ]:
        try:  # the generate stage's own check: a typo, or a zero-shot class no generator can draw
            validate_class_names(section.classes)
        except UserError as err:
            raise UserError(f"{where}: {label}.classes: {err}") from None
    if cfg.classifier.batch_size < 1:
        raise UserError(f"{where}: classifier.batch_size {cfg.classifier.batch_size} must be >= 1 (prediction batch)")
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
    if ev.min_test_positives < 1:
        raise UserError(f"{where}: evaluation.min_test_positives {ev.min_test_positives} must be >= 1")
    names = [x.name for x in ev.external]
    for i, ext in enumerate(ev.external):
        if not ext.name or "/" in ext.name or ext.name.startswith(".") or names.count(ext.name) > 1:
            raise UserError(
                f"{where}: evaluation.external[{i}].name {ext.name!r} must be a distinct, non-empty folder-safe name"
            )
        if bool(ext.manifest) == (ext.phantom is not None):
            raise UserError(
                f"{where}: evaluation.external[{i}] ({ext.name}) needs manifest (a test-only manifest.csv from "
                "`synth prepare --split test`) or phantom (a cohort rendered at another site), one of the two"
            )
        if ext.phantom is not None:
            check_phantom_cohort(cfg, ext, f"{where}: evaluation.external[{i}] ({ext.name}).phantom")
    if cfg.evaluation.n_boot < 100:
        raise UserError(
            f"{where}: evaluation.n_boot {cfg.evaluation.n_boot} is too small for a 95% interval (use >= 100)"
        )


def check_phantom_cohort(cfg: AblationConfig, ext: ExternalSet, where: str) -> None:
    """A rendered external cohort: phantom data, another site than the training data's, its own patients."""
    from synth.phantom.dataset import check_render_args
    from synth.phantom.sites import get_site

    cohort = ext.phantom
    if cfg.data.source != "phantom":
        raise UserError(f"{where}: a rendered cohort needs data.source phantom; give a prepared manifest instead")
    try:
        site = get_site(cohort.site)
        check_render_args(cohort.n, cfg.data.size, cohort.seed)
    except UserError as err:
        raise UserError(f"{where}: {str(err).replace('--', '')}") from None
    if site.is_default:
        raise UserError(f"{where}: site {cohort.site!r} is the training data's own acquisition; choose another site")
    ev = cfg.evaluation
    others = {cfg.data.phantom_seed, cfg.oracle.phantom_seed}
    others |= {ev.heldout_phantom_seed} if ev.heldout_phantom_n else set()
    others |= {x.phantom.seed for x in ev.external if x.phantom is not None and x is not ext}
    if cohort.seed in others:
        raise UserError(f"{where}: seed {cohort.seed} repeats another phantom seed of this ablation; choose a new one")


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
