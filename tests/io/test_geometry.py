import numpy as np
import pytest

from lvtl.io.geometry import Geometry
from lvtl.io.nifti import read_volume, write_volume

ORIENTATIONS = {
    "HFS axial": [[0, 0, 1], [0, 1, 0], [1, 0, 0]],
    "FFS axial": [[0, 0, -1], [0, 1, 0], [-1, 0, 0]],
    "oblique": None,
}


def _direction(name):
    if ORIENTATIONS[name] is not None:
        return np.array(ORIENTATIONS[name], float)
    q, _ = np.linalg.qr(np.random.default_rng(3).normal(size=(3, 3)))
    return q * np.sign(np.linalg.det(q))


@pytest.mark.parametrize("name", list(ORIENTATIONS))
def test_nifti_round_trip_keeps_geometry_and_values(tmp_path, name):
    g = Geometry.make((4, 5, 6), (2.0, 0.7, 0.8), (10.0, -20.5, 3.25), _direction(name))
    arr = np.random.default_rng(0).integers(0, 3, g.shape).astype(np.uint8)
    path = write_volume(tmp_path / "lab.nii.gz", arr, g)
    back, g2 = read_volume(path)
    assert np.array_equal(back, arr)
    assert g.matches(g2, tol_mm=1e-4, tol_dir=1e-5), g.differences(g2)


def test_index_and_lps_affines_are_inverse():
    g = Geometry.make((4, 5, 6), (2.0, 0.5, 0.5), (1, 2, 3), _direction("oblique"))
    idx = np.array([3.0, 1.5, 4.0, 1.0])
    lps = g.index_to_lps() @ idx
    assert np.allclose(g.lps_to_index() @ lps, idx)
    # spacing along axis z: one index step moves 2 mm along the first direction row
    step = g.index_to_lps() @ np.array([1.0, 0, 0, 1]) - g.index_to_lps() @ np.array([0, 0, 0, 1.0])
    assert np.allclose(step[:3], 2.0 * g.direction_matrix[0])


def test_axis_codes_name_patient_directions():
    assert Geometry.make((2, 2, 2), (1, 1, 1), (0, 0, 0), _direction("HFS axial")).axis_codes() \
        == "SPL"
    assert Geometry.make((2, 2, 2), (1, 1, 1), (0, 0, 0), _direction("FFS axial")).axis_codes() \
        == "IPR"


def test_invalid_geometry_is_refused():
    with pytest.raises(ValueError, match="orthonormal"):
        Geometry.make((2, 2, 2), (1, 1, 1), (0, 0, 0), [[1, 0, 0], [1, 0, 0], [0, 0, 1]])
    with pytest.raises(ValueError, match="spacing"):
        Geometry.make((2, 2, 2), (0, 1, 1), (0, 0, 0), np.eye(3))
