"""DICOM pixel data to HU, for every transfer syntax a PACS sends.

Two paths, with the same result:

* **Native little-endian data** (implicit or explicit VR, not deflated, 8 or 16 bits
  allocated, one sample) is read straight from its file offset, frame by frame — the fast
  path, with no dataset parsed per slice.
* **JPEG Lossless** (process 14, SV1) and **JPEG-LS** frames, the syntaxes PACS archives and
  CD exports of CT use most, are decoded by ``imagecodecs`` (libjpeg-turbo 3 and CharLS) from
  the encapsulated fragments: 3x and 1.6x faster than GDCM on a 512x512 CT frame, with the
  same values. A frame those libraries refuse, or decode to another shape, goes to GDCM.
* **Everything else** (compressed, deflated, big endian) is decoded by pydicom's pixel-data
  plugins: GDCM (``python-gdcm``) decodes JPEG baseline/extended, JPEG Lossless (process 14
  and SV1), JPEG-LS, JPEG 2000 and RLE.

Either way the stored values are what the standard says they are: the bits above
``HighBit`` are dropped and the value is sign-extended from ``HighBit`` when
``PixelRepresentation`` is 1 (real scanners leave overlay or garbage bits there: 12-bit
data read as 16 bits is off by 4096), and then ``RescaleSlope``/``RescaleIntercept`` give HU.
This equals pydicom's ``pixel_array`` plus rescale (tested on real files of several vendors).

``PixelPaddingValue`` is not treated specially: padded pixels (outside the scanner's field of
view) keep their rescaled value, which for CT is at or below air (-1000 HU and lower) and is
clipped to the intensity window's minimum by preprocessing like any other air.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import imagecodecs
import numpy as np
import pydicom
from pydicom import uid as uids
from pydicom.encaps import get_frame

from lvtl.errors import DicomError, first_line

#: Transfer syntaxes whose compression loses information (flagged by ``lvtl inspect``).
LOSSY = frozenset({
    uids.JPEGBaseline8Bit, uids.JPEGExtended12Bit, uids.JPEGLSNearLossless, uids.JPEG2000,
    uids.JPEG2000MC, uids.HTJ2K, "1.2.840.10008.1.2.4.52", "1.2.840.10008.1.2.4.53",
    "1.2.840.10008.1.2.4.54", "1.2.840.10008.1.2.4.55", "1.2.840.10008.1.2.4.56",
    "1.2.840.10008.1.2.4.59", "1.2.840.10008.1.2.4.60", "1.2.840.10008.1.2.4.61",
    "1.2.840.10008.1.2.4.62", "1.2.840.10008.1.2.4.63", "1.2.840.10008.1.2.4.64",
    "1.2.840.10008.1.2.4.65", "1.2.840.10008.1.2.4.66", uids.MPEG2MPML, uids.MPEG2MPHL,
    uids.MPEG4HP41, uids.MPEG4HP41BD, uids.HEVCMP51, uids.HEVCM10P51,
})


def is_lossy(transfer_syntax: str) -> bool:
    """Whether pixel data in this transfer syntax went through lossy compression."""
    return str(transfer_syntax) in LOSSY


def syntax_name(transfer_syntax: str) -> str:
    """A transfer syntax's name (its UID when pydicom does not know it)."""
    name = uids.UID(str(transfer_syntax)).name
    return name or str(transfer_syntax)


@dataclass(frozen=True)
class PixelCoding:
    """How one file's pixel data is stored (shared by all frames of the file)."""

    rows: int
    cols: int
    bits_allocated: int
    bits_stored: int
    high_bit: int
    signed: bool
    samples: int
    transfer_syntax: str
    frames: int = 1
    native_offset: int | None = None  # file offset of native little-endian pixel data

    @property
    def frame_bytes(self) -> int:
        return self.rows * self.cols * self.samples * self.bits_allocated // 8

    @property
    def fast(self) -> bool:
        """Readable from its file offset (native, little endian, one sample, whole bytes,
        ``HighBit`` at ``BitsStored - 1`` as the standard requires for CT)."""
        return (self.native_offset is not None and self.samples == 1
                and self.bits_allocated in (8, 16) and self.high_bit == self.bits_stored - 1)


