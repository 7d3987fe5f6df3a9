"""Issue 17: local ImageNet-pretrained ConvNeXt weights for the classifier (``pretrained_file:``), never a download.

The "ImageNet" file here is a random-weight timm model saved in timm's own layout (3-channel stem,
1000-class head): what matters is that exactly its weights arrive, adapted to 1 channel and a new head.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from synth.errors import UserError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def no_hub(monkeypatch):
    """Any attempt to reach a hub fails the test."""
    import timm.models._builder as builder

    def refuse(*args, **kwargs):
        raise AssertionError("tried to download weights")

    for name in ("download_cached_file", "load_state_dict_from_hf", "load_state_dict_from_url"):
        if hasattr(builder, name):
            monkeypatch.setattr(builder, name, refuse)


def _imagenet_like(tmp_path: Path, arch: str = "convnext_atto", suffix: str = ".safetensors"):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    source = timm.create_model(arch, pretrained=False)
    path = tmp_path / f"{arch}{suffix}"
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save(state, path)
    return source, path


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_pretrained_file_weights_arrive_adapted_to_one_channel(tmp_path, no_hub, suffix):
    from classifier.models import build_model

    source, path = _imagenet_like(tmp_path, suffix=suffix)
    model = build_model("convnext_atto", 5, str(path))
    ref = dict(source.named_parameters())
    got = dict(model.named_parameters())
    assert torch.allclose(got["stem.0.weight"], ref["stem.0.weight"].sum(1, keepdim=True))  # RGB stem summed to grey
    assert torch.equal(got["stages.2.blocks.1.conv_dw.weight"], ref["stages.2.blocks.1.conv_dw.weight"])
    assert got["head.fc.weight"].shape == (5, ref["head.fc.weight"].shape[1])  # new head for our classes
    scratch = build_model("convnext_atto", 5, None)
    assert not torch.equal(
        dict(scratch.named_parameters())["stages.2.blocks.1.conv_dw.weight"], ref["stages.2.blocks.1.conv_dw.weight"]
    )


def test_pretrained_file_errors_are_one_line(tmp_path, no_hub):
    from classifier.config import ensemble_from_dict
    from classifier.models import build_model

    with pytest.raises(UserError, match="pretrained_file .*missing.safetensors not found"):
        ensemble_from_dict(
            {"members": [{"arch": "convnext_atto", "pretrained_file": str(tmp_path / "missing.safetensors")}]}
        )
    _, other = _imagenet_like(tmp_path, arch="convnext_femto")
    with pytest.raises(UserError, match="cannot be loaded into convnext_atto"):
        build_model("convnext_atto", 5, str(other))


def test_pretrained_pth_is_never_unpickled(tmp_path, no_hub):
    """A .pth that would run code when unpickled is refused (timm reads it weights-only)."""
    from classifier.models import build_model

    marker = tmp_path / "PWNED"

    class Crafted:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    bad = tmp_path / "weights.pth"
    torch.save({"stem.0.weight": Crafted()}, bad)
    with pytest.raises(UserError, match="cannot be loaded"):
        build_model("convnext_atto", 5, str(bad))
    assert not marker.exists()


def test_mimic_config_starts_from_local_imagenet_weights_at_224_and_384(tmp_path):
    import yaml

    raw = yaml.safe_load((REPO / "configs/classifier/mimic-cxr-lt.yaml").read_text())
    assert [m["image_size"] for m in raw["members"]] == [224, 384]  # the README's recipe
    assert all(m["pretrained_file"] and m["pretrained_file"].endswith(".safetensors") for m in raw["members"])
    from classifier.config import load_ensemble_config

    with pytest.raises(
        UserError, match="pretrained_file .* not found"
    ):  # the placeholder: one error line, no download
        load_ensemble_config(REPO / "configs/classifier/mimic-cxr-lt.yaml")
    _, weights = _imagenet_like(tmp_path, arch="convnext_small")
    cfg = load_ensemble_config(
        REPO / "configs/classifier/mimic-cxr-lt.yaml",
        {"members": [{**m, "pretrained_file": str(weights)} for m in raw["members"]]},
    )
    assert all(m.pretrained_file == str(weights) for m in cfg.members)
