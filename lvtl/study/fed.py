"""The fed-transfer arm's parts that need no NVFlare: the checks a model's weights must pass
on either side of the wire, and the case-weighted mean of the sites' updates.

The server runs the arm with NVFlare's FedAvg (:mod:`lvtl.flare.fed`); a site trains its
rounds with :func:`lvtl.model.train.train_round` (:func:`lvtl.flare.site.run_fed_round`).
Schedule: ``fed_rounds`` rounds per training size; in round ``r`` every site trains epochs
``[r * E, (r + 1) * E)`` (``E = epochs / fed_rounds``) of the same schedule as the local
``transfer`` arm (learning rate, decay, crops per epoch), starting from the round's global
model; so each site takes as many local steps in all as in its local transfer run. With one
site, FedAvg hands its weights back and the arm is the local transfer run (up to float
rounding of global + difference).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

#: Names and shapes of a model's weights: the reference an update or a global model is
#: checked against.
Shapes = Mapping[str, tuple[int, ...]]


def shapes_of(params: Mapping[str, object]) -> dict[str, tuple[int, ...]]:
    """The shape of each named weight (numpy arrays or torch tensors)."""
    return {k: tuple(np.shape(v)) for k, v in params.items()}


def weights_problem(params: object, reference: Shapes, *, partial: bool = False) -> str | None:
    """What is wrong with a set of named weights against the model's ``reference`` shapes
    (None: nothing): not a mapping, unknown or (unless ``partial``: a privacy filter may hold
    some layers back) missing names, a shape that differs, a value that is not a finite
    number."""
    if not isinstance(params, Mapping) or not params:
        return "no weights"
    unknown = sorted(set(map(str, params)) - set(reference))
    if unknown:
        return f"unknown weight {unknown[0]!r}"
    missing = sorted(set(reference) - set(params))
    if missing and not partial:
        return f"missing weight {missing[0]!r}"
    for name, value in params.items():
        try:
            arr = np.asarray(value)
        except Exception:  # noqa: BLE001 - anything that is not an array
            return f"{name}: not an array"
        if arr.dtype.kind not in "fiu":
            return f"{name}: not numbers ({arr.dtype})"
        if tuple(arr.shape) != tuple(reference[name]):
            return f"{name}: shape {tuple(arr.shape)}, the model's is {tuple(reference[name])}"
        if not np.isfinite(arr).all():
            return f"{name}: {int((~np.isfinite(arr)).sum())} non-finite value(s)"
    return None


def weighted_mean(updates: Mapping[str, tuple[Mapping[str, np.ndarray], float]]
                  ) -> dict[str, np.ndarray]:
    """The weighted mean of the sites' updates, name by name, over the sites that sent that
    name (a filter may hold layers back), in float64 and in site-name order (the same bits
    whatever order the updates arrived in); float32 out. ``updates``: site -> (weights,
    weight)."""
    total: dict[str, np.ndarray] = {}
    norm: dict[str, float] = {}
    for site in sorted(updates):
        params, weight = updates[site]
        for name, value in params.items():
            total[name] = total.get(name, 0.0) + float(weight) * np.asarray(value, np.float64)
            norm[name] = norm.get(name, 0.0) + float(weight)
    return {name: (total[name] / norm[name]).astype(np.float32) for name in sorted(total)}


def nbytes(params: Mapping[str, object]) -> int:
    """Bytes of a set of named weights as arrays."""
    return int(sum(np.asarray(v).nbytes for v in params.values()))


__all__ = ["Shapes", "shapes_of", "weights_problem", "weighted_mean", "nbytes"]
