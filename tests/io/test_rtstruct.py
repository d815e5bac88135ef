"""RTSTRUCT labels: reading (files made by other tools, pydicom and a treatment-planning export
shipped with dicompyler-core), filling (against matplotlib's point-in-polygon and exact
areas, in-slice and in patient space), writing and reading back through lvtl's DICOM reader,
the phantom's contour path against its truth labels (Dice, wall thickness), and bad files, each
refused with one line naming the file."""

from __future__ import annotations

import lzma
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from matplotlib.path import Path as PolygonPath

from lvtl.errors import LabelError
from lvtl.io.dicom import scan_series
from lvtl.io.dicom_write import Layout, SeriesInfo, new_uid, write_study
from lvtl.io.geometry import Geometry
from lvtl.io.rtstruct import (
    ENDO_PATTERNS,
    EPI_PATTERNS,
    RTSTRUCT_SOP_CLASS,
    Contour,
    RTStruct,
    labels_from_rtstruct,
    map_rois,
    rasterise,
    read_rtstruct,
    scanline_fill,
    write_rtstruct,
)
from lvtl.labels import BLOOD_POOL, MYOCARDIUM
from lvtl.measure.metrics import dice
from lvtl.measure.thickness import wall_thickness
from lvtl.synth.case import Case
from lvtl.synth.contours import contours_from_case
from lvtl.synth.profiles import draw_case

DATA = Path(__file__).resolve().parents[1] / "data"
PYDICOM_RTSTRUCT = DATA / "labels" / "rtstruct" / "pydicom_rtstruct.dcm"
DICOMPYLER_RTSS = DATA / "labels" / "rtstruct" / "dicompyler_rtss.dcm.xz"
DICOMPYLER_CT = DATA / "dicom" / "dicompyler_ct.0.dcm"  # one image of the series it contours


# --------------------------------------------------------------------------- helpers
def ring(centre, radius, n=120, axes=((1.0, 0, 0), (0, 1.0, 0))) -> np.ndarray:
    """A regular n-gon ``(n, 3)`` LPS of ``radius`` about ``centre`` in the plane of the unit
    vectors ``axes`` (default: the axial plane, LPS x and y)."""
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    u, v = (np.asarray(a, float) for a in axes)
    return np.asarray(centre, float) + radius * (np.cos(t)[:, None] * u + np.sin(t)[:, None] * v)


def axial_geometry(shape=(10, 40, 40), spacing=(2.0, 1.0, 1.0), origin=(-20.0, -20.0, 0.0)
                   ) -> Geometry:
    """An axial grid: z along +S, rows along +P, columns along +L."""
    return Geometry.make(shape, spacing, origin, [[0, 0, 1.0], [0, 1.0, 0], [1.0, 0, 0]])


def slice_refs(g: Geometry, tag: str) -> list[tuple[str, np.ndarray]]:
    """``(SOP instance UID, position)`` of each slice of ``g``."""
    a = g.index_to_lps()
    return [(new_uid(f"{tag}/{k}"), (a @ [k, 0, 0, 1.0])[:3]) for k in range(g.shape[0])]


def one_line(err: pytest.ExceptionInfo, path: Path, *fragments: str) -> str:
    msg = str(err.value)
    assert "\n" not in msg, msg
    assert str(path) in msg, msg
    for f in fragments:
        assert f in msg, msg
    return msg


