"""Measurements: LV wall thickness (Laplace), Dice and agreement statistics."""

from lvtl._exports import lazy

__getattr__, __dir__, __all__ = lazy(__name__, {
    "thickness": "wall_thickness ThicknessResult Method Solver",
    "metrics": "dice case_dice summarize pearson bland_altman thickness_stats",
    "agreement": "compare_raters",
})
