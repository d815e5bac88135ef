"""Myocardial wall thickness by the Laplace method.

The wall (label 2) lies between the blood pool (label 1, inner surface, potential 0) and the
background (label 0, outer surface, potential 1). The potential ``u`` solves Laplace's equation
in the wall; thickness at an epicardial point is the length of the path along ``-grad u`` from
the outer to the inner surface.

Method (see ``docs/thickness.md``):

1. **Sub-voxel surfaces.** Each surface is the 0.5 level of the Gaussian-smoothed indicator
   (``sigma_vox`` voxels along each axis) of the blood pool, and of blood pool plus wall. Grid
   links that cross a surface are cut at the interpolated crossing.
2. **Boundary conditions.** Links crossing the inner surface carry ``u = 0``, links crossing the
   outer surface ``u = 1`` — except where the wall is cut open (the base of the LV at the
   valve plane, the ends of an open cylinder): there the outer surface runs *along* the
   thickness direction, detected as a link whose direction makes more than ``cut_angle``
   degrees with the gradient of the distance to the blood pool, and it gets zero flux
   (Neumann), so the cut face counts as neither surface.
3. **Laplace solve.** The symmetric ghost-fluid discretisation (boundary at the crossing, second
   order) gives a sparse SPD system. Red-black ordered, its red nodes are eliminated exactly
   and conjugate gradients with a Jacobi preconditioner solve the black nodes' Schur
   complement to relative residual ``tol`` (or CG on the full system, or the paper's Jacobi
   iteration, for comparison).
4. **Thickness.** ``method="streamline"`` (the paper's method) integrates ``-grad u / |grad u|``
   with Heun's method from each outer-surface crossing until the inner surface, the last step
   cut at the crossing; ``method="pde"`` solves Yezzi and Prince's (2003) upwind transport
   equations for the path length from each surface instead.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np
from scipy import ndimage, sparse

from lvtl.errors import ThicknessError, choose
from lvtl.labels import BLOOD_POOL, MYOCARDIUM

log = logging.getLogger(__name__)



class Method(StrEnum):
    """How thickness is read off the Laplace solution."""

    STREAMLINE = "streamline"  # the paper's: integrate streamlines of the gradient
    PDE = "pde"  # Yezzi-Prince: two upwind PDEs for the lengths to each surface


class Solver(StrEnum):
    """Laplace solver."""

    CG = "cg"  # conjugate gradients on the red-black Schur complement (default)
    CG_FULL = "cg-full"  # Jacobi-preconditioned CG on the full system
    JACOBI = "jacobi"  # the paper's Jacobi iteration (reference)


@dataclass
class ThicknessResult:
    """Thickness per epicardial point (mm) and its summary statistics (mm)."""

    values_mm: np.ndarray  # (n,)
    points: np.ndarray  # (n, 3) epicardial points, (z, y, x) voxel index (sub-voxel)
    median: float
    p95: float
    max: float
    method: str
    spacing: tuple[float, float, float]
    info: dict = field(default_factory=dict)

    @property
    def points_mm(self) -> np.ndarray:
        """Epicardial points in mm from the centre of voxel (0, 0, 0), along (z, y, x)."""
        return self.points * np.asarray(self.spacing)

    def to_dict(self) -> dict:
        return {"method": self.method, "n_points": int(len(self.values_mm)),
                "median": self.median, "p95": self.p95, "max": self.max,
                "spacing": list(self.spacing), **self.info}


def _check(labels: np.ndarray, spacing) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise ThicknessError(f"expected a 3D label map (z, y, x), got shape {labels.shape}")
    sp = np.asarray(spacing, float)
    if sp.shape != (3,) or not np.all(sp > 0) or not np.all(np.isfinite(sp)):
        raise ThicknessError(f"spacing must be three positive numbers (mm), got {spacing}")
    values = np.unique(labels)
    bad = [v for v in values.tolist() if v not in (0, BLOOD_POOL, MYOCARDIUM)]
    if bad:
        raise ThicknessError(f"unexpected label values {bad} (expected 0, 1, 2)")
    if not (labels == MYOCARDIUM).any():
        raise ThicknessError("no myocardium (label 2): nothing to measure")
    if not (labels == BLOOD_POOL).any():
        raise ThicknessError("no blood pool (label 1): the wall has no inner surface")
    return labels, sp


def _largest_component(mask: np.ndarray) -> tuple[np.ndarray, int]:
    lab, n = ndimage.label(mask)
    if n <= 1:
        return mask, n
    sizes = np.bincount(lab.ravel())[1:]
    return lab == (1 + int(np.argmax(sizes))), n


@dataclass
class _Grid:
    """The wall's bounding box and everything the solvers share."""

    phi_in: np.ndarray  # > 0 inside the blood pool (smoothed indicator - 0.5)
    phi_out: np.ndarray  # > 0 inside blood pool + wall
    wall: np.ndarray  # bool: unknown nodes
    dist: np.ndarray  # distance to the labelled blood pool (mm)
    spacing: np.ndarray
    offset: np.ndarray  # index of the box's first voxel in the full array
    blood: np.ndarray  # bool: labelled blood pool


