"""The UNet stage's run folder: ``checkpoint-<step>`` folders (which are complete, which to resume) and loss rows.

``synth finetune`` reads these before any model is built (what is there to resume, what will be pruned), so
they live apart from the trainer.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Any

from synth.io import atomic_path

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
TRAINER_STATE = "trainer_state.json"
META_NAME = "synth_meta.json"  #: written last by the export: its presence marks a complete model folder


def write_rows_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def read_rows_csv(path: Path, max_step: int) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    out = []
    for r in rows:
        if int(r["step"]) <= max_step:
            out.append({k: (int(v) if k == "step" else float(v)) for k, v in r.items()})
    return out


def list_checkpoints(out_dir: Path) -> list[tuple[int, Path]]:
    if not out_dir.is_dir():
        return []
    found = [
        (int(m.group(1)), p)
        for p in out_dir.iterdir()
        if p.is_dir() and (m := CHECKPOINT_RE.match(p.name)) and (p / TRAINER_STATE).exists()
    ]
    return sorted(found)


def resolve_checkpoint(out_dir: Path, spec: str | None) -> Path | None:
    """Where a run starts: unset / ``latest`` -> newest complete checkpoint in ``out_dir`` (None if there is
    none yet), so a plain re-run of the same command resumes; ``none`` -> None (start over); a path -> that folder."""
    from synth.errors import UserError

    if spec is not None and spec.strip().lower() == "none":
        return None
    if not spec or spec == "latest":
        found = list_checkpoints(out_dir)
        return found[-1][1] if found else None
    path = Path(spec)
    if not path.is_absolute() and not path.exists():
        path = out_dir / spec
    if not (path / TRAINER_STATE).exists():
        raise UserError(
            f"--resume_from_checkpoint {spec}: not a complete checkpoint folder (no {TRAINER_STATE}); use 'latest' or "
            f"a checkpoint-<step> folder of {out_dir}"
        )
    return path
