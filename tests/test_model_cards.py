"""README.md cards in the classifier ensemble and generated-set folders (synth/model_card.py).

The generator, filter and ablation folders are checked beside the fixtures that make them (test_finetune.py,
test_filter.py, test_results_store.py), so no stage is trained twice for a card.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from card_checks import check_card
from tiny_pipeline import build_tiny_pipeline, write_tiny_manifest

from classifier.config import EnsembleConfig, MemberConfig
from synth.manifest import read_manifest


def test_classifier_ensemble_folder_carries_its_card(tmp_path: Path):
    from classifier.train import train_ensemble

    df = read_manifest(write_tiny_manifest(tmp_path / "data"))
    cfg = EnsembleConfig(members=[MemberConfig(image_size=32)])
    cfg = replace(cfg, train=replace(cfg.train, epochs=1, batch_size=32))
    out = train_ensemble(cfg, df, tmp_path / "model")
    text = check_card(out, "classifier", "ensemble val mAP (real val rows)", grid=False)
    assert "`member-0`" in text and "32 px" in text


def test_generated_set_folder_carries_its_card_with_a_grid(tmp_path: Path):
    from synth import inference as gen

    model = build_tiny_pipeline(tmp_path / "tiny")
    manifest = gen.generate(model, ["rib fracture"], 3, tmp_path / "gen", seed=0, steps=2, progress=False)
    text = check_card(manifest.parent, "generated-set", "- Rib Fracture: 3 images", grid=True)
    assert "sha256" in text
