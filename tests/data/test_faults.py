"""Faults found by an adversarial review of preprocessing and the case cache.

1. a label file whose header claims a huge volume is refused from its header, before any
   pixel data is read (and so is a series whose 1 mm grid would be huge);
2. a case folder that cannot be read is skipped, the other cases go on;
3. a damaged cache (an array missing, truncated or of the wrong shape) is never counted as
   cached nor handed out, and is rebuilt;
4. leftover temporary folders of a killed run are removed, those of live processes kept.

Every test writes real files (DICOM with :func:`write_phase`, NIfTI with nibabel) to
``tmp_path``; nothing of the code under test is mocked.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from tinycase import (
    DIRECTION,
    GEOMETRY,
    N_PHASES,
    N_PIX,
    write_case,
)

from lvtl.data.cache import cache_problem, cached, load_cached, load_site_cases
from lvtl.data.preprocess import (
    STALE_AGE_S,
    STALE_GRACE_S,
    PreprocessConfig,
    find_cases,
    load_labels,
    preprocess_case,
    preprocess_site,
)
from lvtl.errors import LabelError, PreprocessError
from lvtl.io.dicom import scan_series
from lvtl.io.geometry import Geometry
from lvtl.io.nifti import MAX_VOXELS, read_geometry, read_volume

BOMB_XYZ = (1400, 1400, 1400)  # 2.7 GB of uint8 claimed by a header


# --------------------------------------------------------------------------- helpers
def write_header_only_nifti(path: Path, shape_xyz: tuple[int, ...],
                            geometry: Geometry = GEOMETRY) -> Path:
    """A ``.nii.gz`` whose header claims ``shape_xyz`` (uint8) but that holds 1 KiB of data:
    a few hundred bytes on disk, gigabytes if its header were believed."""
    hdr = nib.Nifti1Header()
    hdr.set_data_dtype(np.uint8)
    hdr.set_data_shape(shape_xyz)
    hdr.set_qform(geometry.nifti_affine(), code=1)
    hdr.set_sform(geometry.nifti_affine(), code=1)
    hdr["vox_offset"] = 352
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(hdr.binaryblock + b"\0" * 4 + b"\0" * 1024))
    return path


def tree_hash(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_symlink():
            h.update(f"{p.relative_to(root)}->{os.readlink(p)}".encode())
        elif p.is_file():
            h.update(str(p.relative_to(root)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


# --------------------------------------------------------------------------- 1. header bomb
def test_label_header_on_another_grid_is_refused_before_its_data_is_read(tmp_path):
    case = write_case(tmp_path / "case")
    # the data section holds 1 KiB, the header claims 16x16x4000: reading it would fail with
    # a decompression error, so a shape error proves that only the header was read
    label = write_header_only_nifti(case / "labels" / "phase_01.nii.gz", (N_PIX, N_PIX, 4000))
    index = scan_series(case / "dicom")
    with pytest.raises(LabelError) as info:
        load_labels(case, index, PreprocessConfig())
    msg = str(info.value)
    assert "\n" not in msg
    assert "case/labels/phase_01.nii.gz" in msg
    assert "geometry does not match" in msg and "shape [4000, 16, 16]" in msg
    assert "cannot read" not in msg and "bytes" not in msg
    with pytest.raises(LabelError, match=r"header shape \[4000, 16, 16\] .* does not match "
                                         r"the image grid \[5, 16, 16\]"):
        read_volume(label, shape=GEOMETRY.shape)


def test_header_beyond_the_voxel_limit_is_refused_without_reading(tmp_path):
    path = write_header_only_nifti(tmp_path / "bomb.nii.gz", BOMB_XYZ)
    assert path.stat().st_size < 4096
    assert read_geometry(path).shape == BOMB_XYZ[::-1]  # the header alone costs nothing
    assert np.prod(BOMB_XYZ) > MAX_VOXELS
    with pytest.raises(LabelError) as info:
        read_volume(path)
    msg = str(info.value)
    assert str(path) in msg and "more than the limit" in msg and str(MAX_VOXELS) in msg
    assert "cannot read" not in msg


_CHILD = """
import resource, sys
from lvtl.data.preprocess import preprocess_site
for r in preprocess_site(sys.argv[1], sys.argv[2]):
    print("RESULT", r.case_id, r.status, r.reason)
