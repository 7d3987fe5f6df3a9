"""Issue 17: ``--report_to tensorboard`` for classifier training, through Accelerate's trackers (log_with)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from filter_fixtures import make_real


def test_report_to_tensorboard_writes_event_files_with_the_epoch_metrics(tmp_path: Path):
    pytest.importorskip("tensorboard", reason="tensorboard is an optional extra (pip install tensorboard)")
    from typer.testing import CliRunner

    from synth.cli import app

    manifest = make_real(tmp_path / "data", {"train": 8, "val": 4, "test": 1})
    config = tmp_path / "c.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "members": [{"arch": "convnext_atto", "image_size": 32}],
                "train": {"epochs": 2, "batch_size": 8, "ema_decay": 0.9},
                "data": {"manifest": str(manifest)},
            }
        )
    )
    out = tmp_path / "model"
    res = CliRunner().invoke(
        app, ["classify", "train", "--config", str(config), "--out", str(out), "--report_to", "tensorboard"]
    )
    assert res.exit_code == 0, res.output
    events = list((out / "logs").rglob("events.out.tfevents.*"))
    assert events and events[0].parent.name == "member-0-train", events
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(events[0].parent)).Reload()
    assert {"train/loss", "val/map", "train/lr"} <= set(acc.Tags()["scalars"])
    assert len(acc.Scalars("val/map")) == 2  # one point per epoch

    # the tracker choice is not part of the fingerprint: re-running without it reuses the ensemble
    res = CliRunner().invoke(app, ["classify", "train", "--config", str(config), "--out", str(out)])
    assert res.exit_code == 0 and "up to date" in res.output, res.output


def test_report_to_unknown_tracker_is_one_error_line(tmp_path: Path):
    from classifier.config import load_ensemble_config
    from synth.errors import UserError

    with pytest.raises(UserError, match="report_to must be one of"):
        load_ensemble_config(None, {"train.report_to": "wandb-typo"})
