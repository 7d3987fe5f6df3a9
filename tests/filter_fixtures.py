"""Tiny signature images and manifests for the filter tests (and the classifier tests that reuse them).

Each class has a strong, unmistakable rendered signature on top of a
per-patient random background (so different patients are different images):
the same idea as the phantom, small enough that a verifier learns it in a
few dozen CPU steps.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy.ndimage import gaussian_filter

from synth.manifest import write_manifest

if TYPE_CHECKING:  # pragma: no cover
    import torch

SIZE = 32
CLASSES = ("Pneumothorax", "Cardiomegaly", "Rib Fracture")


def render(cls: str | None, seed: int, size: int = SIZE) -> np.ndarray:
    """A (size, size) float image in [0, 1]: patient background + the class signature.

    The background mixes coarse anatomy-like shading with finer per-patient texture, so two
    patients of the same class are clearly different images (as real radiographs are) and a
    near-copy check has something to tell apart.
    """
    rng = np.random.default_rng(seed)
    coarse = gaussian_filter(rng.normal(size=(size, size)), sigma=size / 8)
    fine = gaussian_filter(rng.normal(size=(size, size)), sigma=1.0)
    img = 0.45 + 0.15 * coarse / (np.abs(coarse).max() + 1e-8) + 0.12 * fine / (np.abs(fine).max() + 1e-8)
    yy, xx = np.mgrid[:size, :size] / size
    if cls == "Pneumothorax":  # bright disc, upper left
        img[(yy - 0.3) ** 2 + (xx - 0.3) ** 2 < 0.02] += 0.4
    elif cls == "Cardiomegaly":  # large dark blob, lower centre
        img[((yy - 0.68) / 0.22) ** 2 + ((xx - 0.5) / 0.3) ** 2 < 1.0] -= 0.3
    elif cls == "Rib Fracture":  # bright vertical line, right
        img[:, int(0.7 * size) : int(0.7 * size) + 2] += 0.45
    return np.clip(img + rng.normal(scale=0.01, size=img.shape), 0, 1)


def save(img: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((img * 255).round().astype(np.uint8)).save(path)


def _row(dicom_id: str, subject: str, fpath: str, cls: str | None, split: str, source: str) -> dict:
    row = {
        "dicom_id": dicom_id,
        "subject_id": subject,
        "study_id": dicom_id,
        "ViewPosition": "PA",
        "fpath": fpath,
        "split": split,
        "source": source,
    }
    row.update({c: float(c == cls) for c in CLASSES})
    return row


def make_real(
    root: Path, per_class: dict[str, int] | None = None, seed: int = 0, normals: dict[str, int] | None = None
) -> Path:
    """Real manifest: per class and split the given counts (default train 40 / val 12 / test 12), one image per
    patient,
    plus ``normals[split]`` patients without any of the classes (real data has plenty of those)."""
    per_class = per_class or {"train": 40, "val": 12, "test": 12}
    normals = normals or {}
    rows, k = [], 0
    for split, n in per_class.items():
        for cls in [*CLASSES, None]:
            for _ in range(n if cls else normals.get(split, 0)):
                k += 1
                fpath = f"images/r{k:05d}.png"
                save(render(cls, seed * 100_000 + k), root / fpath)
                rows.append(_row(f"r{k:05d}", f"p{k:05d}", fpath, cls, split, "real"))
    write_manifest(pd.DataFrame(rows), root / "manifest.csv")
    return root / "manifest.csv"


def make_synthetic(root: Path, items: list[tuple[str, np.ndarray]], labels: list[str | None] | None = None) -> Path:
    """Synthetic manifest: (target_class, image) pairs; labels default to the target alone."""
    rows = []
    for i, (target, img) in enumerate(items):
        fpath = f"images/s{i:05d}.png"
        save(img, root / fpath)
        row = _row(f"s{i:05d}", "synthetic", fpath, labels[i] if labels else target, "train", "synthetic")
        row.update({"target_class": target, "prompt": f"chest x-ray, {target}", "seed": i})
        rows.append(row)
    write_manifest(pd.DataFrame(rows), root / "manifest.csv")
    return root / "manifest.csv"


def filter_argv(synthetic: Path, data: Path, verifier: Path, out: Path) -> list[str]:
    """``synth filter``'s arguments for a CliRunner call (every required option, nothing else)."""
    return [
        "filter",
        "--synthetic",
        str(synthetic),
        "--data",
        str(data),
        "--verifier",
        str(verifier),
        "--out",
        str(out),
    ]


def member_weights(run: Path, member: int = 0) -> dict[str, "torch.Tensor"]:
    """The exported weights of one member of a trained ensemble folder: the resume tests compare them bit for bit."""
    from safetensors.torch import load_file

    return load_file(str(run / f"member-{member}" / "model.safetensors"))


class ReadRecorder:
    """Wraps ``synth.image_datasets.load_gray`` to record every image path a stage opens."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import synth.image_datasets as image_datasets

        self.paths: list[str] = []
        original = image_datasets.load_gray

        def recording(path, size=None):
            self.paths.append(str(Path(path).resolve()))
            return original(path, size)

        monkeypatch.setattr(image_datasets, "load_gray", recording)
