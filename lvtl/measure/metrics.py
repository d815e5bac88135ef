"""Evaluation metrics: Dice on label maps, summary statistics, correlation and agreement.

Every function here is pure and NaN-free: it returns finite numbers or raises ``ValueError``
naming the problem (empty input, NaN/inf values, too few samples, a constant input).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats

from lvtl.labels import KEYS

#: Two-sided 95 % standard normal quantile, used for the Fisher-z confidence interval.
Z_95 = 1.959964


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


def case_dice(pred: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """Dice of every label in :data:`lvtl.labels.KEYS` of one case: ``{"blood_pool": d, "lvm": d}``.

    ``pred`` and ``target`` are integer label maps of the same shape (any dimensionality).
    """
    return {name: dice(pred, target, value) for name, value in KEYS.items()}


def _finite(values: Sequence[float] | np.ndarray, name: str, min_n: int = 1) -> np.ndarray:
    """``values`` as a flat float64 array; raise ValueError if too short or not all finite."""
    arr = np.asarray(values, dtype=np.float64).ravel()
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    if arr.size < min_n:
        raise ValueError(f"{name} has {arr.size} value(s); at least {min_n} are needed")
    bad = ~np.isfinite(arr)
    if bad.any():
        raise ValueError(
            f"{name} holds {int(bad.sum())} non-finite value(s) (NaN or inf), "
            f"first at index {int(np.flatnonzero(bad)[0])}"
        )
    return arr


def summarize(values: Sequence[float] | np.ndarray) -> dict[str, float | int]:
    """Summary of a list of scores (e.g. per-case Dice).

    Returns ``mean``, ``max``, ``min``, ``std`` (sample standard deviation, ddof=1; 0.0 for a
    single value) and ``n``. Raises ValueError for an empty list or NaN/inf values.
    """
    arr = _finite(values, "values")
    n = int(arr.size)
    return {
        "mean": float(arr.mean()),
        "max": float(arr.max()),
        "min": float(arr.min()),
        "std": float(arr.std(ddof=1)) if n > 1 else 0.0,
        "n": n,
    }


#: The statistics of a wall's thicknesses that lvtl reports (the paper's Table 1).
THICKNESS_STATS = ("median", "p95", "max")


def thickness_stats(values_mm: Sequence[float] | np.ndarray) -> dict[str, float]:
    """``median``, ``p95`` (linear-interpolated 95th percentile) and ``max`` of thicknesses, mm.

    ``values_mm`` is an array of any shape of wall thicknesses in mm. Raises ValueError for an
    empty array, NaN/inf values or negative thicknesses; nothing is dropped silently.
    """
    arr = _finite(values_mm, "thickness values")
    if (arr < 0).any():
        raise ValueError(
            f"thickness values hold {int((arr < 0).sum())} negative value(s), min {arr.min()} mm"
        )
    return {
        "median": float(np.median(arr)),
        "p95": float(np.percentile(arr, 95)),
        "max": float(arr.max()),
    }


def _paired(x, y, names: tuple[str, str], min_n: int) -> tuple[np.ndarray, np.ndarray]:
    """Two finite 1-D arrays of equal length, at least ``min_n`` long; ``names`` for errors."""
    xa, ya = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if xa.ndim != 1 or ya.ndim != 1:
        raise ValueError(
            f"{names[0]} and {names[1]} must be 1-D, got shapes {xa.shape} and {ya.shape}"
        )
    if xa.size != ya.size:
        raise ValueError(f"{names[0]} and {names[1]} differ in length: {xa.size} vs {ya.size}")
    return _finite(xa, names[0], min_n), _finite(ya, names[1], min_n)


def pearson(
    x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray
) -> dict[str, float | int]:
    """Pearson correlation of paired 1-D samples with a 95 % confidence interval.

    Returns ``r``, ``ci_low``, ``ci_high`` (Fisher z: atanh(r) ± 1.959964/sqrt(n-3), mapped back
    with tanh; [r, r] when |r| = 1, [-1, 1] when n = 3), ``p`` (two-sided, t distribution with
    n-2 degrees of freedom) and ``n``. Raises ValueError for n < 3, NaN/inf values, unequal
    lengths, or a constant input (its correlation is undefined).
    """
    xa, ya = _paired(x, y, ("x", "y"), min_n=3)
    n = int(xa.size)
    dx, dy = xa - xa.mean(), ya - ya.mean()
    sxx, syy = float(dx @ dx), float(dy @ dy)
    for name, arr, ss in (("x", xa, sxx), ("y", ya, syy)):
        if ss == 0.0 or np.ptp(arr) == 0.0:
            raise ValueError(f"input {name} is constant ({arr[0]!r}); correlation is undefined")
    r = float(np.clip(float(dx @ dy) / math.sqrt(sxx * syy), -1.0, 1.0))

    if abs(r) == 1.0:
        return {"r": r, "ci_low": r, "ci_high": r, "p": 0.0, "n": n}
    if n == 3:
        lo, hi = -1.0, 1.0  # standard error 1/sqrt(n-3) is infinite
    else:
        z, se = math.atanh(r), 1.0 / math.sqrt(n - 3)
        lo, hi = math.tanh(z - Z_95 * se), math.tanh(z + Z_95 * se)
    t = r * math.sqrt((n - 2) / (1.0 - r * r))
    p = float(2.0 * stats.t.sf(abs(t), n - 2))
    return {"r": r, "ci_low": lo, "ci_high": hi, "p": p, "n": n}


def bland_altman(
    pred: Sequence[float] | np.ndarray, truth: Sequence[float] | np.ndarray
) -> dict[str, float | int]:
    """Bland-Altman agreement of paired 1-D measurements (same unit, e.g. mm).

    Returns ``bias`` (mean of pred - truth), ``sd`` (sample SD of the differences, ddof=1),
    ``loa_low``/``loa_high`` (bias ∓ 1.96·sd) and ``n``. Raises ValueError for fewer than two
    pairs, NaN/inf values or unequal lengths.
    """
    pa, ta = _paired(pred, truth, ("pred", "truth"), min_n=2)
    diff = pa - ta
    bias, sd = float(diff.mean()), float(diff.std(ddof=1))
    return {
        "bias": bias,
        "sd": sd,
        "loa_low": bias - 1.96 * sd,
        "loa_high": bias + 1.96 * sd,
        "n": int(diff.size),
    }
