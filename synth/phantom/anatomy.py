"""Procedural chest anatomy: patient / study parameters and the coordinate grids (the canvas: :mod:`.canvas`).

Coordinates are normalised, independent of the image size: ``u`` runs from -1
(image left = patient's RIGHT, radiological convention) to +1, ``v`` from -1
(top) to +1 (bottom); one pixel is ``2 / size``. Every length below is in these
units, so a signature keeps its relative size at 32, 64 or 256 px; soft edges
are never thinner than one pixel.

The image is formed like a radiograph: an attenuation map ``D`` (soft tissue,
bone, minus lung air) goes through ``1 - exp(-k D)`` (exposure) and a window.
Findings do not paint pixels directly: they *fill* lung air (fluid, consolidation),
*add* density (calcification, devices), add *extra air* (pneumothorax, free air)
or thin the vessel *markings* — so overlapping findings combine physically.

Speed: everything is vectorised numpy on float32 grids cached per size;
localised shapes are evaluated in a bounding-box window only.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from synth.phantom.sites import Site

F32 = np.float32


@dataclass(frozen=True)
class Grid:
    size: int
    u: np.ndarray
    v: np.ndarray
    px: float


@functools.lru_cache(maxsize=8)
def grid(size: int) -> Grid:
    c = ((np.arange(size, dtype=F32) + 0.5) / size * 2.0 - 1.0).astype(F32)
    v, u = np.meshgrid(c, c, indexing="ij")
    return Grid(size, u, v, 2.0 / size)


@functools.lru_cache(maxsize=8)
def marking_table(n_theta: int = 512, n_r: int = 64) -> np.ndarray:
    """Polar texture of the lung vessel markings: narrow in angle, long in radius (radial streaks).

    Fixed (seeded) once per process; each image reads it at its own angular
    offset, so markings differ between patients at no per-image cost.
    """
    rng = np.random.Generator(np.random.PCG64(12345))
    x = rng.standard_normal((n_theta, n_r)).astype(F32)
    # smooth strongly along r, lightly along theta (circular)
    k_r = np.exp(-0.5 * (np.arange(-8, 9) / 4.0) ** 2)
    k_t = np.exp(-0.5 * (np.arange(-2, 3) / 1.0) ** 2)
    x = np.apply_along_axis(lambda a: np.convolve(np.pad(a, 8, mode="edge"), k_r / k_r.sum(), "valid"), 1, x)
    x = np.apply_along_axis(lambda a: np.convolve(np.concatenate([a[-2:], a, a[:2]]), k_t / k_t.sum(), "valid"), 0, x)
    x = (x - x.mean()) / x.std()
    return np.clip(x - 0.6, 0.0, None).astype(F32)


def ramp(d: np.ndarray, w: float) -> np.ndarray:
    """Soft step: 0 for d << 0, 1 for d >> 0, linear over width ``w`` (cheap alternative to tanh)."""
    return np.clip(d * (1.0 / w) + 0.5, 0.0, 1.0)


@dataclass
class Anatomy:
    """Patient parameters (shared by all studies of a patient) and study parameters (per image).

    Findings' ``pre`` steps edit a copy of this before the canvas is built
    (cardiomegaly widens the heart, emphysema flattens the domes ...).
    """

    # patient
    thorax: float = 0.84  #: |u| of the inner chest wall
    apex: float = -0.72  #: v of the lung apices
    dome_r: float = 0.42  #: v of the right hemidiaphragm dome (image left; higher)
    dome_l: float = 0.48
    dome_curv: float = 0.16  #: dome height above the costophrenic angle
    heart_r: float = 0.21  #: heart extent right of the midline (image left)
    heart_l: float = 0.47  #: heart extent left of the midline (image right)
    heart_top: float = -0.02
    med_w: float = 0.11  #: half width of the upper mediastinum
    knob_x: float = 0.17
    knob_y: float = -0.36
    knob_r: float = 0.06
    hilum_x: float = 0.22
    hilum_y: float = -0.12
    hilum_r: float = 0.05
    spine_w: float = 0.06
    spine_bend: float = 0.0  #: lateral bow amplitude (kyphosis step edits the curvature)
    spine_bend_y: float = 0.0
    spine_crowd: float = 0.0  #: crowding of vertebral endplates (kyphosis)
    rib_sp: float = 0.15
    rib_v0: float = -0.80
    rib_curv: float = 0.30
    clav_y: float = -0.70
    clav_tilt: float = 0.06
    body_w: float = 0.97
    breasts: bool = False
    marking_offset: int = 0
    # study
    view: str = "PA"
    angle: float = 0.0  #: rotation, radians
    shift_u: float = 0.0
    shift_v: float = 0.0
    inspiration: float = 1.0  #: scales the lung height
    exposure: float = 2.4
    gamma: float = 1.0
    window_lo: float = 0.02
    window_hi: float = 0.92
    noise: float = 0.015
    air: float = 0.42  #: lung air attenuation deficit
    extras: dict = field(default_factory=dict)

    @classmethod
    def sample_patient(cls, rng: np.random.Generator) -> "Anatomy":
        n = rng.normal
        a = cls(
            thorax=float(np.clip(n(0.84, 0.03), 0.76, 0.9)),
            apex=float(n(-0.72, 0.03)),
            dome_r=float(n(0.42, 0.04)),
            dome_curv=float(np.clip(n(0.16, 0.02), 0.1, 0.22)),
            heart_r=float(np.clip(n(0.21, 0.02), 0.16, 0.26)),
            heart_l=float(np.clip(n(0.47, 0.03), 0.4, 0.54)),
            heart_top=float(n(-0.02, 0.03)),
            med_w=float(np.clip(n(0.11, 0.01), 0.09, 0.13)),
            knob_x=float(n(0.17, 0.012)),
            knob_y=float(n(-0.36, 0.03)),
            knob_r=float(np.clip(n(0.06, 0.006), 0.045, 0.075)),
            hilum_x=float(n(0.22, 0.015)),
            hilum_y=float(n(-0.12, 0.03)),
            hilum_r=float(np.clip(n(0.05, 0.005), 0.04, 0.06)),
            spine_w=float(np.clip(n(0.06, 0.005), 0.05, 0.07)),
            rib_sp=float(np.clip(n(0.15, 0.008), 0.13, 0.17)),
            rib_v0=float(n(-0.80, 0.02)),
            rib_curv=float(np.clip(n(0.30, 0.04), 0.2, 0.4)),
            clav_y=float(n(-0.70, 0.03)),
            clav_tilt=float(n(0.06, 0.02)),
            body_w=float(np.clip(n(0.97, 0.03), 0.9, 1.05)),
            breasts=bool(rng.random() < 0.5),
            marking_offset=int(rng.integers(0, 512)),
        )
        a.dome_l = a.dome_r + float(np.clip(n(0.06, 0.02), 0.0, 0.12))
        return a

    def with_study(self, rng: np.random.Generator, view: str | None, site: "Site | None" = None) -> "Anatomy":
        """A copy with this study's view, positioning, inspiration and exposure, drawn from ``site``'s ranges
        (default: site A, :mod:`synth.phantom.sites`); every site draws the same numbers in the same order."""
        from dataclasses import replace

        from synth.phantom.sites import SITES

        s = site or SITES["A"]
        view = view or ("AP" if rng.random() < s.ap_fraction else "PA")
        ap = view == "AP"
        insp = float(np.clip(rng.normal(0.93 if ap else 1.0, 0.04), 0.82, 1.08))
        a = replace(
            self,
            view=view,
            angle=float(rng.normal(0.0, 0.035 if ap else 0.02)),
            shift_u=float(rng.normal(0.0, 0.02)),
            shift_v=float(rng.normal(0.0, 0.02)),
            inspiration=insp,
            exposure=float(rng.uniform(*s.exposure)),
            gamma=float(rng.uniform(*s.gamma)),
            window_lo=float(rng.uniform(*s.window_lo)),
            window_hi=float(rng.uniform(*s.window_hi)),
            noise=float(rng.uniform(*s.noise)),
            air=float(rng.normal(0.42, 0.02)),
            extras={},
        )
        # AP: magnified heart and mediastinum, higher domes at lower inspiration
        if ap:
            a.heart_r *= 1.08
            a.heart_l *= 1.08
            a.med_w *= 1.1
        d = (1.0 - insp) * 0.9
        a.dome_r -= d
        a.dome_l -= d
        return a

    # ---- lung geometry -------------------------------------------------------------
    def lung_bottom(self, side: int) -> float:
        """v of the costophrenic angle on ``side`` (-1: patient right = image left, +1: left)."""
        return (self.dome_r if side < 0 else self.dome_l) + self.dome_curv

    def lung_point(self, side: int, t: float, lateral: float) -> tuple[float, float]:
        """(u, v) at vertical fraction ``t`` (0 apex .. 1 costophrenic angle) and lateral fraction
        ``lateral`` (0 medial .. 1 lateral) of one lung."""
        bottom = self.lung_bottom(side)
        v = self.apex + t * (bottom - self.apex)
        lat, med = self._lat_med(np.float32(v), side)
        a = float(med + lateral * (lat - med))
        return side * a, float(v)

    def _lat_med(self, v, side: int):
        bottom = self.lung_bottom(side)
        t = np.clip((v - self.apex) / (bottom - self.apex), 0.0, 1.0)
        lat = 0.2 + (self.thorax - 0.2) * np.sqrt(1.0 - (1.0 - np.minimum(t * 1.6, 1.0)) ** 2)
        med = np.where(v < self.heart_top, self.med_w, 0.06)
        return lat, med

    def heart_geometry(self) -> tuple[float, float, float, float]:
        """Heart ellipse (centre u, centre v, half width, half height); its lower half hides under the domes."""
        dome = 0.5 * (self.dome_r + self.dome_l)
        hry = dome + 0.04 - self.heart_top
        return 0.5 * (self.heart_l - self.heart_r), dome + 0.04, 0.5 * (self.heart_l + self.heart_r), hry

    def dome_v(self, a, side: int):
        """v of the diaphragm under mirrored abscissa ``a = u * side``."""
        dome = self.dome_r if side < 0 else self.dome_l
        half = 0.5 * self.thorax
        return dome + self.dome_curv * np.minimum(((a - half) / half) ** 2, 1.6)

    def lung_mask(self, u: np.ndarray, v: np.ndarray, side: int, soft: float) -> np.ndarray:
        a = u * side
        lat, med = self._lat_med(v, side)
        vd = self.dome_v(a, side)
        apex_round = (
            self.apex + 0.25 * np.maximum(0.0, (a - 0.45) / 0.4) ** 2 + 0.25 * np.maximum(0.0, (0.2 - a) / 0.2) ** 2
        )
        m = ramp(lat - a, soft) * ramp(a - 0.02, soft) * ramp(vd - v, soft) * ramp(v - apex_round, soft)
        return m.astype(F32)
