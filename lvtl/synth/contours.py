"""Endocardial and epicardial contours of a synthetic case, traced from its analytic surfaces.

The contours a contouring tool would give for the case's truth labels (:meth:`Case.truth
<lvtl.synth.case.Case.truth>`), slice by slice: the **endocardial** region is the truth's blood
pool, the cavity below the base plane (papillary muscles included) joined with the outflow
tract up to the aortic valve; the **epicardial** region is the whole LV below the base plane
(myocardium and cavity) joined with the outflow tract. Filling them as
:func:`lvtl.io.rtstruct.labels_from_rtstruct` does (inside endocardium: blood pool; inside
epicardium and not endocardium: myocardium) gives back the truth labels.

Each region is the negative side of a field built from the heart's signed distances
(:func:`surface_fields`). On every image slice that cuts the LV the field is sampled
``oversample`` times per pixel edge and traced at level 0 by marching squares (``contourpy``,
matplotlib's contour generator), then thinned by Douglas-Peucker to within ``tolerance_mm``;
the polygons are returned as ``(n, 3)`` LPS points in the slice's plane.
"""

from __future__ import annotations

import contourpy
import numpy as np

from lvtl.synth.case import Case
from lvtl.synth.grid import Points, index_box, voxel_points

#: Samples per pixel edge of the traced field, and the thinning tolerance (mm).
OVERSAMPLE = 4
TOLERANCE_MM = 0.02
_MARGIN = 2  # pixels around the LV in which a slice's field is traced


def surface_fields(case: Case, phase: int, pts: Points) -> tuple[np.ndarray, np.ndarray]:
    """The endocardial and epicardial fields at LPS points (negative inside, mm; a signed
    distance away from the joins): ``min(max(d_endo, d_base), d_lvot)`` and
    ``min(max(d_endo - thickness, d_base), d_lvot)``."""
    heart = case.heart
    st = heart.state(phase)
    d_endo, thick, h, _, _ = heart.lv_fields(pts, st)
    d_base = h - np.float32(st.h_base)
    d_lvot = heart.lvot_sdf(pts, heart.layout(st))
    endo = np.minimum(np.maximum(d_endo, d_base), d_lvot)
    epi = np.minimum(np.maximum(d_endo - thick, d_base), d_lvot)
    return endo, epi


def contours_from_case(case: Case, phase: int, *, oversample: int = OVERSAMPLE,
                       tolerance_mm: float = TOLERANCE_MM
                       ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """``(endo, epi)``: the closed planar contours (each ``(n, 3)`` LPS mm) of the case's
    endocardial and epicardial regions at ``phase``, on every image slice of the case's grid
    that cuts the LV (a slice may hold several contours of a region; fill them even-odd)."""
    g = case.geometry
    box = index_box(g, case.heart.box_corners(), 0, g.shape[0])
    endo: list[np.ndarray] = []
    epi: list[np.ndarray] = []
    if box is None:
        return endo, epi
    coarse = surface_fields(case, phase, voxel_points(g, box[0].start, box[0].stop, box[1:]))[1]
    near = coarse < _MARGIN * max(g.spacing[1:])
    to_lps = g.index_to_lps()
    tol_px = tolerance_mm / min(g.spacing[1:])
    for kz in np.flatnonzero(near.any(axis=(1, 2))):
        rows = np.flatnonzero(near[kz].any(axis=1))
        cols = np.flatnonzero(near[kz].any(axis=0))
        r0 = max(box[1].start + rows[0] - _MARGIN, 0)
        r1 = min(box[1].start + rows[-1] + _MARGIN, g.shape[1] - 1)
        c0 = max(box[2].start + cols[0] - _MARGIN, 0)
        c1 = min(box[2].start + cols[-1] + _MARGIN, g.shape[2] - 1)
        z = box[0].start + int(kz)
        r = np.linspace(r0, r1, (r1 - r0) * oversample + 1)
        c = np.linspace(c0, c1, (c1 - c0) * oversample + 1)
        rr, cc = np.meshgrid(r, c, indexing="ij")
        m = to_lps.astype(np.float32)
        pts = tuple(m[j, 0] * np.float32(z) + m[j, 1] * rr.astype(np.float32)
                    + m[j, 2] * cc.astype(np.float32) + m[j, 3] for j in range(3))
        for field, found in zip(surface_fields(case, phase, pts), (endo, epi), strict=True):
            for ring in _trace(field, r, c, tol_px):
                ijk = np.column_stack([np.full(len(ring), float(z)), ring])
                found.append(ijk @ to_lps[:3, :3].T + to_lps[:3, 3])
    return endo, epi


def _trace(field: np.ndarray, r: np.ndarray, c: np.ndarray, tol_px: float) -> list[np.ndarray]:
    """Closed level-0 lines of ``field`` sampled at rows ``r`` and columns ``c``, as ``(n, 2)``
    (row, column) rings. The field is padded with outside values so every line closes."""
    if not (field < 0).any():
        return []
    dr, dc = r[1] - r[0], c[1] - c[0]
    rp = np.concatenate([[r[0] - dr], r, [r[-1] + dr]])
    cp = np.concatenate([[c[0] - dc], c, [c[-1] + dc]])
    padded = np.pad(np.asarray(field, np.float64), 1, constant_values=1.0)
    gen = contourpy.contour_generator(x=cp, y=rp, z=padded,
                                      line_type=contourpy.LineType.Separate)
    rings = []
    for line in gen.lines(0.0):
        ring = line[:-1] if np.array_equal(line[0], line[-1]) else line
        ring = _thin(ring[:, ::-1], tol_px)  # contourpy gives (x, y) = (column, row)
        if len(ring) >= 3:
            rings.append(ring)
    return rings


def _thin(ring: np.ndarray, tol: float) -> np.ndarray:
    """Douglas-Peucker thinning of a closed ring ``(n, 2)``: the vertices kept leave every
    dropped one within ``tol`` of the thinned ring. The ring is split at its first vertex and
    the vertex farthest from it; each round splits every open span at once at its farthest
    vertex, while that is farther than ``tol`` from the span's chord."""
    n = len(ring)
    if n <= 4:
        return ring
    far = int(np.argmax(((ring - ring[0]) ** 2).sum(axis=1)))
    closed = np.vstack([ring, ring[:1]])
    keep = np.zeros(n + 1, bool)
    keep[[0, far, n]] = True
    spans = np.array([[0, far], [far, n]])
    while len(spans):
        spans = spans[spans[:, 1] - spans[:, 0] >= 2]
        if not len(spans):
            break
        inner = spans[:, 1] - spans[:, 0] - 1
        first = np.cumsum(inner) - inner
        owner = np.repeat(np.arange(len(spans)), inner)
        idx = np.arange(int(inner.sum())) - first[owner] + spans[owner, 0] + 1
        a, b = closed[spans[owner, 0]], closed[spans[owner, 1]]
        ab = b - a
        t = np.clip(((closed[idx] - a) * ab).sum(axis=1)
                    / np.maximum((ab * ab).sum(axis=1), 1e-24), 0.0, 1.0)
        d = np.linalg.norm(closed[idx] - (a + t[:, None] * ab), axis=1)
        worst = np.maximum.reduceat(d, first)
        at = np.flatnonzero(d == worst[owner])
        at = at[np.unique(owner[at], return_index=True)[1]]  # the first farthest per span
        split = worst > tol
        k = idx[at][split]
        keep[k] = True
        spans = np.concatenate([np.c_[spans[split, 0], k], np.c_[k, spans[split, 1]]])
    thinned = closed[keep][:-1]
    return thinned if len(thinned) >= 3 else ring
