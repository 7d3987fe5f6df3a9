"""Find a finished ``synth ablate`` run's stage folders for the benches that re-use them.

Stage folders are named ``<stage>-<content hash>``; an output root keeps the old folder when a config edit
changes the hash, so "the newest match" could pair one run's data with another run's oracle. A bench therefore
takes a stage only when exactly one folder matches, and otherwise says which to keep.
"""

from __future__ import annotations

from pathlib import Path


def stage_folder(root: Path, prefix: str) -> Path:
    """The single ``<prefix>-*`` folder under ``root`` that holds a finished stage (its ``done.json``)."""
    found = sorted(p for p in Path(root).glob(f"{prefix}-*") if (p / "done.json").exists())
    if not found:
        raise SystemExit(f"{root}: no finished {prefix}-* stage folder; run `synth ablate` to the end first")
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise SystemExit(
            f"{root}: {len(found)} finished {prefix}-* folders ({names}) from different configs; point the bench at "
            "an output folder that holds one run (move the others away)"
        )
    return found[0]
