"""NRRD label maps and 3D Slicer segmentations: Slicer's own sample files (from slicerio)
compared with a reading by numpy per the NRRD spec, files written here by hand per the NRRD
spec and Slicer's segmentation format (RAS/LAS spaces, two layers, overlapping segments, the
layer axis first or last, Slicer's pre-4.11 one-layer-per-segment files), role mapping, exact
placement on a series' grid, and bad files refused with one line naming the file. Test files:
tests/data/labels/README-seg-nrrd.md."""

import gzip
from pathlib import Path

import nrrd
import numpy as np
import pytest

from lvtl.errors import LabelError
from lvtl.io.geometry import Geometry
from lvtl.io.nrrd import nrrd_geometry, nrrd_labelmap, read_nrrd
from lvtl.io.seg_read import Code, RoleMapping, place_on

DATA = Path(__file__).resolve().parents[1] / "data" / "labels" / "nrrd"
SLICER = ["Segmentation.seg.nrrd", "SegmentationOverlapping.seg.nrrd"]


def _one_line(e: pytest.ExceptionInfo, path) -> str:
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg, msg
    return msg


def _raw(path: Path) -> tuple[dict[str, str], np.ndarray]:
    """Header fields and data of an attached-header NRRD read with numpy alone, per the NRRD
    format: text lines up to a blank line, then the samples, first axis fastest."""
    blob = path.read_bytes()
    head, _, body = blob.partition(b"\n\n")
    fields = {}
    for line in head.decode("latin-1").splitlines()[1:]:
        if line.startswith("#"):
            continue
        key, sep, value = line.partition(":=") if ":=" in line else line.partition(": ")
        fields[key] = value
    assert fields["type"] in ("unsigned char", "uchar", "uint8")
    data = gzip.decompress(body) if fields["encoding"] == "gzip" else body
    sizes = [int(s) for s in fields["sizes"].split()]
    return fields, np.frombuffer(data, np.uint8).reshape(sizes[::-1])  # C order: slowest first


def _vectors(text: str) -> list[np.ndarray | None]:
    return [None if v == "none" else np.array([float(x) for x in v.strip("()").split(",")])
            for v in text.split()]


# --- 3D Slicer's own files --------------------------------------------------------------------

@pytest.mark.parametrize("name", SLICER)
def test_slicer_files_equal_a_numpy_reading_per_the_spec(name):
    labels = read_nrrd(DATA / name)
    fields, raw = _raw(DATA / name)
    assert fields["space"] == "left-posterior-superior" == labels.space
    dirs = [d for d in _vectors(fields["space directions"]) if d is not None]  # x, y, z
    origin = _vectors(fields["space origin"])[0]
    layered = raw.ndim == 4
    layers = np.moveaxis(raw, -1, 0) if layered else raw[None]  # the list axis is the fastest
    assert labels.array.shape == (layers.shape if layered else raw.shape)
    # geometry: voxel (k, j, i) lies at origin + i dx + j dy + k dz (LPS, as the file says)
    g = labels.geometry
    assert g.shape == layers.shape[1:]
    rng = np.random.default_rng(0)
    for k, j, i in rng.integers(0, g.shape, (20, 3)):
        want = origin + i * dirs[0] + j * dirs[1] + k * dirs[2]
        np.testing.assert_allclose((g.index_to_lps() @ [k, j, i, 1.0])[:3], want, atol=1e-6)
    # segments: Segment{N}_Name / _Layer / _LabelValue
    n = 0
    while f"Segment{n}_Name" in fields:
        seg = labels.segments[fields[f"Segment{n}_Name"]]
        layer, value = int(fields[f"Segment{n}_Layer"]), int(fields[f"Segment{n}_LabelValue"])
        np.testing.assert_array_equal(seg.mask, layers[layer] == value)
        assert seg.mask.any()
        n += 1
    assert n == len(labels.segments) == (8 if layered else 7)
    assert labels.segments["ribs"].property_type == Code("113197003", "SCT", "Rib")
    assert labels.segments["ribs"].property_category == Code("123037004", "SCT",
                                                              "Anatomical Structure")


def test_slicer_overlapping_segments_in_two_layers():
    labels = read_nrrd(DATA / "SegmentationOverlapping.seg.nrrd")
    sphere = labels.segments["overlapping sphere"].mask
    assert labels.segment_values["overlapping sphere"] == (1, 1)
    overlaps = {name: int((s.mask & sphere).sum()) for name, s in labels.segments.items()
                if name != "overlapping sphere"}
    assert sum(overlaps.values()) > 0  # the sphere overlaps segments of layer 0


