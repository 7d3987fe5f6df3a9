"""The filter's near-copy check: each generated image's nearest real TRAINING image, by features (direct or
mirrored) and by pixels, against thresholds calibrated between perturbed copies and distinct-patient neighbours.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from synth.filtering.config import FilterConfig
from synth.filtering.nearcopy import NearCopyIndex, calibrate, perturbed_copies, unit_rows
from synth.filtering.verifier import FeatureExtractor, Inference, concat_inference, embed
from synth.image_datasets import ManifestDataset


def near_copy_scores(
    scores: pd.DataFrame,
    extractor,
    train: pd.DataFrame,
    real: Inference,
    syn: Inference,
    cfg: FilterConfig,
    rng: np.random.Generator,
) -> dict:
    """Nearest real training image by features (direct or mirrored) and by pixels, into ``scores``
    (``nn_*`` columns and ``near_copy``); returns the calibration of both thresholds."""
    px = cfg.nearcopy_pixel_size
    index = NearCopyIndex.build(real.features, real.pixels, px)
    calibration = calibrate_nearcopy(index, extractor, train, real, cfg, rng)
    feat_direct, feat_i = index.feature_similarity(syn.features)
    feat_mirror, feat_mi = index.feature_similarity(syn.mirror_features)
    scores["nn_feature_cos"] = np.maximum(feat_direct, feat_mirror)
    scores["nn_feature_dicom_id"] = train["dicom_id"].to_numpy()[np.where(feat_mirror > feat_direct, feat_mi, feat_i)]
    pix, pix_i = index.pixel_similarity(syn.pixels)
    scores["nn_pixel_ncc"] = pix
    scores["nn_pixel_dicom_id"] = train["dicom_id"].to_numpy()[pix_i]
    near = np.zeros(len(scores), bool)
    if calibration["feature"].used:
        near |= scores["nn_feature_cos"].to_numpy() > calibration["feature"].threshold
    if calibration["pixel"].used:
        near |= pix > calibration["pixel"].threshold
    scores["near_copy"] = near
    return calibration


def calibrate_nearcopy(
    index: NearCopyIndex,
    extractor: FeatureExtractor,
    train: pd.DataFrame,
    real: Inference,
    cfg: FilterConfig,
    rng: np.random.Generator,
) -> dict:
    """Similarities a copy produces (perturbed copies vs their source) and a non-copy produces (distinct patients)."""
    n = min(cfg.nearcopy_calibration_images, len(train))
    pick = np.sort(rng.choice(len(train), size=n, replace=False))
    dataset = ManifestDataset(train.iloc[pick], extractor.image_size, classes=[])
    images = torch.stack([dataset[i]["pixel_values"] for i in range(n)])
    generator = torch.Generator().manual_seed(cfg.seed)
    copies = perturbed_copies(images, cfg.nearcopy_noise_std, cfg.nearcopy_shift_px, generator)
    src_f, src_p = index.features[pick], index.pixels[pick]
    copy_f, copy_p = [], []
    for batch in copies.values():
        emb = concat_inference(
            [
                embed(extractor, batch[s : s + cfg.batch_size], index.pixel_size, with_probs=False, mirror=True)
                for s in range(0, n, cfg.batch_size)
            ]
        )
        copy_f.append(
            np.maximum(
                (unit_rows(emb.features, False) * src_f).sum(1).numpy(),
                (unit_rows(emb.mirror_features, False) * src_f).sum(1).numpy(),
            )
        )
        mirrored = torch.flip(
            torch.as_tensor(emb.pixels).reshape(n, index.pixel_size, index.pixel_size), dims=[-1]
        ).reshape(n, -1)
        copy_p.append(
            np.maximum(
                (unit_rows(emb.pixels, True) * src_p).sum(1).numpy(),
                (unit_rows(mirrored.numpy(), True) * src_p).sum(1).numpy(),
            )
        )
    subjects = train["subject_id"].to_numpy()
    same_patient = subjects[pick][:, None] == subjects[None, :]
    originals = concat_inference(
        [
            embed(extractor, images[s : s + cfg.batch_size], index.pixel_size, with_probs=False, mirror=True)
            for s in range(0, n, cfg.batch_size)
        ]
    )
    distinct_f = np.maximum(
        index.feature_similarity(real.features[pick], same_patient)[0],
        index.feature_similarity(originals.mirror_features, same_patient)[0],
    )
    distinct_p = index.pixel_similarity(real.pixels[pick], same_patient)[0]
    distinct_f, distinct_p = distinct_f[np.isfinite(distinct_f)], distinct_p[np.isfinite(distinct_p)]
    out = {
        "feature": calibrate(
            np.concatenate(copy_f), distinct_f, cfg.nearcopy_copy_quantile, cfg.nearcopy_distinct_quantile
        ),
        "pixel": calibrate(
            np.concatenate(copy_p), distinct_p, cfg.nearcopy_copy_quantile, cfg.nearcopy_distinct_quantile
        ),
    }
    return out
