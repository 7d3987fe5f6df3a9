"""Acquisition sites of the phantom: the same findings rendered through another hospital's imaging chain.

Why: users train at one hospital and deploy at another; a shifted phantom site asks "does synthetic data help
more out of distribution?" with an oracle, since the labels remain the ground truth of every image (a finding
is drawn exactly where and how its renderer draws it; only the acquisition around it changes).

A site sets, per study, the ranges the acquisition parameters are drawn from (one draw each, in the same
order at every site, so a seed gives the same patient geometry everywhere) and what happens after the
detector:

* **A** (the default, unchanged since renderer 6): a fixed-room PA department. 30 % AP; exposure
  ``1 - exp(-k D)`` with k in [2.1, 2.9], gamma 0.85-1.2, window [0-0.06, 0.88-0.97]; noise sigma
  0.008-0.025; one [1 2 1]/4 blur pass; no collimation, no markers; the PadChest-derived prevalence of
  :data:`synth.phantom.labels.RESHAPE` (18 % Normal).
* **B**: a portable / ICU service. 65 % AP; an under-exposed, harder curve (k 1.4-1.9, gamma 1.25-1.6,
  window [0.05-0.12, 0.78-0.88]); noisier detector (sigma 0.03-0.05); three blur passes (focal spot and
  motion); collimator shutters cutting 2-6 % at each edge (bright, unexposed); a burned-in side marker
  ("L"/"R") and an annotation block in the top corners; a sicker population (6 % Normal, head classes
  at 16 %, the tail boundary at 1.5 %) -- the same label sets, re-weighted.

Another site's seeds are derived from ``(seed, site)``, so its patients are new people, not site A's patients
re-imaged (which would leak anatomy between a training set and an external test set).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from synth.errors import UserError
from synth.phantom.labels import RESHAPE, Reshape

DEFAULT_SITE = "A"


@dataclass(frozen=True)
class Site:
    """One acquisition chain (see the module docstring); ranges are (low, high) of a uniform draw per study."""

    name: str
    ap_fraction: float = 0.3
    exposure: tuple[float, float] = (2.1, 2.9)
    gamma: tuple[float, float] = (0.85, 1.2)
    window_lo: tuple[float, float] = (0.0, 0.06)
    window_hi: tuple[float, float] = (0.88, 0.97)
    noise: tuple[float, float] = (0.008, 0.025)
    blur_passes: int = 1
    collimation: tuple[float, float] | None = None  #: fraction of the side cut at each edge
    markers: bool = False
    reshape: Reshape = RESHAPE  #: the prevalence its label sets are drawn with
    seed_key: int = 0  #: 0: the default site's seed streams, untouched

    @property
    def is_default(self) -> bool:
        return self.name == DEFAULT_SITE

    def finish(self, image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
        """What happens after the detector: collimator shutters, then burned-in markers; returns the image and
        what was done (for ``truth.jsonl``)."""
        done: dict = {}
        if self.collimation is not None:
            image, done["collimation"] = _collimate(image, rng, self.collimation)
        if self.markers:
            image, done["marker"] = _burn_in_markers(image, rng)
        return image, done


SITES: dict[str, Site] = {
    "A": Site("A"),
    "B": Site(
        "B",
        ap_fraction=0.65,
        exposure=(1.4, 1.9),
        gamma=(1.25, 1.6),
        window_lo=(0.05, 0.12),
        window_hi=(0.78, 0.88),
        noise=(0.03, 0.05),
        blur_passes=3,
        collimation=(0.02, 0.06),
        markers=True,
        reshape=Reshape(normal=0.06, head_at=0.16, tail_at=0.015),
        seed_key=2,
    ),
}


def get_site(site: "str | Site") -> Site:
    """A :class:`Site` by name (any case), or the site given; an unknown name is one error listing the sites."""
    if isinstance(site, Site):
        return site
    found = SITES.get(str(site).strip().upper())
    if found is None:
        raise UserError(f"--site {site!r}: expected one of {', '.join(SITES)}")
    return found


def _collimate(image: np.ndarray, rng: np.random.Generator, margins: tuple[float, float]) -> tuple[np.ndarray, list]:
    """Bright shutter bands at the four edges (top, bottom, left, right), each ``margins`` of the side."""
    n = image.shape[0]
    top, bottom, left, right = (int(round(rng.uniform(*margins) * n)) for _ in range(4))
    out = image.copy()
    shutter = np.clip(228 + 6 * rng.standard_normal(image.shape), 0, 255).astype(np.uint8)
    mask = np.zeros(image.shape, bool)
    mask[:top], mask[n - bottom :], mask[:, :left], mask[:, n - right :] = True, True, True, True
    out[mask] = shutter[mask]
    return out, [top, bottom, left, right]


#: 5x7 glyphs of the side markers
_GLYPHS = {
    "L": ["10000", "10000", "10000", "10000", "10000", "10000", "11111"],
    "R": ["11110", "10001", "10001", "11110", "10100", "10010", "10001"],
}


def _burn_in_markers(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """A white side letter in one top corner and a block of "text" (an ID / date line) in the other."""
    n = image.shape[0]
    out = image.copy()
    letter = "L" if rng.random() < 0.5 else "R"
    scale = max(1, n // 64)
    glyph = np.kron(np.array([[c == "1" for c in row] for row in _GLYPHS[letter]]), np.ones((scale, scale), bool))
    pad = max(1, n // 32)
    left_corner = letter == "R"  # the patient's right is image left
    x0 = pad if left_corner else n - pad - glyph.shape[1]
    out[pad : pad + glyph.shape[0], x0 : x0 + glyph.shape[1]][glyph] = 250
    h, w = max(2, n // 40), max(6, n // 5)
    tx0 = n - pad - w if left_corner else pad
    for row in range(2):  # two "lines of text": on/off runs of characters
        chars = rng.random(max(1, w // max(2, scale * 3))) < 0.7
        run = np.repeat(chars, int(np.ceil(w / len(chars))))[:w]
        y = pad + row * (h + max(1, scale))
        out[y : y + h, tx0 : tx0 + w][:, run] = 235
    return out, letter
