"""A tiny CXR-LT label file with a MIMIC-like image tree, and the ``synth prepare`` command-line helpers, shared by
the data-stage tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from typer.testing import CliRunner

from synth.cli import app
from synth.taxonomy import CXR_LT_CLASSES


def invoke(*args: str):
    return CliRunner().invoke(app, [*map(str, args), "--no-progress"])


def prepare_args(labels: Path, images: Path, out: Path, *extra: str, fmt: str = "cxrlt") -> tuple[str, ...]:
    """``synth prepare``'s required options, then ``extra``: the arguments of :func:`invoke`."""
    return ("prepare", "--format", fmt, "--labels", str(labels), "--images", str(images), "--out", str(out), *extra)


def assert_one_error_line(result, *needles: str) -> None:
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for needle in needles:
        assert needle in lines[0], lines[0]


def make_cxrlt(root: Path, patients: int = 12, per_patient: int = 3, seed: int = 0) -> Path:
    """A CXR-LT-format CSV + MIMIC-like image tree (JPEG, RGB PNG, 16-bit PNG) under ``root``."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(patients):
        for k in range(per_patient):
            dicom = f"d{p:03d}{k}"
            rel = f"files/p10/p{p:03d}/s{p}{k}/{dicom}.jpg" if k == 0 else f"files/p10/p{p:03d}/s{p}{k}/{dicom}.png"
            path = root / "mimic" / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            pixels = rng.integers(0, 255, (48, 40), dtype=np.uint8)
            if k == 0:
                Image.fromarray(pixels).save(path, quality=90)
            elif k == 1:
                Image.fromarray(np.stack([pixels] * 3, -1)).save(path)
            else:
                Image.fromarray((pixels.astype(np.uint16) * 16)).save(path)  # 16-bit-like grayscale ("I;16")
            labels = {c: 0 for c in CXR_LT_CLASSES}
            labels["Support Devices"] = 1 if (p + k) % 2 == 0 else 0
            labels["Rib Fracture"] = labels["Fracture"] = 1 if p % 4 == 0 else 0
            labels["Normal"] = 1 - max(labels["Support Devices"], labels["Fracture"])
            rows.append(
                {
                    "dicom_id": dicom,
                    "subject_id": str(10000 + p),
                    "study_id": f"5{p}{k}",
                    "ViewPosition": "PA",
                    "fpath": rel,
                    "extra_column": "kept",
                    **labels,
                }
            )
    df = pd.DataFrame(rows)
    df.loc[0, "Tuberculosis"] = np.nan  # an empty cell = not annotated
    csv = root / "train_labeled.csv"
    df.to_csv(csv, index=False)
    return csv