def test_slicer_file_roles_by_a_site_mapping():
    path = DATA / "SegmentationOverlapping.seg.nrrd"
    labels = read_nrrd(path)
    with pytest.raises(LabelError) as e:
        nrrd_labelmap(labels)  # the default mapping knows no ribs
    assert "segment 'ribs' (SCT:113197003 'Rib')" in _one_line(e, path)
    mapping = RoleMapping(blood_pool=("right lung",), myocardium_codes=("SCT:19227008",),
                          ignore=("ribs", "*vertebral*", "left lung", "tissue"))
    arr, g = nrrd_labelmap(labels, mapping)
    assert g == labels.geometry
    lung, sphere = labels.segments["right lung"].mask, labels.segments["overlapping sphere"].mask
    np.testing.assert_array_equal(arr == 2, sphere)
    np.testing.assert_array_equal(arr == 1, lung & ~sphere)


def test_slicer_file_placed_on_a_series_grid_with_other_axis_directions():
    """Slicer's sample has x and y running to the right and anterior; a DICOM series of the
    same voxels runs them left and posterior: placed exactly, voxel by position."""
    labels = read_nrrd(DATA / "Segmentation.seg.nrrd")
    g = labels.geometry
    d = g.direction_matrix
    far = (g.index_to_lps() @ [0, g.shape[1] - 1, g.shape[2] - 1, 1.0])[:3]
    series = Geometry.make((g.shape[0] + 4, g.shape[1] + 2, g.shape[2]), g.spacing,
                           far - 2 * g.spacing[0] * d[0], np.stack([d[0], -d[1], -d[2]]))
    out = place_on(labels.array, g, series)
    rng = np.random.default_rng(1)
    for idx in rng.integers(0, g.shape, (50, 3)):
        lps = g.index_to_lps() @ [*idx, 1.0]
        k, j, i = np.rint(series.lps_to_index() @ lps)[:3].astype(int)
        assert out[k, j, i] == labels.array[tuple(idx)]
    assert np.count_nonzero(out) == np.count_nonzero(labels.array)


# --- files written by hand per the specs -----------------------------------------------------

def _write(path: Path, data: np.ndarray, fields: dict[str, str], *, encoding="gzip",
           type_="unsigned char", kvs: dict[str, str] | None = None) -> Path:
    """An NRRD file written by hand: ``data`` given first axis fastest (NRRD order)."""
    lines = ["NRRD0004", f"type: {type_}", f"dimension: {data.ndim}",
             "sizes: " + " ".join(str(s) for s in data.shape), f"encoding: {encoding}"]
    if data.dtype.itemsize > 1:
        lines.append("endian: little")  # required by the spec for multi-byte samples
    lines += [f"{k}: {v}" for k, v in fields.items()]
    lines += [f"{k}:={v}" for k, v in (kvs or {}).items()]
    body = data.astype(data.dtype.newbyteorder("<")).tobytes(order="F")
    if encoding == "gzip":
        body = gzip.compress(body)
    path.write_bytes(("\n".join(lines) + "\n\n").encode() + body)
    return path


def _segment(n: int, name: str, layer: int, value: int, tags: str = "") -> dict[str, str]:
    out = {f"Segment{n}_ID": f"Segment_{n + 1}", f"Segment{n}_Name": name,
           f"Segment{n}_Layer": str(layer), f"Segment{n}_LabelValue": str(value),
           f"Segment{n}_Extent": "0 4 0 3 0 2"}
    if tags:
        out[f"Segment{n}_Tags"] = tags
    return out


SHAPE_XYZ = (5, 4, 3)
RAS = {"space": "right-anterior-superior",
       "space directions": "(1.5,0,0) (0,1.25,0) (0,0,2)", "space origin": "(10,20,-30)"}


def _lv_layers() -> np.ndarray:
    """Two layers (layer, x, y, z): epicardium (1) in layer 0; blood pool (1) and a papillary
    muscle (2, inside the blood pool) in layer 1."""
    layers = np.zeros((2, *SHAPE_XYZ), np.uint8)
    layers[0, :4, :, :2] = 1
    layers[1, 1:3, 1:3, :2] = 1
    layers[1, 1, 1, 0] = 2
    return layers


