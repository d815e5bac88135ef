"""CT rendering of a synthetic case: its anatomy turned into a noisy, blurred HU image.

The image of slices ``z0:z1`` at one phase, ``(z, y, x)`` float32 in HU, is built in three steps:

1. a sharp image: the phase-independent background (air, subcutaneous fat, chest wall, lungs,
   sternum, spine, descending aorta) with the heart's structures (:meth:`Heart.structures
   <lvtl.synth.heart.Heart.structures>`) painted over it in order, each at the HU of its tissue
   in this case (blood, myocardium and right-ventricle contrast drawn per case from the site's
   ranges). Painting is partial-volume: a voxel of size ``h`` (the cube root of the voxel
   volume, mm) whose centre lies at signed distance ``d`` from a structure takes the fraction
   ``clip(1/2 - d/h, 0, 1)`` of the structure's HU;
2. the scanner's blur: a Gaussian of sigma ``blur_mm`` in-plane (reconstruction kernel) and
   ``slice_blur_mm`` along z (slice sensitivity profile), computed on a halo of extra slices so
   a slab matches the same slices of the whole volume;
3. noise: white Gaussian noise correlated in-plane by a Gaussian of 0.7 pixels (the kernel),
   scaled to a standard deviation of ``noise_hu``. It is seeded by the case, the phase and
   ``z0``, so a slab's noise depends on where the slab starts: :meth:`Renderer.phases_hu`
   always cuts the same slabs.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from lvtl.io.geometry import Geometry
from lvtl.synth.grid import index_box, voxel_points
from lvtl.synth.heart import Heart, ellipsoid_sdf
from lvtl.synth.profiles import N_PHASES, CaseParams, SiteProfile


def _paint(img: np.ndarray, d: np.ndarray, hu, h: float) -> None:
    """Composite a structure into ``img`` in place: the partial-volume fraction of a voxel of
    size ``h`` (mm) whose centre lies at signed distance ``d`` takes the value ``hu``."""
    f = np.clip(np.float32(0.5) - d * np.float32(1.0 / h), 0.0, 1.0)
    img += f * (np.asarray(hu, np.float32) - img)


def structure_hu(params: CaseParams) -> dict[str, float]:
    """HU of each of the heart's structures (the names of :meth:`Heart.structures`) in a case."""
    p = params
    return {
        "mediastinal_fat": -90.0,
        "rv_wall": p.myo_hu * 0.95,
        "rv_blood": p.blood_hu * p.rv_ratio,
        "la_wall": p.myo_hu * 0.9,
        "la_blood": p.blood_hu,
        "aorta_wall": p.myo_hu * 0.9,
        "aorta_blood": p.blood_hu,
        "lv_myocardium": p.myo_hu,
        "lv_blood": p.blood_hu,
        "papillary": p.myo_hu,
        "lvot": p.blood_hu,
        "mitral_leaflets": p.myo_hu * 0.8,
    }


@dataclass
class Renderer:
    """Renders the HU images of one case on its scanner grid."""

    p: CaseParams
    profile: SiteProfile
    geometry: Geometry
    heart: Heart

    def __post_init__(self) -> None:
        self.hu = structure_hu(self.p)
        # partial-volume voxel size, mm
        self.h_vox = float(np.cbrt(np.prod(self.geometry.spacing)))
        self._seed = self.p.stable_seed
        self._bg_cache: dict[tuple[int, int], np.ndarray] = {}

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
        rng = np.random.default_rng([self._seed, phase, z0])
        noise = rng.standard_normal(img.shape, dtype=np.float32)
        noise = ndimage.gaussian_filter(noise, (0, 0.7, 0.7))  # kernel-correlated in-plane
        noise *= np.float32(self.p.noise_hu / max(float(noise.std()), 1e-6))
        return img + noise

    def phases_hu(self) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(phase, HU image)`` for every phase, slab by slab to bound memory."""
        g = self.geometry
        slab = max(1, int(4e6 // (g.shape[1] * g.shape[2])))
        for t in range(N_PHASES):
            parts = [self.render(t, z, min(z + slab, g.shape[0]))
                     for z in range(0, g.shape[0], slab)]
            yield t, np.concatenate(parts, axis=0)

    def _background(self, z0: int, z1: int) -> np.ndarray:
        """Phase-independent anatomy: body, chest wall, lungs, sternum, spine, descending aorta."""
        p = self.p
        pts = voxel_points(self.geometry, z0, z1)
        img = np.full(pts[0].shape, -1000.0, np.float32)
        eye = np.eye(3)
        inf = np.inf
        c = np.asarray(p.fov_centre) + np.array([-30.0, 20.0, 0.0])

        def paint(d, hu):
            _paint(img, d, hu, self.h_vox)

        paint(ellipsoid_sdf(pts, c, eye, (170, 120, inf)), -100.0)  # subcutaneous fat
        paint(ellipsoid_sdf(pts, c, eye, (158, 108, inf)), 45.0)  # chest wall muscle
        lung = -850.0 + 40.0 * np.sin(pts[0] / 7.0) * np.cos(pts[1] / 9.0)
        paint(ellipsoid_sdf(pts, c, eye, (145, 95, inf)), lung)
        paint(ellipsoid_sdf(pts, c + [0.0, -93.0, 0.0], eye, (14, 6, inf)), 450.0)  # sternum
        spine = c + np.array([-5.0, 100.0, 0.0])
        paint(ellipsoid_sdf(pts, spine, eye, (21, 18, inf)), 700.0)
        paint(ellipsoid_sdf(pts, spine, eye, (18, 15, inf)), 250.0)
        desc = c + np.array([30.0, 70.0, 0.0])
        paint(ellipsoid_sdf(pts, desc, eye, (11, 11, inf)), p.blood_hu * 0.97)
        return img

    def _render_sharp(self, phase: int, z0: int, z1: int) -> np.ndarray:
        """The image of slices ``z0:z1`` at ``phase`` before blur and noise."""
        key = (z0, z1)
        if key not in self._bg_cache:
            if len(self._bg_cache) > 8:
                self._bg_cache.clear()
            self._bg_cache[key] = self._background(z0, z1)
        img = self._bg_cache[key].copy()
        box = index_box(self.geometry, self.heart.box_corners(), z0, z1)
        if box is None:
            return img
        sub = img[box]
        pts = voxel_points(self.geometry, z0 + box[0].start, z0 + box[0].stop, box[1:])
        for name, d in self.heart.structures(pts, phase):
            _paint(sub, d, self.hu[name], self.h_vox)
        return img
