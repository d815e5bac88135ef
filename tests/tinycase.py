"""A tiny valid case written as real files: ``case/dicom`` (3 phases x 5 slices x 16x16, CT
Image Storage) and NIfTI label files, for the tests of bad and hostile input."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lvtl.io.dicom_write import SeriesInfo, new_uid, write_phase
from lvtl.io.geometry import Geometry
from lvtl.io.nifti import write_volume
from lvtl.labels import label_file_name

N_PHASES, N_SLICES, N_PIX = 3, 5, 16
DIRECTION = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])  # HFS axial
GEOMETRY = Geometry.make((N_SLICES, N_PIX, N_PIX), (2.0, 1.0, 1.0), (-8.0, -20.5, 100.0),
                         DIRECTION)


def label_map() -> np.ndarray:
    """A 0/1/2 map on GEOMETRY: a blood-pool disc inside a myocardium ring in every slice."""
    yy, xx = np.mgrid[:N_PIX, :N_PIX]
    r = np.hypot(yy - 7.5, xx - 7.5)
    sl = np.zeros((N_PIX, N_PIX), np.uint8)
    sl[r < 6] = 2
    sl[r < 3.5] = 1
    return np.repeat(sl[None], N_SLICES, axis=0)


def write_case(case: Path, seed: int = 0, geometry: Geometry = GEOMETRY,
               labelled=(0, 1)) -> Path:
    """The case folder ``case`` with random HU and the ring labels at ``labelled`` phases."""
    rng = np.random.default_rng(seed)
    info = SeriesInfo(patient_id=f"P{seed}", patient_name=f"Test^{case.name}",
                      study_uid=new_uid(f"{case}/study"), series_uid=new_uid(f"{case}/series"),
                      frame_of_reference_uid=new_uid(f"{case}/for"), n_phases=N_PHASES)
    for t in range(N_PHASES):
        hu = rng.integers(-1000, 1000, geometry.shape).astype(np.float32)
        write_phase(case / "dicom", hu, geometry, t, info, first_instance=1 + t * N_SLICES)
    for t in labelled:
        write_volume(case / "labels" / label_file_name(t), label_map(), geometry)
    return case
