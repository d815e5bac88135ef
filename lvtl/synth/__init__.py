"""The synthetic sites: seeded 4D cardiac CT cases with labels and ground truth.

Modules, each depending only on those before it:

- :mod:`~lvtl.synth.profiles`: site profiles and the per-case parameters drawn from a seed;
- :mod:`~lvtl.synth.grid`: the scanner grid of a case and the patient-space points of voxels;
- :mod:`~lvtl.synth.heart`: the LV's shape and motion and the structures around it, as signed
  distances;
- :mod:`~lvtl.synth.render`: CT rendering (HU, partial volume, blur, noise);
- :mod:`~lvtl.synth.annotator`: truth labels and the annotator's flood-fill labels;
- :mod:`~lvtl.synth.case`: :class:`Case`, a case's grid, heart, renderer and annotator together;
- :mod:`~lvtl.synth.site`: writing a case folder and a whole site.
"""

from lvtl._exports import lazy

__getattr__, __dir__, __all__ = lazy(__name__, {
    "profiles": "Size SiteProfile SITES get_site CaseParams draw_case N_PHASES",
    "case": "Case",
    "site": "write_case generate_site",
})
