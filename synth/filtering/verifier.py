"""The label-verifier: a small timm multi-label classifier trained on REAL TRAINING images only.

It answers "does this synthetic image show the finding it is labelled with?"
and its pooled backbone features are the default CXR feature space for
FID/KID, outliers and near-copy search (Inception features are meaningless
for radiographs and cannot be fetched offline anyway).

Folder layout written by :func:`train_verifier`::

    model.safetensors   the timm model (random init, then trained)
    verifier.json       arch, image_size, classes, normalisation, config, data provenance

It is a :mod:`classifier` model: the same timm builder (1-channel stem, random init here), the same masked
BCE (un-annotated cells carry no loss) and pixel statistics, and the toolkit's accelerator and schedule
(:mod:`synth.training`). What stays its own is the data path and the loop: it streams decoded images
through a shuffled ``DataLoader`` with a random flip, while the classifier trains from its preloaded image
cache in its own seeded batch order; moving the verifier onto the classifier's loader would change which
images each step sees, hence every trained verifier and the filter's decisions.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from classifier.losses import MaskedBCE
from classifier.models import PIXEL_MEAN, PIXEL_STD, build_model
from synth.errors import UserError
from synth.filtering.config import VerifierConfig
from synth.image_datasets import ManifestDataset
from synth.io import save_safetensors_atomic, write_json_atomic
from synth.manifest import annotated_classes, read_manifest

META_FILE, WEIGHTS_FILE = "verifier.json", "model.safetensors"


def real_training_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The only rows a verifier (or oracle) may learn from: ``source == real`` and ``split == train``."""
    rows = df[(df["source"] == "real") & (df["split"] == "train")]
    if rows.empty:
        raise UserError(
            "data manifest has no real training rows (split=train, source=real); run `synth prepare` on real data"
        )
    assert set(rows["split"]) == {"train"} and set(rows["source"]) == {"real"}
    return rows


def _flip_transform(x: torch.Tensor) -> torch.Tensor:
    return torch.flip(x, dims=[-1]) if torch.rand(()) < 0.5 else x


def train_verifier(
    data_manifest: str | Path | pd.DataFrame,
    out_dir: str | Path,
    cfg: VerifierConfig | None = None,
    classes: Sequence[str] | None = None,
) -> Path:
    """Train on the real training split of ``data_manifest``; write ``out_dir``; return it.

    Runs under Accelerate (DDP on many GPUs); only the main process writes. Called by the main
    process alone while the others wait at a barrier (``synth ablate``'s oracle step,
    :func:`synth.distributed.main_process_only`), it trains without DDP or any collective.
    Val and test rows are never read, so the per-class thresholds later fitted
    on val are honest and test stays untouched.
    """
    from accelerate.utils import set_seed

    from synth.training import lr_scheduler, make_accelerator, running_alone

    cfg = (cfg or VerifierConfig()).validated()
    df = read_manifest(data_manifest) if not isinstance(data_manifest, pd.DataFrame) else data_manifest
    train = real_training_rows(df)
    classes = list(classes) if classes is not None else annotated_classes(train)
    if not classes:
        raise UserError("data manifest: no class is annotated in the real training split; check the label columns")

    # always fp32, whatever an earlier stage of this process (the generator in `synth ablate`) asked for
    accelerator, _ = make_accelerator("no")
    alone = running_alone()
    n_proc = 1 if alone else accelerator.num_processes
    set_seed(cfg.seed, device_specific=True)
    dataset = ManifestDataset(train, cfg.image_size, classes, transform=_flip_transform if cfg.hflip else None)
    loader = DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        shuffle=True,
        drop_last=len(dataset) > cfg.batch_size,
        num_workers=cfg.num_workers,
        persistent_workers=cfg.num_workers > 0,  # workers decode while the GPU steps
        pin_memory=accelerator.device.type == "cuda",
    )
    model = build_model(cfg.arch, len(classes))
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(loader) / n_proc)
    total = cfg.max_steps or cfg.epochs * steps_per_epoch
    # linear warm-up over 10 % of the steps, then cosine to 0 (diffusers' schedule, as the classifier and generator
    # use;
    # OneCycleLR divided by zero for 10 steps). The prepared scheduler steps once per process per optimiser step.
    scheduler = lr_scheduler(optimizer, int(0.1 * total), total, "cosine", n_proc)
    loss_fn = MaskedBCE()  # un-annotated cells carry no loss: an NIH image is no negative for a class NIH never labels
    if alone:
        model = model.to(accelerator.device)
    else:
        model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)

    step, losses = _fit(accelerator, model, optimizer, scheduler, loader, loss_fn, total, alone)

    out_dir = Path(out_dir)
    barrier = (lambda: None) if alone else accelerator.wait_for_everyone
    barrier()
    if accelerator.is_main_process:
        state = accelerator.unwrap_model(model).state_dict()
        save_safetensors_atomic(out_dir / WEIGHTS_FILE, state)
        manifest = str(data_manifest) if not isinstance(data_manifest, pd.DataFrame) else df.attrs.get("root")
        write_json_atomic(
            out_dir / META_FILE,
            _verifier_meta(cfg, classes, len(train), manifest, step, losses, accelerator.mixed_precision),
        )
    barrier()
    return out_dir


