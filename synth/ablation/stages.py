"""The ablation's stage calls: thin adapters from an :class:`AblationConfig` to each stage's library API.

Each function does one stage and returns what the runner caches; the runner
looks them up on this module at call time, so tests substitute cheap fakes.
The other stages' modules are imported inside the functions: a missing stage
(e.g. the classifier package not installed) fails only the ablations that
need it, with one error line.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import shlex
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from synth.ablation.config import AblationConfig
from synth.errors import UserError
from synth.provenance import git_commit, package_versions


def import_stage_module(module: str, stage: str):
    """``module``, or one UserError line when it is missing from this checkout (only the ablations needing it fail)."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name and module.startswith(err.name):
            raise UserError(f"{stage} stage unavailable: module {module} is not installed in this checkout") from None
        raise


# ---------------------------------------------------------------- shared stages


def prepare_data(cfg: AblationConfig, out: Path) -> Path:
    """Prepared manifest of the real (or phantom) data; the patient split is fixed by data.split_seed."""
    d = cfg.data
    prepare = import_stage_module("synth.prepare", "prepare")
    if d.source == "manifest":
        return Path(d.manifest).resolve()
    if d.source == "phantom":
        phantom = import_stage_module("synth.phantom", "phantom")
        labels = Path(phantom.render_dataset(n=d.phantom_n, size=d.size, seed=d.phantom_seed, out=out / "phantom"))
        fmt, images = "cxrlt", labels.parent
    else:
        fmt, labels, images = d.format, Path(d.labels), Path(d.images)
    return prepare.prepare_dataset(
        fmt,
        labels,
        images,
        out / "prepared",
        size=d.size,
        seed=d.split_seed,
        val=d.val,
        test=d.test,
        overwrite=True,
        progress=True,
    )


def prepare_heldout(cfg: AblationConfig, out: Path) -> Path:
    """Extra test-only phantom patients (``evaluation.heldout_phantom_n``); returns their manifest.

    At a 20 % split of ~10,000 phantom images most tail classes have fewer than
    10 test positives, so a tail verdict rests on a handful of images. The phantom
    can render more patients for free; they come from another phantom seed, so
    they share no patient with the training data, and they are relabelled
    ``split=test`` with their own subject ids so the patient bootstrap keeps
    them apart from the test split's patients.
    """
    ev = cfg.evaluation
    return phantom_test_cohort(
        ev.heldout_phantom_n,
        cfg.data.size,
        ev.heldout_phantom_seed,
        out,
        "heldout.csv",
        f"heldout{ev.heldout_phantom_seed}-",
    )


def prepare_phantom_external(cfg: AblationConfig, cohort: Any, out: Path) -> Path:
    """An ``evaluation.external`` cohort rendered at another acquisition site (same findings, known truth)."""
    tag = f"site{cohort.site.upper()}{cohort.seed}-"
    return phantom_test_cohort(cohort.n, cfg.data.size, cohort.seed, out, "external.csv", tag, site=cohort.site)


def phantom_test_cohort(n: int, size: int, seed: int, out: Path, name: str, tag: str, site: str = "A") -> Path:
    """``n`` phantom images of new patients as a test-only manifest ``name`` beside their labels.

    Rendered at ``size`` already, so the images need no prepared cache; subject and study ids get ``tag`` so the
    patient bootstrap keeps them apart from every other set's patients.
    """
    from synth.manifest import validate_manifest, write_manifest
    from synth.readers import read_labels

    phantom = import_stage_module("synth.phantom", "phantom")
    labels = Path(phantom.render_dataset(n=n, size=size, seed=seed, out=out / "phantom", progress=True, site=site))
    df = read_labels("cxrlt", labels)
    df["subject_id"] = tag + df["subject_id"]
    df["study_id"] = tag + df["study_id"]
    df = validate_manifest(df.assign(split="test", source="real"), where=str(labels))
    return write_manifest(df[[c for c in df.columns if c != "source_fpath"]], labels.parent / name)


def train_generator(cfg: AblationConfig, manifest: Path, out: Path) -> Path:
    """Fine-tune (or train from scratch) the latent-diffusion generator on the real training split."""
    finetune = import_stage_module("synth.finetune", "finetune")
    overrides = {**cfg.generator.overrides, "train_manifest": str(manifest), "output_dir": str(out / "pipeline")}
    if cfg.generator.pretrained:
        overrides["pretrained_model_name_or_path"] = cfg.generator.pretrained
    config = finetune.load_finetune_config(cfg.generator.config, overrides)
    return Path(finetune.run_finetune(config))


