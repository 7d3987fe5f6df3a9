"""The generator's training data: real train images, their label-set prompts, latents and text embeddings.

Two caches make the CPU recipe ~an order of magnitude cheaper without changing
what is learned:

* **Latents.** The VAE is frozen while the UNet trains, so each image is encoded
  once and its latent *distribution* (mean, std) is kept; every step still draws
  a fresh sample ``mean + std * eps``, exactly as encoding on the fly would.
* **Prompt embeddings.** A frozen text encoder maps a prompt string to the same
  hidden states every time, so they are memoised by string (bounded LRU).
"""

from __future__ import annotations

import random
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from synth.errors import UserError
from synth.manifest import label_sets, read_manifest
from synth.prompts import PromptTemplates


@dataclass
class TrainingSet:
    """The real training rows of a manifest, with what the prompts are built from."""

    df: pd.DataFrame
    manifest: Path
    classes: list[str]
    label_sets: list[tuple[str, ...]]
    views: list[str]

    @classmethod
    def load(cls, manifest: str | Path) -> "TrainingSet":
        manifest = Path(manifest)
        df = read_manifest(manifest)
        root = df.attrs["root"]
        df = df[(df["split"] == "train") & (df["source"] == "real")].reset_index(drop=True)
        df.attrs["root"] = root
        if df.empty:
            raise UserError(f"{manifest}: no rows with split == train and source == real to train the generator on")
        from synth.manifest import annotated_classes

        classes = annotated_classes(df)
        views = [str(v) if isinstance(v, str) else "" for v in df["ViewPosition"]]
        return cls(
            df=df,
            manifest=manifest.resolve() if manifest.is_file() else (manifest / "manifest.csv").resolve(),
            classes=classes,
            label_sets=label_sets(df, classes),
            views=views,
        )

    def __len__(self) -> int:
        return len(self.df)

    def prompt(self, i: int, templates: PromptTemplates, rng: random.Random, dropout: float, orders: int = 0) -> str:
        """Prompt of image ``i`` (finding order shuffled); "" with probability ``dropout`` (for CFG).

        ``orders > 0`` draws the order from that many fixed permutations per label set: the
        model still sees findings in varied order, but the number of distinct prompts stays
        bounded, so the frozen text encoder's cache hits (a fresh shuffle of a 5-finding set
        is almost always a new string, i.e. a text-encoder forward pass).
        """
        if dropout > 0 and rng.random() < dropout:
            return ""
        if orders > 0:
            k = rng.randrange(orders)
            rng = random.Random(
                f"{'|'.join(self.label_sets[i])}#{k}"
            )  # str seeds hash with sha512: stable across runs
        return templates.render(self.label_sets[i], self.views[i], rng=rng)

    def rarest_classes(self, k: int = 4) -> list[str]:
        counts: dict[str, int] = {}
        for s in self.label_sets:
            for c in s:
                if c != "Normal":
                    counts[c] = counts.get(c, 0) + 1
        return [c for c, _ in sorted(counts.items(), key=lambda kv: (kv[1], kv[0]))[:k]]

    def default_validation_prompts(self, templates: PromptTemplates, k: int = 4) -> list[str]:
        """A few tail-class prompts (one finding each, most common view) plus a normal one."""
        view = pd.Series([v for v in self.views if v] or ["PA"]).mode().iloc[0]
        prompts = [templates.render((c,), view) for c in self.rarest_classes(k - 1)]
        return prompts + [templates.render(("Normal",), view)]


def to_vae_input(x: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) grey in [0, 1] -> (B, 3, H, W) in [-1, 1]: the SD-style VAE is RGB."""
    return (x * 2.0 - 1.0).expand(-1, 3, -1, -1).contiguous()


def pixel_dataset(data: TrainingSet, resolution: int):
    from synth.image_datasets import ManifestDataset

    return ManifestDataset(data.df, image_size=resolution, classes=data.classes)


def load_pixels(data: TrainingSet, resolution: int, num_workers: int = 0) -> torch.Tensor:
    """All training images as one (N, 1, H, W) float tensor in [0, 1] (the CPU recipe: a few MB at 64 px)."""
    ds = pixel_dataset(data, resolution)
    loader = torch.utils.data.DataLoader(ds, batch_size=256, num_workers=num_workers)
    return torch.cat([b["pixel_values"] for b in loader])


@torch.no_grad()
def encode_latents(vae, pixels: torch.Tensor, batch_size: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) of the VAE posterior of every image, in the VAE's (unscaled) latent units."""
    vae.eval()
    device = next(vae.parameters()).device
    dtype = next(vae.parameters()).dtype
    means, stds = [], []
    for start in range(0, len(pixels), batch_size):
        x = to_vae_input(pixels[start : start + batch_size]).to(device, dtype)
        dist = vae.encode(x).latent_dist
        means.append(dist.mean.float().cpu())
        stds.append(dist.std.float().cpu())
    return torch.cat(means), torch.cat(stds)


def measured_scaling_factor(mean: torch.Tensor, std: torch.Tensor, seed: int = 0) -> float:
    """1 / std of sampled latents, as Stable Diffusion set its 0.18215: unit-variance diffusion inputs."""
    gen = torch.Generator().manual_seed(seed)
    z = mean + std * torch.randn(mean.shape, generator=gen)
    return float(1.0 / z.std().clamp_min(1e-6))


class PromptEncoder:
    """Prompt strings -> text-encoder hidden states, as the SD pipeline computes them at sampling time.

    The pipeline pads to ``tokenizer.model_max_length`` and (for encoders without
    ``use_attention_mask``) passes no attention mask, so training does the same.
    With a frozen encoder, results are memoised by prompt (LRU of ``cache_size``).
    """

    def __init__(self, tokenizer, text_encoder, cache_size: int = 4096, trainable: bool = False) -> None:
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.cache_size = 0 if trainable else cache_size
        self.cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        config = getattr(text_encoder, "module", text_encoder).config  # DDP-wrapped when trained
        self.use_mask = bool(getattr(config, "use_attention_mask", False))

    def _encode(self, prompts: Sequence[str]) -> torch.Tensor:
        tok = self.tokenizer(
            list(prompts),
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        device = next(self.text_encoder.parameters()).device
        mask = tok.attention_mask.to(device) if self.use_mask else None
        return self.text_encoder(tok.input_ids.to(device), attention_mask=mask)[0]

    def __call__(self, prompts: Sequence[str]) -> torch.Tensor:
        if self.cache_size == 0:
            return self._encode(prompts)
        missing = list(dict.fromkeys(p for p in prompts if p not in self.cache))
        if missing:
            with torch.no_grad():
                hidden = self._encode(missing)
            for p, h in zip(missing, hidden):
                self.cache[p] = h
        for p in prompts:
            self.cache.move_to_end(p)
        out = torch.stack([self.cache[p] for p in prompts])
        while len(self.cache) > self.cache_size:
            self.cache.popitem(last=False)
        return out


def step_rng(seed: int, step: int, rank: int, micro: int = 0) -> tuple[random.Random, torch.Generator]:
    """Python + torch RNGs of one micro-step, a pure function of (seed, step, rank, micro).

    Making every random draw a function of the step (not of the history of
    earlier draws) is what lets a resumed run repeat the uninterrupted loss
    sequence bit for bit, whatever was or was not restored.
    """
    key = int(np.random.SeedSequence([seed, step, rank, micro]).generate_state(1, dtype=np.uint64)[0] >> 1)
    return random.Random(key), torch.Generator().manual_seed(key)
