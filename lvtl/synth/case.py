"""A synthetic case: its scanner grid, heart, renderer and annotator, put together.

``Case(draw_case(site, index, seed, size))`` renders the images and labels of that case for
any phase. Everything random was drawn into the :class:`~lvtl.synth.profiles.CaseParams`; the
parts are deterministic given them:

- ``geometry``: the scanner grid (:mod:`lvtl.synth.grid`);
- ``heart``: the LV, its motion and the structures around it (:mod:`lvtl.synth.heart`);
- ``renderer``: the HU images (:mod:`lvtl.synth.render`);
- ``annotator``: the truth and the annotator's labels (:mod:`lvtl.synth.annotator`).

The case's methods are those of its parts; images and labels are ``(z, y, x)`` on ``geometry``.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from lvtl.synth.annotator import Annotator
from lvtl.synth.grid import case_geometry
from lvtl.synth.heart import Heart, LVState
from lvtl.synth.profiles import CaseParams, get_site
from lvtl.synth.render import Renderer


class Case:
    """A synthetic case: renders images and labels for any phase on its scanner grid."""

    def __init__(self, params: CaseParams):
        self.p = params
        self.profile = get_site(params.site)
        self.geometry = case_geometry(params, self.profile)
        self.heart = Heart(params)
        self.renderer = Renderer(params, self.profile, self.geometry, self.heart)
        self.annotator = Annotator(params, self.profile, self.geometry, self.heart)
        self.labelled_phases = self.annotator.labelled_phases

    # ---- heart
    def state(self, phase: int) -> LVState:
        """The LV at ``phase``: endocardial semi-axes, base height (mm) and thickness scale."""
        return self.heart.state(phase)

    def thickness_ed(self, theta: np.ndarray, h_rel: np.ndarray) -> np.ndarray:
        """End-diastolic wall thickness (mm) at azimuth ``theta`` and relative height h/h_base."""
        return self.heart.thickness_ed(theta, h_rel)

    # ---- images
    def render(self, phase: int, z0: int = 0, z1: int | None = None) -> np.ndarray:
        """HU image ``(z, y, x)`` float32 of slices ``z0:z1`` at ``phase``, blurred and noisy."""
        return self.renderer.render(phase, z0, z1)

    def phases_hu(self) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(phase, HU image)`` for every phase, slab by slab to bound memory."""
        return self.renderer.phases_hu()

    # ---- labels
    def truth(self, phase: int) -> tuple[np.ndarray, np.ndarray]:
        """Clean labels ``(z, y, x)`` uint8 and analytic wall thickness (mm, 0 off the wall)."""
        return self.annotator.truth(phase)

    def flood_fill_labels(self, truth: np.ndarray, phase: int) -> np.ndarray:
        """The labels as a contouring tool's flood fill delivers them (from ``truth``)."""
        return self.annotator.flood_fill_labels(truth, phase)

    def papillary_mask(self, phase: int) -> np.ndarray:
        """Voxels of the papillary muscles at ``phase`` (labelled blood pool by consensus)."""
        return self.annotator.papillary_mask(phase)

    def right_ventricle_mask(self, phase: int) -> np.ndarray:
        """Voxels of right-ventricular blood at ``phase`` (never LV labels)."""
        return self.annotator.right_ventricle_mask(phase)
