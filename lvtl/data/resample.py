"""Resampling images and label maps between grids (the cache's 1 mm grid, a source series').

Pure functions on arrays and :class:`~lvtl.io.geometry.Geometry`. The cache grid is aligned
with the patient axes: array axis z runs inferior to superior, y anterior to posterior and x
right to left (LPS), whatever the scanner's orientation.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from lvtl.errors import choose
from lvtl.io.geometry import Geometry
from lvtl.labels import N_CLASSES

if TYPE_CHECKING:  # annotation only: reading DICOM is the caller's
    from lvtl.io.dicom import SeriesIndex

# The canonical cache orientation: axis z -> +S, y -> +P, x -> +L (rows of a direction matrix).
CANONICAL = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
AIR_HU = -1024.0


class LabelInterp(StrEnum):
    """Label resampling: linear on the one-hot channels then arg-max, or nearest neighbour."""

    ONEHOT = "onehot"
    NEAREST = "nearest"


def canonical_grid(src: Geometry, spacing_mm: float = 1.0) -> Geometry:
    """A patient-aligned grid of isotropic ``spacing_mm`` covering the source's extent."""
    corners = src.corners_lps()
    proj = corners @ CANONICAL.T  # coordinates along S, P, L for axes z, y, x
    lo, hi = proj.min(axis=0), proj.max(axis=0)
    shape = np.floor((hi - lo) / spacing_mm + 1e-6).astype(int) + 1
    origin = CANONICAL.T @ lo
    return Geometry.make(shape, (spacing_mm,) * 3, origin, CANONICAL)


def _axis_map(src: Geometry, dst: Geometry) -> list[tuple[int, float, float]] | None:
    """If the grids' axes are parallel, for each destination axis: the source axis, and the
    source index as ``offset + step * i``. None for an oblique source."""
    ds, dd = src.direction_matrix, dst.direction_matrix
    out = []
    rel = np.asarray(dst.origin) - np.asarray(src.origin)
    for a in range(3):
        dots = ds @ dd[a]
        b = int(np.argmax(np.abs(dots)))
        if abs(abs(dots[b]) - 1.0) > 1e-5:
            return None
        sign = float(np.sign(dots[b]))
        offset = float(rel @ ds[b]) / src.spacing[b]
        step = sign * dst.spacing[a] / src.spacing[b]
        out.append((b, offset, step))
    if sorted(m[0] for m in out) != [0, 1, 2]:
        return None
    return out


def _interp_axis(arr: np.ndarray, axis: int, coords: np.ndarray, fill: float,
                 order: int) -> np.ndarray:
    """Interpolate ``arr`` along ``axis`` at fractional indices ``coords`` (linear or nearest).
    Positions more than half a voxel outside the array get ``fill``."""
    n = arr.shape[axis]
    outside = (coords < -0.5) | (coords > n - 0.5)
    if order == 0:
        idx = np.clip(np.rint(coords).astype(np.intp), 0, n - 1)
        out = np.take(arr, idx, axis=axis)
    else:
        c = np.clip(coords, 0, n - 1)
        i0 = np.minimum(np.floor(c).astype(np.intp), max(n - 2, 0))
        w = (c - i0).astype(np.float32)
        i1 = np.minimum(i0 + 1, n - 1)
        shape = [1] * arr.ndim
        shape[axis] = len(coords)
        w = w.reshape(shape)
        lo = np.take(arr, i0, axis=axis)
        out = np.take(arr, i1, axis=axis)
        out -= lo  # in place: one temporary of the output's size, not three
        out *= w
        out += lo
        del lo
    if outside.any():
        sl = [slice(None)] * arr.ndim
        sl[axis] = outside
        out[tuple(sl)] = fill
    return out


