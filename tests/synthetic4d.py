"""Tiny synthetic 4D cases for training tests (seconds on a CPU): a beating sphere.

Each case is a ``(t, n, n, n)`` HU volume: a contrast-filled blood pool whose radius changes
over the cycle inside a myocardial shell about 3 voxels thick, in noisy tissue. The object
mimics :class:`lvtl.data.preprocess.CachedCase` (``case_id``, ``image``, ``label``, ``labelled``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Case:
    case_id: str
    image: np.ndarray
    label: np.ndarray
    labelled: np.ndarray


def make_case(case_id: str, seed: int, t: int = 4, n: int = 24, labelled=(0, 2),
              blood_hu: float = 350.0, myo_hu: float = 110.0, noise: float = 25.0) -> Case:
    rng = np.random.default_rng(seed)
    centre = n / 2 + rng.uniform(-2, 2, 3)
    zz, yy, xx = np.meshgrid(*[np.arange(n) - c for c in centre], indexing="ij")
    r = np.sqrt(zz**2 + yy**2 + xx**2)
    r_in0 = rng.uniform(4.5, 6.0)
    image = np.empty((t, n, n, n), np.int16)
    label = np.zeros((t, n, n, n), np.uint8)
    for k in range(t):
        r_in = r_in0 * (1 - 0.2 * np.sin(np.pi * k / t))
        lab = np.zeros((n, n, n), np.uint8)
        lab[r < r_in + 3.0 + 0.5 * np.sin(np.pi * k / t)] = 2
        lab[r < r_in] = 1
        hu = np.where(lab == 1, blood_hu, np.where(lab == 2, myo_hu, -40.0))
        image[k] = np.round(hu + rng.normal(0, noise, hu.shape)).astype(np.int16)
        label[k] = lab
    mask = np.zeros(t, bool)
    mask[list(labelled)] = True
    label[~mask] = 0  # unlabelled phases carry no label (the mask says so)
    return Case(case_id, image, label, mask)


def write_cache(case: Case, root) -> None:
    """Store ``case`` as an lvtl case cache (the layout ``lvtl preprocess`` writes)."""
    import json
    from pathlib import Path

    from lvtl.data.cache import CACHE_SCHEMA
    from lvtl.io.geometry import Geometry

    d = Path(root) / case.case_id
    d.mkdir(parents=True)
    np.save(d / "image.npy", case.image)
    np.save(d / "label.npy", case.label)
    np.save(d / "labelled.npy", case.labelled)
    geom = Geometry(case.image.shape[1:], (1.0, 1.0, 1.0), (0.0, 0.0, 0.0),
                    ((1.0, 0, 0), (0, 1.0, 0), (0, 0, 1.0)))
    (d / "meta.json").write_text(json.dumps({"schema": CACHE_SCHEMA, "case_id": case.case_id,
                                             "geometry": geom.to_dict()}))
