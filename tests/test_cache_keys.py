"""Cache keys and fingerprints pinned to the bytes they had before the hashing helper was shared.

Every cache on a user's disk (latents, classifier pixels, stage folders, trained members) is found again by
one of these keys: a refactor that changes one byte of a key silently throws away hours of cached work, and
a changed seed derivation changes every generated image. So the values below are literal, not recomputed.
"""

from __future__ import annotations

import os
import types
from pathlib import Path

import pandas as pd
import pytest
import torch

import synth.io as sio
from classifier import data as cdata
from classifier.resume import fingerprint_of, rows_key
from synth.ablation.config import stage_key
from synth.cooccurrence import derive_seed
from synth.generator.latent_cache import cache_key as latent_cache_key
from synth.generator.latent_cache import vae_fingerprint
from synth.hashing import hex_hash
from synth.inference.model_folder import META_NAME, model_fingerprint


def test_generation_seeds_are_pinned():
    assert derive_seed(7, "Mass", 3, "labels") == 8811578274483912902
    assert derive_seed(0, "x", 0) == 85604253741112832


def test_latent_cache_keys_are_pinned():
    assert latent_cache_key("vaefp", 64, "imgfp") == "27091e6c4ac2ff5aad9f4baa"
    assert latent_cache_key("vaefp", 64, "imgfp", "bfloat16") == "0da3bddf202d99600f8b691b"
    vae = types.SimpleNamespace(
        config={"a": 1, "_class_name": "X", "scaling_factor": 0.18},
        state_dict=lambda: {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.zeros(0)},
    )
    assert vae_fingerprint(vae) == "9500f55b859965cedeea1c86c80b0a96"


def test_classifier_fingerprints_are_pinned():
    assert fingerprint_of({"lr": 0.1}, ["A", "B"], {"train": "k"}) == "ec9360bf7978f30e"
    df = pd.DataFrame({"dicom_id": ["d1", "d2"], "fpath": ["a.png", "b.png"]})
    assert rows_key(df) == "9c0ffa81257a1fc4"


def test_image_set_and_pixel_cache_keys_are_pinned(monkeypatch):
    # Fixed sizes and mtimes for fixed absolute paths: the key must not depend on where the test runs.
    def fake_stat(p, *args, **kwargs):
        return types.SimpleNamespace(st_size=len(str(p)), st_mtime_ns=1_700_000_000_000_000_000)

    monkeypatch.setattr(os, "stat", fake_stat)
    assert sio.image_set_fingerprint(["/data/a.png", "/data/b.png"]) == "b096d516cf640bf17c604623fb1446b0"
    assert cdata.cache_key([Path("/data/a.png"), Path("/data/b.png")], 64) == "3f26c9f26c42ded501d2"


def test_stage_keys_are_pinned(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("bad.yaml").write_text("a: [1, 2\n")  # unparsable: hashed by its bytes
    Path("good.yaml").write_text("a: 1\n")  # parsed: hashed by its content
    assert stage_key({"n": 4, "classes": ["Mass"]}, "upkey") == "a93d8e425f44"
    assert stage_key({"cfg": "bad.yaml"}) == "af1dec5cbf95"
    assert stage_key({"cfg": "good.yaml"}) == "59afb4586994"


def test_generator_fingerprint_is_pinned(tmp_path):
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"weights")
    (tmp_path / META_NAME).write_text('{"resolution": 64}')
    assert model_fingerprint(tmp_path) == "0889380d374ae4fe"


def test_cache_checksums_are_pinned():
    """The sidecar checksums already beside users' caches (16-byte BLAKE2b per chunk) and the prepare journal's
    sha256 of each cached PNG: a changed digest would flag every existing cache as damaged."""
    from synth.cache_checksum import ChunkHasher

    hasher = ChunkHasher(chunk_bytes=4)
    hasher.update(b"abcdefghij")
    assert hasher.digests() == [
        "d2c8e95841ccbc0c3cb3edc9201a6981",
        "4c76b89fbabc3899fdb60611d9d82f5a",
        "6498b402e7022d8cde0ad9901f066249",
    ]
    assert hex_hash(b"png bytes", algorithm="sha256") == (
        "d013614dc14a37ee20fe92005737ab7d3427e7e93580ad56ef8a42205e7f7a4e"
    )


@pytest.mark.parametrize("bad", ["md5", "sha1"])
def test_unknown_algorithm_is_refused(bad):
    with pytest.raises(ValueError, match="algorithm"):
        hex_hash(b"x", algorithm=bad, hex_chars=16)
