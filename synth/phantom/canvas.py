"""The layered canvas of one phantom image: the anatomy drawn into attenuation layers that findings edit.

Coordinates, units and the image formation are those of :mod:`synth.phantom.anatomy` (see its docstring):
findings *fill* lung air, *add* density, add *extra air* or thin the *markings*; :meth:`Canvas.compose`
turns the layers into the radiograph.
"""

from __future__ import annotations

import math

import numpy as np

from synth.phantom.anatomy import F32, Anatomy, grid, marking_table, ramp


class Canvas:
    """Layers of one image. Findings edit ``fill``, ``add``, ``extra_air`` and ``marks`` (see module doc)."""

    def __init__(self, anatomy: Anatomy, size: int):
        g = grid(size)
        self.A = anatomy
        self.size = size
        self.px = g.px
        a = anatomy
        ca, sa = math.cos(a.angle), math.sin(a.angle)
        self.u = (ca * g.u - sa * g.v - a.shift_u).astype(F32)
        self.v = (sa * g.u + ca * g.v - a.shift_v).astype(F32)
        self.soft = max(0.03, 1.2 * self.px)
        shape = (size, size)
        self.fill = np.zeros(shape, F32)
        self.add = np.zeros(shape, F32)
        self.extra_air = np.zeros(shape, F32)
        self.marks = np.ones(shape, F32)
        self._build()

    # ---- helpers for findings -------------------------------------------------------
    def window(self, cu: float, cv: float, r: float) -> tuple[slice, slice]:
        """Pixel slices of the box of radius ``r`` around (cu, cv) in *rotated* coordinates (safe margin)."""
        # rotated coords differ from grid coords by a small rotation/shift: map back approximately
        a = self.A
        ca, sa = math.cos(a.angle), math.sin(a.angle)
        gu = ca * (cu + a.shift_u) + sa * (cv + a.shift_v)
        gv = -sa * (cu + a.shift_u) + ca * (cv + a.shift_v)
        r = r * 1.1 + 2 * self.px
        n = self.size
        x0 = int(max(0, math.floor((gu - r + 1) / 2 * n)))
        x1 = int(min(n, math.ceil((gu + r + 1) / 2 * n)))
        y0 = int(max(0, math.floor((gv - r + 1) / 2 * n)))
        y1 = int(min(n, math.ceil((gv + r + 1) / 2 * n)))
        return slice(y0, max(y0, y1)), slice(x0, max(x0, x1))

    def ellipse(self, cu, cv, rx, ry, angle=0.0, edge=None, wobble=0.0, lobes=5, phase=0.0):
        """Soft ellipse (optionally lobulated) evaluated in its window; returns (window, mask)."""
        w = self.window(cu, cv, max(rx, ry) * (1 + wobble))
        du = self.u[w] - cu
        dv = self.v[w] - cv
        c, s = math.cos(angle), math.sin(angle)
        x = (c * du + s * dv) / rx
        y = (-s * du + c * dv) / ry
        d = np.sqrt(x * x + y * y)
        if wobble:
            d = d / (1.0 + wobble * np.cos(lobes * np.arctan2(y, x) + phase))
        edge = max(edge if edge is not None else self.soft, self.px)
        return w, ramp((1.0 - d) * min(rx, ry), edge)

    def gauss(self, cu, cv, sx, sy, angle=0.0):
        w = self.window(cu, cv, 3 * max(sx, sy))
        du = self.u[w] - cu
        dv = self.v[w] - cv
        c, s = math.cos(angle), math.sin(angle)
        x = (c * du + s * dv) / sx
        y = (-s * du + c * dv) / sy
        return w, np.exp(-0.5 * (x * x + y * y)).astype(F32)

    def polyline(self, pts, width: float, w=None):
        """Soft band of half-width ``width`` around a polyline; returns (window, mask)."""
        pts = np.asarray(pts, dtype=F32)
        if w is None:
            lo, hi = pts.min(0), pts.max(0)
            c = (lo + hi) / 2
            w = self.window(float(c[0]), float(c[1]), float(np.max(hi - lo)) / 2 * 1.42 + width + 0.02)
        u, v = self.u[w], self.v[w]
        best = np.full(u.shape, 1e3, F32)
        for (x0, y0), (x1, y1) in zip(pts[:-1], pts[1:]):
            dx, dy = x1 - x0, y1 - y0
            L = dx * dx + dy * dy + 1e-9
            t = np.clip(((u - x0) * dx + (v - y0) * dy) / L, 0.0, 1.0)
            d2 = (u - x0 - t * dx) ** 2 + (v - y0 - t * dy) ** 2
            np.minimum(best, d2, out=best)
        return w, ramp(width - np.sqrt(best), max(self.px, width * 0.8))

    def full(self, w, local: np.ndarray) -> np.ndarray:
        out = np.zeros((self.size, self.size), F32)
        out[w] = local
        return out

    def region(self, w, local: np.ndarray, thr: float = 0.05) -> np.ndarray:
        out = np.zeros((self.size, self.size), bool)
        out[w] = local > thr
        return out

    def brighten(self, w, local: np.ndarray, gain: float) -> np.ndarray:
        """Add ``gain * local`` to the additive layer and return the region it marks (most findings draw so)."""
        self.add[w] += gain * local
        return self.region(w, local)

    # ---- anatomy layers -----------------------------------------------------------
    def _build(self) -> None:
        a, u, v, s = self.A, self.u, self.v, self.soft
        au = np.abs(u)
        # body: torso, neck, shoulders/arms
        torso = ramp(a.body_w - au - 0.02 * v, 2 * s)
        neck = ramp(0.26 - au, s) * ramp(-0.78 - v, 2 * s)
        top = ramp(v + 0.82 + 0.25 * np.maximum(0, 0.6 - au), 3 * s)
        arms = ramp(au - 0.62, 2 * s) * ramp(-0.55 - v, 6 * s)
        body = np.maximum(torso * top, np.maximum(neck, arms))
        thick = 0.42 + 0.18 * np.clip(1.0 - (u / a.body_w) ** 2, 0, 1)
        self.body = body * thick
        if a.breasts:
            for side in (-1, 1):
                w, g = self.gauss(side * 0.5, a.dome_r + 0.05, 0.22, 0.14)
                self.body[w] += 0.05 * g
        # lungs
        self.lungs = {side: self.A.lung_mask(u, v, side, s) for side in (-1, 1)}
        lung = np.maximum(self.lungs[-1], self.lungs[1])
        # mediastinum: heart, upper mediastinum, knob, trachea (air)
        hc, hcy, hrx, hry = a.heart_geometry()
        hd = ((u - hc) / hrx) ** 2 + ((v - hcy) / hry) ** 2
        heart = ramp((1.0 - hd) * hrx * 0.5, s)
        upper = ramp(a.med_w - np.abs(u - 0.01), s) * ramp(a.heart_top + 0.12 - v, s)
        knob = ramp(a.knob_r - np.sqrt((u - a.knob_x) ** 2 + (v - a.knob_y) ** 2), s)
        # the knob is a bump on the mediastinal contour, never an island in the lung
        knob = np.maximum(knob, ramp(a.knob_x - u, s) * ramp(u, s) * ramp(a.knob_r * 0.8 - np.abs(v - a.knob_y), s))
        desc = (
            ramp(0.05 - np.abs(u - (a.knob_x - 0.04 - 0.04 * np.clip((v - a.knob_y) / 0.8, 0, 1))), s)
            * ramp(v - a.knob_y, s)
            * 0.5
        )
        med = np.maximum(np.maximum(heart, upper), np.maximum(knob, desc))
        self.heart_mask = heart
        self.med = med
        self.lung_air = lung * (1.0 - 0.82 * med)
        trachea = ramp(0.028 - np.abs(u - 0.005 * v), s) * ramp(-0.3 - v, s) * ramp(v + 1.0, s)
        self.trachea = trachea
        # hila (pulmonary arteries)
        hil = np.zeros_like(u)
        for side in (-1, 1):
            hx = side * a.hilum_x + (0.02 if side > 0 else 0.0)
            hy = a.hilum_y - (0.03 if side > 0 else 0.0)
            w, g = self.gauss(hx, hy, a.hilum_r * 1.3, a.hilum_r * 2.0)
            hil[w] += g
        self.hila = hil
        # vessel markings: polar texture around each hilum
        table = marking_table()
        hx = np.where(u < 0, -a.hilum_x, a.hilum_x)
        dx, dy = u - hx, v - a.hilum_y
        r = np.sqrt(dx * dx + dy * dy)
        th = np.arctan2(dy, dx)
        ti = ((th * (table.shape[0] / (2 * np.pi))).astype(np.int32) + a.marking_offset) % table.shape[0]
        ri = np.minimum((r * 60).astype(np.int32), table.shape[1] - 1)
        # vessels taper away from the hilum; the hilum itself is drawn by ``hila`` (no starburst)
        self.markings = table[ti, ri] * (np.exp(-r * 1.8) * np.clip(r * 6.0, 0.0, 1.0) * 0.6)
        self.hilum_dist = r
        # bones
        self.bones = self._ribs() + self._clavicles() + self._spine() + self._shoulders()

    def rib_coord(self, u, v, side_sign=None):
        """Posterior-rib coordinate: rib k occupies frac(w) in [0, 0.5) for w in [k, k+1)."""
        a = self.A
        au = np.abs(u)
        return (v - a.rib_v0 - a.rib_curv * au * au) / a.rib_sp

    @staticmethod
    def rib_profile(w: np.ndarray) -> np.ndarray:
        f = w - np.floor(w)
        band = np.clip(1.0 - np.abs(f - 0.22) / 0.22, 0.0, 1.0)
        return np.sqrt(band)

    def rib_mask(self, u, v):
        a, s = self.A, self.soft
        au = np.abs(u)
        return (
            ramp(a.thorax + 0.05 - au, s)
            * ramp(au - 0.05, s)
            * ramp(v - a.rib_v0 + 0.02, s)
            * ramp(a.lung_bottom(1) + 0.1 - v, 2 * s)
        )

    def _ribs(self):
        a, u, v = self.A, self.u, self.v
        w = self.rib_coord(u, v)
        self.rib_w = w
        post = self.rib_profile(w) * self.rib_mask(u, v)
        # faint anterior ribs sloping the other way
        wa = (v - a.rib_v0 + 0.1 + 0.35 * (np.abs(u) - 0.9) ** 2 - 0.25) / (a.rib_sp * 1.1)
        ant = (
            self.rib_profile(wa)
            * ramp(a.thorax - np.abs(u), self.soft)
            * ramp(v - a.rib_v0 - 0.1, self.soft)
            * ramp(a.dome_r - v, self.soft)
        )
        return 0.08 * post + 0.03 * ant

    def clavicle_center(self, au, side: int):
        a = self.A
        return a.clav_y - a.clav_tilt * (au - 0.1) + 0.12 * (au - 0.4) ** 2 * (1.0 if a.view == "PA" else 0.4)

    def clavicle_mask(self, u, v, side: int, dv=0.0):
        au = u * side
        c = self.clavicle_center(au, side) + dv
        return ramp(0.035 - np.abs(v - c), self.soft) * ramp(au - 0.07, self.soft) * ramp(0.74 - au, self.soft)

    def _clavicles(self):
        return 0.24 * (self.clavicle_mask(self.u, self.v, -1) + self.clavicle_mask(self.u, self.v, 1))

    def spine_x(self, v):
        a = self.A
        return a.spine_bend * np.exp(-(((v - a.spine_bend_y) / 0.35) ** 2))

    def _spine(self):
        a, u, v = self.A, self.u, self.v
        x = u - self.spine_x(v)
        period = 0.11 * (1.0 - a.spine_crowd * np.exp(-(((v - a.spine_bend_y) / 0.3) ** 2)))
        ph = (v + 1.0) / period
        f = ph - np.floor(ph)
        body = ramp(a.spine_w - np.abs(x), self.soft)
        disc = 1.0 - 0.45 * ramp(0.12 - np.abs(f - 0.5), 0.08)
        pedicle = (
            0.3 * ramp(0.018 - np.abs(np.abs(x) - a.spine_w * 0.65), self.soft) * ramp(0.2 - np.abs(f - 0.3), 0.08)
        )
        self.spine_mask = body
        crowd = a.spine_crowd * np.exp(-(((v - a.spine_bend_y) / 0.3) ** 2))
        return 0.12 * body * disc + 0.08 * pedicle + 0.3 * crowd * body

    def _shoulders(self):
        a, u, v = self.A, self.u, self.v
        out = np.zeros_like(u)
        sc = 0.72 if a.view == "AP" else 0.9
        for side in (-1, 1):
            w, m = self.ellipse(side * 1.0, -0.9, 0.15, 0.16)
            out[w] += 0.2 * m
            # scapula: a soft plate whose medial border overlaps the lung in AP films
            au = u * side
            border = sc + 0.12 * (v + 0.4) ** 2
            out += 0.05 * ramp(au - border, self.soft) * ramp(-0.2 - v, 3 * self.soft) * ramp(v + 0.8, 3 * self.soft)
        return out

    # ---- compose ------------------------------------------------------------------
    def compose(self, noise_rng: np.random.Generator, blur_passes: int = 1) -> np.ndarray:
        """The radiograph: exposure curve, ``blur_passes`` of unsharpness, window and gamma, detector noise."""
        a = self.A
        open_air = self.lung_air * (1.0 - np.clip(self.fill, 0.0, 1.0))
        d = (
            self.body
            + self.bones
            + 0.12 * self.hila * (1.0 - 0.5 * self.fill)
            + self.markings * self.marks * open_air * 0.3
            - a.air * open_air
            - 0.12 * self.trachea
            - self.extra_air
            + self.add
        )
        d = np.maximum(d, 0.0)
        img = 1.0 - np.exp(-a.exposure * d)
        for _ in range(blur_passes):  # radiographic unsharpness: separable [1 2 1]/4 blur
            img[1:-1, :] = 0.25 * img[:-2, :] + 0.5 * img[1:-1, :] + 0.25 * img[2:, :]
            img[:, 1:-1] = 0.25 * img[:, :-2] + 0.5 * img[:, 1:-1] + 0.25 * img[:, 2:]
        img = np.clip((img - a.window_lo) / (a.window_hi - a.window_lo), 0.0, 1.0) ** a.gamma
        img = img + a.noise * noise_rng.standard_normal(img.shape, dtype=F32)
        return np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
