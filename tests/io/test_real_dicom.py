"""lvtl's pixel reader against pydicom on real DICOM files from public test collections.

The files (tests/data/dicom, listed in its manifest.json, sources and licences in its
README.md) were made by scanners and other toolkits, not by lvtl. pydicom (``pixel_array`` plus
the rescale, or for an Enhanced CT the Pixel Value Transformation functional group) is the
independent reference for :func:`lvtl.io.dicom_pixels.read_image_hu`, voxel for voxel.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import UID

from lvtl.errors import DicomError
from lvtl.io.dicom_pixels import is_lossy, read_image_hu

DATA = Path(__file__).resolve().parent.parent / "data" / "dicom"
MANIFEST = json.loads((DATA / "manifest.json").read_text())
NOT_DATA = {"README.md", "manifest.json", ".gitignore"}
MAX_TOTAL_BYTES = 5_000_000

CT_KINDS = {"ct-image", "enhanced-ct", "localizer"}
KINDS = CT_KINDS | {"sr", "secondary-capture", "presentation-state", "key-object", "dicomdir",
                    "other-modality"}
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"
SR_PREFIX = "1.2.840.10008.5.1.4.1.1.88."
#: the file whose bits above HighBit hold garbage (not the sign extension)
GARBAGE_BITS_FILE = "mlut_18.dcm"
#: 12-bit JPEG Extended: pydicom decodes it only with pylibjpeg-libjpeg (GDCM's and Pillow's
#: plugins refuse 12-bit JPEG)
NEEDS_PYLIBJPEG = {"JPGExtended.dcm"}


def _entries(kinds: set[str]) -> list[dict]:
    return [e for e in MANIFEST if e["kind"] in kinds]


def _ids(entries: list[dict]) -> list[str]:
    return [e["file"] for e in entries]


def _read(entry: dict) -> pydicom.Dataset:
    return pydicom.dcmread(DATA / entry["file"])


def _frame_rescales(ds: pydicom.Dataset, n_frames: int) -> list[tuple[float, float]]:
    """Each frame's (slope, intercept): an Enhanced CT's Pixel Value Transformation (per-frame
    group first, else the shared one), else the image's own attributes, else identity."""
    def pvt(groups, i):
        if not groups or i >= len(groups):
            return None
        seq = groups[i].get("PixelValueTransformationSequence")
        return seq[0] if seq else None

    out = []
    for f in range(n_frames):
        item = (pvt(ds.get("PerFrameFunctionalGroupsSequence"), f)
                or pvt(ds.get("SharedFunctionalGroupsSequence"), 0) or ds)
        slope = item.get("RescaleSlope")
        intercept = item.get("RescaleIntercept")
        out.append((1.0 if slope is None else float(slope),
                    0.0 if intercept is None else float(intercept)))
    return out


def reference_hu(path: Path) -> np.ndarray:
    """pydicom's decoded values, rescaled: float64 ``(frames, rows, cols)``."""
    ds = pydicom.dcmread(path)
    arr = ds.pixel_array.astype(np.float64)
    arr = arr.reshape(-1, int(ds.Rows), int(ds.Columns))
    for f, (slope, intercept) in enumerate(_frame_rescales(ds, arr.shape[0])):
        arr[f] = arr[f] * slope + intercept
    return arr


#: DCT-based JPEG: two conforming decoders may differ by one stored unit where their inverse
#: DCTs round differently (ISO/IEC 10918-2's accuracy test); lvtl decodes with GDCM, the
#: reference with pylibjpeg-libjpeg. Every other syntax must match exactly.
DCT_JPEG = {"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51"}


def _assert_same_voxels(path: Path, ref: np.ndarray) -> None:
    got = read_image_hu(path)
    assert got.dtype == np.float32
    assert got.shape == ref.shape
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    diff = np.abs(got.astype(np.float64) - ref)
    if ds.file_meta.TransferSyntaxUID in DCT_JPEG:
        unit = float(ds.get("RescaleSlope", 1) or 1)
        assert diff.max() <= unit + 1e-6, f"{path.name}: off by {diff.max()}"
        assert np.mean(diff > 1e-6) < 0.05, f"{path.name}: {np.mean(diff > 1e-6):.1%} differ"
        return
    bad = diff > 1e-3 + 1e-6 * np.abs(ref)
    assert not bad.any(), (
        f"{path.name}: {int(bad.sum())} of {bad.size} voxels differ, first at "
        f"{tuple(int(i) for i in np.argwhere(bad)[0])}: lvtl {got[bad][0]} pydicom {ref[bad][0]}")


# --- the data set itself ---------------------------------------------------------------------

def test_every_file_is_listed_once_and_the_set_is_small():
    listed = [e["file"] for e in MANIFEST]
    assert len(listed) == len(set(listed)), "a file is listed twice"
    on_disk = {p.relative_to(DATA).as_posix() for p in DATA.rglob("*")
               if p.is_file() and p.name not in NOT_DATA}
    assert on_disk == set(listed), (f"not in the manifest: {sorted(on_disk - set(listed))}; "
                                    f"listed but missing: {sorted(set(listed) - on_disk)}")
    total = sum((DATA / f).stat().st_size for f in listed)
    assert total <= MAX_TOTAL_BYTES, f"{total} bytes of test DICOM, more than {MAX_TOTAL_BYTES}"


