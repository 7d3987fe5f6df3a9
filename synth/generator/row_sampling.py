"""Tail-aware, resumable sampling of training images for diffusion fine-tuning.

Rare findings would be seen only a handful of times per epoch under uniform sampling, so the
generator never learns them. Repeat-factor sampling (LVIS, Gupta et al. 2019) up-weights images by
their rarest finding: r(c) = max(1, sqrt(t / f(c))), image weight = max over its classes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

SAMPLING_MODES = ("repeat_factor", "class_balanced", "uniform")


def image_weights(
    label_sets: Sequence[Sequence[str]], mode: str = "repeat_factor", threshold: float = 0.1
) -> np.ndarray:
    """Per-image sampling weight; images without findings ("Normal" or empty) count as one class."""
    if mode not in SAMPLING_MODES:
        raise ValueError(f"sampling must be one of {SAMPLING_MODES}, got {mode!r}")
    sets = [tuple(s) or ("<none>",) for s in label_sets]
    n = len(sets)
    if mode == "uniform" or n == 0:
        return np.ones(n, dtype=np.float64)
    counts: dict[str, int] = {}
    for s in sets:
        for c in set(s):
            counts[c] = counts.get(c, 0) + 1
    if mode == "repeat_factor":
        per_class = {c: max(1.0, float(np.sqrt(threshold / (k / n)))) for c, k in counts.items()}
    else:  # class_balanced: every class gets the same expected share of draws
        per_class = {c: 1.0 / k for c, k in counts.items()}
    return np.array([max(per_class[c] for c in s) for s in sets], dtype=np.float64)


class ResumableWeightedSampler(Sampler[int]):
    """Infinite weighted sampler whose position is part of the checkpoint.

    The index stream depends only on (seed, epoch) and the number of indices already consumed, so
    `accelerator.register_for_checkpointing(sampler)` restores the exact next batch after resume.
    Each process of a distributed run takes every `num_replicas`-th index of the same stream.
    """

    def __init__(
        self, weights: np.ndarray, seed: int, epoch_size: int | None = None, rank: int = 0, num_replicas: int = 1
    ):
        self.probs = torch.as_tensor(weights / weights.sum(), dtype=torch.float64)
        self.seed = seed
        self.epoch_size = epoch_size or len(weights)
        self.rank = rank
        self.num_replicas = num_replicas
        self.position = 0  # indices of the global stream already consumed

    def _epoch_indices(self, epoch: int) -> list[int]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.multinomial(self.probs, self.epoch_size, replacement=True, generator=gen).tolist()

    def __iter__(self) -> Iterator[int]:
        while True:
            epoch, offset = divmod(self.position, self.epoch_size)
            indices = self._epoch_indices(epoch)
            for i in range(offset, self.epoch_size):
                self.position += 1
                if i % self.num_replicas == self.rank:
                    yield indices[i]

    def state_dict(self) -> dict:
        return {"position": self.position, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.position = int(state["position"])
        self.seed = int(state["seed"])


class SamplerPosition:
    """The sampler position of the batches actually *consumed* (a prefetching loader runs ahead)."""

    def __init__(self, sampler: ResumableWeightedSampler, per_batch: int) -> None:
        self.sampler, self.per_batch, self.start, self.batches = sampler, per_batch, sampler.position, 0

    def consumed(self) -> int:
        return self.start + self.batches * self.per_batch


def index_batches(sampler: ResumableWeightedSampler, batch_size: int):
    """Endless batches of ``batch_size`` row indices drawn from ``sampler``."""
    it = iter(sampler)
    while True:
        yield [next(it) for _ in range(batch_size)]