def shoelace(points_2d: np.ndarray) -> float:
    x, y = points_2d[:, 0], points_2d[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


# --------------------------------------------------------------------------- filling
def test_scanline_fill_equals_matplotlib_point_in_polygon():
    """Pixel centres and sub-pixel samples inside by the even-odd rule, exactly as matplotlib's
    ``Path.contains_points`` (the maintained reference) finds them, for star polygons, a
    self-intersecting one, nested ones (holes, islands) and one cut by the image's edge."""
    rng = np.random.default_rng(3)
    shape = (48, 56)
    t = np.linspace(0, 2 * np.pi, 37, endpoint=False)
    star = np.c_[24 + (8 + 10 * rng.random(37)) * np.sin(t),
                 28 + (9 + 12 * rng.random(37)) * np.cos(t)]
    cases = [
        [star],
        [rng.uniform([2, 2], [46, 54], size=(9, 2))],  # random points: self-intersecting
        [ring((24.013, 27.991, 0), 20, 60)[:, :2], ring((24.3, 27.6, 0), 12, 45)[:, :2],
         ring((23.8, 28.2, 0), 5.23, 30)[:, :2]],  # disc, hole, island
        [ring((5.017, 50.029, 0), 14.3, 50)[:, :2]],  # reaches outside the image
    ]
    for polys in cases:
        for s in (1, 4):
            box, frac = scanline_fill(polys, shape, s)
            o = (np.arange(s) + 0.5) / s - 0.5
            rows = np.arange(box[0].start, box[0].stop)[:, None] + o  # (R, s)
            cols = np.arange(box[1].start, box[1].stop)[:, None] + o
            rr, cc = np.meshgrid(rows.ravel(), cols.ravel(), indexing="ij")
            pts = np.c_[rr.ravel(), cc.ravel()]
            inside = np.zeros(len(pts), bool)
            for p in polys:
                inside ^= PolygonPath(p).contains_points(pts)
            ref = inside.reshape(len(rows), s, len(cols), s).mean(axis=(1, 3))
            assert np.array_equal(frac, ref.astype(np.float32)), (len(polys), s)
            full = np.zeros(shape, np.float32)
            full[box] = frac
            assert full.sum() > 0


def test_fraction_is_the_covered_area():
    """A rectangle whose edges fall on sample boundaries is filled with its exact area; the
    pixels it cuts hold the covered fraction."""
    rect = np.array([[1.75, 2.5], [1.75, 9.0], [7.25, 9.0], [7.25, 2.5]])  # (row, column)
    box, frac = scanline_fill([rect], (12, 12), 4)
    assert frac.sum() == pytest.approx(5.5 * 6.5)
    full = np.zeros((12, 12), np.float32)
    full[box] = frac
    assert full[2, 3] == 0.75  # rows 1.75 to 2.5 of pixel row 2 (1.5 to 2.5)
    assert full[7, 9] == 0.75 * 0.5  # rows 6.5 to 7.25, columns 8.5 to 9.0
    assert full[4, 5] == 1.0 and full[2, 2] == 0.0 and full[0, 0] == 0.0


def test_even_odd_holes_and_islands_and_union_of_rois_on_a_slice():
    g = axial_geometry()
    outer, hole, island = ring((0, 0, 4.0), 15), ring((0, 0, 4.0), 9), ring((0, 0, 4.0), 4)
    m = rasterise([outer, hole, island], g) >= 0.5
    k = 2  # z = 4 mm
    assert not m[[0, 1, 3]].any()
    centre = (20, 20)
    assert m[k][centre]  # island
    assert not m[k, 20, 20 + 6]  # hole
    assert m[k, 20, 20 + 12]  # ring
    assert not m[k, 20, 20 + 17]  # outside


def test_fill_of_200_contours_on_512_slices_is_fast():
    g = Geometry.make((200, 512, 512), (1.0, 0.5, 0.5), (-128.0, -128.0, 0.0),
                      [[0, 0, 1.0], [0, 1.0, 0], [1.0, 0, 0]])
    contours = [ring((0, 0, float(k)), 100 + 0.1 * k, 400) for k in range(200)]
    rasterise(contours[:2], g)  # warm up
    t0 = time.process_time()  # this process's CPU time: other jobs on the machine do not count
    frac = rasterise(contours, g)
    seconds = time.process_time() - t0
    assert seconds < 2.0, seconds
    area = frac[100].sum() * 0.25
    assert area == pytest.approx(np.pi * 110**2, rel=2e-3)


def test_patient_space_stacks_oblique_and_between_slices():
    """A ball contoured on oblique planes 1.5 mm apart, and axial contours lying between the
    image slices, are filled in patient space: each voxel takes its nearest contour plane
    within half their spacing."""
    g = axial_geometry(shape=(40, 60, 60), spacing=(1.5, 1.0, 1.0), origin=(-30, -30, -30))
    n = np.array([1.0, 1.0, 2.0]) / np.sqrt(6)
    e1 = np.cross(n, [1.0, 0, 0])
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(n, e1)
    radius, step = 20.0, 1.5
    planes = np.arange(-radius + step / 2, radius, step)
    contours = [ring(d * n, np.sqrt(radius**2 - d**2), 150, (e1, e2)) for d in planes]
    zz, yy, xx = np.meshgrid(*(np.arange(k) for k in g.shape), indexing="ij")
    lps = np.stack([zz, yy, xx, np.ones_like(zz)], -1) @ g.index_to_lps().T
    ball = np.linalg.norm(lps[..., :3], axis=-1) < radius
    m = rasterise(contours, g) >= 0.5
    assert 2 * (m & ball).sum() / (m.sum() + ball.sum()) > 0.985
    # axial contours at z = 0.75 mm + k * 3 mm: between the slices (1.5 mm apart)
    axial = [ring((0, 0, 0.75 + 3 * k), 10) for k in range(-2, 2)]
    m = rasterise(axial, g, supersample=1) >= 0.5
    filled = np.flatnonzero(m.any(axis=(1, 2)))
    z = g.origin[2] + filled * g.spacing[0]
    assert z.min() == pytest.approx(-6.0) and z.max() == pytest.approx(4.5)  # within 1.5 mm
    assert m[filled].sum(axis=(1, 2)).std() == 0  # every slice takes one contour's disc


def test_in_slice_and_patient_space_fills_agree():
    """The same axial contours, filled slice by slice and, shifted 0.05 mm off the slice
    planes (beyond the in-slice tolerance), in patient space, give the same masks."""
    g = axial_geometry(shape=(6, 40, 40))
    contours = [ring((0.3, -0.7, 2.0 * k), 8 + k, 90) for k in range(1, 5)]
    in_slice = rasterise(contours, g, supersample=1) >= 0.5
    shifted = [c + [0, 0, 0.05] for c in contours]  # 0.025 slice off the planes
    patient = rasterise(shifted, g, supersample=1) >= 0.5
    assert in_slice.sum() > 0
    assert np.array_equal(in_slice, patient)


# --------------------------------------------------------------------------- real files
def test_pydicom_rtstruct_is_read_and_its_rectangles_filled_exactly():
    rt = read_rtstruct(PYDICOM_RTSTRUCT)
    assert rt.frame_of_reference == "1.2.826.0.1.3680043.8.498.2010020400001.2"
    assert rt.series_uids == ("1.2.826.0.1.3680043.8.498.2010020400001.2.1.1",)
    assert list(rt.rois) == ["patient", "Isocenter 1", "Isocenter 2"]
    assert [c.geometric_type for c in rt.rois["Isocenter 1"]] == ["POINT"]
    patient = rt.rois["patient"]
    assert len(patient) == 3 and all(c.geometric_type == "CLOSED_PLANAR" for c in patient)
    # 400 x 300 mm rectangles at z = -200, -190, -180; pixels of 2 mm, edges a third inside
    g = axial_geometry(shape=(3, 180, 230), spacing=(10.0, 2.0, 2.0),
                       origin=(-229.0 + 2 / 3, -179.0 + 2 / 3, -200.0))
    frac = rasterise(patient, g, supersample=3)
    assert frac.sum(axis=(1, 2)) * 4.0 == pytest.approx([400 * 300] * 3)
    with pytest.raises(LabelError) as e:
        map_rois(rt)
    one_line(e, PYDICOM_RTSTRUCT, "no endocardium ROI", "'patient', 'Isocenter 1'")


@pytest.fixture(scope="module")
def dicompyler(tmp_path_factory):
    """The dicompyler-core example structure set (decompressed) and the image grid of the CT
    series it contours (one image of it is in tests/data/dicom: grid, orientation, spacing;
    the slices are at the contours' 98 positions, 3 mm apart)."""
    path = tmp_path_factory.mktemp("dicompyler") / "rtss.dcm"
    path.write_bytes(lzma.decompress(DICOMPYLER_RTSS.read_bytes()))
    ct = pydicom.dcmread(DICOMPYLER_CT, stop_before_pixels=True)
    o = np.asarray(ct.ImageOrientationPatient, float)
    normal = np.cross(o[:3], o[3:])
    pos = np.asarray(ct.ImagePositionPatient, float)
    top = float(pos @ normal)  # the image is the top slice, at z = 168.56
    origin = pos - normal * 97 * 3.0
    g = Geometry.make((98, ct.Rows, ct.Columns), (3.0, *map(float, ct.PixelSpacing)), origin,
                      [normal, o[3:], o[:3]])
    assert top == pytest.approx(168.5593)
    return path, g, ct


def test_dicompyler_structure_set_is_read(dicompyler):
    path, _, ct = dicompyler
    t0 = time.perf_counter()
    rt = read_rtstruct(path)
    assert time.perf_counter() - t0 < 2.0
    assert rt.frame_of_reference == ct.FrameOfReferenceUID
    assert rt.series_uids == (ct.SeriesInstanceUID,)
    assert len(rt.referenced_sop_uids) == 98 and ct.SOPInstanceUID in rt.referenced_sop_uids
    counts = {name: len(c) for name, c in rt.rois.items()}
    assert counts["Heart"] == 33 and counts["BODY"] == 141 and counts["Areola"] == 0
    assert sum(len(c.points) for c in rt.rois["Heart"]) == 4732
    assert all(len(c.referenced_sop_uids) == 1 for c in rt.rois["Heart"])


def test_dicompyler_heart_fills_to_its_polygon_areas(dicompyler):
    """Each heart contour's filled area equals its polygon's (shoelace) area within a tenth
    of a pixel along its boundary; the thresholded mask within half a pixel."""
    path, g, _ = dicompyler
    rt = read_rtstruct(path)
    frac = rasterise(rt.rois["Heart"], g)
    px = g.spacing[1] * g.spacing[2]
    m = g.lps_to_index()
    per_slice: dict[int, list[float]] = {}  # slice -> [area, perimeter] of its contours
    for c in rt.rois["Heart"]:
        k = int(round((c.points @ m[0, :3] + m[0, 3]).mean()))
        edges = np.diff(c.points, axis=0, append=c.points[:1])
        area_perimeter = per_slice.setdefault(k, [0.0, 0.0])
        area_perimeter[0] += shoelace(c.points[:, :2])
        area_perimeter[1] += float(np.linalg.norm(edges, axis=1).sum())
    assert len(per_slice) > 20
    for k, (area, perimeter) in per_slice.items():
        assert abs(frac[k].sum() * px - area) <= 0.1 * perimeter * g.spacing[1], k
        assert abs((frac[k] >= 0.5).sum() * px - area) <= 0.5 * perimeter * g.spacing[1], k


def test_dicompyler_labels_with_configured_roi_names(dicompyler):
    """Any two nested ROIs can be read as endocardium and epicardium by name patterns: the
    heart inside the body here, with the file's frame of reference and referenced images."""
    path, g, ct = dicompyler
    rt = read_rtstruct(path)
    lab = labels_from_rtstruct(path, g, ct.FrameOfReferenceUID,
                               sop_uids_of_phase=set(rt.referenced_sop_uids),
                               series_uid=ct.SeriesInstanceUID, endo="heart", epi=["body*"])
    heart = rasterise(rt.rois["Heart"], g) >= 0.5
    assert np.array_equal(lab == BLOOD_POOL, heart)
    assert (lab == MYOCARDIUM).sum() > 10 * heart.sum()
    with pytest.raises(LabelError) as e:
        labels_from_rtstruct(path, g, ct.FrameOfReferenceUID, endo="*bed*", epi="body")
    one_line(e, path, "2 ROIs match the endocardium", "'Tumor Bed', 'Tumor Bed Block'")


# --------------------------------------------------------------------------- writing
@pytest.fixture(scope="module")
def small_series(tmp_path_factory):
    """A tiny 2-phase CT series written by lvtl and scanned back: per phase its SliceHeaders."""
    root = tmp_path_factory.mktemp("series")
    g = axial_geometry(shape=(6, 32, 32), spacing=(2.0, 1.0, 1.0), origin=(-16, -16, 0))
    info = SeriesInfo(patient_id="P1", patient_name="TEST^RT", study_uid=new_uid(),
                      series_uid=new_uid(), frame_of_reference_uid=new_uid(), n_phases=2)
    hu = np.zeros(g.shape, np.float32)
    out = {}
    for layout in (Layout.ONE_SERIES, Layout.ENHANCED):
        write_study(root / layout.value, [(0, hu), (1, hu)], g, info, layout=layout)
        out[layout] = scan_series(root / layout.value)
    return out, info


def lv_rings(z: float, shift=(0.0, 0.0)) -> tuple[np.ndarray, np.ndarray]:
    return ring((shift[0], shift[1], z), 5.2), ring((shift[0], shift[1], z), 9.3)


@pytest.mark.parametrize("layout", [Layout.ONE_SERIES, Layout.ENHANCED])
def test_write_then_read_through_the_dicom_reader(small_series, tmp_path, layout):
    indexes, info = small_series
    index = indexes[layout]
    t = 1
    endo, epi = zip(*(lv_rings(z) for z in (2.0, 4.0, 6.0)), strict=True)
    path = write_rtstruct(tmp_path / "lv.dcm", endo=list(endo), epi=list(epi),
                          slices=index.phases[t], series_uid=index.series_uid,
                          study_uid=info.study_uid, frame_of_reference=info.frame_of_reference_uid,
                          header=index.first_header)
    ds = pydicom.dcmread(path)  # a proper Part 10 file: no force needed
    assert ds.SOPClassUID == RTSTRUCT_SOP_CLASS and ds.Modality == "RTSTRUCT"
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert ds.PatientID == "P1" and ds.StudyInstanceUID == info.study_uid
    assert ds.SeriesInstanceUID != index.series_uid
    assert [r.ROIName for r in ds.StructureSetROISequence] == ["LV Endocardium", "LV Epicardium"]
    assert [o.ReferencedROINumber for o in ds.RTROIObservationsSequence] == [1, 2]
    series = ds.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0]
    images = series.RTReferencedSeriesSequence[0].ContourImageSequence
    assert len(images) == 6
    if layout is Layout.ENHANCED:
        assert [int(i.ReferencedFrameNumber) for i in images] == [7, 8, 9, 10, 11, 12]
    if shutil.which("dciodvfy"):  # David Clunie's IOD checker, where installed
        report = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
        assert "Error" not in report.stdout + report.stderr, report.stderr
    rt = read_rtstruct(path)
    assert rt.referenced_images == tuple((sl.sop_uid, sl.frame + 1 if layout is Layout.ENHANCED
                                          else None) for sl in index.phases[t])
    assert map_rois(rt) == ("LV Endocardium", "LV Epicardium")
    for written, read in zip(endo, rt.rois["LV Endocardium"], strict=True):
        assert np.abs(written - read.points).max() < 1e-6
    by_z = {round(float(sl.position[2]), 3): sl.sop_uid for sl in index.phases[t]}
    assert [c.referenced_sop_uids for c in rt.rois["LV Epicardium"]] == [
        (by_z[z],) for z in (2.0, 4.0, 6.0)]
    sops = {sl.sop_uid for sl in index.phases[t]}
    lab = labels_from_rtstruct(path, index.geometry, info.frame_of_reference_uid,
                               sop_uids_of_phase=sops, series_uid=index.series_uid)
    assert set(np.flatnonzero(lab.any(axis=(1, 2)))) == {1, 2, 3}
    for area, radius in (((lab[2] == BLOOD_POOL).sum(), 5.2), ((lab[2] > 0).sum(), 9.3)):
        assert abs(area - np.pi * radius**2) <= 0.25 * 2 * np.pi * radius  # pixels of 1 mm
    if layout is Layout.ONE_SERIES:  # the other phase's images are distinct
        other = {sl.sop_uid for sl in index.phases[0]}
        with pytest.raises(LabelError) as e:
            labels_from_rtstruct(path, index.geometry, info.frame_of_reference_uid,
                                 sop_uids_of_phase=other)
        one_line(e, path, "references images of another series/phase")


