"""The scanner grid of a synthetic case: its geometry and the patient-space points of voxels.

The grid is the image geometry (:class:`~lvtl.io.geometry.Geometry`, axes ``(z, y, x)`` =
(slice, row, column)) that the case's parameters and its site's patient position define: an
axial stack centred on the field-of-view centre, ``rows x cols`` pixels of ``pixel_mm`` and
``slices`` slices ``slice_mm`` apart; head-first supine (HFS) has the image x axis towards the
patient's left, feet-first supine (FFS) towards the right. Anatomy is defined in patient space
(LPS, mm); :func:`voxel_points` gives the LPS coordinates of voxel centres to evaluate it on,
and :func:`index_box` the voxel box that holds a region given by its corners.
"""

from __future__ import annotations

import numpy as np

from lvtl.io.geometry import Geometry
from lvtl.synth.profiles import CaseParams, SiteProfile

#: Three coordinate arrays (x, y, z in LPS mm) of the same shape.
Points = tuple[np.ndarray, np.ndarray, np.ndarray]

#: Index box ``(z, y, x)`` slices of a volume.
Box = tuple[slice, slice, slice]


def case_geometry(params: CaseParams, profile: SiteProfile) -> Geometry:
    """The scanner grid of a case: axial slices around ``params.fov_centre``."""
    p = params
    if profile.patient_position == "HFS":
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


def voxel_points(geometry: Geometry, z0: int, z1: int,
                 box: tuple[slice, slice] | None = None) -> Points:
    """LPS coordinates (x, y, z arrays, float32, shape ``(z1 - z0, ny, nx)``) of the voxel
    centres in slices ``z0:z1``, of the whole slice or of the ``(y, x)`` index ``box``."""
    g = geometry
    ys, xs = box if box is not None else (slice(0, g.shape[1]), slice(0, g.shape[2]))
    zz, yy, xx = np.meshgrid(np.arange(z0, z1, dtype=np.float32),
                             np.arange(ys.start, ys.stop, dtype=np.float32),
                             np.arange(xs.start, xs.stop, dtype=np.float32), indexing="ij")
    m = g.index_to_lps().astype(np.float32)
    return tuple(m[j, 0] * zz + m[j, 1] * yy + m[j, 2] * xx + m[j, 3] for j in range(3))


def index_box(geometry: Geometry, corners: np.ndarray, z0: int, z1: int) -> Box | None:
    """The index box (slices relative to ``z0``, within slices ``z0:z1``) holding the region
    spanned by ``corners`` (``(n, 3)`` LPS mm), or None if it misses those slices."""
    g = geometry
    idx = (g.lps_to_index() @ np.c_[corners, np.ones(len(corners))].T)[:3]
    lo = np.maximum(np.floor(idx.min(axis=1)).astype(int), 0)
    hi = np.minimum(np.ceil(idx.max(axis=1)).astype(int) + 1, g.shape)
    lo[0], hi[0] = max(lo[0], z0), min(hi[0], z1)
    if np.any(hi <= lo):
        return None
    return slice(lo[0] - z0, hi[0] - z0), slice(lo[1], hi[1]), slice(lo[2], hi[2])
