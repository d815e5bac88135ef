"""DICOM SEG read as labels: files made by highdicom (its own test files, not lvtl's) compared
with their raw frames by position, lvtl's SEG output read back voxel for voxel, LABELMAP and
FRACTIONAL SEGs, segment roles, exact placement on a series' grid, and bad files refused with
one line naming the file. Test files: tests/data/labels/README-seg-nrrd.md."""

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

import highdicom as hd
import nrrd
import numpy as np
import pydicom
import pytest
from highdicom.sr.coding import CodedConcept

from lvtl.errors import LabelError
from lvtl.io.dicom import scan_series
from lvtl.io.dicom_write import SeriesInfo, new_uid, write_study
from lvtl.io.geometry import Geometry
from lvtl.io.seg import write_seg
from lvtl.io.seg_read import (
    Code,
    Role,
    RoleMapping,
    Segment,
    check_frame_of_reference,
    compose_labelmap,
    place_on,
    read_seg,
    seg_labelmap,
    segment_roles,
)

DATA = Path(__file__).resolve().parents[1] / "data" / "labels" / "seg"
CT_SEGS = ["seg_image_ct_binary.dcm", "seg_image_ct_binary_overlap.dcm",
           "seg_image_ct_binary_fractional.dcm", "seg_image_ct_true_fractional.dcm",
           "seg_image_ct_binary_single_frame.dcm"]
CT2 = sorted(DATA.glob("dicomdirtests_CT2_*.dcm"))


def _one_line(e: pytest.ExceptionInfo, path) -> str:
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg, msg
    return msg


# --- files made by highdicom, against their raw frames -----------------------------------

def _raw_frames(path):
    """(segment number, LPS position, bool frame) of every frame, decoded by pydicom alone."""
    ds = pydicom.dcmread(path)
    frames = ds.pixel_array.reshape(int(ds.NumberOfFrames), ds.Rows, ds.Columns)
    if ds.SegmentationType == "FRACTIONAL":
        frames = frames / float(ds.MaximumFractionalValue) >= 0.5
    for item, frame in zip(ds.PerFrameFunctionalGroupsSequence, frames, strict=True):
        number = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        pos = np.array(item.PlanePositionSequence[0].ImagePositionPatient, float)
        yield number, pos, frame.astype(bool)


@pytest.mark.parametrize("name", CT_SEGS)
def test_highdicom_segs_equal_their_raw_frames_by_position(name):
    labels = read_seg(DATA / name)
    ds = pydicom.dcmread(DATA / name, stop_before_pixels=True)
    shared = ds.SharedFunctionalGroupsSequence[0]
    iop = np.array(shared.PlaneOrientationSequence[0].ImageOrientationPatient, float)
    g = labels.geometry
    # the grid: rows and columns of the frames, slices along the normal
    assert np.allclose(g.direction[2], iop[:3]) and np.allclose(g.direction[1], iop[3:])
    assert np.allclose(g.direction[0], np.cross(iop[:3], iop[3:]))
    assert np.allclose(g.spacing[1:], shared.PixelMeasuresSequence[0].PixelSpacing)
    assert labels.segmentation_type == ds.SegmentationType
    to_index = g.lps_to_index()
    counts = dict.fromkeys(labels.segments, 0)
    for number, pos, frame in _raw_frames(DATA / name):
        zyx = to_index @ np.array([*pos, 1.0])
        assert np.allclose(zyx[:3], np.rint(zyx[:3]), atol=1e-3) and np.allclose(zyx[1:3], 0,
                                                                                 atol=1e-3)
        z = int(np.rint(zyx[0]))
        np.testing.assert_array_equal(labels.segments[number].mask[z], frame)
        counts[number] += int(frame.sum())
    # nothing anywhere else (slices between the frames are background)
    assert counts == {n: int(s.mask.sum()) for n, s in labels.segments.items()}
    assert all(c > 0 for c in counts.values())


