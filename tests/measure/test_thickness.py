"""Laplace wall thickness: accuracy on analytic shells, open ends, solvers, bad input."""

import numpy as np
import pytest

from lvtl.errors import ThicknessError
from lvtl.measure.thickness import wall_thickness


def shell(kind, r_in, thick, seed, spacing=(1.0, 1.0, 1.0), length=30.0):
    """Rasterise a spherical or open cylindrical shell with a random sub-voxel centre.

    Voxel centres within the inner radius are blood pool (1), within the outer radius wall
    (2); a cylinder runs along z for ``length`` mm and is open at both ends (its blood pool
    touches the background there)."""
    rng = np.random.default_rng(seed)
    sp = np.asarray(spacing, float)
    r_out = r_in + thick
    ext = np.array([length + 12.0 if kind == "cylinder" else 2 * r_out + 8.0,
                    2 * r_out + 8.0, 2 * r_out + 8.0])
    shape = np.ceil(ext / sp).astype(int)
    centre = ext / 2 + rng.uniform(-0.5, 0.5, 3) * sp
    z, y, x = (np.arange(n) * s - c for n, s, c in zip(shape, sp, centre, strict=True))
    zz, yy, xx = np.meshgrid(z, y, x, indexing="ij")
    if kind == "sphere":
        r = np.sqrt(zz**2 + yy**2 + xx**2)
        inside = np.ones(r.shape, bool)
    else:
        r = np.sqrt(yy**2 + xx**2)
        inside = np.abs(zz) < length / 2
    lab = np.zeros(r.shape, np.uint8)
    lab[(r < r_out) & inside] = 2
    lab[(r < r_in) & inside] = 1
    return lab


def errors(res, thick):
    return res.values_mm - thick


@pytest.mark.parametrize("kind,r_in", [("sphere", 20.0), ("cylinder", 18.0)])
@pytest.mark.parametrize("thick", [5.0, 8.0, 12.0])
def test_streamline_accuracy_on_shells(kind, r_in, thick):
    """Accuracy goal: median within 0.15 mm, RMS at most 0.2 voxel, for every sub-voxel
    centre tried (four per shape and thickness)."""
    for seed in range(4):
        res = wall_thickness(shell(kind, r_in, thick, 100 + seed))
        err = errors(res, thick)
        assert res.method == "streamline" and res.info["unreached"] == 0
        assert abs(np.median(res.values_mm) - thick) <= 0.15  # mm
        assert np.sqrt(np.mean(err**2)) <= 0.2  # voxel (1 mm)
        assert res.median == pytest.approx(np.median(res.values_mm))
        assert np.all(np.isfinite(res.values_mm)) and res.p95 <= res.max


@pytest.mark.parametrize("kind,thick", [("sphere", 8.0), ("cylinder", 8.0)])
def test_pde_method_agrees_with_streamlines(kind, thick):
    lab = shell(kind, 20.0, thick, 7)
    pde = wall_thickness(lab, method="pde")
    stream = wall_thickness(lab, method="streamline")
    assert pde.values_mm.shape == stream.values_mm.shape
    assert abs(pde.median - thick) <= 0.3  # first-order upwind: slight overestimate
    assert np.sqrt(np.mean(errors(pde, thick) ** 2)) <= 0.3


def test_epicardial_points_lie_on_the_outer_surface():
    lab = shell("sphere", 20.0, 8.0, 11)
    res = wall_thickness(lab)
    centre = np.argwhere(lab > 0).mean(axis=0)
    r = np.linalg.norm(res.points_mm - centre, axis=1)
    assert np.abs(np.median(r) - 28.0) < 0.3
    assert res.points.shape == (len(res.values_mm), 3)


def test_open_base_cup_is_measured_and_cut_face_is_neither_surface():
    """A spherical cup cut above its centre: the blood pool touches the background at the
    opening; the cut face of the wall must not count as epicardium."""
    lab = shell("sphere", 22.0, 8.0, 12)
    centre = np.argwhere(lab > 0).mean(axis=0)
    cut = int(centre[0] + 8)
    lab[cut:] = 0
    res = wall_thickness(lab)
    assert abs(res.median - 8.0) <= 0.15
    # no short paths from the cut face: the thinnest points are still close to 8 mm
    assert np.percentile(res.values_mm, 1) > 7.0
    assert res.points[:, 0].max() < cut  # no start points on the cut plane itself