def _verifier_meta(
    cfg: VerifierConfig,
    classes: list[str],
    rows: int,
    manifest: str | None,
    step: int,
    losses: list[float],
    mixed_precision: str,
) -> dict:
    """The verifier folder's metadata: model, pixel statistics, what it was trained on, steps and final loss."""
    return {
        "arch": cfg.arch,
        "image_size": cfg.image_size,
        "classes": classes,
        "pixel_mean": PIXEL_MEAN,
        "pixel_std": PIXEL_STD,
        "trained_on": {"rows": int(rows), "split": "train", "source": "real", "manifest": manifest},
        "steps": step,
        "final_loss": float(np.mean(losses[-10:])) if losses else None,
        "mixed_precision": mixed_precision,
        "config": dataclasses.asdict(cfg),
    }


def _fit(
    accelerator,
    model: nn.Module,
    optimizer,
    scheduler,
    loader: DataLoader,
    loss_fn: nn.Module,
    total: int,
    alone: bool,
) -> tuple[int, list[float]]:
    """``total`` optimiser steps over the (re-iterated) loader; returns (steps, the loss of each step, gathered)."""
    model.train()
    step, losses = 0, []
    while step < total:
        for batch in loader:
            batch = {k: v.to(accelerator.device) for k, v in batch.items()} if alone else batch
            x = (batch["pixel_values"] - PIXEL_MEAN) / PIXEL_STD
            loss = loss_fn(model(x), batch["labels"], batch["label_mask"])
            accelerator.backward(loss)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append((loss.detach() if alone else accelerator.gather(loss.detach())).mean().item())
            step += 1
            if step >= total:
                break
    return step, losses


@dataclass
class Verifier:
    """A trained verifier: the model plus what is needed to feed it."""

    model: nn.Module
    arch: str
    image_size: int
    classes: list[str]
    pixel_mean: float = PIXEL_MEAN
    pixel_std: float = PIXEL_STD

    @property
    def name(self) -> str:
        return f"{self.arch} verifier"


def load_verifier(path: str | Path, device: str | torch.device = "cpu") -> Verifier:
    """A verifier folder's model; a broken ``verifier.json`` or ``model.safetensors`` is one ``UserError`` naming
    it (:func:`classifier.saved_models.load_saved_model`), as is a pixel statistic that is not a positive number."""
    from classifier.saved_models import load_saved_model
    from synth.model_files import finite_number

    path = Path(path)
    fix = "train it again with `synth verifier train` (or restore the folder from a copy)"
    if not (path / META_FILE).exists() or not (path / WEIGHTS_FILE).exists():
        raise UserError(f"{path} is not a verifier folder (needs {META_FILE} and {WEIGHTS_FILE}); {fix}")
    saved = load_saved_model(path, META_FILE, WEIGHTS_FILE, fix)
    mean = finite_number(saved.meta.get("pixel_mean", PIXEL_MEAN), f"{path / META_FILE}: pixel_mean", fix)
    std = finite_number(saved.meta.get("pixel_std", PIXEL_STD), f"{path / META_FILE}: pixel_std", fix)
    if std <= 0:
        raise UserError(f"{path / META_FILE}: pixel_std is {std!r}, expected > 0; {fix}")
    return Verifier(saved.model.to(device).eval(), saved.arch, saved.image_size, saved.classes, mean, std)