def generate_images(cfg: AblationConfig, model_dir: Path, out: Path) -> Path:
    from synth.inference import GenerateConfig, run

    gen = GenerateConfig.from_yaml(cfg.generate.config, n=cfg.generate.n, **cfg.generate.overrides)
    return run(model_dir, cfg.generate.classes, out, gen)


def filter_images(cfg: AblationConfig, synthetic_manifest: Path, data_manifest: Path, out: Path) -> Path:
    """Train the label-verifier on the real training split, then filter; returns the folder with kept.csv."""
    filtering = import_stage_module("synth.filtering", "filter")
    verifier_dir = filtering.train_verifier(
        data_manifest, out / "verifier", filtering.load_verifier_config(cfg.filter.verifier_config)
    )
    config = filtering.load_filter_config(cfg.filter.config, {**cfg.filter.overrides, "oracle": cfg.filter.oracle})
    filtering.run_filter(synthetic_manifest, data_manifest, verifier_dir, out / "filtered", config)
    return out / "filtered"


def filter_summary(filter_dir: Path) -> dict[str, Any]:
    """The filter's summary.json in the report's layout (see synth/ablation/results.py)."""
    import json

    summary = json.loads((Path(filter_dir) / "summary.json").read_text())
    classes = {}
    for cls, row in summary.get("classes", {}).items():
        classes[cls] = {
            "n": row.get("n"),
            "kept": row.get("kept"),
            "rejected": row.get("rejected", {}),
            "flagged": row.get("flagged", {}),
            "fid": row.get("fid"),
            "kid": row.get("kid"),
            "fid_floor": row.get("fid_floor"),
            "fid_ci": row.get("fid_ci"),
            "oracle_fidelity": row.get("oracle_fidelity"),
            "transfer": row.get("transfer"),
        }
    return {"extractor": summary.get("extractor", "unknown"), "classes": classes}


# ---------------------------------------------------------------- phantom oracle (evaluation only)


def train_oracle(cfg: AblationConfig, out: Path) -> Path:
    """Render a class-balanced phantom set from the oracle's own seed and train the judge on it."""
    o, d = cfg.oracle, cfg.data
    phantom = import_stage_module("synth.phantom", "phantom")
    prepare = import_stage_module("synth.prepare", "prepare")
    filtering = import_stage_module("synth.filtering", "filter")
    labels = Path(
        phantom.render_dataset(
            n=o.phantom_n,
            size=d.size,
            seed=o.phantom_seed,
            out=out / "phantom",
            balanced=True,
            per_class=o.per_class,
            progress=True,
        )
    )
    manifest = prepare.prepare_dataset(
        "cxrlt",
        labels,
        labels.parent,
        out / "prepared",
        size=d.size,
        seed=o.phantom_seed,
        overwrite=True,
        progress=True,
    )
    return Path(filtering.train_oracle(manifest, out / "oracle", filtering.load_verifier_config(o.config)))


