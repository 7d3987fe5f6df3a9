"""What every output folder's README.md card must say (synth/model_card.py), checked the same way per folder kind."""

from __future__ import annotations

import re
from pathlib import Path

from PIL import Image

from synth.provenance import git_commit


def check_card(folder: Path, kind: str, measured: str, grid: bool) -> str:
    """The card's front matter names the kind and commit; it says what made the folder (with a data fingerprint),
    what it measured (``measured`` appears), and shows a readable sample grid when ``grid``. Returns its text."""
    text = (folder / "README.md").read_text()
    assert text.startswith(f"---\nkind: {kind}\ncommit: {git_commit() or 'unknown'}\n"), text[:200]
    assert "## What made it" in text and "cxr-synth at commit" in text
    assert re.search(r"[0-9a-f]{16}", text.split("## What made it", 1)[1]), "no data fingerprint"
    assert "## What it measured" in text and measured in text, text
    images = re.findall(r"!\[sample grid\]\(([^)]+)\)", text)
    if grid:
        assert len(images) == 1
        with Image.open(folder / images[0]) as im:
            assert im.size[0] > 0
    else:
        assert not images
    assert not list(folder.glob(".README.md.*"))  # written atomically: no temp file left
    return text
