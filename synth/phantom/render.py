"""Render one phantom radiograph from a label set and a seed (the library API).

Random streams are separate and keyed by purpose, so the image is a pure
function of its inputs and one finding never perturbs another:

* anatomy  <- (patient_seed, 0)     shared by all studies of a patient
* study    <- (seed, 1)             view, positioning, inspiration, exposure
* finding  <- (seed, 2, class idx)  one stream per class
* noise    <- (seed, 3)
* site     <- (seed, 4)             collimation and burned-in markers (sites other than A only)

``site`` (:mod:`synth.phantom.sites`) is the acquisition chain; the default, A, draws exactly what the
renderer drew before sites existed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import numpy as np

from synth.errors import UserError
from synth.phantom.anatomy import Anatomy
from synth.phantom.canvas import Canvas
from synth.phantom.findings import REGISTRY
from synth.phantom.sites import Site, get_site
from synth.taxonomy import CXR_LT_CLASSES, expand_parents, resolve_class

VIEWS = ("PA", "AP")
#: Bumped whenever a change makes the renderer draw different pixels for the same seed; a rendered folder
#: records it, so a folder made by another renderer is never mistaken for this one's output.
#: 2: stronger small signatures (clavicle / rib / other fracture, granuloma, nodule, pleural plaques,
#:    subcutaneous emphysema, aortic calcification) after a balanced model could not learn them at 64 px.
#: 3: larger / brighter fracture steps and calluses, nodules, granulomas and plaques: renderer 2's balanced
#:    model still scored Clavicle Fracture 0.14, Nodule 0.30, Rib Fracture 0.33, Fracture 0.36 at 64 px.
#: 4: the small round things made distinct, since renderer 3's balanced model confused them with each
#:    other: grey soft-tissue nodule vs white pinpoint granulomas vs a ring-shaped cavitating lesion;
#:    rib fractures in runs of consecutive ribs with calluses along the rib; vertebral compression with
#:    a paraspinal bulge; thicker fissure.
#: 5: nodules only where the lung is aerated (6 % of renderer 4's sat invisibly behind the heart).
#: 6: denser nodules (fill 0.55-0.7 -> 0.7-0.85): renderer 5's balanced model scored Nodule 0.55.
RENDERER_VERSION = 6
_INDEX = {c: i for i, c in enumerate(CXR_LT_CLASSES)}


@dataclass
class Rendered:
    image: np.ndarray  #: uint8 (size, size)
    regions: dict[str, np.ndarray] = field(default_factory=dict)  #: class -> bool mask of where it was drawn
    params: dict[str, dict] = field(default_factory=dict)  #: class -> ground-truth render parameters
    view: str = "PA"
    labels: tuple[str, ...] = ()
    acquisition: dict = field(default_factory=dict)  #: what a non-default site did after the detector


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(int(seed) & 0xFFFFFFFFFFFFFFFF, spawn_key=key)))


def canonical_labels(findings: Iterable[str]) -> tuple[str, ...]:
    """Resolve names, close under the hierarchy, check Normal is alone; CXR-LT column order."""
    names = {resolve_class(f, CXR_LT_CLASSES) for f in findings}
    names = expand_parents(names)
    if "Normal" in names and len(names) > 1:
        raise UserError(
            f"'Normal' cannot be combined with findings ({', '.join(sorted(names - {'Normal'}))}); Normal means no "
            "finding"
        )
    return tuple(c for c in CXR_LT_CLASSES if c in names)


def render_with_regions(
    findings: Iterable[str],
    seed: int,
    size: int = 128,
    view: str | None = None,
    *,
    patient_seed: int | None = None,
    site: str | Site = "A",
) -> Rendered:
    """Render and return the image with each finding's region mask and parameters, acquired at ``site``."""
    acquisition = get_site(site)
    if size < 16:
        raise UserError(f"size {size}: the phantom needs at least 16 px")
    if view is not None and view not in VIEWS:
        raise UserError(f"view {view!r}: expected one of {', '.join(VIEWS)} or None (random)")
    labels = canonical_labels(findings)
    present = frozenset(labels)
    patient = Anatomy.sample_patient(_rng(seed if patient_seed is None else patient_seed, 0))
    anatomy = patient.with_study(_rng(seed, 1), view, acquisition)
    rngs = {c: _rng(seed, 2, _INDEX[c]) for c in labels}
    params: dict[str, dict] = {}
    for c in labels:
        pre = REGISTRY[c].pre
        if pre is not None:
            params[c] = pre(anatomy, rngs[c]) or {}
    canvas = Canvas(anatomy, size)
    regions = {}
    for c in labels:
        region, p = REGISTRY[c].draw(canvas, rngs[c], present)
        regions[c] = region
        params[c] = {**params.get(c, {}), **p}
    image = canvas.compose(_rng(seed, 3), acquisition.blur_passes)
    done: dict = {}
    if not acquisition.is_default:
        image, done = acquisition.finish(image, _rng(seed, 4))
    return Rendered(image, regions, params, anatomy.view, labels, done)


def render_image(
    findings: Iterable[str], seed: int, size: int = 128, view: str | None = None, site: str | Site = "A"
) -> np.ndarray:
    """One phantom radiograph (uint8, size x size), deterministic in (findings, seed, size, view, site)."""
    return render_with_regions(findings, seed, size, view, site=site).image