def _prepare(labels: np.ndarray, sp: np.ndarray, sigma_vox: float) -> tuple[_Grid, dict]:
    myo, n_pieces = _largest_component(labels == MYOCARDIUM)
    info = {"myocardium_pieces": int(n_pieces)}
    if n_pieces > 1:
        log.warning("myocardium has %d disconnected pieces; measuring the largest", n_pieces)
    blood = labels == BLOOD_POOL
    # Box around the wall with room for the smoothing and the streamlines.
    pad = int(np.ceil(4 * sigma_vox)) + 3
    idx = np.argwhere(myo)
    lo = np.maximum(idx.min(axis=0) - pad, 0)
    hi = np.minimum(idx.max(axis=0) + pad + 1, labels.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    myo, blood = myo[box], blood[box]
    sig = sigma_vox
    phi_in = ndimage.gaussian_filter(blood.astype(np.float64), sig, mode="nearest") - 0.5
    phi_out = ndimage.gaussian_filter((blood | myo).astype(np.float64), sig, mode="nearest") - 0.5
    # Keep only wall nodes connected to the chosen myocardium piece.
    # Wall nodes: inside the smoothed outer surface, outside the smoothed blood pool, and not
    # labelled blood pool (smoothing rounds the blood pool's corners at an opening; those
    # voxels must stay on the inner side).
    wall = (phi_in < 0) & (phi_out > 0) & ~blood
    lab, _ = ndimage.label(wall)
    keep = np.unique(lab[myo & wall])
    wall &= np.isin(lab, keep[keep > 0])
    if not wall.any():
        raise ThicknessError("the wall is thinner than the voxel size everywhere")
    dist = ndimage.distance_transform_edt(~blood, sampling=sp)
    return _Grid(phi_in, phi_out, wall, dist, sp, lo, blood), info


def _away_from_blood(g: _Grid, idx: tuple[np.ndarray, ...]) -> np.ndarray:
    """(3, n) unit gradient of the distance to the blood pool at nodes ``idx`` (central
    differences, one-sided at the box's faces): the local thickness direction."""
    shape = g.dist.shape
    grad = np.empty((3, len(idx[0])))
    for axis in range(3):
        up, down = list(idx), list(idx)
        up[axis] = np.minimum(idx[axis] + 1, shape[axis] - 1)
        down[axis] = np.maximum(idx[axis] - 1, 0)
        step = np.maximum(up[axis] - down[axis], 1) * g.spacing[axis]
        grad[axis] = (g.dist[tuple(up)] - g.dist[tuple(down)]) / step
    return grad / np.maximum(np.linalg.norm(grad, axis=0), 1e-12)


def _links(g: _Grid, cut_angle: float):
    """For each axis and sign: the wall nodes whose neighbour is outside, the crossing fraction
    theta, and the boundary kind (0 inner, 1 outer Dirichlet, 2 Neumann)."""
    cos_cut = np.cos(np.deg2rad(cut_angle))
    shape = g.wall.shape
    out = []
    for axis in range(3):
        for sign in (1, -1):
            nb = [slice(None)] * 3
            src = [slice(None)] * 3
            if sign > 0:
                src[axis], nb[axis] = slice(0, shape[axis] - 1), slice(1, None)
            else:
                src[axis], nb[axis] = slice(1, None), slice(0, shape[axis] - 1)
            src, nb = tuple(src), tuple(nb)
            wall_i, wall_j = g.wall[src], g.wall[nb]
            cross = wall_i & ~wall_j
            zi, yi, xi = np.nonzero(cross)
            i_idx = (zi + (src[0].start or 0), yi + (src[1].start or 0), xi + (src[2].start or 0))
            j_idx = list(i_idx)
            j_idx[axis] = j_idx[axis] + sign
            j_idx = tuple(j_idx)
            pin_i, pin_j = g.phi_in[i_idx], g.phi_in[j_idx]
            pout_i, pout_j = g.phi_out[i_idx], g.phi_out[j_idx]
            inner = (pin_j >= 0) | g.blood[j_idx]
            # crossing of the smoothed surface; at a rounded blood-pool corner (labelled blood
            # pool but below the 0.5 level) the voxel face
            theta = np.where(inner, np.where(pin_j > pin_i, -pin_i / np.maximum(pin_j - pin_i,
                                                                                 1e-12), 0.5),
                             pout_i / np.maximum(pout_i - pout_j, 1e-12))
            theta = np.clip(theta, 1e-3, 1.0)
            kind = np.where(inner, 0, 1)
            outer = np.flatnonzero(kind == 1)  # cos(link, thickness direction) decides cut faces
            along = sign * _away_from_blood(g, tuple(c[outer] for c in i_idx))[axis]
            kind[outer[along < cos_cut]] = 2
            out.append((axis, sign, np.ravel_multi_index(i_idx, shape), theta, kind))
    return out


def _numbering(size: int, nodes: np.ndarray) -> np.ndarray:
    """Unknown number of each box voxel (flat index), -1 outside the wall."""
    number = np.full(size, -1, np.int64)
    number[nodes] = np.arange(len(nodes))
    return number


def _neighbour(flat: np.ndarray, coord: np.ndarray, axis: int, sign: int, shape,
               strides) -> tuple[np.ndarray, np.ndarray]:
    """Flat index of the face neighbour along ``axis`` (direction ``sign``) of the voxels
    ``flat`` whose index along that axis is ``coord``, and whether it lies in the box; a voxel
    whose neighbour would leave the box gets its own index."""
    c = coord + sign
    inside = (c >= 0) & (c < shape[axis])
    return np.where(inside, flat + sign * strides[axis], flat), inside


@dataclass
class LaplaceSystem:
    """The ghost-fluid Laplace system ``A u = rhs`` over the wall nodes.

    ``nodes`` (flat box indices) lists the red nodes (even ``i + j + k``) first, then the black
    ones. The 7-point stencil couples only nodes of different colour, so
    ``A = [[D_r, B], [B^T, D_b]]`` with ``D`` diagonal; ``coupling`` is ``B`` (red rows, black
    columns) and ``coupling_t`` its transpose, both built directly from the grid.
    """

    nodes: np.ndarray
    n_red: int
    diag: np.ndarray
    rhs: np.ndarray
    coupling: sparse.csr_matrix
    coupling_t: sparse.csr_matrix

    def off_diagonal(self) -> sparse.csr_matrix:
        """``A - D`` in ``nodes`` order: the two coupling blocks stacked."""
        b, bt = self.coupling, self.coupling_t
        n = len(self.nodes)
        indptr = np.concatenate([b.indptr, bt.indptr[1:] + b.nnz])
        return sparse.csr_matrix((np.concatenate([b.data, bt.data]),
                                  np.concatenate([b.indices + self.n_red, bt.indices]), indptr),
                                 shape=(n, n))

    def matrix(self) -> sparse.csr_matrix:
        """The full matrix ``A`` in ``nodes`` order."""
        return sparse.csr_matrix(self.off_diagonal() + sparse.diags(self.diag))

    def residual(self, u: np.ndarray) -> float:
        """``|rhs - A u| / |rhs|``."""
        nr = self.n_red
        r = self.rhs - self.diag * u
        r[:nr] -= self.coupling @ u[nr:]
        r[nr:] -= self.coupling_t @ u[:nr]
        return float(np.linalg.norm(r) / max(float(np.linalg.norm(self.rhs)), 1e-300))


def _couplings(rows: np.ndarray, coords, number: np.ndarray, columns: tuple[int, int], shape,
               strides, spacing) -> tuple[sparse.csr_matrix, np.ndarray]:
    """Off-diagonal block for the wall nodes ``rows`` (all of one colour): ``-1/h^2`` towards
    each face neighbour in the wall, numbered ``columns[0]`` to ``columns[1] - 1`` (the other
    colour); and each row's sum of those weights (its diagonal share)."""
    cols = np.empty((len(rows), 6), np.int64)
    weights = np.empty(6)
    for k, (axis, sign) in enumerate((ax, sg) for ax in range(3) for sg in (1, -1)):
        j, valid = _neighbour(rows, coords[axis], axis, sign, shape, strides)
        cols[:, k] = np.where(valid, number[j], -1)
        weights[k] = 1.0 / spacing[axis] ** 2
    linked = cols >= 0
    diag = linked @ weights
    indptr = np.concatenate([[0], np.cumsum(linked.sum(axis=1))])
    data = -np.broadcast_to(weights, cols.shape)[linked]
    block = sparse.csr_matrix((data, cols[linked] - columns[0], indptr),
                              shape=(len(rows), columns[1] - columns[0]))
    return block, diag


def _assemble(g: _Grid, links) -> LaplaceSystem:
    """SPD system over the wall nodes, red-black ordered (ghost-fluid boundary at the
    crossings)."""
    shape = g.wall.shape
    flat = np.flatnonzero(g.wall)
    parity = np.sum(np.unravel_index(flat, shape), axis=0) & 1
    nodes = np.concatenate([flat[parity == 0], flat[parity == 1]])
    n_red = int((parity == 0).sum())
    n = len(nodes)
    number = _numbering(g.wall.size, nodes)
    strides = np.array([shape[1] * shape[2], shape[2], 1])
    coords = np.unravel_index(nodes, shape)
    red = (nodes[:n_red], tuple(c[:n_red] for c in coords))
    black = (nodes[n_red:], tuple(c[n_red:] for c in coords))
    coupling, d_red = _couplings(*red, number, (n_red, n), shape, strides, g.spacing)
    coupling_t, d_black = _couplings(*black, number, (0, n_red), shape, strides, g.spacing)
    diag = np.concatenate([d_red, d_black])
    rhs = np.zeros(n)
    for axis, _sign, flat_i, theta, kind in links:
        w = 1.0 / g.spacing[axis] ** 2
        ii = number[flat_i]
        dirichlet = kind < 2
        np.add.at(diag, ii[dirichlet], w / theta[dirichlet])
        outer = kind == 1
        np.add.at(rhs, ii[outer], w / theta[outer])
    if np.any(diag == 0):
        raise ThicknessError("part of the wall touches neither surface (isolated by cut faces)")
    return LaplaceSystem(nodes, n_red, diag, rhs, coupling, coupling_t)


def _pcg(apply, b: np.ndarray, inv_d: np.ndarray, stop: float,
         max_iter: int) -> tuple[np.ndarray, int]:
    """Conjugate gradients from zero for the SPD operator ``apply`` with the diagonal
    preconditioner ``inv_d``, until ``|b - apply(x)| <= stop``."""
    x = np.zeros_like(b)
    r = b.copy()
    z = r * inv_d
    p = z.copy()
    rz = float(r @ z)
    stop2 = stop * stop
    for it in range(max_iter + 1):
        if float(r @ r) <= stop2:
            return x, it
        if it == max_iter:
            break
        ap = apply(p)
        alpha = rz / float(p @ ap)
        x += alpha * p
        r -= alpha * ap
        np.multiply(r, inv_d, out=z)
        rz_new = float(r @ z)
        p *= rz_new / rz
        p += z
        rz = rz_new
    raise ThicknessError(f"Laplace solver (cg) did not converge in {max_iter} iterations")


def _cg_red_black(s: LaplaceSystem, tol: float, max_iter: int) -> tuple[np.ndarray, int]:
    """CG on the black nodes' Schur complement ``S = D_b - B^T D_r^-1 B`` (the red nodes
    eliminated exactly), Jacobi-preconditioned, then the red nodes by back-substitution.

    Its residual equals the full system's black residual and the red residual is zero, so
    stopping at ``|r_S| <= tol |rhs|`` is the same criterion as for the full system. ``S`` has
    about a quarter of ``D^-1 A``'s condition number (half the CG iterations) on half the
    unknowns, and is applied as two half-size products with ``B`` and ``B^T``.
    """
    nr = s.n_red
    b_red, b_black = s.rhs[:nr], s.rhs[nr:]
    inv_dr = 1.0 / s.diag[:nr]
    d_black = s.diag[nr:]
    bt = s.coupling_t
    rhs = b_black - bt @ (inv_dr * b_red)
    squared = sparse.csr_matrix((bt.data ** 2, bt.indices, bt.indptr), shape=bt.shape)
    inv_s = 1.0 / (d_black - squared @ inv_dr)

    def apply(p):
        out = bt @ (inv_dr * (s.coupling @ p))
        np.subtract(d_black * p, out, out=out)
        return out

    x_black, iters = _pcg(apply, rhs, inv_s, tol * float(np.linalg.norm(s.rhs)), max_iter)
    x_red = inv_dr * (b_red - s.coupling @ x_black)
    return np.concatenate([x_red, x_black]), iters


def solve_laplace(s: LaplaceSystem, solver: Solver | str = Solver.CG, tol: float = 1e-6,
                  max_iter: int = 200000) -> tuple[np.ndarray, dict]:
    """Solve the system to relative residual ``tol`` from zero; raises ThicknessError if it does
    not converge within ``max_iter`` iterations.

    ``cg``: conjugate gradients on the red-black reduced system (the default); ``cg-full``:
    Jacobi-preconditioned CG on the full system (for comparison); ``jacobi``: the paper's
    Jacobi iteration, convergence checked every 20 iterations.
    """
    solver = choose(Solver, solver, "solver", ThicknessError)
    t0 = time.perf_counter()
    if solver == "cg":
        x, iters = _cg_red_black(s, tol, max_iter)
    elif solver == "cg-full":
        off = s.off_diagonal()

        def apply(p):
            out = off @ p
            out += s.diag * p
            return out

        x, iters = _pcg(apply, s.rhs, 1.0 / s.diag, tol * float(np.linalg.norm(s.rhs)),
                        max_iter)
    else:  # jacobi, the paper's method
        off = s.off_diagonal()
        x = np.zeros_like(s.rhs)
        iters = 0
        check = 20
        while True:
            for _ in range(check):
                x = (s.rhs - off @ x) / s.diag
            iters += check
            if s.residual(x) <= tol:
                break
            if iters >= max_iter:
                raise ThicknessError(f"Laplace solver (jacobi) did not converge in {max_iter} "
                                     "iterations")
    seconds = time.perf_counter() - t0
    return x, {"solver": str(solver), "iterations": int(iters), "residual": s.residual(x),
               "solve_seconds": seconds, "unknowns": int(len(x))}


def _gradient(g: _Grid, u_wall: np.ndarray, nodes: np.ndarray, links) -> np.ndarray:
    """grad u (per mm) by central differences at the wall nodes, with ghost values across the
    boundaries (one-sided at the box's faces); extended two layers outside the wall."""
    shape = g.wall.shape
    strides = (shape[1] * shape[2], shape[2], 1)
    coords = np.unravel_index(nodes, shape)
    number = _numbering(g.wall.size, nodes)
    u = np.zeros(g.wall.size)
    u[nodes] = u_wall
    ghosts = {(axis, sign): (number[flat_i], np.where(
        kind == 2, u[flat_i], u[flat_i] + (np.where(kind == 0, 0.0, 1.0) - u[flat_i]) / theta))
        for axis, sign, flat_i, theta, kind in links}
    grad = np.zeros((3, g.wall.size))
    for axis in range(3):
        side = {}
        for sign in (1, -1):
            # one-sided at the box's faces: the node's own value stands in for the neighbour
            vals = u[_neighbour(nodes, coords[axis], axis, sign, shape, strides)[0]]
            at, ghost = ghosts[axis, sign]
            vals[at] = ghost
            side[sign] = vals
        grad[axis, nodes] = (side[1] - side[-1]) / (2 * g.spacing[axis])
    _extend(grad, g.wall, layers=2)
    return grad.reshape((3, *shape))


def _dilate(mask: np.ndarray) -> np.ndarray:
    """Dilation by the six face neighbours (a cheaper binary_dilation with the default
    structure)."""
    out = mask.copy()
    for axis in range(3):
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis], hi[axis] = slice(0, -1), slice(1, None)
        out[tuple(lo)] |= mask[tuple(hi)]
        out[tuple(hi)] |= mask[tuple(lo)]
    return out


