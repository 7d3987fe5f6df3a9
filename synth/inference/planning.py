"""What a ``synth generate`` run will draw, decided before torch is imported.

Class names and groups are checked and expanded into targets, and every ``(class, index)`` becomes one
:class:`ImageJob` (seed, label set, prompt) deterministically, so planning, resuming after a kill and
:func:`~synth.inference.orchestration.regenerate` agree on every image. :func:`run_settings` is what is pinned
per output folder so one folder never mixes two configurations.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from synth.cooccurrence import TrainingLabels, derive_seed
from synth.errors import UserError
from synth.inference.config import GenerateConfig
from synth.inference.model_folder import GeneratorInfo
from synth.manifest import GENERATION_COLUMNS
from synth.prompts import PromptTemplates
from synth.taxonomy import CXR_LT_CLASSES, GROUPS, class_slug, resolve_class

#: what :mod:`synth.inference` re-exports from here
__all__ = [
    "RUN_SETTINGS_NAME",
    "class_slug",
    "validate_class_names",
    "resolve_targets",
    "ImageJob",
    "Planner",
    "run_settings",
    "check_run_settings",
]

RUN_SETTINGS_NAME = "generate_run.json"
IMAGES_DIR, CONTROLS_DIR = "images", "controls"
CONTROL = "control"  #: the third element of a control job's :attr:`ImageJob.key`


def validate_class_names(names: Sequence[str]) -> list[str]:
    """Canonical class names / lower-cased group names; unknown => ``UnknownClassError`` with suggestions."""
    out = []
    for name in names:
        key = name.strip().lower()
        out.append(key if key in GROUPS else resolve_class(name, allowed=CXR_LT_CLASSES))
    if not out:
        raise UserError("no class given; pass --class NAME (repeatable) or --classes tail|medium|head")
    return out


def resolve_targets(names: Sequence[str], labels: TrainingLabels) -> list[str]:
    """Expand groups (from train-split prevalence) and de-duplicate, keeping the given order."""
    groups = labels.groups()
    positives = labels.positives()
    targets: list[str] = []
    for name in validate_class_names(names):
        if name in GROUPS:
            members = [c for c in labels.classes if groups.get(c) == name and c != "Normal"]
            unseen = [c for c in members if positives[c] == 0]
            if unseen:  # nothing to learn co-occurrence (or the class itself) from
                warnings.warn(
                    f"--classes {name}: skipping {', '.join(unseen)} (no positive train image)", stacklevel=2
                )
            members = [c for c in members if positives[c] > 0]
        else:
            members = [name]
        if name in GROUPS and not members:
            prevalence = "> 10 %" if name == "head" else "< 1 %" if name == "tail" else "1-10 %"
            raise UserError(
                f"--classes {name}: no class of {labels.source} is in the {name} group (train prevalence {prevalence})"
            )
        targets += [c for c in members if c not in targets]
    return targets


@dataclass(frozen=True)
class ImageJob:
    """One synthetic image: everything needed to render it and to write its manifest row."""

    target_class: str
    index: int
    seed: int
    findings: tuple[str, ...]
    view: str
    prompt: str
    negative_prompt: str
    control: bool = False  #: the counterfactual twin of image ``index``: its target class left out of the prompt

    @property
    def fpath(self) -> str:
        slug = class_slug(self.target_class)
        return f"{CONTROLS_DIR if self.control else IMAGES_DIR}/{slug}/{slug}_{self.index:06d}.png"

    @property
    def image_id(self) -> str:
        """The ``dicom_id`` of the prompted image (for a control: its twin's), i.e. the pair's ``pair_id``."""
        return f"synth-{class_slug(self.target_class)}-{self.seed:016x}"

    @property
    def dicom_id(self) -> str:
        return f"{self.image_id}-control" if self.control else self.image_id

    @property
    def key(self) -> tuple:
        """What :func:`~synth.inference.state.finished_images` finds on disk for this job."""
        return (self.target_class, self.index, CONTROL) if self.control else (self.target_class, self.index)


class Planner:
    """Deterministic ``(class, index) -> ImageJob``; shared by planning, resuming and regeneration."""

    def __init__(self, labels: TrainingLabels, templates: PromptTemplates, cfg: GenerateConfig) -> None:
        self.labels = labels
        self.templates = templates
        self.cfg = cfg
        self.negative_prompt = cfg.negative_prompt if cfg.negative_prompt is not None else templates.negative_prompt
        self._samplers: dict[str, Any] = {}

    def counts(self, targets: Sequence[str]) -> dict[str, int]:
        """Images per class: flat ``n``, or (``auto``) what tops train positives up to ``target_count``."""
        if self.cfg.n == "auto":
            positives = self.labels.positives()
            return {c: max(0, int(self.cfg.target_count) - positives[c]) for c in targets}
        return {c: int(self.cfg.n) for c in targets}

    def job(self, target: str, index: int, control: bool = False) -> ImageJob:
        sampler = self._samplers.get(target)
        if sampler is None:
            sampler = self._samplers[target] = self.labels.sampler(target, self.cfg.temperature)
        draw = sampler.draw(np.random.default_rng(derive_seed(self.cfg.seed, target, index, "labels")))
        # "single": the same seed and view, the co-occurring findings left out of the prompt (and so of the labels)
        findings = (target,) if self.cfg.prompt_style == "single" else draw.findings
        if control:  # the twin: everything the same but the target class
            findings = tuple(f for f in findings if f != target)
        return ImageJob(
            target_class=target,
            index=index,
            seed=derive_seed(self.cfg.seed, target, index),
            findings=findings,
            view=draw.view,
            prompt=self.templates.render(findings, draw.view),
            negative_prompt=self.negative_prompt,
            control=control,
        )

    def job_for(self, key: tuple) -> ImageJob:
        """The job of an :attr:`ImageJob.key` (what a finished file on disk stands for)."""
        return self.job(key[0], key[1], control=len(key) > 2)

    def jobs(self, counts: dict[str, int]) -> list[ImageJob]:
        """Every image, each followed by its control when ``controls`` is on (a pair lands in one batch or two
        neighbouring ones, so a killed run leaves few half pairs, which a re-run completes)."""
        roles = (False, True) if self.cfg.controls else (False,)
        return [self.job(c, i, control) for c, n in counts.items() for i in range(n) for control in roles]

    def row(self, job: ImageJob, fingerprint: str) -> dict[str, Any]:
        row: dict[str, Any] = {c: np.nan for c in CXR_LT_CLASSES}
        row.update(self.labels.label_vector(job.findings))
        row.update(
            {
                "dicom_id": job.dicom_id,
                "subject_id": job.dicom_id,
                "study_id": job.dicom_id,
                "ViewPosition": job.view,
                "fpath": job.fpath,
                "split": "train",
                "source": "synthetic",
                "target_class": job.target_class,
                "prompt": job.prompt,
                "negative_prompt": job.negative_prompt,
                "seed": job.seed,
                "guidance_scale": self.cfg.guidance_scale,
                "num_inference_steps": self.cfg.steps,
                "scheduler": self.cfg.scheduler,
                "model_fingerprint": fingerprint,
            }
        )
        if self.cfg.controls:
            row.update({"pair_id": job.image_id, "pair_role": CONTROL if job.control else "image"})
        return row

    def frame(self, jobs: Sequence[ImageJob], fingerprint: str = "") -> pd.DataFrame:
        return self.frame_from_rows([self.row(j, fingerprint) for j in jobs])

    @staticmethod
    def frame_from_rows(rows: Sequence[dict[str, Any]]) -> pd.DataFrame:
        df = pd.DataFrame(list(rows))
        if df.empty:
            df = pd.DataFrame(
                columns=list(CXR_LT_CLASSES)
                + [
                    "dicom_id",
                    "subject_id",
                    "study_id",
                    "ViewPosition",
                    "fpath",
                    "split",
                    "source",
                    *GENERATION_COLUMNS,
                ]
            )
        return df


def run_settings(cfg: GenerateConfig, info: GeneratorInfo, planner: Planner, dtype: str) -> dict[str, Any]:
    """Everything that changes an image's pixels or labels; pinned per output folder.

    ``prompt_style`` and ``controls`` are pinned only when not the default, so folders written before they existed
    still resume."""
    style = {} if cfg.prompt_style == "cooccurring" else {"prompt_style": cfg.prompt_style}
    controls = {"controls": True} if cfg.controls else {}
    return (
        style
        | controls
        | {
            "seed": cfg.seed,
            "temperature": cfg.temperature,
            "steps": cfg.steps,
            "guidance_scale": cfg.guidance_scale,
            "scheduler": cfg.scheduler,
            "negative_prompt": planner.negative_prompt,
            "dtype": dtype,
            "model_fingerprint": info.fingerprint,
            "prompt_templates_name": info.templates.name,
            "train_manifest": str(info.train_manifest.resolve()),
            "model_dir": str(info.model_dir.resolve()),
        }
    )


def check_run_settings(out_dir: Path, settings: dict[str, Any]) -> None:
    path = out_dir / RUN_SETTINGS_NAME
    if not path.exists():
        return
    from synth.model_files import read_json_object

    previous = read_json_object(path, "it records how the images in --out were made: restore it, or use a new --out")
    # over both key sets: a setting pinned only when not at its default (controls, prompt_style) is absent on one side
    keys = [k for k in {**previous, **settings} if k != "model_dir"]
    changed = [k for k in keys if previous.get(k) != settings.get(k)]
    if changed:
        diffs = "; ".join(f"{k}: {previous.get(k)!r} -> {settings.get(k)!r}" for k in changed)
        raise UserError(
            f"--out {out_dir} holds images made with other settings ({diffs}); use a new --out folder "
            "or the same settings to resume"
        )
