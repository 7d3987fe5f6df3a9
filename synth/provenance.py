"""Where a number came from: code version, package versions and machine, recorded beside every result.

One function for ``synth ablate``'s ``results.json`` and for the benches' ``bench/results/*.json``, so a
committed figure can always be traced to the commit (and whether the tree held uncommitted edits) that
produced it.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

PACKAGES = (
    "cxr-synth",
    "torch",
    "torchvision",
    "diffusers",
    "transformers",
    "accelerate",
    "timm",
    "torchmetrics",
    "numpy",
    "pandas",
    "scikit-learn",
    "pillow",
    "matplotlib",
)
_REPO = Path(__file__).resolve().parents[1]


def package_versions() -> dict[str, str]:
    versions = {"python": sys.version.split()[0]}
    for pkg in PACKAGES:
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10, cwd=_REPO)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_commit() -> str | None:
    return _git("rev-parse", "HEAD") or None


def environment() -> dict[str, Any]:
    """Commit, uncommitted code edits (``synth``, ``classifier``, ``bench``, ``configs``), versions, machine, time."""
    status = _git("status", "--porcelain", "--", "synth", "classifier", "bench", "configs")
    return {
        "git_commit": git_commit(),
        "worktree_dirty": bool(status) if status is not None else None,
        "when_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": platform.platform(),
        "cpus": os.cpu_count(),
        "versions": package_versions(),
    }


def write_bench_result(path: str | os.PathLike, bench: str, figures: dict[str, Any]) -> None:
    """A bench's ``--json``: which bench and arguments, :func:`environment`, then its figures (atomically).

    The benches share this header so every ``bench/results/*.json`` says the same way what produced it.
    """
    from synth.io import write_json_atomic

    write_json_atomic(path, {"bench": bench, "argv": sys.argv[1:], "provenance": environment(), **figures})


def data_fingerprint(data: "str | os.PathLike | Any") -> str:
    """16 hex naming a data set: a file's bytes (a manifest, a results.json) or a frame's ``dicom_id``/``fpath`` rows.

    A model card quotes it so two folders can be checked for having seen the same data without the data at hand.
    """
    from synth.hashing import file_digest, hex_hash

    if isinstance(data, (str, os.PathLike)):
        return file_digest(data).hex()[:16]
    rows = data["dicom_id"].astype(str) + "|" + data["fpath"].astype(str)
    return hex_hash("\n".join(rows), algorithm="sha256", hex_chars=16)