def _extend(values: np.ndarray, known: np.ndarray, layers: int) -> None:
    """Extend ``values`` (components, flat box) in place from the ``known`` nodes outwards by
    ``layers`` layers of face neighbours, each new node the mean of its known neighbours.
    Streamlines sample only within a voxel of the wall (trilinear interpolation), so two
    layers cover every sample."""
    shape = known.shape
    strides = (shape[1] * shape[2], shape[2], 1)
    known = known.ravel().copy()
    for _ in range(layers):
        band = np.flatnonzero(_dilate(known.reshape(shape)).ravel() & ~known)
        if not len(band):
            return
        coords = np.unravel_index(band, shape)
        acc = np.zeros((values.shape[0], len(band)))
        count = np.zeros(len(band))
        for axis in range(3):
            for sign in (1, -1):
                nb = _neighbour(band, coords[axis], axis, sign, shape, strides)[0]
                use = known[nb]
                acc += values[:, nb] * use
                count += use
        values[:, band] = acc / np.maximum(count, 1)
        known[band] = True


def _start_points(links, shape) -> np.ndarray:
    """Outer-surface crossings (index coordinates), in the order of the links."""
    pts = []
    for axis, sign, flat_i, theta, kind in links:
        sel = kind == 1
        p = np.stack(np.unravel_index(flat_i[sel], shape), axis=1).astype(float)
        p[:, axis] += sign * theta[sel]
        pts.append(p)
    return np.concatenate(pts)


