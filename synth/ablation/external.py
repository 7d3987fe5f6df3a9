"""External test sets (``evaluation.external``): test-only manifests from other sites, read and checked once.

Apart from the runner because the preflight (``synth ablate --dry-run``) checks them too: a set with train rows
or a damaged manifest is refused in the first second, not after hours of training. Each set is fingerprinted by
its manifest's content, the key of the predictions cached beside every trained model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from synth.ablation.config import AblationConfig
from synth.errors import UserError
from synth.hashing import file_digest
from synth.manifest import concat_manifests, read_manifest


@dataclass(frozen=True)
class ExternalScores:
    """One external test set: its rows and (filled by the runner) every arm/seed's probabilities of them."""

    name: str
    manifest: str
    fingerprint: str  #: content hash of the manifest: the prediction cache key beside each model
    rows: pd.DataFrame
    probs: dict[tuple[str, int], np.ndarray]


def read_external_sets(cfg: AblationConfig, rendered: dict[str, Path] | None = None) -> list[ExternalScores]:
    """Every ``evaluation.external`` set, read and checked: a test-only prepared manifest.

    A cohort the ablation renders (``phantom:``) is read from ``rendered`` (set name -> its manifest) once its step
    ran, and skipped without it (the preflight checks the prepared sets before any work).
    """
    out = []
    for ext in cfg.evaluation.external:
        if ext.phantom is not None and (rendered is None or ext.name not in rendered):
            continue
        path = Path(ext.manifest) if ext.phantom is None else Path(rendered[ext.name])
        path = path / "manifest.csv" if path.is_dir() else path
        where = f"evaluation.external {ext.name!r} ({path})"
        df = read_manifest(path)
        real = df[df["source"] == "real"]
        other = sorted(set(real["split"]) - {"test"})
        if real.empty or other:
            found = f"{', '.join(other)} rows" if other else "no real rows"
            raise UserError(
                f"{where}: an external set is test-only, this manifest has {found}; prepare the site's labels "
                "with `synth prepare ... --split test`"
            )
        rows = concat_manifests([real], path.parent)  # absolute image paths: predicted from any working folder
        rows.attrs["absent_classes"] = df.attrs.get("absent_classes", [])
        fingerprint = file_digest(path).hex()[:12]
        out.append(ExternalScores(ext.name, str(path), fingerprint, rows, {}))
    return out


def check_external_classes(ext: ExternalScores, classes: list[str]) -> None:
    """An absent class column is a damaged manifest (an empty cell is the format's "not annotated")."""
    absent = [c for c in classes if c in ext.rows.attrs.get("absent_classes", ())]
    if absent:
        raise UserError(
            f"evaluation.external {ext.name!r} ({ext.manifest}): no column {absent[0]!r} ({len(absent)} of the "
            "ablation's classes absent); re-create it with `synth prepare --split test` (a class the site does not "
            "label is then an empty column and is listed as not scored)"
        )