def test_write_refuses_bad_contours(tmp_path):
    g = axial_geometry()
    slices = slice_refs(g, "w")
    good = ring((0, 0, 2.0), 5)
    kwargs = dict(slices=slices, series_uid="1.2.3", study_uid="1.2.4", frame_of_reference="1.2.5")
    with pytest.raises(ValueError, match="at least one"):
        write_rtstruct(tmp_path / "a.dcm", endo=[], epi=[good], **kwargs)
    bent = good.copy()
    bent[::2, 2] += 1.0
    with pytest.raises(ValueError, match="not planar"):
        write_rtstruct(tmp_path / "a.dcm", endo=[good], epi=[bent], **kwargs)
    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------------- the phantom
@pytest.fixture(scope="module")
def phantoms():
    return {site: Case(draw_case(site, 0)) for site in ("site-1", "site-2")}


@pytest.mark.parametrize("site", ["site-1", "site-2"])
@pytest.mark.parametrize("which", ["ed", "es"])
def test_phantom_contours_reproduce_the_truth(phantoms, tmp_path, site, which):
    """Contours traced from the phantom's analytic surfaces, written as an RTSTRUCT, read back
    and filled: myocardium Dice >= 0.98 against the truth labels at the phantom's grid, and
    the Laplace wall thickness within 0.2 mm of the truth's (median)."""
    case = phantoms[site]
    g, phase = case.geometry, getattr(case.p, which)
    endo, epi = contours_from_case(case, phase)
    assert all(np.ptp(c @ g.lps_to_index()[0, :3]) < 1e-6 for c in endo + epi)
    slices, frame, series = slice_refs(g, f"{site}/{phase}"), new_uid(), new_uid()
    path = write_rtstruct(tmp_path / f"{site}_{phase}.dcm", endo=endo, epi=epi, slices=slices,
                          series_uid=series, study_uid=new_uid(), frame_of_reference=frame)
    lab = labels_from_rtstruct(path, g, frame, sop_uids_of_phase={u for u, _ in slices},
                               series_uid=series)
    truth, _ = case.truth(phase)
    d_myo, d_bp = dice(lab, truth, MYOCARDIUM), dice(lab, truth, BLOOD_POOL)
    t_lab = wall_thickness(lab, g.spacing).median
    t_truth = wall_thickness(truth, g.spacing).median
    assert d_myo >= 0.98 and d_bp >= 0.98
    assert abs(t_lab - t_truth) <= 0.2