def test_anisotropic_spacing():
    res = wall_thickness(shell("sphere", 22.0, 9.0, 13, spacing=(1.5, 0.8, 0.8)),
                         spacing=(1.5, 0.8, 0.8))
    assert abs(res.median - 9.0) <= 0.3
    assert res.spacing == (1.5, 0.8, 0.8)


def test_jacobi_reference_gives_the_same_thickness():
    lab = shell("sphere", 16.0, 6.0, 14)
    cg = wall_thickness(lab, solver="cg", tol=1e-10)
    jac = wall_thickness(lab, solver="jacobi", tol=1e-10)
    assert cg.info["iterations"] < jac.info["iterations"]
    assert np.allclose(cg.values_mm, jac.values_mm, atol=1e-3)


def test_red_black_system_and_solvers_agree_on_an_open_anisotropic_wall():
    """The red-black split is the full ghost-fluid system (symmetric, couplings only between
    colours), and all three solvers meet the same true residual and agree."""
    from lvtl.measure.thickness import _assemble, _check, _links, _prepare, solve_laplace

    sp = (1.4, 0.9, 0.9)
    labels, spa = _check(shell("cylinder", 9.0, 5.0, 16, spacing=sp, length=16.0), sp)
    g, _ = _prepare(labels, spa, 1.2)
    links = _links(g, 60.0)
    assert any((lk[4] == 2).any() for lk in links)  # cut faces at the open ends
    s = _assemble(g, links)
    a = s.matrix()
    assert abs(a - a.T).max() < 1e-12
    coords = np.unravel_index(s.nodes, g.wall.shape)
    parity = np.sum(coords, axis=0) % 2
    assert (parity[: s.n_red] == 0).all() and (parity[s.n_red:] == 1).all()
    off = a.tocoo()
    off_rows, off_cols = off.row[off.row != off.col], off.col[off.row != off.col]
    assert (parity[off_rows] != parity[off_cols]).all()
    # each interior face link once per direction, weight 1/h^2 along its axis
    assert np.isclose(-off.data[off.row != off.col].min(), 1 / 0.9**2)
    sols = {}
    for solver in ("cg", "cg-full", "jacobi"):
        u, info = solve_laplace(s, solver, tol=1e-9)
        true_res = np.linalg.norm(s.rhs - a @ u) / np.linalg.norm(s.rhs)
        assert true_res <= 1e-9 and np.isclose(info["residual"], true_res, rtol=1e-6)
        sols[solver] = (u, info["iterations"])
    assert sols["cg"][1] < sols["cg-full"][1] < sols["jacobi"][1]
    assert np.abs(sols["cg"][0] - sols["jacobi"][0]).max() < 1e-6
    assert np.abs(sols["cg"][0] - sols["cg-full"][0]).max() < 1e-6
    with pytest.raises(ThicknessError, match="did not converge in 3 iterations"):
        solve_laplace(s, "cg", tol=1e-9, max_iter=3)


def test_disconnected_pieces_measure_the_largest():
    lab = shell("sphere", 18.0, 7.0, 15)
    lab[:3, :3, :3] = 2  # a stray speck of myocardium in a corner
    res = wall_thickness(lab)
    assert res.info["myocardium_pieces"] == 2
    assert abs(res.median - 7.0) <= 0.15


@pytest.mark.parametrize("make,words", [
    (lambda: np.zeros((10, 10, 10), np.uint8), "no myocardium"),
    (lambda: np.where(shell("sphere", 10.0, 5.0, 0) > 0, 2, 0).astype(np.uint8), "no blood pool"),
    (lambda: _apart(), "does not touch the blood pool"),
    (lambda: np.full((4, 4), 2, np.uint8), "3D"),
    (lambda: np.full((4, 4, 4), 7, np.uint8), "unexpected label"),
])
def test_bad_walls_raise_a_clear_error(make, words):
    with pytest.raises(ThicknessError, match=words):
        wall_thickness(make())


def _apart():
    lab = np.zeros((30, 30, 30), np.uint8)
    lab[5:10, 5:10, 5:10] = 1
    lab[18:26, 18:26, 18:26] = 2
    return lab


def test_bad_arguments():
    lab = shell("sphere", 10.0, 5.0, 0)
    with pytest.raises(ThicknessError, match="streamline, pde"):
        wall_thickness(lab, method="euler")
    with pytest.raises(ThicknessError, match="cg, cg-full, jacobi"):
        wall_thickness(lab, solver="lu")
    with pytest.raises(ThicknessError, match="spacing"):
        wall_thickness(lab, spacing=(1.0, 0.0, 1.0))
