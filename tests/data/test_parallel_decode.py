"""Phases decoded by workers (processes for JPEG, threads for native pixel data) give the
cache of the serial path, byte for byte."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate

from lvtl.data import preprocess as pp
from lvtl.data.preprocess import decode_worker_count, preprocess_case
from lvtl.errors import ConfigError, DicomError
from lvtl.io.dicom import scan_series
from lvtl.io.dicom_write import SeriesInfo, new_uid, write_study
from lvtl.io.geometry import Geometry
from lvtl.io.nifti import write_volume
from lvtl.labels import BLOOD_POOL, MYOCARDIUM, label_file_name

#: (layout, transfer syntax, export): a plain series with native pixels, and a scanner's CD
#: export (a JPEG Lossless series per phase, a DICOMDIR, a localizer, a second
#: reconstruction and dose objects).
EXPORTS = {"one-series": ("one-series", "explicit", False),
           "jpeg-export": ("series-per-phase", "jpeg-lossless", True)}


def _write_case(case, layout, syntax, export):
    """A tiny case: 4 phases of 10 x 40 x 36 voxels, labels (a ball in a shell) at 1 and 3."""
    g = Geometry.make((10, 40, 36), (1.3, 0.7, 0.7), (-9.0, -10.0, -8.0),
                      [[0, 0, 1], [0, 1, 0], [1, 0, 0]])
    rng = np.random.default_rng(3)
    phases = [(t, rng.integers(-1000, 1500, g.shape).astype(np.float32)) for t in range(4)]
    info = SeriesInfo(patient_id="p", patient_name="p", study_uid=new_uid(),
                      series_uid=new_uid(), frame_of_reference_uid=new_uid(), n_phases=4,
                      slice_thickness=1.3, rescale_intercept=-1024.0)
    write_study(case / "dicom", phases, g, info, layout=layout, transfer_syntax=syntax,
                export=export)
    zz, yy, xx = np.meshgrid(*(np.arange(n) * s for n, s in zip(g.shape, g.spacing,
                                                                 strict=True)), indexing="ij")
    for t, r in ((1, 5.0), (3, 4.0)):
        d = np.sqrt((zz - 6.5) ** 2 + (yy - 14.0) ** 2 + (xx - 12.6) ** 2)
        lab = np.where(d < r, BLOOD_POOL, np.where(d < r + 2.5, MYOCARDIUM, 0)).astype(np.uint8)
        write_volume(case / "labels" / label_file_name(t), lab, g)
    return case


@pytest.fixture(scope="module", params=sorted(EXPORTS))
def tiny_case(request, tmp_path_factory):
    return _write_case(tmp_path_factory.mktemp("cases") / request.param,
                       *EXPORTS[request.param])


class _CountingProcesses(pp.ProcessPoolExecutor):
    """The executor of compressed data, counting the phases it is given."""

    jobs = 0

    def submit(self, fn, /, *args, **kwargs):
        type(self).jobs += 1
        return super().submit(fn, *args, **kwargs)


class _CountingThreads(pp.ThreadPoolExecutor):
    """The executor of native data, counting the phases it is given."""

    jobs = 0

    def submit(self, fn, /, *args, **kwargs):
        type(self).jobs += 1
        return super().submit(fn, *args, **kwargs)


def _cache_bytes(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_parallel_cache_equals_serial_cache(tiny_case, tmp_path, monkeypatch):
    case = tiny_case
    serial = preprocess_case(case, tmp_path / "serial", decode_workers=1)
    monkeypatch.setattr(pp, "ProcessPoolExecutor", _CountingProcesses)
    monkeypatch.setattr(pp, "ThreadPoolExecutor", _CountingThreads)
    _CountingProcesses.jobs = _CountingThreads.jobs = 0
    parallel = preprocess_case(case, tmp_path / "parallel", decode_workers=2)
    # every phase went to a worker: a process for JPEG, a thread for native pixel data
    jpeg = "jpeg" in case.name
    assert (_CountingProcesses.jobs, _CountingThreads.jobs) == ((4, 0) if jpeg else (0, 4))
    assert serial.status == parallel.status == "written"
    assert serial.labelled == parallel.labelled == [1, 3]
    ours, theirs = (_cache_bytes(tmp_path / d / case.name) for d in ("serial", "parallel"))
    assert sorted(ours) == ["image.npy", "label.npy", "labelled.npy", "meta.json"]
    assert ours == theirs


def test_an_undecodable_phase_fails_alike_in_parallel(tmp_path):
    case = _write_case(tmp_path / "in" / "broken", *EXPORTS["jpeg-export"])
    bad = scan_series(case / "dicom").phases[2][5].path  # workers have started on others
    ds = pydicom.dcmread(bad)
    ds.PixelData = encapsulate([b"\xff\xd8" + bytes(98)])  # a JPEG that stops after SOI
    ds.save_as(bad)
    errors = []
    for workers in (1, 2):
        out = tmp_path / f"out{workers}"
        with pytest.raises(DicomError) as e:
            preprocess_case(case, out, decode_workers=workers)
        errors.append(str(e.value))
        assert not list(out.iterdir())  # no temporary folder left behind
    assert errors[0] == errors[1] and bad.name in errors[0]


def _index(phases, slices, rows, compressed):
    """A stand-in for a SeriesIndex: what decode_worker_count looks at."""
    sl = SimpleNamespace(rows=rows, cols=rows, coding=SimpleNamespace(fast=not compressed))
    return SimpleNamespace(phases=[[sl] * slices] * phases, n_phases=phases,
                           shape=(phases, slices, rows, rows))


def test_decode_worker_count(monkeypatch):
    jpeg = _index(20, 221, 512, compressed=True)  # the paper-size case as a JPEG export
    native = _index(20, 221, 512, compressed=False)
    small = _index(20, 50, 112, compressed=True)
    monkeypatch.delenv("LVTL_DECODE_WORKERS", raising=False)
    assert decode_worker_count(jpeg) == decode_worker_count(native) == pp.DECODE_WORKERS
    assert decode_worker_count(small) == 1  # workers would take longer to start
    assert decode_worker_count(small, 3) == 3
    assert decode_worker_count(_index(2, 9, 9, True), 8) == 2  # at most one per phase
    monkeypatch.setenv("LVTL_DECODE_WORKERS", "1")
    assert decode_worker_count(jpeg) == 1
    monkeypatch.setenv("LVTL_DECODE_WORKERS", "3")
    assert decode_worker_count(small) == 3
    monkeypatch.setenv("LVTL_DECODE_WORKERS", "two")
    with pytest.raises(ConfigError, match="LVTL_DECODE_WORKERS"):
        decode_worker_count(jpeg)
    with pytest.raises(ConfigError, match="at least 1"):
        decode_worker_count(jpeg, 0)
    # a case run among others in worker processes (preprocess_site): no nested pools
    monkeypatch.setenv("LVTL_DECODE_WORKERS", "4")
    monkeypatch.setattr(pp.multiprocessing, "parent_process", lambda: object())
    assert decode_worker_count(jpeg) == decode_worker_count(native) == 1
    # a daemonic process starts no processes, threads it may
    monkeypatch.setattr(pp.multiprocessing, "current_process",
                        lambda: SimpleNamespace(daemon=True))
    assert decode_worker_count(jpeg, 2) == 1
    assert decode_worker_count(native, 2) == 2