def test_segments_references_and_frame_of_reference_are_the_source_series():
    labels = read_seg(DATA / "seg_image_ct_binary_overlap.dcm")
    assert {n: (s.label, s.property_type) for n, s in labels.segments.items()} == {
        1: ("first segment", Code("272673000", "SCT", "Bone")),
        2: ("second segment", Code("421060004", "SCT", "Spine"))}
    assert labels.segments[1].property_category == Code("85756007", "SCT", "Tissue")
    sources = [pydicom.dcmread(p, stop_before_pixels=True) for p in CT2]
    assert len(sources) == 4
    assert set(labels.referenced_sop_uids) == {str(s.SOPInstanceUID) for s in sources}
    assert labels.referenced_series_uid == str(sources[0].SeriesInstanceUID)
    series_for = str(sources[0].FrameOfReferenceUID)
    assert labels.frame_of_reference == series_for
    check_frame_of_reference(labels, series_for)
    # the overlap file's frames span 205 mm with 1.25 mm steps: 165 slices, most empty
    assert labels.geometry.shape == (165, 16, 16)


def test_frames_lie_where_their_source_images_lie():
    """The frame a SEG says derives from an image is at that image's position: placing by
    position (lvtl) and by reference agree."""
    labels = read_seg(DATA / "seg_image_ct_binary.dcm")
    position = {str(h.SOPInstanceUID): np.array(h.ImagePositionPatient, float)
                for h in (pydicom.dcmread(p, stop_before_pixels=True) for p in CT2)}
    ds = pydicom.dcmread(DATA / "seg_image_ct_binary.dcm", stop_before_pixels=True)
    to_index = labels.geometry.lps_to_index()
    for item in ds.PerFrameFunctionalGroupsSequence:
        src = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        at = to_index @ np.array([*position[str(src)], 1.0])
        own = to_index @ np.array([*item.PlanePositionSequence[0].ImagePositionPatient, 1.0])
        assert np.allclose(at, own, atol=1e-3)


def test_fractional_segments_keep_voxels_at_least_half_inside():
    true = read_seg(DATA / "seg_image_ct_true_fractional.dcm").segments[1].mask
    binary = read_seg(DATA / "seg_image_ct_binary_fractional.dcm").segments[1].mask
    raw = pydicom.dcmread(DATA / "seg_image_ct_true_fractional.dcm").pixel_array
    assert set(np.unique(raw)) == {0, 64, 128}  # 0, 0.25 and 0.5 of 255 (rounded)
    assert true.sum() == (raw >= 128).sum() < (raw > 0).sum()
    np.testing.assert_array_equal(true, binary)


def _truth_from_pynrrd(path):
    """The label map dcmqi was given and its grid, read by pynrrd alone (LPS, first axis x)."""
    truth, header = nrrd.read(str(path), index_order="C")
    steps = np.asarray(header["space directions"], float)[::-1]  # z, y, x
    spacing = np.linalg.norm(steps, axis=1)
    return truth, Geometry.make(truth.shape, spacing, header["space origin"],
                                steps / spacing[:, None])


@pytest.mark.parametrize("name,shape", [("dcmqi_lv_binary.dcm", (5, 24, 20)),
                                        ("dcmqi_lv_labelmap_cropped.dcm", (5, 15, 14))])
