"""Evaluation metrics on label maps."""

from __future__ import annotations

import numpy as np


def dice(pred: np.ndarray, target: np.ndarray, label: int) -> float:
    """Dice overlap of ``label`` between two label maps of the same shape.

    Defined as 1.0 when the label is absent from both (never NaN).
    """
    if pred.shape != target.shape:
        raise ValueError(f"shapes differ: {pred.shape} vs {target.shape}")
    p, t = pred == label, target == label
    denom = int(p.sum()) + int(t.sum())
    if denom == 0:
        return 1.0
    return 2.0 * int(np.logical_and(p, t).sum()) / denom
