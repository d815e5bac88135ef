"""Image geometry in patient coordinates (DICOM LPS, millimetres).

Arrays are indexed ``(z, y, x)`` (slice, row, column). A :class:`Geometry` maps an index to the
LPS position of that voxel's centre::

    position = origin + sum_a index[a] * spacing[a] * direction[a]

where ``direction[a]`` is the unit LPS vector along array axis ``a`` (rows of a 3x3 matrix, in
``(z, y, x)`` order) and ``spacing`` is ``(z, y, x)`` in mm.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# LPS -> RAS flips the first two patient axes.
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass(frozen=True)
class Geometry:
    """Where a ``(z, y, x)`` array sits in patient space."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[tuple[float, float, float], ...]

    def __post_init__(self) -> None:
        d = np.asarray(self.direction, dtype=float)
        if d.shape != (3, 3):
            raise ValueError(f"direction must be 3x3, got shape {d.shape}")
        if not np.allclose(d @ d.T, np.eye(3), atol=1e-4):
            raise ValueError("direction rows must be orthonormal unit vectors")
        if len(self.shape) != 3 or min(self.shape) < 1:
            raise ValueError(f"shape must be three positive sizes, got {self.shape}")
        if len(self.spacing) != 3 or min(self.spacing) <= 0:
            raise ValueError(f"spacing must be three positive values in mm, got {self.spacing}")

    @classmethod
    def make(
        cls,
        shape: Sequence[int],
        spacing: Sequence[float],
        origin: Sequence[float],
        direction: np.ndarray | Sequence[Sequence[float]],
    ) -> Geometry:
        """Build a geometry from any sequences (converted to plain tuples)."""
        d = np.asarray(direction, dtype=float)
        return cls(
            shape=tuple(int(s) for s in shape),  # type: ignore[arg-type]
            spacing=tuple(float(s) for s in spacing),  # type: ignore[arg-type]
            origin=tuple(float(o) for o in origin),  # type: ignore[arg-type]
            direction=tuple(tuple(float(v) for v in row) for row in d),
        )

    @property
    def direction_matrix(self) -> np.ndarray:
        """3x3 array whose rows are the LPS unit vectors of axes (z, y, x)."""
        return np.asarray(self.direction, dtype=float)

    def index_to_lps(self) -> np.ndarray:
        """4x4 affine taking homogeneous ``(z, y, x, 1)`` indices to LPS mm."""
        a = np.eye(4)
        a[:3, :3] = (self.direction_matrix * np.asarray(self.spacing)[:, None]).T
        a[:3, 3] = self.origin
        return a

    def lps_to_index(self) -> np.ndarray:
        """4x4 affine taking LPS mm to continuous ``(z, y, x)`` indices."""
        return np.linalg.inv(self.index_to_lps())

    def nifti_affine(self) -> np.ndarray:
        """NIfTI affine (RAS) for the array transposed to ``(x, y, z)``."""
        a = self.index_to_lps()
        perm = np.zeros((4, 4))
        perm[0, 2] = perm[1, 1] = perm[2, 0] = perm[3, 3] = 1.0  # (x, y, z) -> (z, y, x)
        return _LPS_TO_RAS @ a @ perm

    @classmethod
    def from_nifti_affine(cls, affine: np.ndarray, shape_xyz: Sequence[int]) -> Geometry:
        """Inverse of :meth:`nifti_affine` for an array of NIfTI shape ``(x, y, z)``."""
        lps = _LPS_TO_RAS @ np.asarray(affine, dtype=float)
        cols = lps[:3, :3]  # columns: steps along x, y, z
        steps = [cols[:, 2], cols[:, 1], cols[:, 0]]  # z, y, x
        spacing = [float(np.linalg.norm(s)) for s in steps]
        direction = [s / n for s, n in zip(steps, spacing, strict=True)]
        sx, sy, sz = (int(v) for v in shape_xyz[:3])
        return cls.make((sz, sy, sx), spacing, lps[:3, 3], direction)

    def crop(self, box: Sequence[slice]) -> Geometry:
        """Geometry of the sub-array ``array[box]`` (three slices with unit step)."""
        start = [b.indices(n)[0] for b, n in zip(box, self.shape, strict=True)]
        stop = [b.indices(n)[1] for b, n in zip(box, self.shape, strict=True)]
        origin = self.index_to_lps() @ np.array([*start, 1.0])
        return Geometry.make([e - s for s, e in zip(start, stop, strict=True)], self.spacing,
                             origin[:3], self.direction)

    def corners_lps(self) -> np.ndarray:
        """LPS positions (8, 3) of the centres of the eight corner voxels."""
        idx = np.array(
            [[z, y, x, 1.0] for z in (0, self.shape[0] - 1) for y in (0, self.shape[1] - 1)
             for x in (0, self.shape[2] - 1)]
        )
        return (self.index_to_lps() @ idx.T).T[:, :3]

    def matches(self, other: Geometry, tol_mm: float = 1e-3, tol_dir: float = 1e-4) -> bool:
        """True when both describe the same voxel grid within tolerance."""
        return self.shape == other.shape and not self.differences(other, tol_mm, tol_dir)

    def differences(self, other: Geometry, tol_mm: float = 1e-3,
                    tol_dir: float = 1e-4) -> list[str]:
        """Human-readable list of how ``other`` differs from this geometry."""
        out = []
        if self.shape != other.shape:
            out.append(f"shape {list(other.shape)} != {list(self.shape)}")
        if not np.allclose(self.spacing, other.spacing, atol=tol_mm):
            out.append(f"spacing {_fmt(other.spacing)} != {_fmt(self.spacing)} mm")
        if not np.allclose(self.origin, other.origin, atol=tol_mm):
            out.append(f"origin {_fmt(other.origin)} != {_fmt(self.origin)} mm")
        if not np.allclose(self.direction, other.direction, atol=tol_dir):
            out.append("orientation differs")
        return out

    def axis_codes(self) -> str:
        """Three letters naming the patient direction each axis (z, y, x) points to, e.g. 'SPL'."""
        letters = ("LR", "PA", "SI")  # + and - along L, P, S
        codes = []
        for v in self.direction_matrix:
            k = int(np.argmax(np.abs(v)))
            codes.append(letters[k][0] if v[k] > 0 else letters[k][1])
        return "".join(codes)

    def to_dict(self) -> dict:
        return {
            "shape": list(self.shape),
            "spacing": list(self.spacing),
            "origin": list(self.origin),
            "direction": [list(r) for r in self.direction],
        }

    @classmethod
    def from_dict(cls, d: dict) -> Geometry:
        return cls.make(d["shape"], d["spacing"], d["origin"], d["direction"])


def _fmt(v: Sequence[float]) -> str:
    return "[" + ", ".join(f"{x:.4g}" for x in v) + "]"