def test_phantom_contours_at_voxel_centres_are_nearly_exact(phantoms):
    """Filled at the voxel centres (the truth's own sampling) the contours give the truth
    labels but for voxels whose centre lies within the tracing tolerance of a surface."""
    case = phantoms["site-2"]
    endo, epi = contours_from_case(case, case.p.es)
    lab = np.zeros(case.geometry.shape, np.uint8)
    lab[rasterise(epi, case.geometry, supersample=1) >= 0.5] = MYOCARDIUM
    lab[rasterise(endo, case.geometry, supersample=1) >= 0.5] = BLOOD_POOL
    truth, _ = case.truth(case.p.es)
    assert (lab != truth).sum() <= 1e-3 * (truth > 0).sum()


# --------------------------------------------------------------------------- bad files
@pytest.fixture()
def good(tmp_path):
    """A valid LV structure set on a small axial grid: ``(path, geometry, slices, frame,
    series)``."""
    g = axial_geometry()
    slices = slice_refs(g, str(tmp_path))
    frame, series = new_uid(), new_uid()
    endo, epi = zip(*(lv_rings(2.0 * k) for k in (2, 3, 4)), strict=True)
    path = write_rtstruct(tmp_path / "lv.dcm", endo=list(endo), epi=list(epi), slices=slices,
                          series_uid=series, study_uid=new_uid(), frame_of_reference=frame)
    return path, g, slices, frame, series


