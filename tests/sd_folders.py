"""Tiny random-weight Stable-Diffusion folders in the real on-disk layouts (shared test helper).

Users fine-tune a LOCAL copy of a public checkpoint, so the generator must read the folders
exactly as they are published. :func:`build_sd_folder` writes a few-hundred-kB folder with the
same ``model_index.json`` entries, sub-folders, file names, component classes and scheduler
settings as

* ``sd21-base`` -- stabilityai/stable-diffusion-2-1-base: PNDM scheduler, ``epsilon``, OpenCLIP-style
  text encoder (``gelu``), linear-projection attention, tokenizer padding with ``!``,
  ``safety_checker: [null, null]`` and a ``feature_extractor/`` folder;
* ``sd21-v`` -- stabilityai/stable-diffusion-2-1: DDIM scheduler, ``v_prediction``, upcast attention;
* ``sd1-roentgen`` -- an SD-1.x derivative such as RoentGen: PNDM, ``epsilon``, CLIP-L-style
  (``quick_gelu``) text encoder, a (tiny) ``StableDiffusionSafetyChecker`` in ``safety_checker/``
  and ``feature_extractor/``, tokenizer padding with ``<|endoftext|>``;

optionally saved in fp16 (``dtype=torch.float16``, as ``pipe.save_pretrained`` does after loading
with ``torch_dtype=torch.float16``). The text encoder is a real transformers ``CLIPTextModel`` and
the tokenizer a real ``CLIPTokenizer`` read from a hand-written byte-level ``vocab.json`` +
``merges.txt`` (the files the published folders ship). Models are tiny (32 px, 2 UNet blocks,
VAE with SD's 4 blocks = /8) so a training step takes milliseconds on one core.
"""

from __future__ import annotations

import json
from pathlib import Path

from synth.diffusion import assemble_pipeline

LAYOUTS: tuple[str, ...] = ("sd21-base", "sd21-v", "sd1-roentgen")
RESOLUTION = 32  # VAE /8 -> 4x4 latents
HIDDEN = 32  # text encoder width == UNet cross-attention dim

#: layout -> (scheduler class, prediction_type, text activation, tokenizer pad token, safety checker?, SD2-style UNet?)
_SPEC: dict[str, tuple[str, str, str, str, bool, bool]] = {
    "sd21-base": ("PNDMScheduler", "epsilon", "gelu", "!", False, True),
    "sd21-v": ("DDIMScheduler", "v_prediction", "gelu", "!", False, True),
    "sd1-roentgen": ("PNDMScheduler", "epsilon", "quick_gelu", "<|endoftext|>", True, False),
}

#: Words whose byte-pair merges the tiny vocabulary knows (the rest falls back to single bytes).
_WORDS = (
    "chest",
    "x-ray",
    "pa",
    "ap",
    "view",
    "rib",
    "fracture",
    "pleural",
    "effusion",
    "pneumothorax",
    "normal",
    "and",
    "cardiomegaly",
    "atelectasis",
    "edema",
    "mass",
    "subcutaneous",
    "emphysema",
    "lateral",
    "no",
    "finding",
)


