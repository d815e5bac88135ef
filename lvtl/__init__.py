"""lvtl: cross-site transfer learning of a 4D cardiac CT left-ventricle segmentation model.

The map of the package is ``docs/architecture.md``. ``lvtl.load_series`` is the public entry
point for reading a multi-phase CT series."""

from lvtl._exports import lazy

__getattr__, __dir__, __all__ = lazy(__name__, {
    "io.dicom": "load_series",
})
