"""Issue 17 item 6: the classifier reads batches from one cache file per set and resolution, never all images in RAM.

The memory figures at MIMIC scale come from bench/bench_classifier_memory.py; these tests check the
behaviour that makes them possible: the pixels a training step sees are exactly the decoded images,
a mixing arm or repeated rows copy nothing, training gives the same model as the in-RAM cache did,
and a rewritten image is never served from a stale cache.
"""

from __future__ import annotations

import os
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
from filter_fixtures import make_real


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> pd.DataFrame:
    from synth.manifest import read_manifest

    root = tmp_path_factory.mktemp("tiny-memory")
    return read_manifest(make_real(root, {"train": 8, "val": 4, "test": 1}))


def _view(df, size, cache_dir):
    from classifier.data import view_of_frame

    return view_of_frame(df, size, cache_dir, True, lambda: None)


def test_view_reads_exactly_the_decoded_images(tiny, tmp_path):
    from classifier.data import ImageView, load_images

    train = tiny[tiny["split"] == "train"]
    view = _view(train, 24, tmp_path / "cache")
    ram = load_images(train, 24)
    assert view.shape == tuple(ram.shape)
    idx = torch.tensor([5, 0, 17, 3, 4, 5, 23])  # unsorted, repeated, runs
    assert torch.equal(view[idx], ram[idx]) and torch.equal(view[3:11], ram[3:11])
    both = ImageView.concat([view, ImageView.of(view.stores[0], np.array([2, 2, 9]))])  # + repeated rows
    assert torch.equal(both[torch.arange(len(both))], torch.cat([ram, ram[[2, 2, 9]]]))
    assert len(list((tmp_path / "cache").glob("*.u8"))) == 1  # one file for the set at this resolution


def test_repeated_and_mixed_rows_copy_no_pixels(tiny, tmp_path):
    """Repeated rows (real_resampled) are stored once; a mixing arm is a view of the same files."""
    from classifier.data import CachedSet
    from classifier.training_sets import concat_sets as _concat

    train = tiny[tiny["split"] == "train"]
    repeated = train.iloc[np.repeat(np.arange(len(train)), 3)]
    view = _view(repeated, 16, tmp_path / "cache")
    assert view.stores[0].n == len(train) and len(view) == 3 * len(train)
    a = CachedSet.from_frame(train, ["Pneumothorax"], 16, images=_view(train, 16, tmp_path / "cache"))
    mixed = _concat([a, a])
    assert type(mixed.images).__name__ == "ImageView" and len(mixed.images) == 2 * len(train)
    assert len(list((tmp_path / "cache").glob("*.u8"))) == 1


def test_training_from_the_cache_file_equals_training_in_ram(tiny, tmp_path):
    """Same batches, same augmentation, same model: only where the pixels come from changed."""
    from classifier.config import EnsembleConfig, MemberConfig
    from classifier.data import CachedSet
    from classifier.stage import ConsoleLog as _Log
    from classifier.stage import Stage, fit_stage

    classes = ["Pneumothorax", "Cardiomegaly", "Rib Fracture"]
    train, val = tiny[tiny["split"] == "train"], tiny[tiny["split"] == "val"]
    ens = EnsembleConfig(members=[MemberConfig(image_size=32)])
    ens = replace(ens, train=replace(ens.train, epochs=2, batch_size=8, ema_decay=0.9, checkpoint=False))
    val_set = CachedSet.from_frame(val, classes, 32)
    results = []
    for name, data in (
        ("ram", CachedSet.from_frame(train, classes, 32)),
        ("file", CachedSet.from_frame(train, classes, 32, images=_view(train, 32, tmp_path / "cache"))),
    ):
        results.append(
            fit_stage(
                ens,
                ens.members[0],
                Stage("train", data, 2, "last"),
                val_set,
                torch.ones(len(classes)),
                tmp_path / name,
                None,
                name,
                _Log(False),
            )
        )
    a, b = results[0]["state"], results[1]["state"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_train_ensemble_uses_a_shared_cache_folder_and_rebuilds_after_an_image_changes(tiny, tmp_path):
    from classifier.config import EnsembleConfig, MemberConfig
    from classifier.train import train_ensemble
    from synth.manifest import image_paths

    cfg = EnsembleConfig(members=[MemberConfig(image_size=32)])
    cfg = replace(
        cfg, train=replace(cfg.train, epochs=1, max_steps=1, batch_size=8, image_cache_dir=str(tmp_path / "cache"))
    )
    train_ensemble(cfg, tiny, tmp_path / "a")
    files = sorted(p.name for p in (tmp_path / "cache").glob("*.u8"))
    assert len(files) == 2 and all(f.startswith("32px-") for f in files)  # real train + val, one resolution
    train_ensemble(cfg, tiny, tmp_path / "b")  # another arm: the same files, nothing decoded again
    assert sorted(p.name for p in (tmp_path / "cache").glob("*.u8")) == files
    first = image_paths(tiny[tiny["split"] == "train"])[0]
    st = first.stat()
    os.utime(first, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # e.g. `synth prepare --overwrite` rewrote it
    train_ensemble(cfg, tiny, tmp_path / "c")
    assert len(list((tmp_path / "cache").glob("*.u8"))) == 3  # the training set's cache was rebuilt, val's reused


def test_no_member_holds_a_whole_resolution_in_ram(tiny, tmp_path, monkeypatch):
    """The training loop never calls load_images (the old in-RAM cache) for the training or val sets."""
    import classifier.data as data
    from classifier.config import EnsembleConfig, MemberConfig
    from classifier.train import train_ensemble

    def refuse(*args, **kwargs):
        raise AssertionError("load_images decoded a whole set into RAM")

    monkeypatch.setattr(data, "load_images", refuse)
    cfg = EnsembleConfig(members=[MemberConfig(image_size=32), MemberConfig(image_size=40)])
    cfg = replace(cfg, train=replace(cfg.train, epochs=1, max_steps=1, batch_size=8))
    out = train_ensemble(cfg, tiny, tmp_path / "model")
    assert (out / "ensemble.json").exists()