@pytest.mark.parametrize("layer_axis", ["first", "last"])
@pytest.mark.parametrize("encoding", ["gzip", "raw"])
def test_hand_written_layered_segmentation_in_ras(layer_axis, encoding, tmp_path):
    layers = _lv_layers()
    data = layers if layer_axis == "first" else np.moveaxis(layers, 0, -1)
    fields = dict(RAS)
    if layer_axis == "first":
        fields["space directions"] = "none " + RAS["space directions"]
        fields["kinds"] = "list domain domain domain"
    else:
        fields["space directions"] = RAS["space directions"] + " none"
        fields["kinds"] = "domain domain domain list"
    tissue = "Segmentation category and type - DICOM master list~SCT^85756007^Tissue~"
    kvs = {**_segment(0, "LV epicardium", 0, 1),
           **_segment(1, "LV blood pool", 1, 1),
           **_segment(2, "Papillary", 1, 2, f"TerminologyEntry:{tissue}SCT^49848007^Left "
                                             "ventricle myocardium~^^~~^^~^^|")}
    path = _write(tmp_path / "phase_05.seg.nrrd", data, fields, encoding=encoding, kvs=kvs)
    labels = read_nrrd(path)
    # geometry in LPS: RAS x and y negated; (z, y, x) order
    g = labels.geometry
    assert g.shape == SHAPE_XYZ[::-1] and g.spacing == (2.0, 1.25, 1.5)
    assert g.origin == (-10.0, -20.0, -30.0)
    assert g.direction == ((0, 0, 1.0), (0, -1.0, 0), (-1.0, 0, 0))
    assert g == nrrd_geometry(path)
    zyx = np.transpose(layers, (0, 3, 2, 1))
    np.testing.assert_array_equal(labels.array, zyx)
    assert labels.segments["Papillary"].property_type == Code("49848007", "SCT",
                                                              "Left ventricle myocardium")
    arr, _ = nrrd_labelmap(labels)  # epicardium, blood pool and myocardium by default
    expect = np.where(zyx[0] == 1, 2, 0)
    expect[zyx[1] == 1] = 1
    expect[zyx[1] == 2] = 2
    np.testing.assert_array_equal(arr, expect)
    assert set(np.unique(arr)) == {0, 1, 2}


def test_slicer_before_4_11_one_layer_per_segment(tmp_path):
    layers = np.zeros((2, *SHAPE_XYZ), np.uint8)
    layers[0, :3] = 1
    layers[1, 2:] = 1  # overlaps layer 0 at x = 2
    fields = {**RAS, "space directions": "none " + RAS["space directions"],
              "kinds": "list domain domain domain"}
    kvs = {"Segment0_Name": "LV myocardium", "Segment1_Name": "LV blood pool"}
    labels = read_nrrd(_write(tmp_path / "old.seg.nrrd", layers, fields, kvs=kvs))
    assert labels.segment_values == {"LV myocardium": (0, 1), "LV blood pool": (1, 1)}
    arr, _ = nrrd_labelmap(labels)
    assert arr[:, :, 2].min() == 2 and arr[:, :, 3:].min() == 1 and arr[:, :, :2].min() == 2


@pytest.mark.parametrize("space,flip", [("left-anterior-superior", (1, -1, 1)),
                                        ("LPS", (1, 1, 1)), ("RAS", (-1, -1, 1))])
def test_plain_label_map_in_any_patient_space(space, flip, tmp_path):
    rng = np.random.default_rng(2)
    xyz = rng.integers(0, 3, SHAPE_XYZ).astype(np.int16)
    path = _write(tmp_path / "phase_02.nrrd", xyz, {**RAS, "space": space, "kinds":
                                                   "domain domain domain"}, type_="short")
    labels = read_nrrd(path)
    assert not labels.is_segmentation and labels.array.dtype == np.int16
    np.testing.assert_array_equal(labels.array, xyz.T)
    f = np.array(flip, float)
    assert np.allclose(labels.geometry.origin, np.array([10, 20, -30]) * f)
    assert np.allclose(labels.geometry.direction_matrix[2], [f[0], 0, 0])
    assert np.allclose(labels.geometry.direction_matrix[1], [0, f[1], 0])
    arr, _ = nrrd_labelmap(labels)
    np.testing.assert_array_equal(arr, xyz.T)
    arr, _ = nrrd_labelmap(labels, blood_pool_value=2, myocardium_value=1)
    np.testing.assert_array_equal(arr, (3 - xyz.T) % 3)


# --- bad files ------------------------------------------------------------------------------

