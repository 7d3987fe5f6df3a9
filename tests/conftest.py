"""Shared test fixtures.

Tests that need the real material in ``../shared/data`` use the
``shared_data`` fixture: they are skipped with a clear reason where it is
absent (a user's machine) and run in CI, which has it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SYNTH_SHARED_DATA", REPO.parent / "shared" / "data"))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path of ../shared/data, or skip the test with the reason."""
    if not (SHARED_DATA / "nih-sample" / "Data_Entry_2017_v2020.csv").exists():
        pytest.skip(f"real data not found at {SHARED_DATA} (set SYNTH_SHARED_DATA to the shared/data folder)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def nih_sample(shared_data: Path) -> Path:
    return shared_data / "nih-sample"