def test_manifest_entries_are_complete():
    for e in MANIFEST:
        assert set(e) == {"file", "source", "licence", "kind", "transfer_syntax", "lossy",
                          "notes"}, e["file"]
        assert e["kind"] in KINDS, e
        assert isinstance(e["lossy"], bool), e
        assert e["source"].strip() and e["licence"].strip() and e["notes"].strip(), e
    assert _entries({"ct-image"}) and _entries({"enhanced-ct"}) and _entries({"localizer"})


@pytest.mark.parametrize("entry", MANIFEST, ids=_ids(MANIFEST))
def test_manifest_matches_the_file(entry):
    ds = _read(entry)
    ts = ds.file_meta.TransferSyntaxUID
    assert ts == entry["transfer_syntax"], f"{entry['file']}: file says {ts} ({ts.name})"
    assert is_lossy(ts) is entry["lossy"], f"{entry['file']}: is_lossy({ts.name})"
    sop = ds.get("SOPClassUID") or ds.file_meta.MediaStorageSOPClassUID
    image_type = [str(v).strip() for v in ds.get("ImageType", [])]
    kind = entry["kind"]
    if kind == "ct-image":
        assert sop == CT_IMAGE and "LOCALIZER" not in image_type
    elif kind == "localizer":
        assert sop == CT_IMAGE and "LOCALIZER" in image_type
    elif kind == "enhanced-ct":
        assert sop == ENHANCED_CT and int(ds.NumberOfFrames) > 1
    elif kind == "sr":
        assert str(sop).startswith(SR_PREFIX) and ds.Modality == "SR"
    elif kind == "secondary-capture":
        assert sop == SECONDARY_CAPTURE
    elif kind == "dicomdir":
        assert sop == MEDIA_STORAGE_DIRECTORY and "DirectoryRecordSequence" in ds
    elif kind == "other-modality":
        assert ds.Modality not in ("CT", "SR") and "PixelData" in ds


# --- CT: lvtl against pydicom, voxel for voxel --------------------------------------------------

@pytest.mark.parametrize("entry", _entries(CT_KINDS), ids=_ids(_entries(CT_KINDS)))
def test_ct_hu_equal_pydicom(entry):
    path = DATA / entry["file"]
    ref = reference_hu(path)  # every CT file must decode with the reference too
    _assert_same_voxels(path, ref)


def test_enhanced_ct_rescale_comes_from_the_functional_groups():
    """The Enhanced CT's intercept is only in the functional groups: a reader that ignores
    them is 1024 HU off, so the comparison above would catch it."""
    (entry,) = _entries({"enhanced-ct"})
    ds = _read(entry)
    assert "RescaleIntercept" not in ds
    assert set(_frame_rescales(ds, int(ds.NumberOfFrames))) == {(1.0, -1024.0)}


# --- other monochrome images: the transfer syntaxes no CT file here has ---------------------

MONO = [e for e in _entries({"secondary-capture", "other-modality"})
        if int(_read(e).get("SamplesPerPixel", 1)) == 1]


@pytest.mark.parametrize("entry", MONO, ids=_ids(MONO))
def test_monochrome_values_equal_pydicom_or_refused(entry):
    """Rescaled stored values equal pydicom's; where no pydicom plugin here decodes the file
    (12-bit JPEG without pylibjpeg-libjpeg), lvtl refuses it with DicomError instead of
    returning something else."""
    path = DATA / entry["file"]
    try:
        ref = reference_hu(path)
    except (RuntimeError, NotImplementedError) as e:
        with pytest.raises(DicomError):
            read_image_hu(path)
        assert entry["file"] in NEEDS_PYLIBJPEG, f"pydicom cannot decode it: {e}"
        return
    _assert_same_voxels(path, ref)


def test_the_garbage_bits_file_has_garbage_above_high_bit():
    """Keeps the comparison on GARBAGE_BITS_FILE meaningful: its raw words have bits above
    HighBit that are not the sign extension, so a reader that keeps them differs."""
    ds = pydicom.dcmread(DATA / GARBAGE_BITS_FILE)
    assert ds.BitsAllocated == 16 and ds.BitsStored == 12 and ds.HighBit == 11
    assert ds.PixelRepresentation == 1 and not UID(ds.file_meta.TransferSyntaxUID).is_compressed
    raw = np.frombuffer(ds.PixelData, dtype="<u2")
    upper = raw >> 12
    sign_extension = np.where((raw >> 11) & 1, 0xF, 0)
    assert np.count_nonzero(upper != sign_extension) > 1000
    got = read_image_hu(DATA / GARBAGE_BITS_FILE)
    assert got.min() >= -2048 and got.max() <= 2047


def test_colour_image_is_refused():
    """A colour Secondary Capture (here with Modality CT) is no CT volume."""
    colour = [e for e in _entries({"secondary-capture"})
              if int(_read(e).get("SamplesPerPixel", 1)) == 3]
    assert colour
    for e in colour:
        with pytest.raises(DicomError):
            read_image_hu(DATA / e["file"])