print("MAXRSS_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def test_label_bomb_costs_no_memory_in_a_site_run(tmp_path):
    """The review's file: a label claiming 1400^3 voxels. The run refuses that case from the
    header and goes on; the process never grows by the gigabytes claimed."""
    root = tmp_path / "site"
    write_case(root / "case-a", seed=1)
    write_case(root / "case-bomb", seed=2, labelled=(0,))
    write_header_only_nifti(root / "case-bomb" / "labels" / "phase_01.nii.gz", BOMB_XYZ)
    r = subprocess.run([sys.executable, "-c", _CHILD, str(root), str(tmp_path / "out")],
                       capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    results = {line.split()[1]: line for line in r.stdout.splitlines()
               if line.startswith("RESULT")}
    assert results["case-a"].split()[2] == "written"
    bomb = results["case-bomb"]
    assert bomb.split()[2] == "failed"
    assert "case-bomb/labels/phase_01.nii.gz" in bomb and "shape [1400, 1400, 1400]" in bomb
    maxrss_mb = int(r.stdout.split("MAXRSS_KB")[1].split()[0]) / 1024
    assert maxrss_mb < 1000, f"peak memory {maxrss_mb:.0f} MB for a run of tiny cases"


def test_series_whose_resampled_grid_is_too_big_is_refused_before_reading_pixels(tmp_path):
    """16x16 pixels of 600 mm: a 1 mm grid of 9601 x 9601 x 9 voxels (3.3 GB a phase)."""
    huge = Geometry.make(GEOMETRY.shape, (2.0, 600.0, 600.0), GEOMETRY.origin, DIRECTION)
    case = write_case(tmp_path / "case-wide", geometry=huge, labelled=())
    out = tmp_path / "out"
    with pytest.raises(PreprocessError) as info:
        preprocess_case(case, out)
    msg = str(info.value)
    assert msg.startswith("case-wide: ") and "more than the limit" in msg and "\n" not in msg
    assert not out.exists() or not list(out.iterdir())


# --------------------------------------------------------------------------- 2. unreadable
def test_unreadable_case_folders_are_skipped_and_the_others_go_on(tmp_path, caplog):
    root = tmp_path / "site"
    write_case(root / "case-a", seed=1)
    write_case(root / "case-b", seed=2)
    # a case whose dicom/ also holds a FIFO and a folder named like a file: both passed over
    write_case(root / "case-f", seed=3)
    os.mkfifo(root / "case-f" / "dicom" / "IM99999.dcm")
    (root / "case-f" / "dicom" / "IM88888.dcm").mkdir()
    # stat() of a link to a name longer than NAME_MAX fails (ENAMETOOLONG), as a folder
    # without permission does for a user who is not root
    (root / "case-long").symlink_to("x" * 300)
    (root / "case-gone").symlink_to(tmp_path / "unmounted" / "case-gone")
    (root / "case-c").mkdir()
    (root / "case-c" / "dicom").symlink_to(tmp_path / "nowhere")
    (root / "case-d").mkdir()
    (root / "case-d" / "dicom").symlink_to("y" * 300)
    (root / "case-e").mkdir()
    (root / "case-e" / "dicom").write_text("not a folder")
    (root / "README.txt").write_text("a file at the site root is no case\n")
    (root / "notes").mkdir()  # a folder without dicom/ is no case either
    before = tree_hash(root)

    with caplog.at_level(logging.WARNING, logger="lvtl"):
        results = {r.case_id: r for r in preprocess_site(root, tmp_path / "out")}
    assert {k: r.status for k, r in results.items()} == {
        "case-a": "written", "case-b": "written", "case-f": "written",
        "case-long": "failed", "case-gone": "failed", "case-c": "failed", "case-d": "failed",
        "case-e": "failed"}
    why = {k: r.reason for k, r in results.items() if r.status == "failed"}
    assert "cannot read" in why["case-long"] and "too long" in why["case-long"]
    assert "broken symbolic link" in why["case-gone"]
    assert "dicom is a broken symbolic link" in why["case-c"]
    assert "cannot read" in why["case-d"]
    assert "dicom is not a folder" in why["case-e"]
    for name, reason in why.items():
        assert reason.startswith(f"{name}: ") and "\n" not in reason
        assert any(name in r.getMessage() for r in caplog.records)
    assert tree_hash(root) == before  # inputs are never modified


def test_a_site_of_one_unreadable_case_reports_it(tmp_path):
    root = tmp_path / "site"
    root.mkdir()
    (root / "case-long").symlink_to("x" * 300)
    unreadable: list[tuple[str, str]] = []
    assert find_cases(root, unreadable) == []
    assert [name for name, _ in unreadable] == ["case-long"]
    results = preprocess_site(root, tmp_path / "out")
    assert [(r.case_id, r.status) for r in results] == [("case-long", "failed")]


# --------------------------------------------------------------------------- 3. damaged cache
def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-7])


def _wrong_shape(path: Path) -> None:
    arr = np.load(path)
    np.save(path, arr[:-1])


def _wrong_dtype(path: Path) -> None:
    np.save(path, np.load(path).astype(np.int32))