def test_dcmqi_segs_equal_the_label_map_they_were_made_from(name, shape):
    """SEGs written by dcmqi (3D Slicer's DICOM SEG converter): only the labelled slices, the
    second one also cropped in-plane, read back onto the label map's grid voxel for voxel."""
    truth, grid = _truth_from_pynrrd(DATA / "dcmqi_lv_truth.nrrd")
    seg = read_seg(DATA / name)
    assert seg.geometry.shape == shape and seg.frame_of_reference == "2.25.1003"
    # labels name the roles; the codes are another tool's (87878005 "Left ventricle" for the
    # cavity), which lvtl's own code for the myocardium must not claim
    assert seg.segments[1].property_type == Code("87878005", "SCT", "Left ventricle")
    assert segment_roles(seg) == {1: Role.BLOOD_POOL, 2: Role.MYOCARDIUM}
    arr, g = seg_labelmap(seg)
    np.testing.assert_array_equal(place_on(arr, g, grid, source=name), truth)
    if name == "dcmqi_lv_binary.dcm":  # frames derived from the 5 labelled CT images
        assert seg.referenced_series_uid == "2.25.1002" and len(seg.referenced_sop_uids) == 5
    else:  # a cropped label map derives from no image: dcmqi references none
        assert seg.referenced_sop_uids == () and seg.segmentation_type == "LABELMAP"


# --- lvtl's own SEG and other writers' on a synthetic series: voxel for voxel -------------

def _series(folder: Path, layout: str, direction: np.ndarray, n_phases: int = 2):
    g = Geometry.make((7, 12, 14), (2.0, 0.75, 0.8), (-10.0, -20.0, 30.0), direction)
    meta = SeriesInfo(patient_id="P1", patient_name="Test^Seg", study_uid=new_uid(),
                      series_uid=new_uid(), frame_of_reference_uid=new_uid(), n_phases=n_phases)
    write_study(folder, [(t, np.zeros(g.shape)) for t in range(n_phases)], g, meta,
                layout=layout)
    return scan_series(folder)


def _heart(shape) -> np.ndarray:
    """A label map with empty slices at both ends (a SEG then covers the middle only)."""
    lab = np.zeros(shape, np.uint8)
    lab[2:5, 3:9, 4:11] = 2
    lab[2:5, 5:7, 6:9] = 1
    lab[3, 4, 5] = 1
    return lab


def _oblique() -> np.ndarray:
    c, s = np.cos(0.4), np.sin(0.4)
    row, col = np.array([c, s, 0.0]), np.array([-s * 0.6, c * 0.6, 0.8])
    col /= np.linalg.norm(col)
    col -= row * (row @ col)
    col /= np.linalg.norm(col)
    return np.stack([np.cross(row, col), col, row])


AXIAL = np.array([[0, 0, 1.0], [0, 1, 0], [1, 0, 0]])


@pytest.mark.parametrize("layout,direction", [("one-series", AXIAL), ("enhanced", AXIAL),
                                              ("one-series", _oblique())],
                         ids=["one-series", "enhanced", "oblique"])
def test_lvtl_seg_reads_back_voxel_for_voxel(layout, direction, tmp_path):
    index = _series(tmp_path / "s", layout, direction)
    lab = _heart(index.geometry.shape)
    path = write_seg(tmp_path / "seg.dcm", lab, index, 1)
    seg = read_seg(path)
    arr, g = seg_labelmap(seg)
    assert g.shape[0] == 3 < index.geometry.shape[0]  # only the labelled slices
    assert not g.matches(index.geometry)
    np.testing.assert_array_equal(place_on(arr, g, index.geometry, source=path), lab)
    assert set(seg.referenced_sop_uids) <= {sl.sop_uid for sl in index.phases[1]}
    assert seg.referenced_series_uid == index.series_uid
    check_frame_of_reference(seg, index.phases[1][0].frame_of_reference)
    assert segment_roles(seg) == {1: Role.BLOOD_POOL, 2: Role.MYOCARDIUM}


def _highdicom_seg(path, index, phase, array, kind, labels=("LV blood pool", "LV myocardium"),
                   codes=(("87878005", "Left ventricle"),
                          ("49848007", "Left ventricle myocardium"))):
    """A SEG written by highdicom directly (not by lvtl.io.seg), as another tool would."""
    sources = [pydicom.dcmread(sl.path) for sl in index.phases[phase]]
    tissue = CodedConcept("85756007", "SCT", "Tissue")
    described = [hd.seg.SegmentDescription(
        segment_number=k + 1, segment_label=label, segmented_property_category=tissue,
        segmented_property_type=CodedConcept(code, "SCT", meaning),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL)
        for k, (label, (code, meaning)) in enumerate(zip(labels, codes, strict=True))]
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=array, segmentation_type=kind,
        segment_descriptions=described, series_instance_uid=hd.UID(), series_number=7,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="other tool",
        manufacturer_model_name="x", software_versions="1", device_serial_number="1",
        omit_empty_frames=True)
    seg.save_as(path)
    return path