class FeatureExtractor(nn.Module):
    """Images -> pooled backbone features, usable as torchmetrics FID/KID ``feature=``.

    Accepts (N, 1 or 3, H, W) float in [0, 1] or uint8 (torchmetrics' default
    convention); colour is averaged to grey and the image resized to the
    backbone's training resolution.
    """

    def __init__(
        self,
        model: nn.Module,
        image_size: int,
        pixel_mean: float = PIXEL_MEAN,
        pixel_std: float = PIXEL_STD,
        name: str = "custom",
    ) -> None:
        super().__init__()
        self.model = model.eval()
        self.image_size = image_size
        self.pixel_mean, self.pixel_std = pixel_mean, pixel_std
        self.num_features = int(model.num_features)
        self.name = name

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        if x.shape[1] != 1:
            x = x.mean(dim=1, keepdim=True)
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = F.interpolate(
                x, size=(self.image_size, self.image_size), mode="bilinear", antialias=True, align_corners=False
            )
        return (x - self.pixel_mean) / self.pixel_std

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.pool(self.model.forward_features(self.prepare(images)))

    def pool(self, feature_map: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(feature_map, pre_logits=True)


@dataclass
class Inference:
    """One pass over a manifest: class probabilities, pooled features, small grey thumbnails."""

    probs: np.ndarray  #: (N, C) — empty (N, 0) when the model has no verifier head
    features: np.ndarray  #: (N, D) float32
    pixels: np.ndarray  #: (N, s*s) float32, for the pixel-space near-copy check
    mirror_features: np.ndarray | None = None  #: features of the mirrored images (flip-aware copy search)


@torch.no_grad()
def embed(
    extractor: FeatureExtractor, images: torch.Tensor, pixel_size: int, with_probs: bool = True, mirror: bool = False
) -> Inference:
    """Scores, pooled features and thumbnails of a batch of (N, 1, H, W) images in [0, 1]."""
    x = images.to(next(extractor.parameters()).device)
    fmap = extractor.model.forward_features(extractor.prepare(x))
    probs = torch.sigmoid(extractor.model.forward_head(fmap)) if with_probs else fmap.new_zeros(len(x), 0)
    small = F.interpolate(x.float(), size=(pixel_size, pixel_size), mode="area").flatten(1)
    mirrored = extractor(torch.flip(x, dims=[-1])).float().cpu().numpy() if mirror else None
    return Inference(
        probs.float().cpu().numpy(), extractor.pool(fmap).float().cpu().numpy(), small.cpu().numpy(), mirrored
    )


def run_inference(
    extractor: FeatureExtractor,
    df: pd.DataFrame,
    batch_size: int,
    pixel_size: int,
    with_probs: bool = True,
    mirror: bool = False,
    num_workers: int = 0,
) -> Inference:
    """Read every image once; the verifier head is applied to the same pooled features."""
    loader = DataLoader(
        ManifestDataset(df, extractor.image_size, classes=[]),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
    )
    parts = [embed(extractor, batch["pixel_values"], pixel_size, with_probs, mirror) for batch in loader]
    if not parts:
        empty = np.zeros((0, extractor.num_features), np.float32)
        return Inference(
            np.zeros((0, 0), np.float32),
            empty,
            np.zeros((0, pixel_size * pixel_size), np.float32),
            empty if mirror else None,
        )
    return concat_inference(parts)


def concat_inference(parts: Sequence[Inference]) -> Inference:
    cat = lambda name: np.concatenate([getattr(p, name) for p in parts])  # noqa: E731
    mirrored = cat("mirror_features") if parts[0].mirror_features is not None else None
    return Inference(cat("probs"), cat("features"), cat("pixels"), mirrored)
