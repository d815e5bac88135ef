"""NIfTI volumes on a DICOM geometry: labels and thickness maps in ``(z, y, x)`` order.

On disk the array is stored in NIfTI's ``(x, y, z)`` order with an RAS affine derived from the
DICOM geometry, so viewers overlay it on the series.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from lvtl.errors import LabelError
from lvtl.io.atomic import atomic_path
from lvtl.io.geometry import Geometry


def write_volume(path: str | Path, array: np.ndarray, geometry: Geometry) -> Path:
    """Write a ``(z, y, x)`` array atomically (temporary file, then rename)."""
    path = Path(path)
    if array.shape != geometry.shape:
        raise ValueError(f"array shape {array.shape} does not match geometry {geometry.shape}")
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(np.ascontiguousarray(array.transpose(2, 1, 0)), geometry.nifti_affine())
    img.header.set_xyzt_units("mm")
    img.header.set_qform(geometry.nifti_affine(), code=1)
    img.header.set_sform(geometry.nifti_affine(), code=1)
    with atomic_path(path) as tmp:
        nib.save(img, tmp)
    return path


def read_volume(path: str | Path, dtype=None, phase: int | None = None
                ) -> tuple[np.ndarray, Geometry]:
    """Read a 3D NIfTI file (or phase ``phase`` of a 4D one) as a ``(z, y, x)`` array and its
    geometry."""
    path = Path(path)
    try:
        img = nib.load(path)
        data = np.asanyarray(img.dataobj)
    except Exception as e:  # nibabel raises several types on truncated or foreign files
        raise LabelError(f"{path}: cannot read NIfTI ({str(e).splitlines()[0][:120]})") from e
    if data.ndim == 4 and phase is None and data.shape[3] == 1:
        data = data[..., 0]
    elif data.ndim == 4:
        if phase is None:
            raise LabelError(f"{path}: a 4D file with {data.shape[3]} phases; choose one "
                             "(--phase)")
        if not 0 <= phase < data.shape[3]:
            raise LabelError(f"{path}: phase {phase} out of range 0 to {data.shape[3] - 1}")
        data = data[..., phase]
    elif phase not in (None, 0):
        raise LabelError(f"{path}: a 3D file has no phase {phase}")
    if data.ndim != 3:
        raise LabelError(f"{path}: expected a 3D volume, got shape {list(data.shape)}")
    try:
        geometry = Geometry.from_nifti_affine(img.affine, data.shape)
    except ValueError as e:
        raise LabelError(f"{path}: invalid affine ({e})") from e
    arr = np.ascontiguousarray(data.transpose(2, 1, 0))
    return (arr if dtype is None else arr.astype(dtype)), geometry
