"""What ``synth generate`` reads from a model folder without loading its weights.

``synth_meta.json`` (written by ``synth finetune``) names the training manifest, the prompt templates and the
resolution; the fingerprint hashes the UNet weights so every manifest row says which model drew its image.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from synth.diffusion import META_NAME, REEXPORT, check_pipeline_files
from synth.errors import UserError
from synth.hashing import Hasher, file_digest
from synth.model_files import read_json_object
from synth.prompts import PromptTemplates


@dataclass(frozen=True)
class GeneratorInfo:
    """What generate needs to know about a model folder, read without loading weights."""

    model_dir: Path
    train_manifest: Path
    templates: PromptTemplates
    resolution: int | None
    fingerprint: str


def load_generator_info(
    model_dir: str | Path, train_manifest: str | Path | None = None, prompt_templates: str | Path | None = None
) -> GeneratorInfo:
    """Read ``synth_meta.json`` (or the explicit overrides, for a user's own SD folder)."""
    model_dir = Path(model_dir)
    if not (model_dir / "model_index.json").exists():
        raise UserError(
            f"--model {model_dir}: not a diffusers pipeline folder (no model_index.json); "
            "pass the folder written by `synth finetune`"
        )
    check_pipeline_files(model_dir)
    meta_path = model_dir / META_NAME
    meta = read_json_object(meta_path, REEXPORT) if meta_path.exists() else {}
    manifest = train_manifest or meta.get("train_manifest")
    if not manifest:
        raise UserError(f"--model {model_dir}: no {META_NAME} naming its training manifest; pass --train-manifest")
    templates_path = prompt_templates or meta.get("prompt_templates")
    templates = PromptTemplates.load(templates_path)
    trained_with = meta.get("prompt_templates_name")
    if trained_with is not None and trained_with != templates.name:
        raise UserError(
            f"prompt templates {templates.name!r} ({templates_path}) differ from the {trained_with!r} "
            "the model was trained with; pass --prompt-templates with the training file"
        )
    return GeneratorInfo(
        model_dir=model_dir,
        train_manifest=Path(manifest),
        templates=templates,
        resolution=meta.get("resolution"),
        fingerprint=model_fingerprint(model_dir),
    )


def model_fingerprint(model_dir: Path) -> str:
    """Hash of the UNet weights and the generator metadata: which model made an image."""
    digest = Hasher("sha256", hex_chars=16)
    weights = sorted(p for p in (model_dir / "unet").glob("*") if p.suffix in {".safetensors", ".bin", ".pt", ".pth"})
    if not weights:
        raise UserError(f"--model {model_dir}: no UNet weights under {model_dir / 'unet'}")
    for path in weights + [p for p in [model_dir / META_NAME] if p.exists()]:
        digest.update(path.name.encode())
        digest.update(file_digest(path))
    return digest.hexdigest()
