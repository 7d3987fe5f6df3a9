"""Train a multi-resolution ConvNeXt ensemble (the CXR-LT winners' recipe) under Accelerate.

    accelerate launch classifier/train.py --config configs/classifier/nih-sample.yaml [--set train.epochs=2]

Each member: timm model (1-channel), weighted ASL, AdamW with linear warm-up +
cosine decay, EMA of the weights (timm ModelEmaV3), gradient accumulation,
mixed precision on GPU only, images preloaded once at the member's resolution.

Data discipline: the model learns from ``split == train`` rows only (real, plus
synthetic rows as ``synthetic.mode`` says); the epoch to keep and the
ensemble weights are chosen on REAL ``split == val`` rows; ``split == test``
rows are dropped before any image is read.

Resumable: every epoch ends with ``accelerator.save_state`` (model and optimiser as
safetensors / weights-only tensors, RNG) plus the project's own state -- scheduler and
progress as JSON, EMA as safetensors -- into ``member-<k>/ckpt-<stage>/``. Nothing is
registered with ``register_for_checkpointing``: Accelerate pickles such objects to
``custom_checkpoint_*.pkl`` and unpickles them with ``weights_only=False`` on resume,
so a crafted file in a checkpoint folder would run code; a checkpoint holding such a
file is never resumed (it is discarded with a log line). A re-run with
the same config and data continues from there, a finished member or ensemble
is reused, and a changed config starts that member afresh. Under DDP every
process trains on its own shard of each epoch's (seeded) permutation; the
small validation pass runs on every process on the whole val set (no
gathering), and only the main process writes files.
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:  # `python classifier/train.py` from a checkout that pip did not install
    import sys
    from pathlib import Path as _P

    sys.path.insert(0, str(_P(__file__).resolve().parents[1]))

import argparse
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch

from classifier.config import EnsembleConfig, load_ensemble_config
from classifier.data import check_rows, real_rows, synthetic_rows
from classifier.ensemble import ENSEMBLE_FILE, choose_weights, ensemble_spec, predict_images
from classifier.losses import class_weights_from_prevalence
from classifier.member import train_member
from classifier.metrics import macro_ap
from classifier.resume import fingerprint_of, results_only, rows_key
from classifier.stage import ConsoleLog
from classifier.training_sets import cached_set, image_cache_dir
from synth.config import SET_HELP, command_overrides
from synth.errors import UserError, one_line_errors
from synth.io import write_json_atomic
from synth.manifest import annotated_classes, label_matrix
from synth.model_card import classifier_card
from synth.model_files import read_json_object
from synth.provenance import data_fingerprint

# ---------------------------------------------------------------- the ensemble


def train_ensemble(
    ens: EnsembleConfig,
    train_df: pd.DataFrame,
    out: str | Path,
    classes: Sequence[str] | None = None,
    log: Callable[[str], None] | None = None,
    row_repeats: dict[str, int] | None = None,
) -> Path:
    """Train every member of ``ens`` on ``train_df``'s training rows; write ``out`` (see classifier.ensemble); return
    it.

    ``train_df`` may hold all splits (real) plus synthetic rows; test rows are
    dropped here, before anything is read. ``row_repeats`` (dicom_id -> times per epoch, default 1)
    repeats real training rows (the ablation's ``real_resampled`` arm); class weights stay those
    of the real prevalence, so only how often a row is presented changes.
    """
    from synth.distributed import process_state

    state = process_state()
    log = log or ConsoleLog(state.is_main_process)
    out = Path(out)
    ens = ens.validated()
    df = train_df[train_df["split"] != "test"]
    df.attrs.update(train_df.attrs)
    real_train, sets, classes = _row_sets(ens, df, classes, row_repeats)
    val_df, syn = sets["val"], sets["synthetic"]
    prevalence, weights = _prevalence_and_class_weights(ens, real_train, classes)
    if ens.synthetic.mode != "none" and syn.empty:
        log(f"synthetic.mode={ens.synthetic.mode} but no synthetic training rows: training on real rows only")

    config = ens.to_dict()
    config["train"] = results_only(config["train"])
    ens_fp = fingerprint_of(config | {"data": None}, classes, {n: rows_key(d) for n, d in sets.items()})
    spec_file = out / ENSEMBLE_FILE
    fix = f"delete it and rerun to rewrite it (finished members in {out} are reused)"
    if spec_file.exists() and read_json_object(spec_file, fix).get("fingerprint") == ens_fp:
        log(f"ensemble in {out} is up to date")
        return out

    cache: dict = {}
    cache_dir = image_cache_dir(ens, df, out)
    metas = []
    for k, member in enumerate(ens.members):
        metas.append(train_member(ens, k, member, sets, classes, weights, out, cache, log, cache_dir))

    # ensemble weights on REAL val rows
    y_val = label_matrix(val_df, classes)
    member_probs = _members_val_probs(ens, metas, val_df, classes, out, cache, cache_dir, log)
    w = choose_weights(y_val, member_probs, ens.ensemble.weights)
    val_map = macro_ap(y_val, sum(wi * p for wi, p in zip(w, member_probs)))
    members = [
        {
            "dir": f"member-{k}",
            "arch": m["arch"],
            "image_size": m["image_size"],
            "seed": m["seed"],
            "weight": w[k],
            "val_map": m["val_map"],
            "val_map_as_ensembled": macro_ap(y_val, member_probs[k]),
        }
        for k, m in enumerate(metas)
    ]
    rows = {"real_train": len(real_train), "val": len(val_df), "synthetic": len(syn)}
    if state.is_main_process:
        spec = ensemble_spec(ens, classes, members, val_map, prevalence, weights, rows, ens_fp)
        classifier_card(out, spec, data_fingerprint(real_train))  # README.md, before ensemble.json marks it complete
        write_json_atomic(spec_file, spec)
    state.wait_for_everyone()
    log(
        f"ensemble of {len(metas)} written to {out} (val mAP {val_map if val_map is None else round(val_map, 4)}, "
        f"weights {w})"
    )
    return out


def _row_sets(
    ens: EnsembleConfig, df: pd.DataFrame, classes: Sequence[str] | None, row_repeats: dict[str, int] | None
) -> tuple[pd.DataFrame, dict[str, pd.DataFrame], list[str]]:
    """The real training rows, the ``{"real" (repeated), "val", "synthetic"}`` row sets of ``df`` (no test rows) and
    the classes (given, or those annotated in the real training rows)."""
    real_train = real_rows(df, "train")
    val_df = real_rows(df, "val")
    check_rows(real_train, val_df, "classifier training data")
    classes = list(classes) if classes is not None else annotated_classes(real_train)
    if not classes:
        raise UserError(
            "classifier: no class is annotated in the real training rows; check the manifest's label columns"
        )
    syn = synthetic_rows(df, ens.synthetic, len(real_train))
    sets = {
        "real": real_train
        if not row_repeats
        else real_train.iloc[
            np.repeat(
                np.arange(len(real_train)),
                real_train["dicom_id"].astype(str).map(row_repeats).fillna(1).astype(int).to_numpy(),
            )
        ],
        "val": val_df,
        "synthetic": syn,
    }
    return real_train, sets, classes


def _prevalence_and_class_weights(
    ens: EnsembleConfig, real_train: pd.DataFrame, classes: list[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Per-class prevalence of the REAL training rows (empty cells are not negatives) and the loss's class weights."""
    y_train = label_matrix(real_train, classes)
    with np.errstate(invalid="ignore"):
        prevalence = np.nan_to_num(np.nanmean(y_train, axis=0), nan=0.0)
    return prevalence, class_weights_from_prevalence(
        prevalence, ens.loss.class_weight_power, ens.loss.max_class_weight
    )


def _members_val_probs(
    ens: EnsembleConfig,
    metas: list[dict],
    val_df: pd.DataFrame,
    classes: list[str],
    out: Path,
    cache: dict,
    cache_dir: Path,
    log: Callable[[str], None],
) -> list[np.ndarray]:
    """Each finished member's val probabilities (float64, TTA as configured), read back from its folder."""
    from classifier.ensemble import load_member

    member_probs = []
    for k, meta in enumerate(metas):
        key = ("val", meta["image_size"])
        images = (
            cache[key].images
            if key in cache
            else cached_set(val_df, classes, meta["image_size"], cache_dir, log).images
        )
        m = load_member(out / f"member-{k}", "cuda" if torch.cuda.is_available() else "cpu")
        member_probs.append(
            predict_images(
                m.model, images, ens.train.eval_batch_size, ens.ensemble.tta_flip, next(m.model.parameters()).device
            ).astype(np.float64)
        )
    return member_probs


# ---------------------------------------------------------------- script entry


def run_from_config(
    config: str | Path, overrides: dict[str, Any] | None = None, out: str | Path | None = None
) -> Path:
    """Train the ensemble a config describes, reading ``data.manifest`` (+ ``data.synthetic_manifest``)."""
    from synth.manifest import concat_manifests, read_manifest

    ens = load_ensemble_config(config, overrides or {})
    if not ens.data.manifest:
        raise UserError(f"{config}: data.manifest is not set; give it in the YAML or with --set data.manifest=PATH")
    real = read_manifest(ens.data.manifest)
    df = real
    if ens.data.synthetic_manifest:
        df = concat_manifests([real, read_manifest(ens.data.synthetic_manifest)], real.attrs["root"])
    out = out or ens.data.output_dir
    if not out:
        raise UserError(f"{config}: no output folder; set data.output_dir or pass --out")
    return train_ensemble(ens, df, out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train a multi-resolution ConvNeXt ensemble (classifier/train.py).")
    parser.add_argument("--config", required=True, help="configs/classifier/*.yaml")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE", help=SET_HELP)
    parser.add_argument("--out", default=None, help="output folder (default: data.output_dir)")
    parser.add_argument(
        "--report_to",
        default=None,
        choices=["none", "tensorboard"],
        help="log per-epoch metrics through Accelerate's trackers (= --set train.report_to=...)",
    )
    args = parser.parse_args(argv)
    # the CLI's one handler: bad input exits 2, a full disk or permission error exits 1, each one `error:` line
    with one_line_errors(resumes=True):
        print(
            run_from_config(args.config, command_overrides(args.sets, {"train.report_to": args.report_to}), args.out)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