def edited(path: Path, change, name: str) -> Path:
    ds = pydicom.dcmread(path)
    change(ds)
    out = path.with_name(name)
    ds.save_as(out)
    return out


def test_good_file_reads(good):
    path, g, slices, frame, series = good
    lab = labels_from_rtstruct(path, g, frame, sop_uids_of_phase=[u for u, _ in slices],
                               series_uid=series)
    assert (lab == BLOOD_POOL).any() and (lab == MYOCARDIUM).any()


def _set_type(ds):
    ds.ROIContourSequence[1].ContourSequence[1].ContourGeometricType = "OPEN_PLANAR"


def _three_values_short(ds):
    c = ds.ROIContourSequence[0].ContourSequence[0]
    c.ContourData = c.ContourData[:-2]


def _count_mismatch(ds):
    ds.ROIContourSequence[0].ContourSequence[0].NumberOfContourPoints = 7


def _two_points(ds):
    c = ds.ROIContourSequence[0].ContourSequence[0]
    c.ContourData, c.NumberOfContourPoints = c.ContourData[:6], 2


def _not_planar(ds):
    c = ds.ROIContourSequence[0].ContourSequence[0]
    values = list(c.ContourData)
    values[5] = float(values[5]) + 2.0
    c.ContourData = values


def _no_contours(ds):
    for rc in ds.ROIContourSequence:
        del rc.ContourSequence