def coding_of(ds, native_offset: int | None, get=None) -> PixelCoding:
    """The :class:`PixelCoding` of a dataset's header; ``native_offset`` is the file offset of
    its pixel data's value when the caller found it uncompressed (None otherwise). ``get``
    reads an attribute by keyword (default ``ds.get``; the header scan passes its faster
    raw reader)."""
    get = get or ds.get
    ts = ds.file_meta.TransferSyntaxUID
    native = (not ts.is_compressed and ts.is_little_endian and not ts.is_deflated)
    bits = int(get("BitsAllocated") or 16)
    stored = int(get("BitsStored") or bits)
    high = get("HighBit")
    return PixelCoding(
        rows=int(get("Rows")), cols=int(get("Columns")), bits_allocated=bits,
        bits_stored=stored, high_bit=int(high) if high is not None else stored - 1,
        signed=int(get("PixelRepresentation") or 0) == 1,
        samples=int(get("SamplesPerPixel") or 1), transfer_syntax=str(ts),
        frames=int(get("NumberOfFrames") or 1),
        native_offset=native_offset if native else None)


def _correct_bits(arr: np.ndarray, coding: PixelCoding) -> np.ndarray:
    """Drop the bits above ``HighBit`` and sign-extend from it (``arr`` unsigned ints)."""
    shift = coding.bits_allocated - coding.bits_stored
    if coding.signed:
        arr = arr.view(np.int16 if coding.bits_allocated == 16 else np.int8)
        if shift:
            arr = (arr << shift) >> shift  # arithmetic shift: sign extension
        return arr
    if shift:
        arr = arr & np.array((1 << coding.bits_stored) - 1, arr.dtype)
    return arr


def _native_frames(path: Path, coding: PixelCoding, frames: Iterable[int]
                   ) -> Iterator[np.ndarray]:
    n = coding.frame_bytes
    dtype = "<u2" if coding.bits_allocated == 16 else "u1"
    with open(path, "rb") as fh:
        for f in frames:
            fh.seek(coding.native_offset + f * n)
            raw = fh.read(n)
            if len(raw) < n:
                raise DicomError(f"{path}: pixel data truncated ({len(raw)} of {n} bytes "
                                 f"in frame {f + 1})")
            arr = np.frombuffer(raw, dtype=dtype).reshape(coding.rows, coding.cols)
            yield _correct_bits(arr, coding)


#: Decoders of ``imagecodecs`` for the compressed syntaxes they decode faster than GDCM.
CODECS = {
    uids.JPEGLossless: imagecodecs.jpeg8_decode,  # libjpeg-turbo 3: lossless JPEG, 2-16 bits
    uids.JPEGLosslessSV1: imagecodecs.jpeg8_decode,
    uids.JPEGLSLossless: imagecodecs.jpegls_decode,  # CharLS
    uids.JPEGLSNearLossless: imagecodecs.jpegls_decode,
}


def _codec_frames(path: Path, coding: PixelCoding, frames: list[int]
                  ) -> Iterator[np.ndarray] | None:
    """Frames of a JPEG Lossless or JPEG-LS file decoded by :data:`CODECS`, or None when a
    frame is refused or decodes to another shape than the header's (then GDCM decodes the
    file: it knows vendors' broken streams). Only the frames asked are read from the file
    (through the basic or extended offset table when there is one)."""
    decode = CODECS[uids.UID(coding.transfer_syntax)]
    container = np.uint16 if coding.bits_allocated == 16 else np.uint8
    out = []
    with open(path, "rb") as fh:
        ds = pydicom.dcmread(fh, stop_before_pixels=True)
        if fh.read(4) != b"\xe0\x7f\x10\x00":  # (7FE0,0010) encapsulated: explicit VR LE
            return None
        fh.seek(8, 1)  # VR, reserved, undefined length
        ext = None
        if "ExtendedOffsetTable" in ds and "ExtendedOffsetTableLengths" in ds:
            ext = (ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths)
        for f in frames:
            try:
                arr = decode(get_frame(fh, f, number_of_frames=coding.frames,
                                       extended_offsets=ext))
            except Exception:  # noqa: BLE001 - imagecodecs and pydicom raise many types
                return None
            if (arr.shape != (coding.rows, coding.cols) or arr.dtype.kind != "u"
                    or arr.dtype.itemsize > np.dtype(container).itemsize):
                return None
            out.append(_correct_bits(arr.astype(container, copy=False), coding))
    return iter(out)


