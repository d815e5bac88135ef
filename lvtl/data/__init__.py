"""A site's data to training input: preprocessing, the case cache, splits and crops."""

from lvtl._exports import lazy

__getattr__, __dir__, __all__ = lazy(__name__, {
    "preprocess": "PreprocessConfig preprocess_case preprocess_site load_labels CaseResult",
    "repair": "RepairMode repair_labels relabel",
    "resample": "LabelInterp resample resample_labels canonical_grid",
    "cache": "CachedCase load_cached load_site_cases downsample",
    "splits": "split_cases nested_subsets ed_es",
    "crops": "random_crop normalize_hu HU_WINDOW",
    "inspect": "inspect_case",
})
