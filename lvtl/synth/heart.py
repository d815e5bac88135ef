"""The heart of a synthetic case: LV shape and motion, and the structures around it.

A case's heart is a truncated prolate-spheroid left ventricle (LV) beating over 20 phases, with
the structures around it that make segmentation non-trivial (right ventricle, left atrium, LV
outflow tract and aorta, papillary muscles, mitral leaflets, mediastinal fat). Everything is a
signed distance (mm, negative inside) in patient space (LPS), so the same heart can be
evaluated on any scanner grid: the functions here take :data:`~lvtl.synth.grid.Points`, three
coordinate arrays of one shape, and return distance arrays of that shape (float32 for float32
points).

Geometry of the LV in its own frame (apex ``A`` fixed over the cycle, unit axis ``u`` from apex
to base): the endocardium is a spheroid with axial semi-axis ``a`` and radial semi-axis ``b``
centred at ``A + a u``; the epicardium lies at distance ``T`` outside it along the endocardial
normal, so ``T`` is exactly the wall thickness at every endocardial foot point. ``T`` varies
with azimuth and height (5 to 11 mm at end-diastole). The base plane at height ``h_base`` cuts
the LV open at the mitral level. Over the cycle the endocardium scales by ``(s_r, s_r, s_l)``
about the apex (ejection fraction ``1 - s_r^2 s_l`` at end-systole) and ``T`` scales by the
factor that keeps the myocardial volume of the ED heart.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from scipy import interpolate

from lvtl.synth.grid import Points
from lvtl.synth.profiles import N_PHASES, CaseParams


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
def ellipse_foot(rho: np.ndarray, z: np.ndarray, b: float,
                 a: float) -> tuple[np.ndarray, np.ndarray]:
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


def ellipsoid_sdf(p: Points, centre, axes: np.ndarray, radii) -> np.ndarray:
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


def capsule_sdf(p: Points, a, b, radius: float) -> np.ndarray:
    """Signed distance (mm) to the capsule of ``radius`` around the segment from ``a`` to ``b``."""
    a = np.asarray(a, np.float64)
    ab = np.asarray(b, np.float64) - a
    rel = [p[j] - np.float32(a[j]) for j in range(3)]
    t = (rel[0] * np.float32(ab[0]) + rel[1] * np.float32(ab[1]) + rel[2] * np.float32(ab[2]))
    t = np.clip(t * np.float32(1.0 / float(ab @ ab)), 0.0, 1.0)
    d2 = sum((rel[j] - t * np.float32(ab[j])) ** 2 for j in range(3))
    return np.sqrt(d2) - np.float32(radius)


def plane_distance(p: Points, centre, v) -> np.ndarray:
    """Signed distance of points from the plane through ``centre`` with unit normal ``v``."""
    return sum((p[j] - np.float32(centre[j])) * np.float32(v[j]) for j in range(3))


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


# --------------------------------------------------------------------------- the heart model
class Heart:
    """The heart of one case: LV state and wall thickness at any phase, and the signed
    distances of its structures at any LPS points."""

    def __init__(self, params: CaseParams):
        self.p = params
        self.axis = np.asarray(params.axis, float)
        self.ref = np.asarray(params.ref, float)
        self.ref2 = np.cross(self.axis, self.ref)
        self.apex = np.asarray(params.apex, float)
        self.frame = np.stack([self.axis, self.ref, self.ref2])  # rows: the LV's unit axes
        self._k_table: list[float] = []

    # ---- motion
    def state(self, phase: int) -> LVState:
        """The LV at ``phase``: endocardial semi-axes, base height (mm) and thickness scale."""
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
        d, zf = ellipse_foot(r3, h3 - a, b, a)
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

    # ---- anatomy
    def lv_fields(self, pts: Points, st: LVState) -> tuple[np.ndarray, ...]:
        """Endocardial distance, thickness at the foot point, height, azimuth and radius.

        Points far from the LV (beyond three maximal walls) get distance 100 mm and thickness 0.
        """
        h = plane_distance(pts, self.apex, self.axis)
        x1 = plane_distance(pts, self.apex, self.ref)
        x2 = plane_distance(pts, self.apex, self.ref2)
        rho = np.hypot(x1, x2)
        theta = np.arctan2(x2, x1)
        reach = 3 * 11.0 * st.k
        near = (rho < st.b + reach) & (h > -reach) & (h < st.h_base + 2.0)
        d_endo = np.full(h.shape, 100.0, np.float32)
        thick = np.zeros(h.shape, np.float32)
        d, z_foot = ellipse_foot(rho[near], h[near] - np.float32(st.a), st.b, st.a)
        d_endo[near] = d
        rel = (z_foot + np.float32(st.a)) / np.float32(st.h_base)
        thick[near] = np.float32(st.k) * self.thickness_ed(theta[near], rel)
        return d_endo, thick, h, theta, rho

    def box_corners(self) -> np.ndarray:
        """Corners ``(8, 3)`` (LPS mm) of a box holding the heart at every phase: along the LV
        axis from 25 mm below the apex to 45 mm above the ED base, 30 mm beyond the ED radius."""
        r = self.p.b_ed + 30.0
        lo_h, hi_h = -25.0, self.p.base_frac * self.p.a_ed + 45.0
        return np.array([self.apex + self.axis * hh + self.ref * s1 + self.ref2 * s2
                         for hh in (lo_h, hi_h) for s1 in (-r, r) for s2 in (-r, r)])

    def layout(self, st: LVState) -> dict:
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

    def rv_sdf(self, pts: Points, lay: dict, f: float, wall: float = 0.0) -> np.ndarray:
        """The right ventricle's blood (``wall`` 0) or its outer wall surface, at contraction
        ``f``; the LV, painted later, takes the shared septum."""
        radii = np.array([48.0, 16.0, 30.0]) * (1 - 0.22 * f) + wall
        return ellipsoid_sdf(pts, lay["rv_c"], self.frame, radii)

    def papillary_sdf(self, pts: Points, st: LVState) -> np.ndarray:
        """Two papillary muscles hanging from the free wall into the cavity."""
        out = None
        for ang in (np.deg2rad(140.0), np.deg2rad(-130.0)):
            radial = np.cos(ang) * self.ref + np.sin(ang) * self.ref2
            h_c = 0.42 * st.h_base
            rho_wall = st.b * np.sqrt(max(1 - ((h_c - st.a) / st.a) ** 2, 0.05))
            centre = self.apex + self.axis * h_c + radial * (rho_wall - 3.5)
            axes = np.stack([self.axis, radial, np.cross(self.axis, radial)])
            d = ellipsoid_sdf(pts, centre, axes, (0.22 * st.a + 4.0, 4.5, 4.0))
            out = d if out is None else np.minimum(out, d)
        return out

    def lvot_sdf(self, pts: Points, lay: dict) -> np.ndarray:
        """The LV outflow tract: a tube from the cavity up to the aortic valve plane."""
        start, valve = lay["lvot_start"], lay["valve"]
        d = capsule_sdf(pts, start, valve, 10.0)
        return np.maximum(d, plane_distance(pts, valve, _unit(valve - start)))  # valve plane cut

    def structures(self, pts: Points, phase: int) -> Iterator[tuple[str, np.ndarray]]:
        """``(name, signed distance)`` of each structure of the heart at ``phase``, in painting
        order (a later structure covers an earlier one where they overlap).

        Names: ``mediastinal_fat``, ``rv_wall``, ``rv_blood``, ``la_wall``, ``la_blood``,
        ``aorta_wall``, ``aorta_blood``, ``lv_myocardium``, ``lv_blood``, ``papillary``,
        ``lvot`` and, in systole (more than half contracted), ``mitral_leaflets``.
        """
        p, st = self.p, self.state(phase)
        lay = self.layout(st)
        f = contraction(phase, p.ed, p.es)
        heart_c = self.apex + self.axis * (0.75 * st.h_base) + self.ref * 10.0
        yield "mediastinal_fat", ellipsoid_sdf(pts, heart_c, np.eye(3), (68, 60, 70))
        # Right ventricle (wall then blood), left atrium, aorta.
        yield "rv_wall", self.rv_sdf(pts, lay, f, wall=3.0)
        yield "rv_blood", self.rv_sdf(pts, lay, f)
        d_plane = plane_distance(pts, lay["base_c"], self.axis)
        la_r = np.array([22.0, 28.0, 24.0]) * (1 + 0.15 * f)
        d_la = ellipsoid_sdf(pts, lay["la_c"], self.frame, la_r)
        yield "la_wall", np.maximum(d_la - 2.0, -d_plane)
        yield "la_blood", np.maximum(d_la, -d_plane - 1.5)
        d_aorta = capsule_sdf(pts, lay["valve"], lay["aorta_top"], 13.0)
        yield "aorta_wall", d_aorta - 2.0
        yield "aorta_blood", d_aorta
        # Left ventricle: myocardium, cavity, papillary muscles, outflow tract.
        d_endo, thick, h, _, rho = self.lv_fields(pts, st)
        d_base = h - np.float32(st.h_base)
        yield "lv_myocardium", np.maximum(d_endo - thick, d_base)
        yield "lv_blood", np.maximum(d_endo, d_base)
        yield "papillary", self.papillary_sdf(pts, st)
        yield "lvot", self.lvot_sdf(pts, lay)
        if f > 0.5:  # closed mitral leaflets in systole
            yield "mitral_leaflets", np.maximum(np.abs(d_plane - 1.0) - 0.8,
                                                rho - 0.9 * lay["rho_base"])