def prediction_type(layout: str) -> str:
    return _SPEC[layout][1]


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable-unicode map (the alphabet of a byte-level BPE)."""
    bs = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def write_clip_tokenizer(folder: Path, pad_token: str, model_max_length: int = 77) -> None:
    """vocab.json / merges.txt / special_tokens_map.json / tokenizer_config.json as in the SD folders."""
    folder.mkdir(parents=True, exist_ok=True)
    alphabet = list(_bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for token in alphabet + [c + "</w>" for c in alphabet]:
        vocab.setdefault(token, len(vocab))
    merges: list[str] = []
    for word in _WORDS:
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:  # merge left to right: c h -> ch, ch e -> che, ...
            pair = f"{parts[0]} {parts[1]}"
            if pair not in merges:
                merges.append(pair)
            parts = [parts[0] + parts[1]] + parts[2:]
            vocab.setdefault(parts[0], len(vocab))
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    special = {
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "pad_token": pad_token,
        "unk_token": "<|endoftext|>",
    }
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "add_prefix_space": False,
                "do_lower_case": True,
                "errors": "replace",
                "model_max_length": model_max_length,
                "tokenizer_class": "CLIPTokenizer",
                **special,
            },
            indent=2,
        )
    )


def _tiny_safety_checker(hidden: int):
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig

    config = CLIPConfig(
        text_config={
            "hidden_size": hidden,
            "intermediate_size": 2 * hidden,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
        },
        vision_config={
            "hidden_size": hidden,
            "intermediate_size": 2 * hidden,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": 224,
            "patch_size": 32,
        },
        projection_dim=hidden,
    )
    return StableDiffusionSafetyChecker(config)


def _tiny_models(vocab_size: int, act: str, sd2: bool, layout: str):
    """(text encoder, UNet, VAE) of the tiny pipeline, random init from the current torch seed, in that order."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=vocab_size,
            hidden_size=HIDDEN,
            intermediate_size=2 * HIDDEN,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=77,
            hidden_act=act,
            projection_dim=HIDDEN,
            bos_token_id=0,
            eos_token_id=2,
            pad_token_id=1,
        )
    )
    unet = UNet2DConditionModel(
        sample_size=RESOLUTION // 8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        norm_num_groups=8,
        cross_attention_dim=HIDDEN,
        attention_head_dim=(2, 4) if sd2 else 4,
        use_linear_projection=sd2,
        upcast_attention=layout == "sd21-v",
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 8, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=RESOLUTION,
        scaling_factor=0.18215,
    )
    return text_encoder, unet, vae


def build_sd_folder(root: Path, layout: str = "sd21-base", dtype=None, seed: int = 0) -> Path:
    """Write a tiny random-weight pipeline folder in ``layout`` under ``root``; return ``root``.

    ``dtype=torch.float16`` saves every weight in fp16 (the "saved after torch_dtype=float16" case).
    """
    import torch
    from diffusers import DDIMScheduler, PNDMScheduler
    from transformers import CLIPImageProcessor, CLIPTokenizer

    if layout not in _SPEC:
        raise ValueError(f"layout {layout!r}: one of {LAYOUTS}")
    scheduler_name, prediction, act, pad, with_checker, sd2 = _SPEC[layout]
    root = Path(root)
    tok_dir = root / ".tokenizer-src"
    write_clip_tokenizer(tok_dir, pad)
    tokenizer = CLIPTokenizer.from_pretrained(tok_dir)
    torch.manual_seed(seed)
    text_encoder, unet, vae = _tiny_models(len(json.loads((tok_dir / "vocab.json").read_text())), act, sd2, layout)
    common = {
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "num_train_timesteps": 1000,
        "set_alpha_to_one": False,
        "steps_offset": 1,
        "prediction_type": prediction,
    }
    scheduler = (
        PNDMScheduler(skip_prk_steps=True, **common)
        if scheduler_name == "PNDMScheduler"
        else DDIMScheduler(clip_sample=False, **common)
    )
    feature_extractor = CLIPImageProcessor(crop_size={"height": 224, "width": 224}, size={"shortest_edge": 224})
    checker = _tiny_safety_checker(HIDDEN) if with_checker else None
    pipe = assemble_pipeline(vae, text_encoder, tokenizer, unet, scheduler, checker, feature_extractor)
    if dtype is not None:
        pipe.to(dtype=dtype)
    pipe.save_pretrained(root, safe_serialization=True)
    # The published folders ship the slow-tokenizer files (vocab.json + merges.txt), not tokenizer.json.
    import shutil

    shutil.rmtree(root / "tokenizer")
    tok_dir.rename(root / "tokenizer")
    index = json.loads((root / "model_index.json").read_text())
    index.pop("image_encoder", None)  # newer diffusers write it; the published SD folders predate it
    (root / "model_index.json").write_text(json.dumps(index, indent=2))
    return root
