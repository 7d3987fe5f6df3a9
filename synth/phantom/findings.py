"""One render step per CXR-LT class: a localized visual signature with random parameters.

Each :class:`Finding` may edit the anatomy before the canvas is built
(``pre``: cardiomegaly widens the heart) and/or draw on the canvas (``draw``).
``draw`` returns the finding's *region* (boolean mask of where it changed the
image) and a small dict of its ground-truth parameters (side, centre ...).
Every step draws from its own random stream, seeded by (image seed, class), so
adding or removing one finding never moves another: the with/without
difference of a class is exactly its own signature.

Signature sizes are relative to the thorax and never thinner than ~1 px at
64 px; several tail signatures are subtle on purpose (azygos fissure, Westermark
oligaemia, pneumomediastinum), as they are on real films.

Parents of the hierarchy (Fracture, Atelectasis, Lung Lesion) draw their own
"other" variant only when none of their children is present (a rib fracture
*is* the fracture).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable, Optional

import numpy as np

from synth.phantom.anatomy import F32, Anatomy, ramp
from synth.phantom.canvas import Canvas
from synth.taxonomy import CXR_LT_CLASSES

Region = np.ndarray
Draw = Callable[[Canvas, np.random.Generator, frozenset], tuple[Region, dict]]
Pre = Callable[[Anatomy, np.random.Generator], dict]


@dataclass(frozen=True)
class Finding:
    name: str
    draw: Optional[Draw] = None
    pre: Optional[Pre] = None
    what: str = ""  #: one line: what the signature looks like (contact sheet / docs)


REGISTRY: dict[str, Finding] = {}


def finding(name: str, what: str, pre: Optional[Pre] = None):
    def deco(fn: Draw) -> Draw:
        REGISTRY[name] = Finding(name, fn, pre, what)
        return fn

    return deco


# ---------------------------------------------------------------- helpers


def _side(rng) -> int:
    return -1 if rng.random() < 0.5 else 1


def _fill(cv: Canvas, w, m: np.ndarray, lung_only: bool = True) -> None:
    if lung_only:
        m = m * np.maximum(cv.lungs[-1][w], cv.lungs[1][w])
    np.maximum(cv.fill[w], m, out=cv.fill[w])


def _lungs_any(cv: Canvas) -> np.ndarray:
    return np.maximum(cv.lungs[-1], cv.lungs[1])


def _union(*regions: Region) -> Region:
    out = regions[0].copy()
    for r in regions[1:]:
        out |= r
    return out


def _empty(cv: Canvas) -> Region:
    return np.zeros((cv.size, cv.size), bool)


def _dilate(r: Region, k: int) -> Region:
    out = r.copy()
    for _ in range(k):
        o = out.copy()
        o[1:, :] |= out[:-1, :]
        o[:-1, :] |= out[1:, :]
        o[:, 1:] |= out[:, :-1]
        o[:, :-1] |= out[:, 1:]
        out = o
    return out


def _polygon(cv: Canvas, pts, edge=None):
    """Soft convex polygon (points counter-clockwise or clockwise) in its window."""
    pts = np.asarray(pts, dtype=F32)
    c = pts.mean(0)
    w = cv.window(float(c[0]), float(c[1]), float(np.max(np.linalg.norm(pts - c, axis=1))))
    u, v = cv.u[w], cv.v[w]
    edge = edge or cv.soft
    m = np.ones(u.shape, F32)
    x, y = pts[:, 0], pts[:, 1]
    orient = 1.0 if float(np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y)) > 0 else -1.0  # shoelace sign
    for p0, p1 in zip(pts, np.roll(pts, -1, axis=0)):
        d = p1 - p0
        n = np.array([-d[1], d[0]], F32) * orient / (np.linalg.norm(d) + 1e-9)
        m = m * ramp((u - p0[0]) * n[0] + (v - p0[1]) * n[1], edge)
    return w, m


def _bezier(p0, p1, p2, n=8):
    t = np.linspace(0, 1, n)[:, None]
    p0, p1, p2 = (np.asarray(p, F32) for p in (p0, p1, p2))
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t * t * p2


def _lung_pos(cv: Canvas, rng, side: int, t=(0.25, 0.8), lateral=(0.3, 0.8)):
    tt, ll = rng.uniform(*t), rng.uniform(*lateral)
    return cv.A.lung_point(side, tt, ll)


# ---------------------------------------------------------------- 40 signatures


@finding("Adenopathy", "lobulated hilar enlargement (one or both hila), sometimes right paratracheal widening")
def _adenopathy(cv, rng, present):
    a = cv.A
    regions, sides = [], ([-1, 1] if rng.random() < 0.5 else [_side(rng)])
    for side in sides:
        hx = side * (a.hilum_x + 0.03)
        w, m = cv.ellipse(
            hx,
            a.hilum_y + rng.uniform(-0.03, 0.05),
            rng.uniform(0.07, 0.09),
            rng.uniform(0.08, 0.11),
            wobble=0.2,
            lobes=4,
            phase=rng.uniform(0, 6.3),
        )
        _fill(cv, w, m, lung_only=False)
        regions.append(cv.brighten(w, m, 0.04))
    if rng.random() < 0.4:
        w, m = cv.ellipse(-(a.med_w + 0.02), a.knob_y + 0.02, 0.05, 0.08)
        _fill(cv, w, m, lung_only=False)
        regions.append(cv.brighten(w, m, 0.04))
    return _union(*regions), {"sides": sides}


@finding("Atelectasis", "plate (discoid) atelectasis: short thick horizontal band(s) at a lung base")
def _atelectasis(cv, rng, present):
    if present & {"Lobar Atelectasis", "Round(ed) Atelectasis"}:
        return _empty(cv), {"drawn_by_child": True}
    side = _side(rng)
    regions = []
    for _ in range(1 + int(rng.random() < 0.4)):
        cu, cvv = _lung_pos(cv, rng, side, t=(0.62, 0.84), lateral=(0.3, 0.7))
        ln = rng.uniform(0.13, 0.2)
        ang = rng.uniform(-0.25, 0.25)
        pts = [
            (cu - ln * math.cos(ang), cvv - ln * math.sin(ang)),
            (cu + ln * math.cos(ang), cvv + ln * math.sin(ang)),
        ]
        w, m = cv.polyline(pts, rng.uniform(0.022, 0.03))
        _fill(cv, w, m * 0.95)
        regions.append(cv.region(w, m))
    return _union(*regions), {"side": side}


@finding("Azygos Lobe", "curved thin fissure in the right upper zone ending in a teardrop at the mediastinum")
def _azygos(cv, rng, present):
    a = cv.A
    top = (-rng.uniform(0.28, 0.38), a.apex + 0.06)
    bottom = (-(a.med_w + 0.025), a.knob_y + rng.uniform(0.02, 0.08))
    ctrl = (top[0] - rng.uniform(0.02, 0.08), 0.5 * (top[1] + bottom[1]))
    w, m = cv.polyline(_bezier(top, ctrl, bottom), 0.014)
    _fill(cv, w, m)
    cv.add[w] += 0.03 * m
    w2, m2 = cv.ellipse(bottom[0] - 0.02, bottom[1], 0.03, 0.042)
    _fill(cv, w2, m2)
    return _union(cv.region(w, m), cv.region(w2, m2)), {"top": top, "knot": bottom}


@finding("Calcification of the Aorta", "bright curvilinear calcium rim along the aortic knob")
def _aortic_calc(cv, rng, present):
    a = cv.A
    t0, t1 = rng.uniform(3.3, 3.8), rng.uniform(5.4, 6.1)
    th = np.linspace(t0, t1, 9)
    r = a.knob_r * 0.9
    pts = np.stack([a.knob_x + r * np.cos(th), a.knob_y + r * np.sin(th)], 1)
    w, m = cv.polyline(pts, 0.02)
    cv.add[w] += rng.uniform(0.5, 0.65) * m
    return cv.region(w, m), {"arc": [float(t0), float(t1)]}


def _cardiomegaly_pre(a: Anatomy, rng) -> dict:
    f = rng.uniform(1.25, 1.45)
    a.heart_r *= f * rng.uniform(0.95, 1.1)
    a.heart_l *= f
    a.heart_top -= 0.04
    return {"factor": float(f)}


@finding("Cardiomegaly", "enlarged cardiac silhouette (cardiothoracic ratio > 0.55)", pre=_cardiomegaly_pre)
def _cardiomegaly(cv, rng, present):
    return _dilate(cv.heart_mask > 0.05, 1), {"ctr": (cv.A.heart_r + cv.A.heart_l) / (2 * cv.A.thorax)}


@finding("Clavicle Fracture", "break in one clavicle with a step of the lateral fragment")
def _clavicle_fracture(cv, rng, present):
    side = _side(rng)
    ab = rng.uniform(0.3, 0.52)
    dv = rng.uniform(0.12, 0.17) * (1 if rng.random() < 0.7 else -1)
    cu = side * (ab + 0.17)
    cvv = float(cv.clavicle_center(np.float32(ab + 0.17), side))
    w = cv.window(cu, cvv, 0.24)
    u, v = cv.u[w], cv.v[w]
    au = u * side
    shift = dv * ramp(au - ab, cv.px)
    gap = 1.0 - ramp(0.045 - np.abs(au - ab), cv.px)
    orig = cv.clavicle_mask(u, v, side)
    new = cv.clavicle_mask(u, v, side, dv=shift) * gap
    delta = 0.6 * (new - orig)
    cv.add[w] += delta
    return cv.region(w, np.abs(delta), 0.01), {"side": side, "break": float(ab), "step": float(dv)}


@finding("Consolidation", "dense homogeneous lobar opacity with one sharp fissural border and air bronchograms")
def _consolidation(cv, rng, present):
    side = _side(rng)
    cu, cvv = _lung_pos(cv, rng, side, t=(0.35, 0.78), lateral=(0.35, 0.65))
    rx, ry = rng.uniform(0.14, 0.2), rng.uniform(0.12, 0.17)
    w, m = cv.ellipse(cu, cvv, rx, ry, edge=0.05, wobble=0.1, phase=rng.uniform(0, 6.3))
    # sharp fissural border: horizontal cut above (upper edge) or below
    v = cv.v[w]
    cut = cvv + (-1 if rng.random() < 0.5 else 1) * ry * 0.45
    m = m * (ramp(v - cut, cv.px) if cut < cvv else ramp(cut - v, cv.px))
    # air bronchograms: dark branches from the medial side
    br = np.zeros_like(m)
    for k in range(2):
        y0 = cvv + rng.uniform(-0.4, 0.4) * ry
        pts = _bezier(
            (cu - side * rx * 0.6, y0),
            (cu, y0 + rng.uniform(-0.05, 0.05)),
            (cu + side * rx * 0.5, y0 + rng.uniform(-0.08, 0.08)),
        )
        _, b = cv.polyline(pts, 0.011, w=w)
        br = np.maximum(br, b)
    _fill(cv, w, m * (1.0 - 0.65 * br))
    return cv.region(w, m), {"side": side, "center": (cu, cvv)}


@finding("Edema", "bilateral perihilar 'bat-wing' haze with upper-zone vessel prominence")
def _edema(cv, rng, present):
    a = cv.A
    reg = []
    s = rng.uniform(0.18, 0.24)
    for side in (-1, 1):
        w, g = cv.gauss(side * (a.hilum_x + 0.05), a.hilum_y + 0.1, s, s * 1.3)
        _fill(cv, w, np.clip(g * rng.uniform(0.55, 0.7), 0, 1))
        reg.append(cv.region(w, g, 0.04))
    upper = _lungs_any(cv) * ramp(a.hilum_y - cv.v, 0.1)
    cv.marks *= 1.0 + 0.8 * upper
    return _union(*reg, upper > 0.05), {"sigma": float(s)}


def _emphysema_pre(a: Anatomy, rng) -> dict:
    d = rng.uniform(0.09, 0.14)
    a.dome_r += d
    a.dome_l += d * 0.9
    a.dome_curv *= rng.uniform(0.35, 0.5)
    a.heart_l *= 0.9
    a.heart_r *= 0.9
    a.rib_sp *= 1.05
    return {"dome_drop": float(d)}


@finding(
    "Emphysema",
    "hyperinflation: low flat domes, hyperlucent lungs with sparse peripheral markings, narrow heart",
    pre=_emphysema_pre,
)
def _emphysema(cv, rng, present):
    lungs = _lungs_any(cv)
    cv.extra_air += 0.05 * lungs
    periph = lungs * ramp(cv.hilum_dist - 0.3, 0.2)
    cv.marks *= 1.0 - 0.6 * periph
    region = lungs > 0.02
    shifted = region.copy()
    k = int(0.16 / cv.px) + 1
    for i in range(1, k):
        shifted[i:] |= region[:-i]
    return _dilate(shifted, 1), {}


def _ecm_pre(a: Anatomy, rng) -> dict:
    f = rng.uniform(1.55, 1.9)
    a.med_w *= f
    a.knob_x += 0.03
    return {"factor": float(f)}


@finding("Enlarged Cardiomediastinum", "widened upper mediastinum", pre=_ecm_pre)
def _ecm(cv, rng, present):
    a = cv.A
    r = (np.abs(cv.u) < a.med_w + 0.06) & (cv.v < a.heart_top + 0.16) & (cv.v > -1.0)
    return r, {"med_w": a.med_w}


@finding("Fibrosis", "coarse reticular net in the peripheral lower zones")
def _fibrosis(cv, rng, present):
    a = cv.A
    sides = [-1, 1] if rng.random() < 0.8 else [_side(rng)]
    per = rng.uniform(0.075, 0.1)
    th1, th2 = rng.uniform(0.3, 0.8), rng.uniform(2.0, 2.6)
    regions = []
    for side in sides:
        cu, cvv = a.lung_point(side, 0.78, 0.75)
        w = cv.window(cu, cvv, 0.3)
        u, v = cv.u[w], cv.v[w]
        zone = np.exp(-(((u - cu) / 0.2) ** 2 + ((v - cvv) / 0.22) ** 2)) * cv.lungs[side][w]
        r1 = np.cos((u * math.cos(th1) + v * math.sin(th1)) * (2 * math.pi / per))
        r2 = np.cos((u * math.cos(th2) + v * math.sin(th2)) * (2 * math.pi / per))
        net = np.maximum(ramp(r1 - 0.6, 0.5), ramp(r2 - 0.6, 0.5))
        _fill(cv, w, np.clip(zone * (0.2 + 0.75 * net), 0, 1))
        regions.append(cv.region(w, zone, 0.1))
    return _union(*regions), {"sides": sides}


@finding(
    "Fissure",
    "thickened fissure: a long thin line (minor fissure at the right hilum level, or the left major fissure)",
)
def _fissure(cv, rng, present):
    a = cv.A
    if rng.random() < 0.7:
        y = a.hilum_y + rng.uniform(-0.02, 0.06)
        _, lat = a.lung_point(-1, 0.5, 1.0)
        x0, x1 = -(a.hilum_x + 0.02), -(a.thorax - 0.04)
        pts = _bezier((x0, y), ((x0 + x1) / 2, y - rng.uniform(0.0, 0.04)), (x1, y + rng.uniform(-0.02, 0.03)))
        kind = "minor"
    else:
        x0, y0 = a.lung_point(1, 0.25, 0.55)
        x1, y1 = a.lung_point(1, 0.95, 0.2)
        pts = _bezier((x0, y0), ((x0 + x1) / 2 + 0.05, (y0 + y1) / 2), (x1, y1))
        kind = "major"
    w, m = cv.polyline(pts, 0.02)
    _fill(cv, w, m)
    cv.add[w] += 0.08 * m
    return cv.region(w, m), {"kind": kind}


def _humerus_or_spine(cv, rng):
    a = cv.A
    if rng.random() < 0.15:  # the humeral neck sits at the film corner, often half cut off
        side = _side(rng)
        cu, cvv = side * 0.96, -0.84
        w = cv.window(cu, cvv, 0.2)
        u, v = cv.u[w], cv.v[w]
        ang = rng.uniform(-0.5, 0.5)
        d = (u - cu) * math.sin(ang) + (v - cvv - 0.04) * math.cos(ang)
        head = ramp(0.15 - np.sqrt(((u - side * 1.0) / 1.0) ** 2 + ((v + 0.9) / 1.07) ** 2), cv.soft)
        gap = ramp(0.024 - np.abs(d), cv.px)
        scl = ramp(0.024 - np.abs(d - 0.05), cv.px)
        delta = head * (-0.6 * gap + 0.4 * scl)
        cv.add[w] += delta
        return cv.region(w, np.abs(delta), 0.01), {"kind": "humeral neck", "side": side}
    # vertebral compression: a flattened, sclerotic body with a paraspinal haematoma
    # bulging the paraspinal lines on both sides (the sign that shows at 64 px)
    y = rng.uniform(-0.45, 0.2)
    x = float(cv.spine_x(np.float32(y)))
    w, m = cv.ellipse(x, y, a.spine_w + 0.02, 0.045)
    cv.add[w] += 0.45 * m
    wb, b = cv.ellipse(x, y, a.spine_w + rng.uniform(0.08, 0.11), rng.uniform(0.1, 0.14))
    _fill(cv, wb, b)
    cv.add[wb] += 0.12 * b
    return _union(cv.region(w, m), cv.region(wb, b)), {"kind": "vertebral compression", "level": y}


@finding(
    "Fracture", "other fracture (no rib/clavicle child): humeral neck fracture line or a sclerotic compressed vertebra"
)
def _fracture(cv, rng, present):
    if present & {"Rib Fracture", "Clavicle Fracture"}:
        return _empty(cv), {"drawn_by_child": True}
    return _humerus_or_spine(cv, rng)


@finding(
    "Granuloma", "1-3 tiny calcified (white, pinpoint) nodules, sometimes with a calcified hilar node (Ranke complex)"
)
def _granuloma(cv, rng, present):
    # Calcified, so far denser and smaller than a soft-tissue nodule: at 64 px a saturated
    # 1-2 px point rather than a grey disc. That contrast, not size alone, is what a reader
    # (and a 64 px classifier) uses to tell the two apart.
    a = cv.A
    regions = []
    for _ in range(1 + int(rng.integers(0, 3))):
        cu, cvv = _lung_pos(cv, rng, _side(rng), t=(0.15, 0.8), lateral=(0.2, 0.9))
        r = rng.uniform(0.028, 0.04)
        w, m = cv.ellipse(cu, cvv, r, r, edge=cv.px * 0.5)
        regions.append(cv.brighten(w, m, rng.uniform(1.1, 1.4)))
    if rng.random() < 0.3:
        side = _side(rng)
        w, m = cv.ellipse(
            side * (a.hilum_x + 0.03), a.hilum_y + rng.uniform(-0.04, 0.04), 0.035, 0.03, edge=cv.px * 0.5
        )
        regions.append(cv.brighten(w, m, rng.uniform(0.9, 1.1)))
    return _union(*regions), {}


@finding("Hernia", "hiatal hernia: retrocardiac round opacity with an air-fluid level")
def _hernia(cv, rng, present):
    a = cv.A
    cu = rng.uniform(0.02, 0.1)
    cvv = min(a.dome_r, a.dome_l) - rng.uniform(0.06, 0.12)
    rx, ry = rng.uniform(0.09, 0.13), rng.uniform(0.07, 0.1)
    w, m = cv.ellipse(cu, cvv, rx, ry)
    v = cv.v[w]
    level = cvv + rng.uniform(-0.2, 0.2) * ry
    air = m * ramp(level - v, cv.px)
    cv.extra_air[w] += 0.2 * air
    cv.add[w] += 0.08 * m * (1 - air)
    return cv.region(w, m), {"center": (cu, cvv)}


def _ptx_masks(cv: Canvas, side: int, f: float, w):
    """Rim of air between the chest wall and the collapsed lung, and the visceral pleural line."""
    a = cv.A
    cx, cy = side * 0.18, a.lung_bottom(side) - 0.05
    u, v = cv.u[w], cv.v[w]
    col = a.lung_mask(cx + (u - cx) / f, cy + (v - cy) / f, side, cv.soft)
    inner = a.lung_mask(cx + (u - cx) / (f - 0.03), cy + (v - cy) / (f - 0.03), side, cv.soft)
    rim = cv.lungs[side][w] * (1.0 - col)
    line = col * (1.0 - inner)
    return rim, line


@finding("Hydropneumothorax", "pneumothorax rim with a straight horizontal air-fluid level")
def _hydropneumothorax(cv, rng, present):
    a = cv.A
    side = _side(rng)
    f = rng.uniform(0.72, 0.82)
    w = (slice(None), slice(None))
    rim, line = _ptx_masks(cv, side, f, w)
    _, level = a.lung_point(side, rng.uniform(0.68, 0.82), 0.5)
    fluid = cv.lungs[side] * ramp(cv.v - level, cv.px)
    cv.extra_air += 0.1 * rim * (1 - fluid)
    cv.marks *= 1.0 - rim
    cv.add += 0.05 * line * (1 - fluid)
    np.maximum(cv.fill, fluid, out=cv.fill)
    return (rim > 0.1) | (fluid > 0.1) | (line > 0.1), {"side": side, "collapse": float(f), "level": float(level)}


@finding("Infarction", "Hampton's hump: peripheral pleural-based wedge opacity in a lower zone")
def _infarction(cv, rng, present):
    a = cv.A
    side = _side(rng)
    cu, cvv = a.lung_point(side, rng.uniform(0.6, 0.82), 1.0)
    w, m = cv.ellipse(cu, cvv, rng.uniform(0.09, 0.12), rng.uniform(0.07, 0.09), edge=0.03)
    _fill(cv, w, 0.9 * m)
    return cv.region(w, m * cv.lungs[side][w]), {"side": side, "center": (cu, cvv)}


@finding("Infiltration", "patchy ill-defined interstitial opacities scattered in one or both lungs")
def _infiltration(cv, rng, present):
    regions = []
    sides = [-1, 1] if rng.random() < 0.5 else [_side(rng)]
    for side in sides:
        for _ in range(int(rng.integers(3, 6))):
            cu, cvv = _lung_pos(cv, rng, side, t=(0.3, 0.85), lateral=(0.2, 0.85))
            s = rng.uniform(0.035, 0.06)
            w, g = cv.gauss(cu, cvv, s, s * rng.uniform(0.8, 1.3))
            _fill(cv, w, 0.55 * g)
            regions.append(cv.region(w, g, 0.15))
    return _union(*regions), {"sides": sides}


def _kyphosis_pre(a: Anatomy, rng) -> dict:
    a.spine_bend = float(rng.uniform(0.06, 0.1) * (1 if rng.random() < 0.5 else -1))
    a.spine_bend_y = float(rng.uniform(-0.25, 0.15))
    a.spine_crowd = float(rng.uniform(0.35, 0.5))
    return {"bend": a.spine_bend, "at": a.spine_bend_y}


@finding(
    "Kyphosis", "curved thoracic spine with crowded, denser vertebrae at the apex of the curve", pre=_kyphosis_pre
)
def _kyphosis(cv, rng, present):
    a = cv.A
    r = np.abs(cv.u - cv.spine_x(cv.v)) < a.spine_w + abs(a.spine_bend) + 0.05
    return r, {}


@finding(
    "Lobar Atelectasis",
    "collapsed lobe: dense triangle with a sharp border (right upper lobe or left lower lobe 'sail')",
)
def _lobar_atelectasis(cv, rng, present):
    a = cv.A
    if rng.random() < 0.5:  # RUL collapse: wedge from hilum to apex/lateral wall, sharp elevated minor fissure
        hx, hy = -(a.hilum_x - 0.02), a.hilum_y - 0.02
        x_lat = -(a.thorax - 0.1)
        pts = [
            (hx, hy),
            (-(a.med_w + 0.02), a.apex + 0.1),
            (x_lat * 0.75, a.apex + 0.08),
            (x_lat, hy - rng.uniform(0.15, 0.25)),
        ]
        kind = "RUL"
    else:  # LLL collapse: triangle behind the heart from hilum to medial dome
        hx, hy = a.hilum_x - 0.05, a.hilum_y + 0.05
        pts = [(hx, hy), (0.06, a.dome_l + 0.05), (rng.uniform(0.3, 0.38), a.dome_l + 0.05)]
        kind = "LLL"
    w, m = _polygon(cv, pts, edge=cv.px)
    _fill(cv, w, m, lung_only=kind == "RUL")
    if kind == "LLL":
        cv.add[w] += 0.06 * m
    return cv.region(w, m), {"kind": kind}


@finding("Lung Lesion", "other lung lesion (no nodule/mass child): thick-walled cavitating lesion")
def _lung_lesion(cv, rng, present):
    if present & {"Nodule", "Mass"}:
        return _empty(cv), {"drawn_by_child": True}
    # Larger than a nodule with a cavity wide enough (>= 2 px at 64 px) to read as a ring:
    # a small cavity blurs into a solid disc and the lesion becomes a mislabelled nodule.
    cu, cvv = _lung_pos(cv, rng, _side(rng), t=(0.2, 0.7), lateral=(0.3, 0.75))
    r = rng.uniform(0.095, 0.125)
    w, m = cv.ellipse(cu, cvv, r, r * rng.uniform(0.85, 1.15), wobble=0.12, phase=rng.uniform(0, 6.3))
    w2, c = cv.ellipse(cu + rng.uniform(-0.01, 0.01), cvv - 0.01, r * 0.6, r * 0.55)
    _fill(cv, w, m)
    cv.fill[w2] -= c * 0.95
    cv.extra_air[w2] += 0.1 * c
    return cv.region(w, m), {"center": (cu, cvv), "r": r}


@finding("Lung Opacity", "hazy ill-defined opacity in one lung zone")
def _lung_opacity(cv, rng, present):
    side = _side(rng)
    cu, cvv = _lung_pos(cv, rng, side, t=(0.3, 0.85))
    s = rng.uniform(0.08, 0.12)
    w, g = cv.gauss(cu, cvv, s, s * rng.uniform(0.8, 1.3), angle=rng.uniform(0, 3))
    _fill(cv, w, rng.uniform(0.5, 0.65) * g)
    return cv.region(w, g, 0.04), {"side": side, "center": (cu, cvv)}


@finding("Mass", "large (> 3 cm scale) lobulated well-defined dense opacity")
def _mass(cv, rng, present):
    cu, cvv = _lung_pos(cv, rng, _side(rng), t=(0.25, 0.7), lateral=(0.35, 0.7))
    r = rng.uniform(0.1, 0.15)
    w, m = cv.ellipse(
        cu, cvv, r, r * rng.uniform(0.85, 1.15), edge=cv.px * 1.5, wobble=0.1, lobes=4, phase=rng.uniform(0, 6.3)
    )
    _fill(cv, w, m)
    cv.add[w] += 0.04 * m
    return cv.region(w, m), {"center": (cu, cvv), "r": r}


@finding("Nodule", "one round well-defined soft-tissue (grey, not calcified) nodule of 1.5-3 cm")
def _nodule(cv, rng, present):
    # Soft-tissue density: it replaces lung air but adds little bone-like density, so it is
    # a grey disc, larger than a granuloma's pinpoint and smaller than a mass (r >= 0.1).
    # Kept in aerated lung: behind the heart the lung-only fill changes a few grey levels,
    # and an invisible but labelled nodule (6 % of them before) only teaches label noise.
    side = _side(rng)
    for _ in range(8):
        cu, cvv = _lung_pos(cv, rng, side, t=(0.2, 0.8), lateral=(0.25, 0.7))
        if float(cv.lung_air[cv.window(cu, cvv, 0.0)].mean()) >= 0.6:
            break
    r = rng.uniform(0.07, 0.095)
    w, m = cv.ellipse(cu, cvv, r, r, edge=cv.px)
    _fill(cv, w, rng.uniform(0.7, 0.85) * m)  # a sphere is thinner than the mediastinum: partial fill
    return cv.region(w, m), {"center": (cu, cvv), "r": r}


@finding("Normal", "no finding")
def _normal(cv, rng, present):
    return _empty(cv), {}


@finding(
    "Pleural Effusion", "dependent opacity at the base with a meniscus rising laterally; blunted costophrenic angle"
)
def _effusion(cv, rng, present):
    a = cv.A
    sides = [-1, 1] if rng.random() < 0.35 else [_side(rng)]
    regions = []
    for side in sides:
        t = rng.uniform(0.68, 0.88)
        _, level = a.lung_point(side, t, 0.5)
        au = cv.u * side
        top = level - rng.uniform(0.1, 0.18) * np.clip((au - 0.15) / (a.thorax - 0.15), 0, 1) ** 2
        m = cv.lungs[side] * ramp(cv.v - top, 0.05)
        np.maximum(cv.fill, m, out=cv.fill)
        regions.append(m > 0.05)
    return _union(*regions), {"sides": sides}


@finding("Pleural Other", "calcified pleural plaques: bright irregular lines on a diaphragm dome or the lateral wall")
def _pleural_other(cv, rng, present):
    a = cv.A
    regions = []
    for _ in range(int(rng.integers(2, 4))):
        side = _side(rng)
        if rng.random() < 0.6:
            a0 = rng.uniform(0.25, 0.55)
            xs = np.linspace(a0, a0 + rng.uniform(0.12, 0.2), 6)
            pts = np.stack([side * xs, a.dome_v(xs, side) - 0.012], 1)
        else:
            ys = np.linspace(*sorted(rng.uniform(-0.3, 0.3, 2)), 6)
            ys[-1] = ys[0] + max(ys[-1] - ys[0], 0.15)
            lat = np.array([a.lung_point(side, (y - a.apex) / (a.lung_bottom(side) - a.apex), 1.0)[0] for y in ys])
            pts = np.stack([lat - side * 0.015, ys], 1)
        w, m = cv.polyline(pts, 0.04)
        regions.append(cv.brighten(w, m, rng.uniform(0.6, 0.75)))
    return _union(*regions), {}


@finding("Pleural Thickening", "smooth soft-tissue band along the lateral chest wall or an apical cap")
def _pleural_thickening(cv, rng, present):
    a = cv.A
    side = _side(rng)
    th = rng.uniform(0.045, 0.065)
    if rng.random() < 0.65:
        inner = replace(a, thorax=a.thorax - th)
        t0 = rng.uniform(0.2, 0.4)
        _, v0 = a.lung_point(side, t0, 1)
        _, v1 = a.lung_point(side, t0 + rng.uniform(0.3, 0.45), 1)
        zone = ramp(cv.v - v0, 0.06) * ramp(v1 - cv.v, 0.06)
        kind = "lateral"
    else:
        inner = replace(a, apex=a.apex + th * 1.3)
        zone = ramp(a.apex + 0.25 - cv.v, 0.06)
        kind = "apical cap"
    band = cv.lungs[side] * (1.0 - inner.lung_mask(cv.u, cv.v, side, cv.soft)) * zone
    np.maximum(cv.fill, band, out=cv.fill)
    return band > 0.05, {"side": side, "kind": kind, "thickness": th}


@finding(
    "Pneumomediastinum", "lucent stripe outlining the left heart border and upper mediastinum, lifted pleural line"
)
def _pneumomediastinum(cv, rng, present):
    a = cv.A
    u, v = cv.u, cv.v
    hc, hcy, hrx, hry = a.heart_geometry()
    dome = 0.5 * (a.dome_r + a.dome_l)
    g = rng.uniform(0.03, 0.045)
    d = np.sqrt(((u - hc) / (hrx + g)) ** 2 + ((v - hcy) / (hry + g)) ** 2)
    outer = ramp((1.0 - d) * hrx * 0.5, cv.px)
    band = outer * (1.0 - cv.heart_mask) * ramp(u - hc, 0.05) * ramp(dome - 0.05 - v, 0.05)
    stripe = (
        ramp(0.016 - np.abs(np.abs(u) - (a.med_w + 0.02)), cv.px) * ramp(a.heart_top - v, 0.05) * ramp(v + 0.9, 0.05)
    )
    air = np.maximum(band, stripe)
    cv.extra_air += 0.16 * air
    cv.marks *= 1.0 - air
    edge = ramp(0.012 - np.abs(d - 1.0) * hrx, cv.px) * ramp(u - hc, 0.05) * ramp(dome - 0.05 - v, 0.05)
    cv.add += 0.04 * edge
    return (air > 0.05) | (edge > 0.05), {"gap": float(g)}


@finding("Pneumonia", "fluffy ill-defined airspace opacity (cluster of patches) in one zone, usually lower")
def _pneumonia(cv, rng, present):
    side = _side(rng)
    t = (0.55, 0.85) if rng.random() < 0.65 else (0.25, 0.6)
    cu, cvv = _lung_pos(cv, rng, side, t=t, lateral=(0.3, 0.7))
    regions = []
    for _ in range(int(rng.integers(3, 6))):
        x, y = cu + rng.normal(0, 0.06), cvv + rng.normal(0, 0.05)
        s = rng.uniform(0.045, 0.07)
        w, g = cv.gauss(x, y, s, s * rng.uniform(0.8, 1.2))
        _fill(cv, w, np.clip(0.85 * g, 0, 1))
        regions.append(cv.region(w, g, 0.04))
    return _union(*regions), {"side": side, "center": (cu, cvv)}


@finding("Pneumoperitoneum", "lucent crescent of free air under a hemidiaphragm dome")
def _pneumoperitoneum(cv, rng, present):
    a = cv.A
    side = -1 if rng.random() < 0.7 else 1
    au = cv.u * side
    dv = a.dome_v(au, side)
    h = rng.uniform(0.05, 0.08) * np.clip(1.0 - ((au - 0.45 * a.thorax) / (0.38 * a.thorax)) ** 2, 0, 1)
    m = ramp(cv.v - dv - 0.025, cv.px) * ramp(dv + 0.025 + h - cv.v, cv.px) * (h > 0.005)
    cv.extra_air += 0.45 * m
    return m > 0.05, {"side": side}


@finding("Pneumothorax", "apical-lateral lucent rim without lung markings, thin visceral pleural line")
def _pneumothorax(cv, rng, present):
    side = _side(rng)
    f = rng.uniform(0.78, 0.9)
    w = (slice(None), slice(None))
    rim, line = _ptx_masks(cv, side, f, w)
    cv.extra_air += 0.09 * rim
    cv.marks *= 1.0 - rim
    cv.add += 0.06 * line
    return (rim > 0.1) | (line > 0.1), {"side": side, "collapse": float(f)}


@finding("Pulmonary Embolism", "Westermark oligaemia (lucent zone, few markings) with a prominent hilum (Fleischner)")
def _pulmonary_embolism(cv, rng, present):
    a = cv.A
    side = _side(rng)
    cu, cvv = _lung_pos(cv, rng, side, t=(0.4, 0.75), lateral=(0.4, 0.8))
    s = rng.uniform(0.13, 0.18)
    w, g = cv.gauss(cu, cvv, s, s)
    g = g * cv.lungs[side][w]
    cv.marks[w] *= 1.0 - 0.95 * np.clip(g * 1.5, 0, 1)
    cv.extra_air[w] += 0.05 * g
    w2, h = cv.gauss(side * (a.hilum_x + 0.02), a.hilum_y, 0.05, 0.08)
    _fill(cv, w2, 0.6 * h, lung_only=False)
    return cv.region(w, g, 0.15) | cv.region(w2, h, 0.2), {"side": side, "center": (cu, cvv)}


@finding("Pulmonary Hypertension", "bulging pulmonary trunk, enlarged central arteries, peripheral pruning")
def _pulmonary_hypertension(cv, rng, present):
    a = cv.A
    regions = []
    for side in (-1, 1):
        w, h = cv.gauss(side * (a.hilum_x + 0.03), a.hilum_y, 0.06, 0.09)
        _fill(cv, w, 0.8 * h, lung_only=False)
        regions.append(cv.region(w, h, 0.2))
    w, m = cv.ellipse(a.knob_x + 0.04, a.knob_y + rng.uniform(0.15, 0.2), 0.06, 0.06)
    _fill(cv, w, m, lung_only=False)
    regions.append(cv.region(w, m))
    periph = _lungs_any(cv) * ramp(cv.hilum_dist - 0.4, 0.15)
    cv.marks *= 1.0 - 0.7 * periph
    return _union(*regions, periph > 0.05), {}


def _one_rib_fracture(cv, rng, side: int, k: int, ab: float):
    """A step in posterior rib ``k`` at |u| = ``ab`` and a fusiform callus along the rib."""
    a = cv.A
    v_c = a.rib_v0 + a.rib_curv * ab * ab + (k + 0.22) * a.rib_sp
    w = cv.window(side * (ab + 0.08), v_c + 0.02, 0.16)
    u, v = cv.u[w], cv.v[w]
    au = u * side
    rw = cv.rib_w[w]
    sel = ramp(0.55 - np.abs(rw - (k + 0.22)), 0.1) * ramp(au - ab + 0.03, cv.px) * ramp(ab + 0.16 - au, 0.04)
    step = rng.uniform(0.3, 0.45) * (1 if rng.random() < 0.5 else -1)
    shifted = cv.rib_profile(rw - step * ramp(au - ab, cv.px))
    gap = 1.0 - ramp(0.012 - np.abs(au - ab), cv.px)
    delta = 0.25 * sel * cv.rib_mask(u, v) * (shifted * gap - cv.rib_profile(rw))
    cv.add[w] += delta
    regions = [cv.region(w, np.abs(delta), 0.005)]
    # the callus follows the rib (slope dv/du = 2 curv |u| side), so it reads as a bony
    # thickening of the rib, not as a round lung nodule
    angle = math.atan(2.0 * a.rib_curv * ab * side)
    wc, c = cv.ellipse(side * ab, v_c, 0.075, 0.035, angle=angle)
    cv.add[wc] += rng.uniform(0.3, 0.4) * c
    regions.append(cv.region(wc, c))
    return _union(*regions)


@finding(
    "Rib Fracture",
    "lateral rib fractures (usually 2-3 consecutive ribs in a line), each a step with a fusiform callus",
)
def _rib_fracture(cv, rng, present):
    # Rib fractures from one blow come in runs down the lateral chest wall; the run of
    # aligned calluses is what separates them from scattered lung nodules at 64 px.
    a = cv.A
    side = _side(rng)
    n = 1 + int(rng.choice(3, p=[0.25, 0.4, 0.35]))
    k0 = int(rng.integers(2, 9 - n))
    ab = rng.uniform(0.5, a.thorax - 0.1)
    regions = [_one_rib_fracture(cv, rng, side, k0 + i, float(ab + rng.uniform(-0.03, 0.03))) for i in range(n)]
    return _union(*regions), {"side": side, "ribs": list(range(k0, k0 + n)), "at": float(ab)}


@finding("Round(ed) Atelectasis", "round peripheral opacity on thickened pleura with a comet tail of vessels")
def _rounded_atelectasis(cv, rng, present):
    a = cv.A
    side = _side(rng)
    cu, cvv = a.lung_point(side, rng.uniform(0.62, 0.8), 0.82)
    r = rng.uniform(0.06, 0.08)
    w, m = cv.ellipse(cu, cvv, r, r * 0.9)
    _fill(cv, w, m)
    tail = _bezier(
        (cu - side * r * 0.8, cvv - 0.01),
        (cu - side * 0.15, cvv - 0.06),
        (side * (a.hilum_x + 0.05), a.hilum_y + 0.12),
    )
    w2, t = cv.polyline(tail, 0.012)
    _fill(cv, w2, 0.85 * t)
    xs = np.full(5, cu + side * r * 1.2)
    ys = np.linspace(cvv - 0.12, cvv + 0.12, 5)
    w3, p = cv.polyline(np.stack([xs, ys], 1), 0.025)
    _fill(cv, w3, p)
    return cv.region(w, m) | cv.region(w2, t) | cv.region(w3, p), {"side": side, "center": (cu, cvv)}


@finding("Subcutaneous Emphysema", "streaky gas lucencies in the lateral chest-wall soft tissues")
def _subcutaneous_emphysema(cv, rng, present):
    a = cv.A
    sides = [-1, 1] if rng.random() < 0.3 else [_side(rng)]
    v0 = rng.uniform(-0.6, -0.2)
    v1 = v0 + rng.uniform(0.45, 0.7)
    per = rng.uniform(0.06, 0.08)
    regions = []
    for side in sides:
        au = cv.u * side
        zone = (
            ramp(au - a.thorax - 0.03, cv.px)
            * ramp(a.body_w - 0.03 - au, cv.px)
            * ramp(cv.v - v0, 0.05)
            * ramp(v1 - cv.v, 0.05)
        )
        streak = ramp(np.cos((cv.v + 0.6 * au * au) * (2 * math.pi / per) + rng.uniform(0, 6.3)) - 0.3, 0.4)
        cv.extra_air += 0.4 * zone * streak
        regions.append(zone > 0.05)
    return _union(*regions), {"sides": sides}


def _devices(cv, rng):
    kinds = [
        k
        for k, p in (("ett", 0.45), ("cvc", 0.45), ("ng", 0.35), ("pacemaker", 0.2), ("ecg", 0.3))
        if rng.random() < p
    ]
    return kinds or [("ett", "cvc", "ng", "pacemaker", "ecg")[int(rng.integers(0, 5))]]


@finding("Support Devices", "tubes and lines: endotracheal tube, central line, NG tube, pacemaker, ECG electrodes")
def _support_devices(cv, rng, present):
    a = cv.A
    kinds = _devices(cv, rng)
    regions = []

    def draw(pts, width, amount):
        w, m = cv.polyline(pts, width)
        regions.append(cv.brighten(w, m, amount))

    for kind in kinds:
        if kind == "ett":
            tip = rng.uniform(-0.48, -0.38)
            draw([(0.0, -1.0), (0.005, tip)], 0.017, 0.28)
        elif kind == "cvc":
            side = _side(rng)
            entry = (side * 0.55, a.clav_y + 0.06)
            tip = (-0.05 + rng.uniform(-0.02, 0.02), rng.uniform(-0.25, -0.05))
            draw(_bezier(entry, (side * 0.12, a.clav_y + 0.12), tip), 0.011, 0.4)
        elif kind == "ng":
            draw(_bezier((0.02, -1.0), (0.03, 0.2), (0.3 + rng.uniform(-0.05, 0.05), a.dome_l + 0.18)), 0.014, 0.3)
        elif kind == "pacemaker":
            gx, gy = rng.uniform(0.45, 0.6), rng.uniform(-0.7, -0.55)
            w, m = _polygon(
                cv,
                [(gx - 0.08, gy - 0.05), (gx + 0.08, gy - 0.05), (gx + 0.08, gy + 0.05), (gx - 0.08, gy + 0.05)],
                edge=cv.px,
            )
            regions.append(cv.brighten(w, m, 0.7))
            draw(_bezier((gx - 0.05, gy + 0.03), (-0.05, -0.3), (0.12, a.dome_l - 0.05)), 0.01, 0.45)
        else:
            for _ in range(int(rng.integers(3, 5))):
                x, y = rng.uniform(-0.75, 0.75), rng.uniform(-0.7, 0.3)
                w, m = cv.ellipse(x, y, 0.035, 0.035, edge=cv.px)
                wh, hole = cv.ellipse(x, y, 0.018, 0.018, edge=cv.px)
                cv.add[w] += 0.3 * m
                cv.add[wh] -= 0.21 * hole
                regions.append(cv.region(w, m))
    return _union(*regions), {"devices": kinds}


def _tortuous_pre(a: Anatomy, rng) -> dict:
    a.knob_x += rng.uniform(0.04, 0.07)
    a.knob_r *= rng.uniform(1.2, 1.35)
    a.knob_y -= 0.02
    return {}


@finding(
    "Tortuous Aorta",
    "unfolded aorta: large laterally displaced knob and a bulging descending contour",
    pre=_tortuous_pre,
)
def _tortuous_aorta(cv, rng, present):
    a = cv.A
    b = rng.uniform(0.07, 0.11)
    pts = _bezier((a.knob_x, a.knob_y + 0.04), (a.knob_x + b, a.knob_y + 0.3), (a.knob_x - 0.02, a.knob_y + 0.6))
    w, m = cv.polyline(pts, 0.045)
    _fill(cv, w, m)
    wk, mk = cv.ellipse(a.knob_x, a.knob_y, a.knob_r + 0.03, a.knob_r + 0.03)
    return cv.region(w, m) | cv.region(wk, mk), {"bulge": float(b)}


@finding(
    "Tuberculosis",
    "upper-zone fibro-cavitary change: patchy opacities, a cavity, calcified foci, streaks to the hilum",
)
def _tuberculosis(cv, rng, present):
    a = cv.A
    sides = [-1, 1] if rng.random() < 0.3 else [_side(rng)]
    regions = []
    for side in sides:
        cu, cvv = a.lung_point(side, rng.uniform(0.1, 0.22), rng.uniform(0.35, 0.6))
        for _ in range(int(rng.integers(3, 6))):
            w, g = cv.gauss(cu + rng.normal(0, 0.06), cvv + rng.normal(0, 0.04), 0.045, 0.04)
            _fill(cv, w, 0.75 * g)
            regions.append(cv.region(w, g, 0.15))
        if rng.random() < 0.6:
            w, m = cv.ellipse(cu, cvv + 0.02, 0.05, 0.045)
            wc, c = cv.ellipse(cu, cvv + 0.02, 0.028, 0.024)
            _fill(cv, w, m)
            cv.fill[wc] -= 0.95 * c
            regions.append(cv.region(w, m))
        for _ in range(int(rng.integers(1, 3))):
            w, m = cv.ellipse(cu + rng.normal(0, 0.07), cvv + rng.normal(0, 0.05), 0.022, 0.022, edge=cv.px * 0.7)
            regions.append(cv.brighten(w, m, 0.35))
        w, m = cv.polyline([(cu, cvv), (side * (a.hilum_x + 0.02), a.hilum_y)], 0.012)
        _fill(cv, w, 0.8 * m)
        regions.append(cv.region(w, m))
    return _union(*regions), {"sides": sides}


assert set(REGISTRY) == set(CXR_LT_CLASSES), sorted(set(CXR_LT_CLASSES) ^ set(REGISTRY))
