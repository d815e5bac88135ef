"""JPEG Lossless and JPEG-LS decoded by imagecodecs equal GDCM's decoding and the encoded
values, for every predictor and precision; what imagecodecs refuses goes to GDCM."""

from __future__ import annotations

import imagecodecs
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import CTImageStorage, JPEGLossless, JPEGLosslessSV1, JPEGLSLossless, generate_uid

from lvtl.errors import DicomError
from lvtl.io import dicom_pixels as dp


def _stored(rng, bits: int, signed: bool, n: int = 1) -> np.ndarray:
    """CT-like stored values: a disc of tissue in air with noise, ``n`` frames."""
    y, x = np.mgrid[:64, :48]
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    body = np.where((x - 24) ** 2 + (y - 32) ** 2 < 20 ** 2, hi // 3, lo // 2 if signed else 20)
    arr = body + rng.normal(0, 40, (n, 64, 48))
    return np.clip(np.rint(arr), lo, hi).astype(np.int32)


def _write(path, frames: list[bytes], ts, bits: int, signed: bool, n: int):
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ts
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.Modality = "CT"
    ds.Rows, ds.Columns = 64, 48
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits, bits - 1
    ds.PixelRepresentation = int(signed)
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    if n > 1:
        ds.NumberOfFrames = n
    ds.PixelData = encapsulate(frames, has_bot=True)
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    return dp.coding_of(pydicom.dcmread(path, stop_before_pixels=True), None)


def _patterns(stored: np.ndarray, bits: int) -> np.ndarray:
    """The bit patterns a JPEG stream holds: two's complement in ``bits`` bits."""
    return (stored & ((1 << bits) - 1)).astype(np.uint16)


@pytest.mark.parametrize("predictor", range(1, 8))
@pytest.mark.parametrize("bits,signed", [(12, False), (12, True), (16, True), (16, False)])
def test_jpeg_lossless_every_predictor_equals_gdcm_and_the_values(tmp_path, predictor, bits,
                                                                  signed):
    stored = _stored(np.random.default_rng(predictor), bits, signed)
    stream = imagecodecs.jpeg8_encode(_patterns(stored[0], bits), lossless=True,
                                      predictor=predictor, bitspersample=bits)
    ts = JPEGLosslessSV1 if predictor == 1 else JPEGLossless
    path = tmp_path / "f.dcm"
    coding = _write(path, [stream], ts, bits, signed, 1)
    fast = dp._codec_frames(path, coding, [0])
    assert fast is not None, "imagecodecs declined a valid lossless JPEG"
    got = next(fast)
    gdcm = pydicom.pixels.pixel_array(path, decoding_plugin="gdcm")
    assert got.dtype == gdcm.dtype
    assert np.array_equal(got, gdcm)
    assert np.array_equal(got.astype(np.int32), stored[0])
    assert np.array_equal(next(dp.iter_frames(path, coding, [0])), got)


def test_jpeg_ls_multiframe_reads_only_the_frames_asked(tmp_path):
    stored = _stored(np.random.default_rng(0), 16, True, n=5)
    streams = [imagecodecs.jpegls_encode(_patterns(f, 16)) for f in stored]
    path = tmp_path / "m.dcm"
    coding = _write(path, streams, JPEGLSLossless, 16, True, 5)
    got = list(dp.iter_frames(path, coding, [3, 1, 3]))
    assert [np.array_equal(g, stored[k]) for g, k in zip(got, [3, 1, 3], strict=True)] == [True] * 3
    gdcm = pydicom.pixels.pixel_array(path, decoding_plugin="gdcm")
    assert np.array_equal(np.stack(got), gdcm[[3, 1, 3]])


def test_a_frame_imagecodecs_refuses_goes_to_gdcm(tmp_path, monkeypatch):
    stored = _stored(np.random.default_rng(1), 12, False)
    stream = imagecodecs.jpeg8_encode(_patterns(stored[0], 12), lossless=True, predictor=1,
                                      bitspersample=12)
    path = tmp_path / "f.dcm"
    coding = _write(path, [stream], JPEGLosslessSV1, 12, False, 1)

    def refuse(data):
        raise imagecodecs.JpegError("unsupported")

    monkeypatch.setitem(dp.CODECS, JPEGLosslessSV1, refuse)
    assert dp._codec_frames(path, coding, [0]) is None
    assert np.array_equal(next(dp.iter_frames(path, coding, [0])), stored[0])  # by GDCM


def test_a_broken_stream_is_one_line_naming_the_file(tmp_path):
    stored = _stored(np.random.default_rng(2), 16, True)
    stream = imagecodecs.jpeg8_encode(_patterns(stored[0], 16), lossless=True, predictor=1,
                                      bitspersample=16)
    path = tmp_path / "broken.dcm"
    coding = _write(path, [stream[: len(stream) // 3] + b"\xff\xd9"], JPEGLosslessSV1, 16,
                    True, 1)
    try:
        got = list(dp.iter_frames(path, coding, [0]))
    except DicomError as e:
        assert "broken.dcm" in str(e) and "\n" not in str(e)
    else:  # a decoder that fills the missing rows must still not invent the image
        assert not np.array_equal(got[0], stored[0])