def resample(arr: np.ndarray, src: Geometry, dst: Geometry, *, order: int = 1,
             fill: float = AIR_HU) -> np.ndarray:
    """Resample a ``(z, y, x)`` (or ``(c, z, y, x)``) array from ``src`` to ``dst`` geometry.

    ``order`` 1 is linear, 0 nearest. When the axes are parallel (any flips and permutations)
    it runs as three separable 1D passes; an oblique source uses ``scipy.ndimage`` with the full
    affine. Points outside the source get ``fill``.
    """
    if arr.shape[-3:] != src.shape:
        raise ValueError(f"array shape {arr.shape} does not match geometry {src.shape}")
    lead = arr.ndim - 3
    amap = _axis_map(src, dst)
    if amap is None:
        return _resample_affine(arr, src, dst, order, fill)
    # Bring source axes into destination order, then interpolate axis by axis, starting with
    # the axis that shrinks most.
    perm = list(range(lead)) + [lead + m[0] for m in amap]
    work = arr.transpose(perm)
    if order == 1 and work.dtype != np.float32:
        work = work.astype(np.float32)
    sizes = [dst.shape[a] / src.shape[amap[a][0]] for a in range(3)]
    for a in sorted(range(3), key=lambda a: sizes[a]):
        _, offset, step = amap[a]
        coords = offset + step * np.arange(dst.shape[a])
        work = _interp_axis(work, lead + a, coords, fill, order)
    return np.ascontiguousarray(work)


def resample_phase(index: SeriesIndex, t: int, dst: Geometry, fill: float = AIR_HU
                   ) -> np.ndarray:
    """Phase ``t`` of a series resampled (linear) to ``dst``, read slice by slice.

    With axes parallel to ``dst`` each slice is resampled in-plane as it is read and only the
    in-plane-resampled stack is kept, so memory stays far below one full-resolution phase.
    An oblique series is read whole and resampled with the full affine.
    """
    src = index.geometry
    amap = _axis_map(src, dst)
    if amap is None:
        return resample(index.read_phase(t), src, dst, order=1, fill=fill)
    feeds = {m[0]: a for a, m in enumerate(amap)}  # source axis -> destination axis
    axes = [feeds[0], feeds[1], feeds[2]]
    coords = [amap[a][1] + amap[a][2] * np.arange(dst.shape[a]) for a in axes]
    stack = np.empty((src.shape[0], dst.shape[axes[1]], dst.shape[axes[2]]), np.float32)
    first = 0 if dst.shape[axes[1]] / src.shape[1] <= dst.shape[axes[2]] / src.shape[2] else 1
    for k, sl in enumerate(index.iter_slices(t)):
        for ax in (first, 1 - first):
            sl = _interp_axis(sl, ax, coords[1 + ax], fill, 1)
        stack[k] = sl
    out = _interp_axis(stack, 0, coords[0], fill, 1)
    return np.ascontiguousarray(out.transpose(np.argsort(axes)))


def _resample_affine(arr: np.ndarray, src: Geometry, dst: Geometry, order: int,
                     fill: float) -> np.ndarray:
    m = src.lps_to_index() @ dst.index_to_lps()
    if arr.ndim == 3:
        return ndimage.affine_transform(arr.astype(np.float32, copy=False), m[:3, :3], m[:3, 3],
                                        output_shape=dst.shape, order=order, cval=fill)
    return np.stack([_resample_affine(a, src, dst, order, fill) for a in arr])


def resample_labels(labels: np.ndarray, src: Geometry, dst: Geometry,
                    mode: LabelInterp | str = LabelInterp.ONEHOT) -> np.ndarray:
    """Resample a 0/1/2 label map: nearest neighbour, or linear on the one-hot channels then
    arg-max (``'onehot'``, smoother boundaries)."""
    mode = choose(LabelInterp, mode, "label interpolation")
    if mode == "nearest":
        return resample(labels, src, dst, order=0, fill=0).astype(np.uint8)
    onehot = np.stack([labels == k for k in range(N_CLASSES)]).astype(np.float32)
    probs = resample(onehot, src, dst, order=1, fill=0.0)
    probs[0] = np.where(probs.sum(axis=0) == 0, 1.0, probs[0])
    return np.argmax(probs, axis=0).astype(np.uint8)
