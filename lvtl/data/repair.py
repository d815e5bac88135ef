"""Label kernels: relabelling to the label map and the paper's repair of flood-filled masks.

Pure functions on arrays. The paper's flood-filled masks have holes in the blood pool and gaps
between blood pool and myocardium; :func:`repair_labels` closes them (dilation then erosion,
radius 5 pixels by default).
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum

import numpy as np
from scipy import ndimage

from lvtl.errors import LabelError, choose
from lvtl.labels import BLOOD_POOL, MYOCARDIUM


class RepairMode(StrEnum):
    """Closing per axial slice (the paper's pixels) or in 3D."""

    TWO_D = "2d"
    THREE_D = "3d"


def relabel(labels: np.ndarray, blood_pool_value: int = 1, myocardium_value: int = 2,
            source: str = "labels") -> np.ndarray:
    """Map input label values to 0 background, 1 blood pool, 2 myocardium (uint8).

    Any other value raises :class:`LabelError` naming ``source`` and the values found.
    """
    if labels.dtype == np.uint8:  # the common case: a histogram is much faster than unique
        # slice by slice: bincount converts to int64, eight times the memory of the volume
        counts = np.zeros(256, np.int64)
        for part in labels.reshape(labels.shape[0], -1) if labels.ndim > 1 else [labels]:
            counts += np.bincount(part, minlength=256)
        values = np.flatnonzero(counts)
    else:
        values = np.unique(labels)
    allowed = {0, blood_pool_value, myocardium_value}
    unexpected = [v for v in values.tolist() if v not in allowed]
    if unexpected:
        shown = ", ".join(f"{v:g}" for v in unexpected[:5])
        raise LabelError(f"{source}: unexpected label values {shown} "
                         f"(expected {sorted(allowed)})")
    out = np.zeros(labels.shape, np.uint8)
    out[labels == blood_pool_value] = BLOOD_POOL
    out[labels == myocardium_value] = MYOCARDIUM
    return out


def _disk(radius: int, mode: RepairMode) -> np.ndarray:
    r = np.arange(-radius, radius + 1)
    if mode == "2d":
        yy, xx = np.meshgrid(r, r, indexing="ij")
        return (yy**2 + xx**2 <= radius**2)[None]
    zz, yy, xx = np.meshgrid(r, r, r, indexing="ij")
    return zz**2 + yy**2 + xx**2 <= radius**2


def _per_slice(fn: Callable[[np.ndarray], np.ndarray], mask: np.ndarray,
               mode: RepairMode) -> np.ndarray:
    if mode == "3d":
        return fn(mask)
    out = np.empty_like(mask)
    for k in range(mask.shape[0]):
        out[k] = fn(mask[k]) if mask[k].any() else mask[k]
    return out


def repair_labels(labels: np.ndarray, radius: int = 5,
                  mode: RepairMode | str = RepairMode.TWO_D) -> np.ndarray:
    """Repair flood-filled masks: close holes in the blood pool and gaps to the myocardium.

    Closing (dilation then erosion) by a disc of ``radius`` pixels in each slice (``mode='2d'``,
    as the contours were drawn) or a ball in voxels (``'3d'``), then filling enclosed holes.
    Labelled voxels keep their label. Unlabelled voxels inside the closed foreground become blood
    pool where the closed blood pool covers them, otherwise take the label of the nearest
    labelled voxel. Input and output use 0/1/2.
    """
    if radius <= 0:
        return labels.copy()
    mode = choose(RepairMode, mode, "repair mode")
    se = _disk(radius, mode)
    pad = [(0, 0)] + [(radius, radius)] * 2 if mode == "2d" else [(radius, radius)] * 3
    blood = labels == BLOOD_POOL
    fg = blood | (labels == MYOCARDIUM)
    if not fg.any():
        return labels.copy()

    def close(mask: np.ndarray) -> np.ndarray:
        padded = np.pad(mask, pad)  # so the erosion does not eat objects at the border
        closed = ndimage.binary_closing(padded, se)
        return closed[tuple(slice(p[0], p[0] + n) for p, n in zip(pad, mask.shape, strict=True))]

    fill = ndimage.binary_fill_holes
    fg_c = _per_slice(fill, close(fg), mode)
    blood_c = _per_slice(fill, close(blood), mode) & fg_c
    out = labels.copy()
    gap = fg_c & ~fg
    out[gap & blood_c] = BLOOD_POOL
    rest = gap & ~blood_c
    if rest.any():
        if mode == "2d":
            for k in np.nonzero(rest.any(axis=(1, 2)))[0]:
                _nearest_fill(out[k], rest[k])
        else:
            _nearest_fill(out, rest)
    return out


def _nearest_fill(out: np.ndarray, where: np.ndarray) -> None:
    """Give the voxels ``where`` the label of their nearest labelled voxel (in place)."""
    labelled = out > 0
    labelled &= ~where
    if not labelled.any():
        return
    _, idx = ndimage.distance_transform_edt(~labelled, return_indices=True)
    out[where] = out[tuple(i[where] for i in idx)]