def oracle_fidelity(
    oracle_dir: Path, real_train: pd.DataFrame, generated: pd.DataFrame, kept: pd.DataFrame | None, out: Path
) -> Path:
    """Per generated class: how often the oracle detects the target finding in real / generated / kept / rejected
    images.

    "Real" (the class's real training positives) is the judge's own sensitivity: a class whose
    real images it rarely detects cannot be judged, and the report says so.
    """
    import json

    from synth.filtering.oracle import load_oracle
    from synth.filtering.oracle import predict as oracle_predict
    from synth.io import write_json_atomic

    oracle, thresholds = load_oracle(oracle_dir)
    val_ap = {
        c: v.get("val_ap") for c, v in json.loads((Path(oracle_dir) / "oracle.json").read_text())["classes"].items()
    }
    index = {c: j for j, c in enumerate(oracle.classes)}
    kept_ids = set(kept["dicom_id"]) if kept is not None else None
    classes: dict[str, Any] = {}
    for cls in sorted(set(generated["target_class"])):
        gen = generated[generated["target_class"] == cls]
        real = real_train[real_train[cls] == 1] if cls in real_train else real_train.head(0)
        entry: dict[str, Any] = {
            "oracle_val_ap": val_ap.get(cls),
            "threshold": thresholds.get(cls),
            "n_real": int(len(real)),
            "n_generated": int(len(gen)),
        }
        if cls not in thresholds:
            classes[cls] = entry
            continue
        t, j = thresholds[cls], index[cls]
        hit_gen = oracle_predict(oracle, gen, 64)[:, j] >= t
        entry["real"] = float(np.mean(oracle_predict(oracle, real, 64)[:, j] >= t)) if len(real) else None
        entry["generated"] = float(hit_gen.mean()) if len(gen) else None
        if kept_ids is not None:
            is_kept = gen["dicom_id"].isin(kept_ids).to_numpy()
            entry["kept"] = float(hit_gen[is_kept].mean()) if is_kept.any() else None
            entry["rejected"] = float(hit_gen[~is_kept].mean()) if (~is_kept).any() else None
        classes[cls] = entry
    path = out / "fidelity.json"
    write_json_atomic(
        path,
        {
            "oracle": str(oracle_dir),
            "rule": "detected = oracle P(target) >= its F1-optimal val threshold",
            "classes": classes,
        },
    )
    return path


# ---------------------------------------------------------------- classifier arms


def train_arm(
    cfg: AblationConfig,
    mode: str,
    seed: int,
    train_df: pd.DataFrame,
    classes: list[str],
    out: Path,
    row_repeats: dict[str, int] | None = None,
) -> Path:
    """Train one arm's ensemble with every member seeded by ``seed`` (the synthetic rows ride in train_df).

    ``row_repeats`` (dicom_id -> times per epoch) is the ``real_resampled`` arm's repeat-factor plan.
    """
    train = import_stage_module("classifier.train", "classifier")
    ens = arm_ensemble_config(cfg, mode, seed)
    if row_repeats:
        return Path(train.train_ensemble(ens, train_df, out, classes=classes, row_repeats=row_repeats))
    return Path(train.train_ensemble(ens, train_df, out, classes=classes))


def arm_ensemble_config(cfg: AblationConfig, mode: str, seed: int):
    """The classifier config one arm trains with: the ablation's YAML and overrides, every member seeded by ``seed``,
    the arm's synthetic mode; validated (the preflight calls it for every arm and seed before any stage runs)."""
    config = import_stage_module("classifier.config", "classifier")
    ens = config.load_ensemble_config(cfg.classifier.config, cfg.classifier.overrides)
    return replace(
        ens, members=[replace(m, seed=seed) for m in ens.members], synthetic=replace(ens.synthetic, mode=mode)
    ).validated()


def training_rows(model_dir: Path) -> dict[str, int] | None:
    """The rows the trained ensemble actually used (its ensemble.json), or None when the folder has none."""
    import json

    spec = Path(model_dir) / "ensemble.json"
    if not spec.is_file():
        return None
    rows = json.loads(spec.read_text()).get("rows", {})
    return {k: int(v) for k, v in rows.items()}


def mixing_counts(cfg: AblationConfig, real: pd.DataFrame) -> dict[str, int]:
    """Images the generate stage makes per class (from the config and the real training split only).

    The same rule as ``synth generate``: ``generate.classes`` resolved on the training split's
    prevalence, ``n`` per class or (``n: auto``) what tops the class up to ``target_count``.
    """
    import warnings

    from synth.cooccurrence import TrainingLabels
    from synth.inference import GenerateConfig, resolve_targets

    labels = TrainingLabels(real[real["source"] == "real"], source="the ablation's training split")
    gen = GenerateConfig.from_yaml(cfg.generate.config, n=cfg.generate.n, **cfg.generate.overrides)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # generate warns about skipped classes itself
        targets = resolve_targets(cfg.generate.classes, labels)
    if gen.n == "auto":
        positives = labels.positives()
        return {c: max(0, int(gen.target_count) - positives[c]) for c in targets}
    return {c: int(gen.n) for c in targets}


def resample_plan(cfg: AblationConfig, real: pd.DataFrame, classes: list[str]):
    """The ``real_resampled`` arm's repeat-factor plan (see synth/ablation/resampling.py for how t is derived)."""
    from synth.ablation.resampling import plan_resampling

    train = real[(real["split"] == "train") & (real["source"] == "real")]
    return plan_resampling(train, classes, mixing_counts(cfg, real))


