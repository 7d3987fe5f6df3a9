"""Label set -> text prompt, through the templates in ``prompts/``.

The generator is trained and sampled with the *same* template file; its name
is stored in the pipeline folder so ``synth generate`` can refuse a mismatch.
Finding order is shuffled at train time so the model does not learn that the
first-named finding is the important one.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from synth.errors import UserError
from synth.io import read_yaml_mapping
from synth.taxonomy import CXR_LT_CLASSES

DEFAULT_TEMPLATES = Path(__file__).resolve().parents[1] / "prompts" / "cxr.yaml"


@dataclass(frozen=True)
class PromptTemplates:
    name: str
    findings_template: str
    normal_template: str
    empty_template: str
    negative_prompt: str = ""
    views: Mapping[str, str] = field(default_factory=dict)
    phrases: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | os.PathLike | None = None) -> "PromptTemplates":
        path = Path(path) if path else DEFAULT_TEMPLATES
        data = read_yaml_mapping(path, missing_hint="pass --prompt_templates pointing at a YAML like prompts/cxr.yaml")
        missing = [k for k in ("name", "findings_template", "normal_template") if k not in data]
        if missing:
            raise UserError(f"{path}: missing key(s) {', '.join(missing)}; see prompts/cxr.yaml for the format")
        return cls(
            name=str(data["name"]),
            findings_template=data["findings_template"],
            normal_template=data["normal_template"],
            empty_template=data.get("empty_template", data["normal_template"]),
            negative_prompt=data.get("negative_prompt", "") or "",
            views=dict(data.get("views") or {}),
            phrases=dict(data.get("phrases") or {}),
        )

    def phrase(self, finding: str) -> str:
        return self.phrases.get(finding, finding.lower())

    def view_phrase(self, view: str | None) -> str:
        key = (view or "").strip().upper()
        return self.views.get(key, self.views.get("default", "frontal view"))

    def render(self, findings: Sequence[str], view: str | None = None, rng: random.Random | None = None) -> str:
        """Prompt for a label set. ``rng`` given => finding order shuffled (training)."""
        positives = [f for f in findings if f != "Normal"]
        view_text = self.view_phrase(view)
        if not positives:
            template = self.normal_template if "Normal" in findings else self.empty_template
            return template.format(view=view_text)
        ordered = [f for f in CXR_LT_CLASSES if f in positives] + [f for f in positives if f not in CXR_LT_CLASSES]
        if rng is not None:
            rng.shuffle(ordered)
        words = [self.phrase(f) for f in ordered]
        joined = words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]
        return self.findings_template.format(view=view_text, findings=joined)