@pytest.mark.parametrize("kind", ["LABELMAP", "BINARY", "FRACTIONAL"])
def test_other_writers_label_map_binary_and_fractional_segs(kind, tmp_path):
    index = _series(tmp_path / "s", "one-series", AXIAL)
    lab = _heart(index.geometry.shape)
    if kind == "FRACTIONAL":  # 0.6 inside, 0.4 in a rim that is not
        array = np.stack([(lab == 1) * 0.6, (lab == 2) * 0.6], axis=-1).astype(np.float32)
        array[1, :, :, 1] = 0.4
    else:
        array = lab
    path = _highdicom_seg(tmp_path / "seg.dcm", index, 0, array, kind)
    seg = read_seg(path)
    assert seg.segmentation_type == kind
    arr, g = seg_labelmap(seg)
    np.testing.assert_array_equal(place_on(arr, g, index.geometry), lab)


# --- roles ---------------------------------------------------------------------------------

@dataclass
class _Labels:
    segments: dict
    path: Path = Path("labels/p70.dcm")
    geometry: Geometry = field(default_factory=lambda: Geometry.make((1, 1, 2), (1, 1, 1),
                                                                     (0, 0, 0), np.eye(3)))


def _seg(label, code=None):
    return Segment(label=label, mask=np.zeros((1, 1, 2), bool), property_type=code)


LVTL_CAVITY = Code("87878005", "SCT", "Left ventricle")
SLICER_RV = Code("53085002", "SCT", "Right ventricle")


@pytest.mark.parametrize("label,code,role", [
    ("LV blood pool", LVTL_CAVITY, Role.BLOOD_POOL),
    ("Segment_1", LVTL_CAVITY, Role.BLOOD_POOL),
    ("lv_blood_pool", None, Role.BLOOD_POOL),
    ("Left ventricle cavity", None, Role.BLOOD_POOL),
    ("LV endocardium", None, Role.BLOOD_POOL),
    ("Myocardium", None, Role.MYOCARDIUM),
    ("LV wall", None, Role.MYOCARDIUM),
    ("x", Code("49848007", "SCT", "Left Ventricle Myocardium"), Role.MYOCARDIUM),
    ("LV epi", None, Role.EPICARDIUM),
    ("Left ventricle epicardium", None, Role.EPICARDIUM),
])
def test_default_roles(label, code, role):
    assert segment_roles(_Labels({3: _seg(label, code)})) == {3: role}


@pytest.mark.parametrize("label,code,why", [
    ("RV blood pool", None, "neither"),
    ("Pericardial cavity", None, "neither"),
    ("LA myocardium", None, "neither"),
    ("Segment_1", SLICER_RV, "neither"),  # another chamber's code
    ("LV myocardium", LVTL_CAVITY, "several labels"),
])
def test_unknown_or_ambiguous_segments_are_one_line_naming_file_and_segment(label, code, why):
    labels = _Labels({3: _seg(label, code)})
    with pytest.raises(LabelError) as e:
        segment_roles(labels)
    msg = _one_line(e, labels.path)
    assert f"segment 3 {label!r}" in msg and why in msg


