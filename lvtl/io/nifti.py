"""NIfTI volumes on a DICOM geometry: labels and thickness maps in ``(z, y, x)`` order.

On disk the array is stored in NIfTI's ``(x, y, z)`` order with an RAS affine derived from the
DICOM geometry, so viewers overlay it on the series.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from lvtl.errors import LabelError, first_line
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


#: The most voxels one volume (one phase) may hold (``2**29``: 1024 x 1024 x 512, as a
#: high-resolution 1024-matrix series can have; 512 MiB as uint8, 2 GiB as float32). A header
#: claiming more is refused before any pixel data is read, so a small compressed file cannot
#: claim gigabytes.
MAX_VOXELS = 2**29


def _open(path: Path, phase: int | None
          ) -> tuple[nib.Nifti1Image, tuple[int, int, int], int | None]:
    """The image with its pixel data not yet read, the ``(x, y, z)`` shape of the volume to
    read (from the header) and the 4th index to read (None for a 3D file)."""
    try:
        img = nib.load(path)
        shape = tuple(int(n) for n in img.shape)
    except Exception as e:  # nibabel raises several types on truncated or foreign files
        raise LabelError(f"{path}: cannot read NIfTI ({first_line(e)})") from e
    if len(shape) not in (3, 4):
        raise LabelError(f"{path}: expected a 3D volume, got shape {list(shape)}")
    if len(shape) == 4 and phase is None and shape[3] == 1:
        index = 0
    elif len(shape) == 4:
        if phase is None:
            raise LabelError(f"{path}: a 4D file with {shape[3]} phases; choose one (--phase)")
        if not 0 <= phase < shape[3]:
            raise LabelError(f"{path}: phase {phase} out of range 0 to {shape[3] - 1}")
        index = phase
    elif phase not in (None, 0):
        raise LabelError(f"{path}: a 3D file has no phase {phase}")
    else:
        index = None
    xyz = shape[:3]
    if min(xyz) < 1:
        raise LabelError(f"{path}: header shape {list(xyz[::-1])} (z, y, x) has an empty axis")
    return img, xyz, index


def _geometry(path: Path, img: nib.Nifti1Image, xyz: tuple[int, int, int]) -> Geometry:
    try:
        return Geometry.from_nifti_affine(img.affine, xyz)
    except ValueError as e:
        raise LabelError(f"{path}: invalid affine ({e})") from e


def read_geometry(path: str | Path, phase: int | None = None) -> Geometry:
    """The geometry of a NIfTI volume (phase ``phase`` of a 4D one) from its header alone: no
    pixel data is read, so a header claiming a huge volume costs nothing here."""
    path = Path(path)
    img, xyz, _ = _open(path, phase)
    return _geometry(path, img, xyz)


def read_volume(path: str | Path, dtype=None, phase: int | None = None, *,
                shape: tuple[int, int, int] | None = None) -> tuple[np.ndarray, Geometry]:
    """Read a 3D NIfTI file (or phase ``phase`` of a 4D one) as a ``(z, y, x)`` array and its
    geometry.

    The header is checked before any pixel data is read: a volume of more than
    :data:`MAX_VOXELS` voxels, or (given ``shape``, ``(z, y, x)``) of another shape, is refused
    with a :class:`~lvtl.errors.LabelError`. Only the chosen phase of a 4D file is read.
    """
    path = Path(path)
    img, xyz, index = _open(path, phase)
    if shape is not None and tuple(shape) != xyz[::-1]:
        raise LabelError(f"{path}: header shape {list(xyz[::-1])} (z, y, x) does not match "
                         f"the image grid {list(shape)}")
    n = xyz[0] * xyz[1] * xyz[2]
    if n > MAX_VOXELS:
        raise LabelError(f"{path}: header shape {list(xyz[::-1])} (z, y, x) claims {n} voxels, "
                         f"more than the limit of {MAX_VOXELS}")
    geometry = _geometry(path, img, xyz)
    try:
        data = np.asanyarray(img.dataobj if index is None else img.dataobj[..., index])
    except Exception as e:  # nibabel raises several types on truncated or foreign files
        raise LabelError(f"{path}: cannot read NIfTI ({first_line(e)})") from e
    if data.shape != xyz:
        raise LabelError(f"{path}: read shape {list(data.shape)}, header says {list(xyz)}")
    arr = np.ascontiguousarray(data.transpose(2, 1, 0))
    return (arr if dtype is None else arr.astype(dtype)), geometry