def _rename(a, b):
    def change(ds):
        ds.StructureSetROISequence[0].ROIName = a
        ds.StructureSetROISequence[1].ROIName = b
    return change


def _empty_epi(ds):
    del ds.ROIContourSequence[1].ContourSequence


@pytest.mark.parametrize("change,fragments", [
    (_set_type, ("ROI 'LV Epicardium'", "contour 2 is OPEN_PLANAR, not CLOSED_PLANAR")),
    (_three_values_short, ("contour 1", "malformed ContourData")),
    (_count_mismatch, ("NumberOfContourPoints is 7",)),
    (_two_points, ("at least 3 points",)),
    (_not_planar, ("not planar",)),
    (_no_contours, ("no contours",)),
    (_rename("Heart", "Lung"), ("no endocardium ROI", "'Heart', 'Lung'")),
    (_rename("Endo", "Endocardium"), ("2 ROIs match the endocardium", "'Endo', 'Endocardium'")),
    (_rename("LV Endo", "LV Endo"), ("2 ROIs match the endocardium", "'LV Endo', 'LV Endo#2'")),
    (_empty_epi, ("the epicardium ROI 'LV Epicardium' has no contours",)),
], ids=["not-closed", "data-cut", "count", "two-points", "not-planar", "no-contours",
        "unknown-rois", "ambiguous", "duplicate-names", "empty-roi"])