def test_mapping_by_label_code_or_ignore():
    labels = _Labels({1: _seg("RV blood pool"), 2: _seg("Cavity 1"),
                      4: _seg("Wall", Code("421060004", "SCT", "Spine"))})
    mapping = RoleMapping(blood_pool=("cavity*",), myocardium_codes=("SCT:421060004",),
                          ignore=("rv*",))
    assert segment_roles(labels, mapping) == {1: Role.IGNORE, 2: Role.BLOOD_POOL,
                                              4: Role.MYOCARDIUM}
    assert not RoleMapping(myocardium_codes=("SCT:421060004:Bone",)).roles_of(
        "Wall", Code("421060004", "SCT", "Spine"))


def test_overlapping_segments_compose_by_precedence():
    shape = (1, 1, 5)
    mask = {k: np.zeros(shape, bool) for k in "ebmi"}
    mask["e"][..., :4] = True  # inside the epicardium
    mask["b"][..., 1:3] = True  # blood pool inside it
    mask["m"][..., 2] = True  # a papillary muscle drawn in the cavity
    mask["i"][...] = True  # ignored
    roles = {"e": Role.EPICARDIUM, "b": Role.BLOOD_POOL, "m": Role.MYOCARDIUM, "i": Role.IGNORE}
    segs = {k: Segment(k, m) for k, m in mask.items()}
    assert compose_labelmap(segs, roles, shape).ravel().tolist() == [2, 1, 2, 2, 0]


def test_highdicom_test_file_roles_by_site_mapping():
    labels = read_seg(DATA / "seg_image_ct_binary_overlap.dcm")
    with pytest.raises(LabelError) as e:
        seg_labelmap(labels)
    assert "segment 1 'first segment'" in _one_line(e, labels.path)
    arr, g = seg_labelmap(labels, RoleMapping(blood_pool=("first*",), myocardium=("second*",)))
    assert g == labels.geometry
    first, second = labels.segments[1].mask, labels.segments[2].mask
    assert (first & second).any()  # the segments overlap: myocardium wins
    np.testing.assert_array_equal(arr == 2, second)
    np.testing.assert_array_equal(arr == 1, first & ~second)


# --- placing a sub-grid exactly ------------------------------------------------------------

def _grid(shape=(6, 8, 10), origin=(1.0, 2.0, 3.0), direction=AXIAL):
    return Geometry.make(shape, (2.0, 0.5, 0.75), origin, direction)


def test_place_on_a_sub_grid_with_offsets_flips_and_swapped_axes():
    target = _grid()
    rng = np.random.default_rng(0)
    full = rng.integers(0, 3, target.shape).astype(np.uint8)
    box = (slice(1, 4), slice(2, 7), slice(3, 9))
    sub = target.crop(box)
    np.testing.assert_array_equal(place_on(full[box], sub, target)[box], full[box])
    assert not place_on(full[box], sub, target).sum() - full[box].sum()
    # the same voxels with the slice axis reversed and rows and columns swapped
    d = sub.direction_matrix
    flipped = Geometry.make((3, 6, 5), (2.0, 0.75, 0.5),
                            (sub.index_to_lps() @ np.array([2, 0, 0, 1.0]))[:3],
                            np.stack([-d[0], d[2], d[1]]))
    arr = np.transpose(full[box], (0, 2, 1))[::-1]
    np.testing.assert_array_equal(place_on(arr, flipped, target)[box], full[box])


@pytest.mark.parametrize("change,why", [
    (dict(origin=(1.0, 2.0, 3.3)), "offset by 0.15 voxel"),  # 0.3 mm of a 2 mm slice step
    (dict(direction=_oblique()), "orientation differs"),
])
def test_place_on_refuses_grids_that_need_resampling(change, why):
    target = _grid()
    other = _grid(shape=(2, 2, 2), **change)
    with pytest.raises(LabelError) as e:
        place_on(np.ones(other.shape, np.uint8), other, target, source="labels/x.dcm")
    assert why in _one_line(e, "labels/x.dcm")
    coarser = Geometry.make((2, 2, 2), (4.0, 0.5, 0.75), (1.0, 2.0, 3.0), AXIAL)
    with pytest.raises(LabelError, match="spacing"):
        place_on(np.ones((2, 2, 2), np.uint8), coarser, target)