def _sampler(fields: list[np.ndarray]):
    """Trilinear interpolation of several grids at index-space points ``(n, 3)``, clamped to
    the grid; all fields are gathered at once from one ``(voxels, fields)`` table."""
    shape = np.asarray(fields[0].shape)
    table = np.stack([np.asarray(f, np.float32).ravel() for f in fields], axis=1)
    strides = np.array([shape[1] * shape[2], shape[2], 1])
    corners = [(dz, dy, dx) for dz in (0, 1) for dy in (0, 1) for dx in (0, 1)]

    def sample(pts: np.ndarray) -> np.ndarray:
        p = np.clip(pts, 0, shape - 1)
        base = np.minimum(np.floor(p).astype(np.int64), shape - 2)
        hi = (p - base).astype(np.float32)
        lo = 1.0 - hi
        flat = base @ strides
        out = np.zeros((len(p), table.shape[1]), np.float32)
        for dz, dy, dx in corners:
            w = ((hi if dz else lo)[:, 0] * (hi if dy else lo)[:, 1] * (hi if dx else lo)[:, 2])
            out += w[:, None] * np.take(table, flat + (dz * strides[0] + dy * strides[1] + dx),
                                        axis=0)
        return out

    return sample


def _streamlines(g: _Grid, grad: np.ndarray, starts: np.ndarray, step_mm: float,
                 max_mm: float) -> np.ndarray:
    """Path length (mm) from each start along -grad u to the inner surface (NaN: not reached)."""
    sp = g.spacing
    field = _sampler([grad[0], grad[1], grad[2], g.phi_in])

    def velocity(f):
        v = -f[:, :3].astype(np.float64)
        v /= np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
        return v / sp  # index units per mm travelled

    length = np.full(len(starts), np.nan)
    todo = np.arange(len(starts))  # the streamlines still travelling
    pos = starts.copy()
    travelled = np.zeros(len(starts))
    here = field(pos)  # the field at the current positions, reused as the next step's k1
    h = step_mm
    for _ in range(int(np.ceil(max_mm / h))):
        if not len(todo):
            break
        k1 = velocity(here)  # Heun's method (second order): the field is smooth on this scale
        k2 = velocity(field(pos + h * k1))
        new = pos + 0.5 * h * (k1 + k2)
        there = field(new)
        phi_prev, phi_new = here[:, 3], there[:, 3]
        hit = phi_new >= 0
        frac = np.clip(-phi_prev[hit] / np.maximum(phi_new[hit] - phi_prev[hit], 1e-12), 0, 1)
        length[todo[hit]] = travelled[hit] + h * frac
        go = ~hit
        todo, pos, here, travelled = todo[go], new[go], there[go], travelled[go] + h
    return length


