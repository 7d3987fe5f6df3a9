"""The diffusers ``StableDiffusionPipeline`` as this project builds and loads it, shared by both of its sides.

:mod:`synth.generator` (training: assembling the pipeline it exports) and :mod:`synth.inference` (generating:
loading a folder at a precision) both import this module and never each other, so the training side can change
without touching what ``synth generate`` loads, and the reverse. torch and diffusers are imported inside the
functions: importing this module stays cheap.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from synth.errors import UserError
from synth.model_files import check_folder_files, read_json_object

if TYPE_CHECKING:  # pragma: no cover
    import torch

#: The project's record in a pipeline folder (training manifest, prompt templates, resolution, classes). The export
#: writes it last, so its presence marks a complete model folder; ``synth generate`` reads it.
META_NAME = "synth_meta.json"


def diffusers_dtype(dtype) -> dict:
    """The load-dtype keyword this diffusers takes: ``dtype`` (newer; ``torch_dtype`` there warns on every
    load) or ``torch_dtype`` (the versions before it, which the project's ``diffusers>=0.30`` still allows)."""
    try:
        from diffusers.utils.deprecation_utils import _resolve_dtype  # noqa: F401  (exists where `dtype` is accepted)
    except ImportError:
        return {"torch_dtype": dtype}
    return {"dtype": dtype}


def precision_dtype(precision: str, device: "torch.device") -> "torch.dtype":
    import torch

    if precision == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


def assemble_pipeline(vae, text_encoder, tokenizer, unet, scheduler, safety_checker=None, feature_extractor=None):
    """A ``StableDiffusionPipeline`` from its parts; the safety checker is required exactly when one is given.

    ``synth finetune`` writes its folders without a checker; a folder that has one (a published SD layout) keeps
    it required, as diffusers would on load. Test fixtures build their tiny folders through this too, so they are
    assembled the way the product's are.
    """
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=safety_checker,
        feature_extractor=feature_extractor,
        requires_safety_checker=safety_checker is not None,
    )


#: The fix for a broken generator folder.
REEXPORT = "pass the folder `synth finetune` wrote (or restore this one from a copy)"


def check_pipeline_files(model_dir: Path, fix: str = REEXPORT) -> None:
    """Every JSON record and safetensors header of a diffusers pipeline folder, read before anything is written.

    Cheap (no weight is read: safetensors checks that its header covers the file, so a truncated file fails),
    and it names the broken file; diffusers itself says only that a component could not be loaded, and by then
    ``synth generate`` has created ``--out``.
    """
    index = read_json_object(model_dir / "model_index.json", fix)
    components = [k for k, v in index.items() if not k.startswith("_") and isinstance(v, list) and None not in v]
    for name in components:
        folder = model_dir / name
        if not folder.is_dir():
            raise UserError(f"{model_dir}: model_index.json names {name!r} but {folder} is missing; {fix}")
        check_folder_files(folder, fix)
