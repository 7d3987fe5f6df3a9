"""PyTorch datasets over a manifest.

Images are read from the prepared grayscale cache (``fpath`` relative to the
manifest), so training never decodes a full-size JPEG; the resize here is only
needed when a stage asks for a resolution other than the cache's.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import Dataset

from synth.errors import UserError
from synth.manifest import annotated_classes, image_paths, label_matrix


def load_gray(path, size: int | None = None) -> Image.Image:
    """Open an image as 8-bit grayscale, optionally resized to ``size``×``size``."""
    try:
        with Image.open(path) as im:
            im = im.convert("L")
            if size is not None and im.size != (size, size):
                im = im.resize((size, size), Image.BICUBIC)
            return im
    except (OSError, ValueError) as err:
        # every stage reads images here, and only `synth prepare` has --skip-bad-images: name it as prepare's
        raise UserError(
            f"cannot read image {path}: {err}; replace or remove that file (a prepared dataset's image: re-run "
            "`synth prepare`, whose --skip-bad-images leaves unreadable images out)"
        ) from err


class ManifestDataset(Dataset):
    """Rows of a manifest as ``{"pixel_values", "labels", "label_mask", "index"}``.

    ``pixel_values`` is a float tensor (1, H, W) in [0, 1] (after ``transform``,
    which receives and returns that tensor); ``labels`` has 0 where a class is
    not annotated and ``label_mask`` marks the annotated entries.
    """

    def __init__(
        self,
        df: pd.DataFrame,
        image_size: int | None = None,
        classes: Sequence[str] | None = None,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.df = df.reset_index(drop=True)
        self.df.attrs.update(df.attrs)
        self.classes = list(classes) if classes is not None else annotated_classes(df)
        self.paths = image_paths(df)
        y = label_matrix(df, self.classes)
        self.label_mask = torch.from_numpy((~np.isnan(y)).astype(np.float32))
        self.labels = torch.from_numpy(np.nan_to_num(y, nan=0.0))
        self.image_size = image_size
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict:
        im = load_gray(self.paths[i], self.image_size)
        x = torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).float().div_(255.0).unsqueeze(0)
        if self.transform is not None:
            x = self.transform(x)
        return {"pixel_values": x, "labels": self.labels[i], "label_mask": self.label_mask[i], "index": i}