def _decode(path: Path, coding: PixelCoding, frames: list[int]) -> Iterator[np.ndarray]:
    """Frames of data that is not on the fast path: JPEG Lossless and JPEG-LS by
    :data:`CODECS`, the rest (and what those refuse) by pydicom (GDCM's plugin for compressed
    data but RLE, which pydicom decodes itself: the result does not depend on which other
    plugins are installed)."""
    ts = uids.UID(coding.transfer_syntax)
    if ts in CODECS and coding.samples == 1 and coding.bits_allocated in (8, 16):
        got = _codec_frames(path, coding, frames)
        if got is not None:
            yield from got
            return
    # a deflated data set has no pixel data at a file offset: it is read whole first;
    # otherwise pydicom decodes from the file without reading the rest
    src = pydicom.dcmread(path) if ts.is_deflated else path
    if not ts.is_compressed:
        yield from pydicom.pixels.iter_pixels(src, indices=frames)
    elif ts == uids.JPEGExtended12Bit and coding.bits_stored > 8:
        # pydicom's GDCM plugin declines 12-bit JPEG; GDCM itself decodes it
        yield from _gdcm_frames(path, coding, frames)
    else:  # RLE: pydicom's own decoder
        plugin = "pydicom" if ts == uids.RLELossless else "gdcm"
        yield from pydicom.pixels.iter_pixels(src, indices=frames, decoding_plugin=plugin)


def _gdcm_frames(path: Path, coding: PixelCoding, frames: list[int]) -> Iterator[np.ndarray]:
    import gdcm  # only for the syntaxes pydicom's plugin declines

    reader = gdcm.ImageReader()
    reader.SetFileName(str(path))
    if not reader.Read():
        raise DicomError(f"{path}: GDCM cannot read the file")
    buf = reader.GetImage().GetBuffer()
    dtype = "<u2" if coding.bits_allocated == 16 else "u1"
    arr = np.frombuffer(buf.encode("utf-8", "surrogateescape"), dtype=dtype)
    arr = arr[: coding.frames * coding.rows * coding.cols].reshape(
        coding.frames, coding.rows, coding.cols)
    for f in frames:
        yield _correct_bits(arr[f].copy(), coding)


def iter_frames(path: str | Path, coding: PixelCoding, frames: Iterable[int]
                ) -> Iterator[np.ndarray]:
    """The stored values (integers, bits corrected) of ``frames`` (0-based) of one file, in
    the order asked; the file is opened and parsed once."""
    path = Path(path)
    frames = list(frames)
    try:
        if coding.fast:
            yield from _native_frames(path, coding, frames)
            return
        if coding.samples != 1:
            raise DicomError(f"{path}: {coding.samples} samples per pixel (colour), not a CT "
                             "image")
        order = sorted(set(frames))
        got = dict(zip(order, _decode(path, coding, order), strict=True))
        for f in frames:
            yield got[f]
    except DicomError:
        raise
    except Exception as e:  # the decoders raise many types on broken or unsupported data
        raise DicomError(f"{path}: cannot decode pixel data "
                         f"({syntax_name(coding.transfer_syntax)}: {first_line(e)})") from e


def to_hu(stored: np.ndarray, slope: float, intercept: float) -> np.ndarray:
    """Stored values to HU (float32)."""
    out = stored.astype(np.float32)
    if slope != 1.0:
        out *= np.float32(slope)
    if intercept != 0.0:
        out += np.float32(intercept)
    return out


def _rescale(ds, frame: int) -> tuple[float, float]:
    """A frame's rescale: the image's own attributes, or the Pixel Value Transformation
    functional group (per frame first, then shared) of an enhanced object."""
    for seq in ("PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence"):
        groups = ds.get(seq)
        if not groups:
            continue
        item = groups[frame if seq.startswith("PerFrame") else 0]
        pvt = item.get("PixelValueTransformationSequence")
        if pvt:
            return (float(pvt[0].get("RescaleSlope", 1) or 1),
                    float(pvt[0].get("RescaleIntercept", 0) or 0))
    return float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)


def read_image_hu(path: str | Path) -> np.ndarray:
    """Every frame of one image file in HU: float32 ``(frames, rows, cols)``.

    For checking a file on its own (the series reader goes through :func:`iter_frames`)."""
    path = Path(path)
    try:
        ds = pydicom.dcmread(path, defer_size=256)
        elem = ds.get_item("PixelData", keep_deferred=True)
        if elem is None:
            raise DicomError(f"{path}: no pixel data")
        coding = coding_of(ds, getattr(elem, "value_tell", None))
    except DicomError:
        raise
    except Exception as e:
        raise DicomError(f"{path}: unreadable DICOM ({first_line(e)})") from e
    frames = range(coding.frames)
    return np.stack([to_hu(arr, *_rescale(ds, f))
                     for f, arr in zip(frames, iter_frames(path, coding, frames), strict=True)])
