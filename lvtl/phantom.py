"""Synthetic 4D cardiac CT sites: anatomy, motion, CT physics and labels, drawn from a seed.

A case is a truncated prolate-spheroid left ventricle (LV) beating over 20 phases, with the
structures around it that make segmentation non-trivial (right ventricle, left atrium, LV
outflow tract and aorta, papillary muscles, pericardial fat, lung, chest wall, sternum, spine,
descending aorta). Everything is defined by distances in patient space (LPS, mm), so the same
case can be rendered on any scanner grid.

Geometry of the LV in its own frame (apex ``A`` fixed over the cycle, unit axis ``u`` from apex
to base): the endocardium is a spheroid with axial semi-axis ``a`` and radial semi-axis ``b``
centred at ``A + a u``; the epicardium lies at distance ``T`` outside it along the endocardial
normal, so ``T`` is exactly the wall thickness at every endocardial foot point. ``T`` varies
with azimuth and height (5 to 11 mm at end-diastole). The base plane at height ``h_base`` cuts
the LV open at the mitral level. Over the cycle the endocardium scales by ``(s_r, s_r, s_l)``
about the apex (ejection fraction ``1 - s_r^2 s_l`` at end-systole) and ``T`` scales by the
factor that keeps the myocardial volume of the ED heart.

Labels: 0 background, 1 LV blood pool (cavity, papillary muscles and the outflow tract up to
the aortic valve), 2 LV myocardium.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from scipy import interpolate, ndimage

from lvtl.errors import ConfigError
from lvtl.geometry import Geometry
from lvtl.parallel import map_cases

Points = tuple[np.ndarray, np.ndarray, np.ndarray]

log = logging.getLogger(__name__)

N_PHASES = 20
BLOOD_POOL, MYOCARDIUM = 1, 2


# --------------------------------------------------------------------------- site profiles
@dataclass(frozen=True)
class Acquisition:
    """Scanner grid for one size: matrix, pixel spacing range and slice spacing."""

    matrix: int
    pixel_mm: tuple[float, float]
    slice_mm: float
    slices: tuple[int, int]
    slice_thickness_mm: float


@dataclass(frozen=True)
class SiteProfile:
    """How one hospital's scanners, protocol and annotators differ from another's."""

    name: str
    default_cases: int
    dense_labels: bool  # every other phase (plus ED, ES) instead of ED and ES only
    manufacturer: str
    model: str
    kernel: str
    kvp: float
    patient_position: str  # HFS or FFS
    blood_hu: tuple[float, float]
    myo_hu: tuple[float, float]
    rv_ratio: tuple[float, float]  # right-ventricular blood HU over LV blood HU (contrast protocol)
    noise_hu: tuple[float, float]
    blur_mm: tuple[float, float]  # Gaussian sigma of the reconstruction kernel, in-plane
    slice_blur_mm: float  # Gaussian sigma of the slice sensitivity profile
    rescale_intercept: float
    sizes: dict[str, Acquisition] = field(default_factory=dict)


SITES: dict[str, SiteProfile] = {
    "site-1": SiteProfile(
        name="site-1",
        default_cases=61,
        dense_labels=True,
        manufacturer="SIEMENS",
        model="SOMATOM Force",
        kernel="Bv36",
        kvp=100.0,
        patient_position="HFS",
        blood_hu=(370.0, 450.0),
        myo_hu=(100.0, 150.0),
        # Coronary CTA with a saline chaser: the chaser washes the contrast out of the right
        # heart by the time the left heart is scanned, so the RV is only faintly opacified.
        rv_ratio=(0.30, 0.50),
        noise_hu=(20.0, 27.0),
        blur_mm=(0.45, 0.6),
        slice_blur_mm=0.35,
        rescale_intercept=-1024.0,
        sizes={
            "small": Acquisition(96, (1.30, 1.45), 1.5, (64, 72), 1.5),
            "paper": Acquisition(512, (0.40, 0.46), 0.6, (170, 280), 0.6),
        },
    ),
    "site-2": SiteProfile(
        name="site-2",
        default_cases=95,
        dense_labels=False,
        manufacturer="SIEMENS",
        model="SOMATOM Definition AS+",
        kernel="B46f",
        kvp=120.0,
        patient_position="FFS",
        blood_hu=(300.0, 370.0),
        myo_hu=(80.0, 120.0),
        # Retrospectively gated functional scan with a contrast-saline mix after the bolus: the
        # RV stays opacified (for RV function), as bright as the LV blood pool or nearly.
        rv_ratio=(0.80, 1.00),
        noise_hu=(30.0, 40.0),
        blur_mm=(0.8, 1.0),
        slice_blur_mm=0.6,
        rescale_intercept=0.0,
        sizes={
            "small": Acquisition(112, (1.15, 1.25), 2.0, (50, 56), 2.0),
            "paper": Acquisition(512, (0.50, 0.50), 0.7, (146, 249), 0.75),
        },
    ),
}
SIZES = ("small", "paper")


def get_site(name: str) -> SiteProfile:
    """The profile of ``name``; a clear error listing the known sites otherwise."""
    if name not in SITES:
        raise ConfigError(f"unknown site {name!r}; choose one of: {', '.join(SITES)}")
    return SITES[name]


# --------------------------------------------------------------------------- case parameters
@dataclass(frozen=True)
class CaseParams:
    """Everything that defines one synthetic case; all drawn from one seed."""

    case_id: str
    site: str
    size: str
    seed: int
    # grid
    rows: int
    cols: int
    slices: int
    pixel_mm: float
    slice_mm: float
    fov_centre: tuple[float, float, float]
    # LV anatomy at end-diastole (mm)
    apex: tuple[float, float, float]
    axis: tuple[float, float, float]  # unit, apex -> base
    ref: tuple[float, float, float]  # unit, perpendicular to axis, towards the septum
    a_ed: float
    b_ed: float
    base_frac: float  # base plane height / a
    t0: float
    t_a1: float
    t_phi1: float
    t_a2: float
    t_phi2: float
    t_apex_taper: float
    # motion
    ed: int
    es: int
    ef: float
    long_shortening: float
    # appearance
    blood_hu: float
    myo_hu: float
    rv_ratio: float
    noise_hu: float
    blur_mm: float
    heart_rate: float

    def to_dict(self) -> dict:
        return asdict(self)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def _rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    axis = _unit(rng.normal(size=3))
    ang = np.deg2rad(rng.uniform(-max_deg, max_deg))
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(ang) * k + (1 - np.cos(ang)) * (k @ k)


def draw_case(site: str, index: int, seed: int = 0, size: str = "small") -> CaseParams:
    """Draw the parameters of case ``index`` of ``site`` from ``seed`` (deterministic)."""
    prof = get_site(site)
    if size not in prof.sizes:
        raise ConfigError(f"unknown size {size!r}; choose one of: {', '.join(SIZES)}")
    acq = prof.sizes[size]
    site_code = int(site.rsplit("-", 1)[-1]) if site.rsplit("-", 1)[-1].isdigit() else 0
    rng = np.random.default_rng(np.random.SeedSequence([seed, site_code, index]))
    # Pose: apex points left, anterior and inferior (LPS: +x, -y, -z), +-15 degrees.
    apex_dir = _rotation(rng, 15.0) @ _unit(np.array([0.55, -0.5, -0.67]))
    axis = -apex_dir
    ref = _unit(np.cross(axis, [0.0, 0.0, 1.0]))  # horizontal, perpendicular to the long axis
    if ref @ np.array([-1.0, -1.0, 0.0]) < 0:  # septum faces the patient's right-anterior
        ref = -ref
    a_ed = rng.uniform(44.0, 54.0)
    b_ed = rng.uniform(24.0, 29.0)
    base_frac = rng.uniform(1.3, 1.5)
    lv_centre = np.array([35.0, 30.0, -120.0]) + rng.normal(0, 6, 3)
    apex = lv_centre - axis * (0.6 * base_frac * a_ed)
    fov_centre = lv_centre + rng.normal(0, 4, 3) + np.array([-8.0, 0.0, 0.0])
    ed = int(rng.choice([0, 1, 19]))
    es = (ed + int(rng.choice([6, 7, 8]))) % N_PHASES
    pixel = float(rng.uniform(*acq.pixel_mm))
    return CaseParams(
        case_id=f"{site}-{index:03d}",
        site=site,
        size=size,
        seed=seed,
        rows=acq.matrix,
        cols=acq.matrix,
        slices=int(rng.integers(acq.slices[0], acq.slices[1] + 1)),
        pixel_mm=round(pixel, 4),
        slice_mm=acq.slice_mm,
        fov_centre=tuple(float(v) for v in fov_centre),
        apex=tuple(float(v) for v in apex),
        axis=tuple(float(v) for v in axis),
        ref=tuple(float(v) for v in ref),
        a_ed=a_ed,
        b_ed=b_ed,
        base_frac=base_frac,
        t0=rng.uniform(7.9, 9.0),
        t_a1=rng.uniform(0.08, 0.16),
        t_phi1=rng.uniform(0, 2 * np.pi),
        t_a2=rng.uniform(0.0, 0.06),
        t_phi2=rng.uniform(0, 2 * np.pi),
        t_apex_taper=rng.uniform(0.12, 0.22),
        ed=ed,
        es=es,
        ef=rng.uniform(0.50, 0.70),
        long_shortening=rng.uniform(0.16, 0.22),
        blood_hu=rng.uniform(*prof.blood_hu),
        myo_hu=rng.uniform(*prof.myo_hu),
        rv_ratio=rng.uniform(*prof.rv_ratio),
        noise_hu=rng.uniform(*prof.noise_hu),
        blur_mm=rng.uniform(*prof.blur_mm),
        heart_rate=rng.uniform(55, 75),
    )


# --------------------------------------------------------------------------- motion
def contraction(phase: int, ed: int, es: int) -> float:
    """Fraction of the ED->ES contraction at ``phase`` (0 at ED, 1 at ES), periodic in 20."""
    phi = ((phase - ed) % N_PHASES) / N_PHASES
    phi_s = ((es - ed) % N_PHASES) / N_PHASES
    if phi <= phi_s:
        return 0.5 * (1 - np.cos(np.pi * phi / phi_s))
    psi = (phi - phi_s) / (1 - phi_s)  # diastole: rapid filling, diastasis, atrial kick
    if psi < 0.35:
        return 1 - 0.75 * 0.5 * (1 - np.cos(np.pi * psi / 0.35))
    if psi < 0.75:
        return 0.25 - 0.05 * (psi - 0.35) / 0.4
    return 0.2 * 0.5 * (1 + np.cos(np.pi * (psi - 0.75) / 0.25))


@dataclass(frozen=True)
class LVState:
    """The LV at one phase: endocardial semi-axes, base height and thickness scale."""

    a: float
    b: float
    h_base: float
    k: float


# --------------------------------------------------------------------------- distances
def _ellipse_foot(rho: np.ndarray, z: np.ndarray, b: float, a: float):
    """Signed distance from points (rho >= 0, z) to the ellipse (rho/b)^2 + (z/a)^2 = 1.

    Returns ``(distance, z_foot)``: negative inside, and the axial coordinate of the nearest
    ellipse point. A few fixed-point iterations on the evolute (accurate to ~1e-4 mm here).
    """
    a, b = float(a), float(b)  # Python floats keep float32 arrays in float32
    px, py = np.abs(rho), np.abs(z)
    tx = np.full_like(px, 0.70710678)
    ty = np.full_like(px, 0.70710678)
    for _ in range(3):
        x, y = b * tx, a * ty
        ex = (b * b - a * a) * tx**3 / b
        ey = (a * a - b * b) * ty**3 / a
        rx, ry = x - ex, y - ey
        qx, qy = px - ex, py - ey
        r = np.hypot(rx, ry)
        q = np.hypot(qx, qy) + 1e-12
        tx = np.clip((qx * r / q + ex) / b, 0.0, 1.0)
        ty = np.clip((qy * r / q + ey) / a, 0.0, 1.0)
        t = np.hypot(tx, ty) + 1e-12
        tx /= t
        ty /= t
    fx, fy = b * tx, a * ty
    dist = np.hypot(px - fx, py - fy)
    inside = (px / b) ** 2 + (py / a) ** 2 < 1.0
    return np.where(inside, -dist, dist), np.copysign(fy, z)


def _ellipsoid_sdf(p: Points, centre, axes: np.ndarray, radii) -> np.ndarray:
    """Approximate signed distance (mm) to an oriented ellipsoid; ``axes`` rows are unit axes.

    ``p`` is a tuple of three coordinate arrays (x, y, z in LPS mm). Radii of ``inf`` make an
    elliptic cylinder along that axis.
    """
    rel = [p[j] - np.float32(centre[j]) for j in range(3)]
    s0 = np.zeros_like(rel[0])
    s1 = np.zeros_like(rel[0])
    for i in range(3):
        if not np.isfinite(radii[i]):
            continue
        q = rel[0] * np.float32(axes[i][0]) + rel[1] * np.float32(axes[i][1])
        q += rel[2] * np.float32(axes[i][2])
        q *= np.float32(1.0 / radii[i])
        q *= q
        s0 += q
        s1 += q * np.float32(1.0 / radii[i] ** 2)
    k0 = np.sqrt(s0)
    return k0 * (k0 - 1.0) / (np.sqrt(s1) + np.float32(1e-9))


def _capsule_sdf(p: Points, a, b, radius: float) -> np.ndarray:
    a = np.asarray(a, np.float64)
    ab = np.asarray(b, np.float64) - a
    rel = [p[j] - np.float32(a[j]) for j in range(3)]
    t = (rel[0] * np.float32(ab[0]) + rel[1] * np.float32(ab[1]) + rel[2] * np.float32(ab[2]))
    t = np.clip(t * np.float32(1.0 / float(ab @ ab)), 0.0, 1.0)
    d2 = sum((rel[j] - t * np.float32(ab[j])) ** 2 for j in range(3))
    return np.sqrt(d2) - np.float32(radius)


def _dot(p: Points, centre, v) -> np.ndarray:
    """Signed distance of points from the plane through ``centre`` with unit normal ``v``."""
    return sum((p[j] - np.float32(centre[j])) * np.float32(v[j]) for j in range(3))


def _paint(img: np.ndarray, d: np.ndarray, hu, h: float) -> None:
    """Composite a structure into ``img`` in place: the partial-volume fraction of a voxel of
    size ``h`` (mm) whose centre lies at signed distance ``d`` takes the value ``hu``."""
    f = np.clip(np.float32(0.5) - d * np.float32(1.0 / h), 0.0, 1.0)
    img += f * (np.asarray(hu, np.float32) - img)


# --------------------------------------------------------------------------- the case model
class Case:
    """A synthetic case: renders images and labels for any phase on its scanner grid."""

    def __init__(self, params: CaseParams):
        self.p = params
        p = params
        self.profile = get_site(p.site)
        self.axis = np.asarray(p.axis, float)
        self.ref = np.asarray(p.ref, float)
        self.ref2 = np.cross(self.axis, self.ref)
        self.apex = np.asarray(p.apex, float)
        self.geometry = self._make_geometry()
        self._k_table: list[float] = []
        self._bg_cache: dict[tuple[int, int], np.ndarray] = {}
        self.labelled_phases = self._labelled_phases()
        self._stable_seed = zlib.crc32(f"{p.case_id}/{p.seed}/{p.size}".encode())

    # ---- grid
    def _make_geometry(self) -> Geometry:
        p = self.p
        if self.profile.patient_position == "HFS":
            row, col = np.array([1.0, 0, 0]), np.array([0, 1.0, 0])
        else:  # feet first supine: the image x axis points to the patient's right
            row, col = np.array([-1.0, 0, 0]), np.array([0, 1.0, 0])
        normal = np.cross(row, col)
        extent = np.array([(p.slices - 1) * p.slice_mm, (p.rows - 1) * p.pixel_mm,
                           (p.cols - 1) * p.pixel_mm])
        direction = np.stack([normal, col, row])
        origin = np.asarray(p.fov_centre) - 0.5 * (direction.T @ extent)
        return Geometry.make((p.slices, p.rows, p.cols), (p.slice_mm, p.pixel_mm, p.pixel_mm),
                             origin, direction)

    def _labelled_phases(self) -> list[int]:
        p = self.p
        if not self.profile.dense_labels:
            return sorted({p.ed, p.es})
        return sorted({(p.ed + 2 * i) % N_PHASES for i in range(N_PHASES // 2)} | {p.es})

    # ---- motion
    def state(self, phase: int) -> LVState:
        p = self.p
        f = contraction(phase, p.ed, p.es)
        s_l_es = 1.0 - p.long_shortening
        s_r_es = np.sqrt((1.0 - p.ef) / s_l_es)
        s_l = 1.0 - f * (1.0 - s_l_es)
        s_r = 1.0 - f * (1.0 - s_r_es)
        a, b = p.a_ed * s_l, p.b_ed * s_r
        return LVState(a=a, b=b, h_base=p.base_frac * a, k=self._thickness_scale(f))

    def thickness_ed(self, theta: np.ndarray, h_rel: np.ndarray) -> np.ndarray:
        """End-diastolic wall thickness (mm) at azimuth ``theta`` and relative height h/h_base."""
        p = self.p
        t = p.t0 * (1 + p.t_a1 * np.cos(theta - p.t_phi1) + p.t_a2 * np.cos(2 * (theta - p.t_phi2)))
        t = t * (1 - p.t_apex_taper * (1 - np.clip(h_rel, 0, 1)) ** 2)
        return np.clip(t, 5.0, 11.0)

    def _lv_fields(self, pts: Points, st: LVState):
        """Endocardial distance, thickness at the foot point, height, azimuth and radius.

        Points far from the LV (beyond three maximal walls) get distance 100 mm and thickness 0.
        """
        h = _dot(pts, self.apex, self.axis)
        x1 = _dot(pts, self.apex, self.ref)
        x2 = _dot(pts, self.apex, self.ref2)
        rho = np.hypot(x1, x2)
        theta = np.arctan2(x2, x1)
        reach = 3 * 11.0 * st.k
        near = (rho < st.b + reach) & (h > -reach) & (h < st.h_base + 2.0)
        d_endo = np.full(h.shape, 100.0, np.float32)
        thick = np.zeros(h.shape, np.float32)
        d, z_foot = _ellipse_foot(rho[near], h[near] - np.float32(st.a), st.b, st.a)
        d_endo[near] = d
        rel = (z_foot + np.float32(st.a)) / np.float32(st.h_base)
        thick[near] = np.float32(st.k) * self.thickness_ed(theta[near], rel)
        return d_endo, thick, h, theta, rho

    def _wall_samples(self, a: float, b: float) -> tuple[np.ndarray, np.ndarray]:
        """Quadrature of the space outside the cavity: for each sample the ratio of its
        endocardial distance to the ED thickness at its foot point, and its volume (mm^3).
        The myocardial volume at thickness scale k is the weight of samples with ratio < k."""
        h_base = self.p.base_frac * a
        n_th, dh, dr = 32, 1.0, 0.5
        theta = (np.arange(n_th) + 0.5) * 2 * np.pi / n_th
        h = np.arange(-20.0, h_base, dh) + dh / 2
        rho = np.arange(0.0, b + 20.0, dr) + dr / 2
        th3, h3, r3 = np.meshgrid(theta, h, rho, indexing="ij")
        d, zf = _ellipse_foot(r3, h3 - a, b, a)
        ratio = d / self.thickness_ed(th3, (zf + a) / h_base)
        keep = (d >= 0) & (ratio < 3.0)
        order = np.argsort(ratio[keep])
        w = (r3 * dr * dh * (2 * np.pi / n_th))[keep][order]
        return ratio[keep][order], np.cumsum(w)

    def _thickness_scale(self, f: float) -> float:
        """Factor on the ED thickness that keeps the myocardial volume constant at stage f.

        Solved exactly at six stages of contraction and interpolated (cubic) in between.
        """
        if not self._k_table:
            p = self.p
            s_l_es = 1.0 - p.long_shortening
            s_r_es = np.sqrt((1.0 - p.ef) / s_l_es)
            ratio, cum = self._wall_samples(p.a_ed, p.b_ed)
            v_ed = cum[np.searchsorted(ratio, 1.0) - 1]
            for fi in np.linspace(0.0, 1.0, 6):
                ratio, cum = self._wall_samples(p.a_ed * (1.0 - fi * (1.0 - s_l_es)),
                                                p.b_ed * (1.0 - fi * (1.0 - s_r_es)))
                self._k_table.append(float(ratio[min(np.searchsorted(cum, v_ed), len(ratio) - 1)]))
            self._k_table[0] = 1.0
        return float(interpolate.CubicSpline(np.linspace(0.0, 1.0, 6), self._k_table)(f))

    # ---- rendering
    def _points(self, z0: int, z1: int, box: tuple[slice, slice] | None = None) -> Points:
        """LPS coordinates (x, y, z arrays, float32) of voxels in slices z0:z1 (and a y/x box)."""
        g = self.geometry
        ys, xs = box if box is not None else (slice(0, g.shape[1]), slice(0, g.shape[2]))
        zz, yy, xx = np.meshgrid(np.arange(z0, z1, dtype=np.float32),
                                 np.arange(ys.start, ys.stop, dtype=np.float32),
                                 np.arange(xs.start, xs.stop, dtype=np.float32), indexing="ij")
        m = g.index_to_lps().astype(np.float32)
        return tuple(m[j, 0] * zz + m[j, 1] * yy + m[j, 2] * xx + m[j, 3] for j in range(3))

    def _heart_box(self, z0: int, z1: int) -> tuple[slice, slice, slice] | None:
        """Index box (within slices z0:z1) holding the heart at every phase, or None if empty."""
        g = self.geometry
        r = self.p.b_ed + 30.0
        lo_h, hi_h = -25.0, self.p.base_frac * self.p.a_ed + 45.0
        corners = [self.apex + self.axis * hh + self.ref * s1 + self.ref2 * s2
                   for hh in (lo_h, hi_h) for s1 in (-r, r) for s2 in (-r, r)]
        idx = (g.lps_to_index() @ np.c_[np.array(corners), np.ones(8)].T)[:3]
        lo = np.maximum(np.floor(idx.min(axis=1)).astype(int), 0)
        hi = np.minimum(np.ceil(idx.max(axis=1)).astype(int) + 1, g.shape)
        lo[0], hi[0] = max(lo[0], z0), min(hi[0], z1)
        if np.any(hi <= lo):
            return None
        return slice(lo[0] - z0, hi[0] - z0), slice(lo[1], hi[1]), slice(lo[2], hi[2])

    def _layout(self, st: LVState) -> dict:
        """Positions of the structures around the LV at this phase (LPS, mm)."""
        u, r1, r2, apex = self.axis, self.ref, self.ref2, self.apex
        base_c = apex + u * st.h_base
        rho_base = st.b * np.sqrt(max(1 - ((st.h_base - st.a) / st.a) ** 2, 0.05))
        valve = base_c + u * 9.0 + r1 * (0.55 * rho_base) + r2 * (-0.25 * rho_base)
        return {
            "base_c": base_c,
            "rho_base": rho_base,
            "valve": valve,
            "lvot_start": apex + u * (0.75 * st.h_base) + r1 * (0.35 * st.b),
            "aorta_top": valve + u * 25.0 + np.array([0.0, 0.0, 45.0]),
            "la_c": base_c + u * 24.0 - r1 * (0.35 * rho_base),
            "rv_c": apex + u * (0.62 * st.h_base) + r1 * (st.b + 16.0),
        }

    def render(self, phase: int, z0: int = 0, z1: int | None = None) -> np.ndarray:
        """HU image ``(z, y, x)`` float32 of slices ``z0:z1`` at ``phase``, blurred and noisy."""
        g = self.geometry
        z1 = g.shape[0] if z1 is None else z1
        sig_z = self.profile.slice_blur_mm / g.spacing[0]
        halo = int(np.ceil(3 * max(sig_z, 0.5)))
        lo, hi = max(0, z0 - halo), min(g.shape[0], z1 + halo)
        img = self._render_sharp(phase, lo, hi)
        sig_xy = self.p.blur_mm / g.spacing[1]
        img = ndimage.gaussian_filter(img, (sig_z, sig_xy, sig_xy), mode="nearest")
        img = img[z0 - lo: z0 - lo + (z1 - z0)]
        rng = np.random.default_rng([self._stable_seed, phase, z0])
        noise = rng.standard_normal(img.shape, dtype=np.float32)
        noise = ndimage.gaussian_filter(noise, (0, 0.7, 0.7))  # kernel-correlated in-plane
        noise *= np.float32(self.p.noise_hu / max(float(noise.std()), 1e-6))
        return img + noise

    def _background(self, z0: int, z1: int) -> np.ndarray:
        """Phase-independent anatomy: body, chest wall, lungs, sternum, spine, descending aorta."""
        p = self.p
        pts = self._points(z0, z1)
        h_vox = float(np.cbrt(np.prod(self.geometry.spacing)))
        img = np.full(pts[0].shape, -1000.0, np.float32)
        eye = np.eye(3)
        inf = np.inf
        c = np.asarray(p.fov_centre) + np.array([-30.0, 20.0, 0.0])

        def paint(d, hu):
            _paint(img, d, hu, h_vox)

        paint(_ellipsoid_sdf(pts, c, eye, (170, 120, inf)), -100.0)  # subcutaneous fat
        paint(_ellipsoid_sdf(pts, c, eye, (158, 108, inf)), 45.0)  # chest wall muscle
        lung = -850.0 + 40.0 * np.sin(pts[0] / 7.0) * np.cos(pts[1] / 9.0)
        paint(_ellipsoid_sdf(pts, c, eye, (145, 95, inf)), lung)
        paint(_ellipsoid_sdf(pts, c + [0.0, -93.0, 0.0], eye, (14, 6, inf)), 450.0)  # sternum
        spine = c + np.array([-5.0, 100.0, 0.0])
        paint(_ellipsoid_sdf(pts, spine, eye, (21, 18, inf)), 700.0)
        paint(_ellipsoid_sdf(pts, spine, eye, (18, 15, inf)), 250.0)
        desc = c + np.array([30.0, 70.0, 0.0])
        paint(_ellipsoid_sdf(pts, desc, eye, (11, 11, inf)), p.blood_hu * 0.97)
        return img

    def _render_sharp(self, phase: int, z0: int, z1: int) -> np.ndarray:
        p, st = self.p, self.state(phase)
        key = (z0, z1)
        if key not in self._bg_cache:
            if len(self._bg_cache) > 8:
                self._bg_cache.clear()
            self._bg_cache[key] = self._background(z0, z1)
        img = self._bg_cache[key].copy()
        box = self._heart_box(z0, z1)
        if box is None:
            return img
        sub = img[box]
        pts = self._points(z0 + box[0].start, z0 + box[0].stop, box[1:])
        h_vox = float(np.cbrt(np.prod(self.geometry.spacing)))
        lay = self._layout(st)

        def paint(d, hu):
            _paint(sub, d, hu, h_vox)

        f = contraction(phase, p.ed, p.es)
        heart_c = self.apex + self.axis * (0.75 * st.h_base) + self.ref * 10.0
        paint(_ellipsoid_sdf(pts, heart_c, np.eye(3), (68, 60, 70)), -90.0)  # mediastinal fat
        # Right ventricle (wall then blood), left atrium, aorta.
        frame = np.stack([self.axis, self.ref, self.ref2])
        paint(self._rv_sdf(pts, lay, f, wall=3.0), p.myo_hu * 0.95)
        paint(self._rv_sdf(pts, lay, f), p.blood_hu * p.rv_ratio)
        d_plane = _dot(pts, lay["base_c"], self.axis)
        la_r = np.array([22.0, 28.0, 24.0]) * (1 + 0.15 * f)
        d_la = _ellipsoid_sdf(pts, lay["la_c"], frame, la_r)
        paint(np.maximum(d_la - 2.0, -d_plane), p.myo_hu * 0.9)
        paint(np.maximum(d_la, -d_plane - 1.5), p.blood_hu)
        d_aorta = _capsule_sdf(pts, lay["valve"], lay["aorta_top"], 13.0)
        paint(d_aorta - 2.0, p.myo_hu * 0.9)
        paint(d_aorta, p.blood_hu)
        # Left ventricle: myocardium, cavity, papillary muscles, outflow tract.
        d_endo, thick, h, _, rho = self._lv_fields(pts, st)
        d_base = h - np.float32(st.h_base)
        paint(np.maximum(d_endo - thick, d_base), p.myo_hu)
        paint(np.maximum(d_endo, d_base), p.blood_hu)
        paint(self._papillary_sdf(pts, st), p.myo_hu)
        paint(self._lvot_sdf(pts, lay), p.blood_hu)
        if f > 0.5:  # closed mitral leaflets in systole
            leaf = np.maximum(np.abs(d_plane - 1.0) - 0.8, rho - 0.9 * lay["rho_base"])
            paint(leaf, p.myo_hu * 0.8)
        return img

    def _rv_sdf(self, pts: Points, lay: dict, f: float, wall: float = 0.0) -> np.ndarray:
        """The right ventricle's blood (``wall`` 0) or its outer wall surface, at contraction
        ``f``; the LV, painted later, takes the shared septum."""
        frame = np.stack([self.axis, self.ref, self.ref2])
        radii = np.array([48.0, 16.0, 30.0]) * (1 - 0.22 * f) + wall
        return _ellipsoid_sdf(pts, lay["rv_c"], frame, radii)

    def right_ventricle_mask(self, phase: int) -> np.ndarray:
        """Voxels of right-ventricular blood at ``phase`` (never LV labels)."""
        f = contraction(phase, self.p.ed, self.p.es)
        rv = self._inside(phase, lambda pts, st: self._rv_sdf(pts, self._layout(st), f))
        return rv & (self.truth(phase)[0] == 0)

    def _inside(self, phase: int, sdf) -> np.ndarray:
        """Voxels where ``sdf(points, state)`` is negative at ``phase`` (heart box only)."""
        g = self.geometry
        out = np.zeros(g.shape, bool)
        box = self._heart_box(0, g.shape[0])
        if box is not None:
            pts = self._points(box[0].start, box[0].stop, box[1:])
            out[box] = sdf(pts, self.state(phase)) < 0
        return out

    def _papillary_sdf(self, pts: Points, st: LVState) -> np.ndarray:
        """Two papillary muscles hanging from the free wall into the cavity."""
        out = None
        for ang in (np.deg2rad(140.0), np.deg2rad(-130.0)):
            radial = np.cos(ang) * self.ref + np.sin(ang) * self.ref2
            h_c = 0.42 * st.h_base
            rho_wall = st.b * np.sqrt(max(1 - ((h_c - st.a) / st.a) ** 2, 0.05))
            centre = self.apex + self.axis * h_c + radial * (rho_wall - 3.5)
            axes = np.stack([self.axis, radial, np.cross(self.axis, radial)])
            d = _ellipsoid_sdf(pts, centre, axes, (0.22 * st.a + 4.0, 4.5, 4.0))
            out = d if out is None else np.minimum(out, d)
        return out

    def _lvot_sdf(self, pts: Points, lay: dict) -> np.ndarray:
        """The LV outflow tract: a tube from the cavity up to the aortic valve plane."""
        start, valve = lay["lvot_start"], lay["valve"]
        d = _capsule_sdf(pts, start, valve, 10.0)
        return np.maximum(d, _dot(pts, valve, _unit(valve - start)))  # cut at the valve plane

    def truth(self, phase: int) -> tuple[np.ndarray, np.ndarray]:
        """Clean labels ``(z, y, x)`` uint8 and analytic wall thickness (mm, 0 off the wall)."""
        g = self.geometry
        st = self.state(phase)
        labels = np.zeros(g.shape, np.uint8)
        thickness = np.zeros(g.shape, np.float32)
        box = self._heart_box(0, g.shape[0])
        if box is None:
            return labels, thickness
        pts = self._points(box[0].start, box[0].stop, box[1:])
        d_endo, thick, h, _, _ = self._lv_fields(pts, st)
        below = h < st.h_base
        lv = (d_endo < thick) & below
        blood = ((d_endo < 0) & below) | (self._lvot_sdf(pts, self._layout(st)) < 0)
        sub = np.zeros(lv.shape, np.uint8)
        sub[lv] = MYOCARDIUM
        sub[blood] = BLOOD_POOL
        labels[box] = sub
        thickness[box] = np.where(sub == MYOCARDIUM, thick, 0.0)
        return labels, thickness

    def papillary_mask(self, phase: int) -> np.ndarray:
        """Voxels of the papillary muscles at ``phase`` (labelled blood pool by consensus)."""
        return self._inside(phase, self._papillary_sdf)

    def flood_fill_labels(self, truth: np.ndarray, phase: int) -> np.ndarray:
        """The labels as a contouring tool's flood fill delivers them.

        Contours drawn slice by slice just inside each region leave a gap of one to two pixels
        between blood pool and myocardium; the flood fill of the cavity stops at papillary
        muscles and trabeculae, leaving holes in the blood pool.
        """
        g = self.geometry
        rng = np.random.default_rng([self._stable_seed, phase, 7])
        disc = ndimage.generate_binary_structure(2, 1)[None]  # in-plane 4-neighbourhood
        blood = truth == BLOOD_POOL
        myo = truth == MYOCARDIUM
        myo_ff = myo & ~ndimage.binary_dilation(blood, disc)
        blood_ff = ndimage.binary_erosion(blood, disc) & ~self.papillary_mask(phase)
        thick_gap = rng.random(g.shape[0]) < 0.4  # some slices lose two pixels
        blood_ff[thick_gap] &= ndimage.binary_erosion(blood_ff[thick_gap], disc)
        idx = np.argwhere(blood_ff)  # trabecular holes: small blobs of missing blood pool
        n_holes = min(int(rng.integers(4, 10)), len(idx))
        for z, y, x in idx[rng.choice(len(idx), size=n_holes, replace=False)] if n_holes else []:
            r = int(rng.integers(1, 3))
            blood_ff[z, max(y - r, 0): y + r + 1, max(x - r, 0): x + r + 1] = False
        out = np.zeros_like(truth)
        out[myo_ff] = MYOCARDIUM
        out[blood_ff] = BLOOD_POOL
        return out

    def phases_hu(self) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(phase, HU image)`` for every phase, slab by slab to bound memory."""
        g = self.geometry
        slab = max(1, int(4e6 // (g.shape[1] * g.shape[2])))
        for t in range(N_PHASES):
            parts = [self.render(t, z, min(z + slab, g.shape[0]))
                     for z in range(0, g.shape[0], slab)]
            yield t, np.concatenate(parts, axis=0)


# --------------------------------------------------------------------------- writing a site
def phase_label_name(phase: int) -> str:
    """File name of the label file of 0-based ``phase`` (the series' cardiac order)."""
    return f"phase_{phase:02d}.nii.gz"


def write_case(params: CaseParams, out: str | Path, *, overwrite: bool = False) -> Path:
    """Write one case folder: ``dicom/`` (the 4D series), ``labels/`` (flood-fill style masks
    of the labelled phases) and ``truth/`` (clean labels, analytic thickness, parameters).

    The folder appears atomically (built under a temporary name, then renamed); an existing
    complete case is kept unless ``overwrite``.
    """
    from lvtl import dicom as dcm
    from lvtl.nifti import write_volume

    out = Path(out)
    final = out / params.case_id
    if final.exists() and not overwrite:
        return final
    tmp = out / f".tmp-{params.case_id}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    case = Case(params)
    prof, g = case.profile, case.geometry
    info = dcm.SeriesInfo(
        patient_id=params.case_id.upper(),
        patient_name=f"PHANTOM^{params.case_id.replace('-', '')}",
        study_uid=dcm.new_uid(f"study/{params.case_id}/{params.seed}"),
        series_uid=dcm.new_uid(f"series/{params.case_id}/{params.seed}"),
        frame_of_reference_uid=dcm.new_uid(f"for/{params.case_id}/{params.seed}"),
        manufacturer=prof.manufacturer,
        model=prof.model,
        kernel=prof.kernel,
        kvp=prof.kvp,
        patient_position=prof.patient_position,
        slice_thickness=prof.sizes[params.size].slice_thickness_mm,
        rescale_intercept=prof.rescale_intercept,
        heart_rate=params.heart_rate,
        n_phases=N_PHASES,
    )
    instance = 1
    for t, hu in case.phases_hu():
        dcm.write_phase(tmp / "dicom", hu, g, t, info, first_instance=instance)
        instance += hu.shape[0]
    volumes = {}
    for t in case.labelled_phases:
        truth, thick = case.truth(t)
        write_volume(tmp / "labels" / phase_label_name(t), case.flood_fill_labels(truth, t), g)
        write_volume(tmp / "truth" / "labels" / phase_label_name(t), truth, g)
        volumes[t] = (int((truth == BLOOD_POOL).sum()), int((truth == MYOCARDIUM).sum()))
        for name, ph in (("ed", params.ed), ("es", params.es)):
            if t == ph:
                write_volume(tmp / "truth" / f"thickness_{name}.nii.gz", thick, g)
    vox = float(np.prod(g.spacing)) / 1000.0  # mL
    meta = {
        "schema": "lvtl.phantom/1",
        "case_id": params.case_id,
        "site": params.site,
        "ed_phase": params.ed,
        "es_phase": params.es,
        "labelled_phases": case.labelled_phases,
        "ejection_fraction": params.ef,
        "blood_pool_ml": {str(t): v[0] * vox for t, v in volumes.items()},
        "myocardium_ml": {str(t): v[1] * vox for t, v in volumes.items()},
        "thickness_scale_es": case.state(params.es).k,
        "params": params.to_dict(),
    }
    (tmp / "truth" / "case.json").write_text(json.dumps(meta, indent=2) + "\n")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def _write_one(args: tuple) -> tuple[str, str | None]:
    site, index, seed, size, out, overwrite = args
    params = draw_case(site, index, seed, size)
    try:
        write_case(params, out, overwrite=overwrite)
        return params.case_id, None
    except Exception as e:  # reported per case; the others go on
        log.debug("case %s failed", params.case_id, exc_info=True)
        return params.case_id, f"{type(e).__name__}: {str(e).splitlines()[0]}"


def generate_site(site: str, n_cases: int | None, out: str | Path, *, size: str = "small",
                  seed: int = 0, workers: int = 1, overwrite: bool = False,
                  progress: bool = False) -> list[tuple[str, str | None]]:
    """Write ``n_cases`` cases of ``site`` under ``out``; returns ``(case_id, error)`` pairs."""
    prof = get_site(site)
    if size not in prof.sizes:
        raise ConfigError(f"unknown size {size!r}; choose one of: {', '.join(SIZES)}")
    n = prof.default_cases if n_cases is None else int(n_cases)
    if n < 1:
        raise ConfigError(f"--cases must be at least 1, got {n}")
    Path(out).mkdir(parents=True, exist_ok=True)
    jobs = [(site, i, seed, size, str(out), overwrite) for i in range(n)]
    results = map_cases(_write_one, jobs, workers=workers, desc=f"phantom {site}",
                        progress=progress)
    return results