def test_bad_file_is_one_line_naming_it(good, change, fragments):
    path, g, slices, frame, series = good
    bad = edited(path, change, "bad.dcm")
    with pytest.raises(LabelError) as e:
        labels_from_rtstruct(bad, g, frame, sop_uids_of_phase=[u for u, _ in slices])
    one_line(e, bad, *fragments)


def test_text_in_contour_data(good):
    path, g, _, frame, _ = good
    data = path.read_bytes()
    first = b"5.2\\0\\4\\"  # the first point of the first endocardial contour
    at = data.index(first)
    assert data[at - 1:at] != b"-"
    bad = path.with_name("text.dcm")
    bad.write_bytes(data.replace(first, b"5.2\\x\\4\\", 1))
    with pytest.raises(LabelError) as e:
        labels_from_rtstruct(bad, g, frame)
    one_line(e, bad, "ROI 'LV Endocardium' contour 1", "malformed ContourData")


def test_other_frame_of_reference(good):
    path, g, _, _, _ = good
    with pytest.raises(LabelError) as e:
        labels_from_rtstruct(path, g, "1.2.3.4")
    one_line(e, path, "frame of reference", "not the series' (1.2.3.4)")


def test_references_another_series_or_phase(good):
    path, g, slices, frame, series = good
    with pytest.raises(LabelError) as e:
        labels_from_rtstruct(path, g, frame, series_uid="1.2.3.4")
    one_line(e, path, "references images of another series/phase", "not 1.2.3.4")
    with pytest.raises(LabelError) as e:
        labels_from_rtstruct(path, g, frame, sop_uids_of_phase=[u for u, _ in slices[:3]])
    one_line(e, path, "ROI 'LV Endocardium' contour 2 references images of another series/phase")