DAMAGE = {
    "image missing": ("image.npy", Path.unlink),
    "label missing": ("label.npy", Path.unlink),
    "labelled missing": ("labelled.npy", Path.unlink),
    "image truncated": ("image.npy", _truncate),
    "label truncated": ("label.npy", _truncate),
    "labelled wrong shape": ("labelled.npy", _wrong_shape),
    "label wrong shape": ("label.npy", _wrong_shape),
    "image wrong dtype": ("image.npy", _wrong_dtype),
}


@pytest.fixture(scope="module")
def good_cache(tmp_path_factory) -> tuple[Path, Path]:
    """Two tiny cases and their caches (copied before being damaged)."""
    root = tmp_path_factory.mktemp("faults-site")
    out = tmp_path_factory.mktemp("faults-cache")
    for i, name in enumerate(("case-a", "case-b")):
        write_case(root / name, seed=i)
    assert {r.status for r in preprocess_site(root, out)} == {"written"}
    return root, out


@pytest.mark.parametrize("damage", DAMAGE)
def test_damaged_cache_is_not_cached_not_handed_out_and_rebuilt(good_cache, tmp_path, damage,
                                                                 caplog):
    root, good = good_cache
    out = tmp_path / "cache"
    shutil.copytree(good, out)
    name, how = DAMAGE[damage]
    how(out / "case-b" / name)

    problem = cache_problem(out / "case-b")
    assert problem is not None and name in problem
    assert not cached(out / "case-b")
    assert cached(out / "case-a")
    with pytest.raises(PreprocessError, match=f"case-b: not a complete lvtl cache .*{name}"):
        load_cached(out / "case-b")
    with caplog.at_level(logging.WARNING, logger="lvtl"):
        cases, excluded = load_site_cases(out)
    assert [c.case_id for c in cases] == ["case-a"]
    assert list(excluded) == ["case-b"] and name in excluded["case-b"]
    assert "damaged cache" in excluded["case-b"]
    assert any("case-b" in r.getMessage() and "damaged" in r.getMessage()
               for r in caplog.records)

    results = {r.case_id: r.status for r in preprocess_site(root, out)}
    assert results == {"case-a": "cached", "case-b": "written"}
    assert cached(out / "case-b")
    c = load_cached(out / "case-b")
    assert c.image.shape == c.label.shape and c.labelled.shape == (N_PHASES,)
    assert load_site_cases(out)[1] == {}


def test_cache_with_an_unreadable_meta_is_rebuilt(good_cache, tmp_path):
    root, good = good_cache
    out = tmp_path / "cache"
    shutil.copytree(good, out)
    (out / "case-a" / "meta.json").write_text('{"schema": "lvtl.cache/1", ')
    assert "meta.json" in cache_problem(out / "case-a")
    cases, excluded = load_site_cases(out)
    assert [c.case_id for c in cases] == ["case-b"] and "meta.json" in excluded["case-a"]
    assert preprocess_case(root / "case-a", out).status == "written"


# --------------------------------------------------------------------------- 4. leftovers
def _leftover(out: Path, name: str, age_s: float) -> Path:
    d = out / name
    d.mkdir(parents=True)
    (d / "image.npy").write_bytes(b"\x93NUMPY half written")
    t = time.time() - age_s
    for p in (d / "image.npy", d):
        os.utime(p, (t, t))
    return d


@pytest.fixture
def live_pid():
    """The pid of a process that runs while the test does."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


def test_stale_temporary_folders_are_removed_live_ones_kept(tmp_path, live_pid):
    root = tmp_path / "site"
    write_case(root / "case-a")
    out = tmp_path / "cache"
    dead = 2**22 + 4321  # above the largest pid Linux can give (PID_MAX_LIMIT): never running
    hour, days = 3600, 2 * 24 * 3600
    stale = [_leftover(out, f".tmp-case-a-{dead}", hour),
             _leftover(out, f".old-case-a-{dead}", hour),
             _leftover(out, f".tmp-site-2-017-{dead}", hour),
             _leftover(out, f".tmp-case-q-{live_pid}", days)]  # beyond STALE_AGE_S: pid reused
    kept = [_leftover(out, f".tmp-case-w-{os.getpid()}", days),  # this process: never
            _leftover(out, f".tmp-case-x-{live_pid}", hour),  # a live process
            _leftover(out, f".old-case-y-{dead}", 5)]  # just written: maybe another machine's
    other = [_leftover(out, ".tmp-case-z", hour), _leftover(out, "keep-me", hour)]
    assert hour > STALE_GRACE_S and days > STALE_AGE_S > hour

    results = preprocess_site(root, out)
    assert [(r.case_id, r.status) for r in results] == [("case-a", "written")]
    for d in stale:
        assert not d.exists(), d.name
    for d in kept + other:
        assert (d / "image.npy").is_file(), d.name
    assert cached(out / "case-a")
