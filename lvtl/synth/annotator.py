"""Labels of a synthetic case: the ground truth, and the labels as an annotator delivers them.

Labels are ``(z, y, x)`` uint8 volumes on the case's scanner grid: 0 background, 1 LV blood
pool (cavity, papillary muscles and the outflow tract up to the aortic valve), 2 LV myocardium.
The truth comes straight from the heart's signed distances at the voxel centres, with the
analytic wall thickness (mm) on the myocardium. The annotator's labels are what a contouring
tool's flood fill makes of them (:meth:`Annotator.flood_fill_labels`): a one- to two-pixel gap
between blood pool and myocardium, papillary muscles left out of the blood pool and a few small
holes where trabeculae stopped the fill; its errors are seeded by the case and the phase. A site
labels only some phases (:func:`labelled_phases`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from lvtl.io.geometry import Geometry
from lvtl.labels import BLOOD_POOL, MYOCARDIUM
from lvtl.synth.grid import Box, Points, index_box, voxel_points
from lvtl.synth.heart import Heart, LVState, contraction
from lvtl.synth.profiles import N_PHASES, CaseParams, SiteProfile


def labelled_phases(params: CaseParams, profile: SiteProfile) -> list[int]:
    """The phases the site's annotators label: ED and ES, or, with dense labels, every other
    phase counted from ED, plus ES."""
    p = params
    if not profile.dense_labels:
        return sorted({p.ed, p.es})
    return sorted({(p.ed + 2 * i) % N_PHASES for i in range(N_PHASES // 2)} | {p.es})


@dataclass
class Annotator:
    """Truth labels, masks and the annotator's labels of one case on its scanner grid."""

    p: CaseParams
    profile: SiteProfile
    geometry: Geometry
    heart: Heart

    def __post_init__(self) -> None:
        self.labelled_phases = labelled_phases(self.p, self.profile)
        self._seed = self.p.stable_seed

    def _heart_region(self) -> tuple[Box, Points] | None:
        """The index box around the heart in the whole volume and its voxels' LPS points."""
        g = self.geometry
        box = index_box(g, self.heart.box_corners(), 0, g.shape[0])
        if box is None:
            return None
        return box, voxel_points(g, box[0].start, box[0].stop, box[1:])

    def truth(self, phase: int) -> tuple[np.ndarray, np.ndarray]:
        """Clean labels ``(z, y, x)`` uint8 and analytic wall thickness (mm, 0 off the wall)."""
        g = self.geometry
        st = self.heart.state(phase)
        labels = np.zeros(g.shape, np.uint8)
        thickness = np.zeros(g.shape, np.float32)
        region = self._heart_region()
        if region is None:
            return labels, thickness
        box, pts = region
        d_endo, thick, h, _, _ = self.heart.lv_fields(pts, st)
        below = h < st.h_base
        lv = (d_endo < thick) & below
        blood = ((d_endo < 0) & below) | (self.heart.lvot_sdf(pts, self.heart.layout(st)) < 0)
        sub = np.zeros(lv.shape, np.uint8)
        sub[lv] = MYOCARDIUM
        sub[blood] = BLOOD_POOL
        labels[box] = sub
        thickness[box] = np.where(sub == MYOCARDIUM, thick, 0.0)
        return labels, thickness

    def _inside(self, phase: int,
                sdf: Callable[[Points, LVState], np.ndarray]) -> np.ndarray:
        """Voxels where ``sdf(points, state)`` is negative at ``phase`` (heart box only)."""
        out = np.zeros(self.geometry.shape, bool)
        region = self._heart_region()
        if region is not None:
            box, pts = region
            out[box] = sdf(pts, self.heart.state(phase)) < 0
        return out

    def papillary_mask(self, phase: int) -> np.ndarray:
        """Voxels of the papillary muscles at ``phase`` (labelled blood pool by consensus)."""
        return self._inside(phase, self.heart.papillary_sdf)

    def right_ventricle_mask(self, phase: int) -> np.ndarray:
        """Voxels of right-ventricular blood at ``phase`` (never LV labels)."""
        heart = self.heart
        f = contraction(phase, self.p.ed, self.p.es)
        rv = self._inside(phase, lambda pts, st: heart.rv_sdf(pts, heart.layout(st), f))
        return rv & (self.truth(phase)[0] == 0)

    def flood_fill_labels(self, truth: np.ndarray, phase: int) -> np.ndarray:
        """The labels as a contouring tool's flood fill delivers them.

        Contours drawn slice by slice just inside each region leave a gap of one to two pixels
        between blood pool and myocardium; the flood fill of the cavity stops at papillary
        muscles and trabeculae, leaving holes in the blood pool.
        """
        g = self.geometry
        rng = np.random.default_rng([self._seed, phase, 7])
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