def _pde_lengths(g: _Grid, grad: np.ndarray, nodes: np.ndarray, links, tol: float = 1e-6,
                 max_iter: int = 20000) -> tuple[np.ndarray, int]:
    """Yezzi-Prince: L0, the path length from the inner surface along the unit field
    T = grad u / |grad u|, by upwind Gauss-Jacobi iteration; returns (L0, sweeps)."""
    shape = g.wall.shape
    number = _numbering(g.wall.size, nodes)
    coords = np.unravel_index(nodes, shape)
    t_field = grad.reshape(3, -1)[:, nodes]
    t_field = t_field / np.maximum(np.linalg.norm(t_field, axis=0), 1e-12)
    strides = np.array([shape[1] * shape[2], shape[2], 1])
    # per node, per axis and sign: neighbour number (or -1) and the distance to it / boundary
    bound = {}
    for axis, sign, flat_i, theta, kind in links:
        bound[axis, sign] = (number[flat_i], theta, kind)
    # L0 grows along +T from the inner surface (T . grad L0 = 1); the upwind neighbour lies
    # against the travel direction. (L1 from the outer surface is not needed: the
    # thickness at an epicardial point is L0 there.)
    length = np.zeros(len(nodes))
    coef = np.zeros(len(nodes))
    terms = []  # (weight per node, neighbour numbers or -1 for a boundary value 0)
    for axis in range(3):
        comp = t_field[axis]  # travel direction component
        sign = np.where(comp > 0, -1, 1)  # upwind neighbour
        hk = np.full(len(nodes), g.spacing[axis])
        nb = np.full(len(nodes), -1, np.int64)
        for s in (1, -1):
            sel = sign == s
            j, ok = _neighbour(nodes[sel], coords[axis][sel], axis, s, shape, strides)
            nb[sel] = np.where(ok, number[j], -1)
            if (axis, s) in bound:
                bi, th, kind = bound[axis, s]
                mask = np.zeros(len(nodes), bool)
                mask[bi] = True
                at = sel & mask
                # boundary neighbour: the matching surface gives value 0 at distance th*h
                lookup = np.full(len(nodes), -1)
                lookup[bi] = np.arange(len(bi))
                k_at = lookup[at]
                is_surface = kind[k_at] == 0  # the inner surface
                idx_at = np.flatnonzero(at)
                hk[idx_at[is_surface]] = th[k_at[is_surface]] * g.spacing[axis]
                nb[idx_at[is_surface]] = -2  # value 0 at the boundary
        w = np.abs(comp) / hk
        w[nb == -1] = 0.0  # no upwind information across the other surface or a cut face
        coef += w
        terms.append((w, nb))
    coef = np.maximum(coef, 1e-12)
    for _sweep in range(max_iter):
        acc = np.ones(len(nodes))
        for w, nb in terms:
            valid = nb >= 0
            acc[valid] += w[valid] * length[nb[valid]]
        new = acc / coef
        delta = float(np.max(np.abs(new - length)))
        length = new
        if delta < tol:
            break
    else:
        raise ThicknessError(f"path-length equations did not converge in {max_iter} sweeps")
    return length, _sweep + 1