def test_contour_outside_the_grid(good):
    path, g, _, frame, _ = good
    small = Geometry.make((10, 20, 20), g.spacing, (-3.0, -3.0, 0.0), g.direction)
    with pytest.raises(LabelError) as e:
        labels_from_rtstruct(path, small, frame)
    one_line(e, path, "ROI 'LV Endocardium'", "reaches outside the image grid")


def test_not_an_rtstruct_and_not_dicom(tmp_path):
    ct = DATA / "dicom" / "CT_small.dcm"
    with pytest.raises(LabelError) as e:
        read_rtstruct(ct)
    one_line(e, ct, "not a DICOM RTSTRUCT", "modality CT")
    text = tmp_path / "notes.dcm"
    text.write_text("endocardium drawn by hand\n" * 20)
    with pytest.raises(LabelError) as e:
        read_rtstruct(text)
    one_line(e, text)


def test_point_rois_are_refused_only_when_filled():
    with pytest.raises(LabelError) as e:
        labels_from_rtstruct(PYDICOM_RTSTRUCT, axial_geometry(), endo="isocenter 1",
                             epi="patient")
    one_line(e, PYDICOM_RTSTRUCT, "ROI 'Isocenter 1'", "contour 1 is POINT, not CLOSED_PLANAR")


def test_default_patterns_match_common_names():
    def rt(*names):
        c = [Contour(ring((0, 0, 0), 3))]
        return RTStruct(Path("x.dcm"), "", (), (), {n: c for n in names}, {})

    for endo, epi in [("LV Endo", "LV Epi"), ("Endocardium", "Epicardium"),
                      ("lv_endocardium", "LV_EPICARDIUM"), ("LV blood pool", "LV epi (manual)"),
                      ("LV cavity", "Epi")]:
        assert map_rois(rt(endo, epi, "RV", "Aorta")) == (endo, epi)
    assert "endo*" in ENDO_PATTERNS and "epi*" in EPI_PATTERNS