def test_values_outside_the_mapping_are_one_line_naming_the_file(tmp_path):
    xyz = np.zeros(SHAPE_XYZ, np.uint8)
    xyz[0, 0, 0], xyz[1, 1, 1], xyz[2, 2, 2] = 1, 2, 7
    path = _write(tmp_path / "phase_01.nrrd", xyz, RAS)
    labels = read_nrrd(path)
    with pytest.raises(LabelError) as e:
        nrrd_labelmap(labels)
    assert "values 7 are outside the mapping" in _one_line(e, path)
    with pytest.raises(LabelError, match="values 1, 2 are outside"):
        nrrd_labelmap(labels, blood_pool_value=7, myocardium_value=8)


def test_undeclared_value_in_a_segmentation_layer(tmp_path):
    layers = _lv_layers()
    layers[1, 4, 3, 2] = 9
    fields = {**RAS, "space directions": "none " + RAS["space directions"]}
    kvs = {**_segment(0, "LV epicardium", 0, 1), **_segment(1, "LV blood pool", 1, 1),
           **_segment(2, "LV myocardium", 1, 2)}
    path = _write(tmp_path / "x.seg.nrrd", layers, fields, kvs=kvs)
    with pytest.raises(LabelError) as e:
        read_nrrd(path)
    assert "layer 1 holds value(s) 9 that no segment declares" in _one_line(e, path)


def _bad_header(tmp_path, **change) -> Path:
    fields = {**RAS, **change}
    return _write(tmp_path / "bad.nrrd", np.zeros(SHAPE_XYZ, np.uint8),
                  {k: v for k, v in fields.items() if v is not None})


@pytest.mark.parametrize("change,why", [
    (dict(space=None), "NRRD space 'missing' is not a patient space"),
    (dict(space="scanner-xyz"), "NRRD space 'scanner-xyz' is not a patient space"),
    ({"space origin": None}, "without space origin"),
    ({"space directions": None}, "without space directions"),
    ({"space directions": "(1,0,0) (0.5,1,0) (0,0,1)"}, "not orthogonal"),
])
def test_headers_without_a_place_in_the_patient(change, why, tmp_path):
    path = _bad_header(tmp_path, **change)
    with pytest.raises(LabelError) as e:
        read_nrrd(path)
    assert why in _one_line(e, path)


def test_duplicate_names_and_an_empty_segmentation(tmp_path):
    layers = _lv_layers()[1]
    kvs = {**_segment(0, "LV blood pool", 0, 1), **_segment(1, "LV blood pool", 0, 2)}
    path = _write(tmp_path / "dup.seg.nrrd", layers, RAS, kvs=kvs)
    with pytest.raises(LabelError, match="two segments are named 'LV blood pool'"):
        read_nrrd(path)
    path = _write(tmp_path / "empty.seg.nrrd", np.zeros((1, 1, 1), np.uint8), RAS,
                  kvs=_segment(0, "LV blood pool", 0, 1))
    with pytest.raises(LabelError, match="holds no voxel data"):
        read_nrrd(path)


@pytest.mark.parametrize("cut", [40, 3000, 16000])
def test_truncated_file_is_one_line_naming_it(cut, tmp_path):
    path = tmp_path / "phase_07.seg.nrrd"
    path.write_bytes((DATA / "SegmentationOverlapping.seg.nrrd").read_bytes()[:cut])
    with pytest.raises(LabelError) as e:
        read_nrrd(path)
    _one_line(e, path)


def test_not_nrrd_and_missing_file(tmp_path):
    (tmp_path / "a.nrrd").write_bytes(b"P6\n1 1\n255\n\x00\x00\x00")
    for path in (tmp_path / "a.nrrd", tmp_path / "missing.nrrd"):
        with pytest.raises(LabelError) as e:
            read_nrrd(path)
        assert "not a readable NRRD header" in _one_line(e, path)


def test_plain_label_map_written_by_pynrrd():
    """The label map the dcmqi SEG test files were made from (written by pynrrd, with a
    'NRRD0005' magic and 'uint8' type name): the same values and grid pynrrd reads."""
    path = DATA.parent / "seg" / "dcmqi_lv_truth.nrrd"
    labels = read_nrrd(path)
    data, header = nrrd.read(str(path), index_order="C")
    np.testing.assert_array_equal(labels.array, data)
    assert labels.geometry.shape == (10, 24, 20) and labels.geometry.spacing == (1.5, 0.7, 0.8)
    assert labels.geometry.origin == tuple(header["space origin"])
    arr, _ = nrrd_labelmap(labels)
    assert np.bincount(arr.ravel()).tolist() == np.bincount(data.ravel()).tolist()