def predict(cfg: AblationConfig, model_dir: Path, df: pd.DataFrame) -> tuple[np.ndarray, list[str]]:
    ensemble = import_stage_module("classifier.ensemble", "classifier")
    return ensemble.predict(model_dir, df, batch_size=cfg.classifier.batch_size)


def evaluate(
    cfg: AblationConfig,
    y_true: np.ndarray,
    probs: np.ndarray,
    classes: list[str],
    groups: dict[str, str],
    patients: np.ndarray,
) -> dict[str, Any]:
    """Group mAPs with patient-bootstrap CIs and per-class metrics, in results.json's layout."""
    metrics = import_stage_module("classifier.metrics", "classifier")
    ev = metrics.evaluate(
        y_true,
        probs,
        classes,
        groups,
        patient_ids=patients,
        n_boot=cfg.evaluation.n_boot,
        seed=cfg.evaluation.bootstrap_seed,
    )
    return {
        "groups": {
            g: {
                "value": ev[f"{g}_map" if g != "overall" else "map"],
                "ci": list(ev["ci"][f"{g}_map" if g != "overall" else "map"]),
            }
            for g in ("overall", "head", "medium", "tail")
        },
        "per_class": {
            c: {k: ev["per_class"][c].get(k) for k in ("ap", "auroc", "f1", "fnr", "n_pos")} for c in classes
        },
    }


def paired(
    cfg: AblationConfig,
    y_true: np.ndarray,
    probs_base: list[np.ndarray],
    probs_arm: list[np.ndarray],
    classes: list[str],
    groups: dict[str, str],
    patients: np.ndarray,
    generators: list[int] | None = None,
) -> dict[str, Any]:
    """Arm minus baseline per group, averaged over runs (one per seed, same seed order), one paired patient bootstrap.

    ``run_diffs`` keeps each run's own point difference (the seed spread), so no per-seed bootstrap is needed.
    ``generators`` (the generator of each run, K >= 2): the interval and p are Rubin's rules over the generators
    (between-generator variance included), the bootstrap-only interval kept as ``ci_within``.
    """
    metrics = import_stage_module("classifier.metrics", "classifier")
    pb = metrics.paired_bootstrap_runs(
        y_true,
        probs_base,
        probs_arm,
        classes,
        groups,
        patients,
        cfg.evaluation.n_boot,
        cfg.evaluation.bootstrap_seed,
        generators=generators,
    )
    out = {}
    for g in ("overall", "head", "medium", "tail"):
        row = pb[f"{g}_map" if g != "overall" else "map"]
        out[g] = {
            "diff": row["diff"],
            "ci": list(row["ci"]),
            "p": row.get("p"),
            "run_diffs": list(row["run_diffs"]),
            **{k: row[k] for k in ("n_distinct", "modal_share") if k in row},
        }
        if "ci_within" in row:
            out[g].update(ci_within=list(row["ci_within"]), generators=row["generators"])
    return out


# ---------------------------------------------------------------- provenance


def provenance(cfg: AblationConfig) -> dict[str, Any]:
    """What is needed to regenerate any number in the report.

    The commands are shell-quoted argument lists (``shlex.join``) that re-create this run exactly: the config,
    every ``--set`` override as given, then the seeds, arms and output root the run used (the CLI applies those
    after ``--set``, so stating them resolved is the same run).
    """
    versions, commit = package_versions(), git_commit()
    argv = ["synth", "ablate", "--config", str(cfg.source_path)] if cfg.source_path else ["synth", "demo"]
    for key, value in cfg.sets.items():
        argv += ["--set", f"{key}={value}"]
    if cfg.source_path:
        argv += ["--seeds", ",".join(map(str, cfg.seeds)), "--arms", ",".join(cfg.arms)]
    argv += ["--output-root", str(cfg.output_root)]
    report = ["synth", "report", cfg.name, "--reports-root", str(Path(cfg.output_root) / "reports")]
    return {
        "commands": [shlex.join(argv), shlex.join(report)],
        "config": cfg.to_dict(),
        "seeds": list(cfg.seeds),
        "versions": versions,
        "git_commit": commit,
    }