def wall_thickness(labels: np.ndarray, spacing=(1.0, 1.0, 1.0), *,
                   method: Method | str = Method.STREAMLINE, solver: Solver | str = Solver.CG,
                   tol: float = 1e-6, sigma_vox: float = 1.2,
                   cut_angle: float = 60.0, step_mm: float | None = None) -> ThicknessResult:
    """Wall thickness of the myocardium (label 2) of one 3D label map ``(z, y, x)``.

    ``spacing`` is ``(z, y, x)`` in mm. Returns one value per epicardial point (the outer
    surface's crossings of grid links) with median, 95th percentile and maximum, all in mm.
    Raises :class:`~lvtl.errors.ThicknessError` with the reason when the wall cannot be
    measured. Disconnected myocardium: the largest piece is measured (``info`` counts pieces).
    """
    method = choose(Method, method, "method", ThicknessError)
    labels, sp = _check(labels, spacing)
    t0 = time.perf_counter()
    if not 0.3 <= sigma_vox <= 4.0:
        raise ThicknessError(f"sigma_vox must be between 0.3 and 4 voxels, got {sigma_vox}")
    g, info = _prepare(labels, sp, float(sigma_vox))
    links = _links(g, cut_angle)
    kinds = np.concatenate([lk[4] for lk in links])
    if not (kinds == 0).any():
        raise ThicknessError("the myocardium does not touch the blood pool: no inner surface")
    if not (kinds == 1).any():
        raise ThicknessError("the myocardium does not enclose the blood pool anywhere: "
                             "no outer surface facing away from it")
    system = _assemble(g, links)
    nodes = system.nodes
    u, sinfo = solve_laplace(system, solver, tol)
    info.update(sinfo)
    grad = _gradient(g, u, nodes, links)
    starts = _start_points(links, g.wall.shape)
    if method == "streamline":
        h = step_mm if step_mm is not None else float(sp.min())
        span = float(np.linalg.norm(np.asarray(g.wall.shape) * sp))
        values = _streamlines(g, grad, starts, h, max_mm=span)
    else:
        l0, iters = _pde_lengths(g, grad, nodes, links)
        info["pde_sweeps"] = iters
        values = _pde_at_points(g, grad, nodes, l0, links)
    ok = np.isfinite(values)
    info["unreached"] = int((~ok).sum())
    if ok.sum() < 0.5 * len(values):
        raise ThicknessError(f"{info['unreached']} of {len(values)} epicardial points have no "
                             "path to the blood pool")
    values, starts = values[ok], starts[ok]
    info["seconds"] = time.perf_counter() - t0
    return ThicknessResult(
        values_mm=values, points=starts + g.offset, median=float(np.median(values)),
        p95=float(np.percentile(values, 95)), max=float(values.max()), method=str(method),
        spacing=tuple(float(s) for s in sp), info=info)


def _pde_at_points(g: _Grid, grad: np.ndarray, nodes: np.ndarray, l0: np.ndarray,
                   links) -> np.ndarray:
    """L0 carried from the wall node to its outer-surface crossing, for each start point."""
    number = _numbering(g.wall.size, nodes)
    out = []
    for axis, sign, flat_i, theta, kind in links:
        sel = kind == 1
        fi = flat_i[sel]
        t = grad.reshape(3, -1)[:, fi]
        t = t / np.maximum(np.linalg.norm(t, axis=0), 1e-12)
        # moving theta*h along the link changes L0 by (link . T) per mm
        out.append(l0[number[fi]] + theta[sel] * g.spacing[axis] * np.maximum(sign * t[axis], 0))
    return np.concatenate(out)
