"""The ablation report folder's model card (:mod:`synth.model_card` writes the other folder kinds' cards).

It lives here, not in synth.model_card, because it renders the results store's table: the card writer stays a core
module that no stage above it is imported by.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from synth.ablation.store import run_rows
from synth.ablation.store_docs import render_block
from synth.model_card import file_fingerprint, sample_grid, write_card


def ablation_card(cfg: Any, results: dict[str, Any]) -> Path:
    """An ablation's report folder: the config, each arm's mAP and paired Δs (the results store's table), a grid."""
    folder = Path(cfg.report_dir)
    grids = results.get("grids") or {}
    images = [p for entry in grids.values() for p in (entry.get("kept") or [])[:2]]
    return write_card(
        folder,
        "ablation",
        f"Ablation `{results['name']}`: does synthetic tail data help?",
        summary="`report.html` is the report; `results.json` holds every number, `synth report` re-renders it.",
        config=cfg.to_dict(),
        data={"dataset": json.dumps(results.get("dataset")), "results": file_fingerprint(folder / "results.json")},
        measured=[render_block(run_rows(results), "results.json")],
        grid=sample_grid(folder, images),
    )