def test_place_on_outside_the_series():
    target = _grid()
    beyond = _grid(shape=(3, 2, 2), origin=(1.0, 2.0, 3.0 + 2.0 * 5))  # 2 slices beyond the end
    arr = np.zeros(beyond.shape, np.uint8)
    arr[0] = 1
    out = place_on(arr, beyond, target)  # what lies outside is background: kept
    assert out[5, :2, :2].all() and out.sum() == 4
    arr[2] = 1
    with pytest.raises(LabelError, match="4 labelled voxels lie outside"):
        place_on(arr, beyond, target, source="p.dcm")


# --- bad files -----------------------------------------------------------------------------

def test_wrong_or_missing_frame_of_reference_is_refused():
    labels = read_seg(DATA / "seg_image_ct_binary.dcm")
    with pytest.raises(LabelError) as e:
        check_frame_of_reference(labels, "1.2.3.4")
    msg = _one_line(e, labels.path)
    assert labels.frame_of_reference in msg and "1.2.3.4" in msg
    with pytest.raises(LabelError, match="no frame of reference"):
        check_frame_of_reference(_Labels({}), "1.2.3.4", "x.dcm")
    check_frame_of_reference(labels, "")  # a series without one: nothing to check


@pytest.mark.parametrize("cut", [100, 600, -500, -3])
def test_truncated_seg_is_one_line_naming_the_file(cut, tmp_path):
    data = (DATA / "seg_image_ct_binary_overlap.dcm").read_bytes()
    path = tmp_path / "phase_03.dcm"
    path.write_bytes(data[:cut])
    with pytest.raises(LabelError) as e:
        read_seg(path)
    _one_line(e, path)


@pytest.mark.parametrize("name,why", [
    ("dicomdirtests_CT2_17106.dcm", "not a readable DICOM SEG"),  # a CT image
    ("seg_image_sm_control.dcm", "not in patient coordinates"),  # slide microscopy
])
def test_not_a_ct_seg_is_refused(name, why):
    with pytest.raises(LabelError) as e:
        read_seg(DATA / name)
    assert why in _one_line(e, DATA / name)


def test_not_dicom_and_missing_file(tmp_path):
    (tmp_path / "a.dcm").write_bytes(b"not dicom" * 40)
    with pytest.raises(LabelError, match="not a DICOM file"):
        read_seg(tmp_path / "a.dcm")
    with pytest.raises(LabelError, match="cannot be read"):
        read_seg(tmp_path / "missing.dcm")


def test_frames_that_form_no_grid_are_refused(tmp_path):
    ds = pydicom.dcmread(DATA / "seg_image_ct_binary.dcm")
    ds.PerFrameFunctionalGroupsSequence[1].PlanePositionSequence[0].ImagePositionPatient = [
        -125.0, -128.100006, 103.6]  # 0.58 mm above the first frame, not 1.25
    ds.save_as(tmp_path / "bad.dcm")
    with pytest.raises(LabelError) as e:
        read_seg(tmp_path / "bad.dcm")
    assert "regular 3D grid" in _one_line(e, tmp_path / "bad.dcm")


def test_readme_names_every_test_file_with_its_sha256():
    """Every committed SEG/NRRD test file is in README-seg-nrrd.md with its bytes and sha256."""
    readme = (DATA.parent / "README-seg-nrrd.md").read_text()
    rows = dict(re.findall(r"^\| `([^`]+)` \| \d+ \|.*`([0-9a-f]{64})` \|$", readme, re.M))
    files = [p for d in ("seg", "nrrd") for p in sorted((DATA.parent / d).iterdir())
             if not p.name.startswith(".")]
    assert sorted(p.name for p in files) == sorted(rows)
    for p in files:
        assert hashlib.sha256(p.read_bytes()).hexdigest() == rows[p.name], p.name
