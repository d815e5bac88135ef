"""Preprocessing: a case's DICOM series and label files to its cached 1 mm 4D pair.

:func:`preprocess_case` streams one case from DICOM to its cache (:mod:`lvtl.data.cache`) phase
by phase: labels are checked and relabelled, repaired (:mod:`lvtl.data.repair`) and resampled
with the image to the patient-aligned 1 mm grid (:mod:`lvtl.data.resample`), so data from
head-first and feet-first patients look alike to a model. The cache is written under a
temporary name and renamed into place, and reused while its inputs and settings are unchanged.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import multiprocessing
import os
import re
import shutil
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import closing
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from lvtl.data.cache import CACHE_SCHEMA, OTHER_KEY, NpyWriter, cache_problem
from lvtl.data.labelfiles import LabelMapping, find_label_files, read_label_file
from lvtl.data.repair import RepairMode, repair_labels
from lvtl.data.resample import (
    AIR_HU,
    LabelInterp,
    canonical_grid,
    resample_labels,
    resample_phase,
)
from lvtl.errors import ConfigError, LvtlError, PreprocessError, choose
from lvtl.io.atomic import replace_dir
from lvtl.io.dicom import SeriesIndex, scan_series
from lvtl.io.geometry import Geometry
from lvtl.io.nifti import MAX_VOXELS
from lvtl.io.seg_read import RoleMapping
from lvtl.labels import BLOOD_POOL, MYOCARDIUM
from lvtl.parallel import map_cases

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class PreprocessConfig:
    """Settings of preprocessing; part of the cache key."""

    spacing_mm: float = 1.0
    repair_radius: int = 5
    repair_mode: RepairMode = RepairMode.TWO_D
    label_interp: LabelInterp = LabelInterp.ONEHOT
    blood_pool_value: int = 1
    myocardium_value: int = 2
    #: Which 4D series of a case's export to use (a series UID, a number as ``lvtl inspect``
    #: lists them, or a description pattern such as ``"*B26f*"``); None: the rule of
    #: :func:`lvtl.io.dicom.choose`. A case's own ``series.txt`` overrides it.
    series: str | None = None
    #: How label files name their labels beyond the values above (None: the defaults of
    #: :class:`lvtl.data.labelfiles.LabelMapping`): RTSTRUCT ROI name patterns of the
    #: endocardium and epicardium, segment label patterns (SEG, .seg.nrrd) of the blood pool
    #: and myocardium, and segments to ignore (other structures).
    endo_rois: tuple[str, ...] | None = None
    epi_rois: tuple[str, ...] | None = None
    blood_pool_segments: tuple[str, ...] | None = None
    myocardium_segments: tuple[str, ...] | None = None
    ignore_segments: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if not 0.1 <= self.spacing_mm <= 10.0:
            raise ConfigError(f"spacing must be between 0.1 and 10 mm, got {self.spacing_mm}")
        if self.series is not None and (not isinstance(self.series, str)
                                        or not self.series.strip()):
            raise ConfigError(f"series must be a non-empty string, got {self.series!r}")
        for f in ("endo_rois", "epi_rois", "blood_pool_segments", "myocardium_segments",
                  "ignore_segments"):
            v = getattr(self, f)
            if v is None:
                continue
            if isinstance(v, str) or not all(isinstance(p, str) and p.strip() for p in v):
                raise ConfigError(f"{f} must be a list of name patterns, got {v!r}")
            object.__setattr__(self, f, tuple(v))
        if not 0 <= self.repair_radius <= 50:
            raise ConfigError(f"repair radius must be 0 to 50 pixels, got {self.repair_radius}")
        # choices given as text (TOML, the CLI) become Enums here, once
        object.__setattr__(self, "repair_mode",
                           choose(RepairMode, self.repair_mode, "repair mode"))
        object.__setattr__(self, "label_interp",
                           choose(LabelInterp, self.label_interp, "label interpolation"))
        if self.blood_pool_value == self.myocardium_value or 0 in (self.blood_pool_value,
                                                                    self.myocardium_value):
            raise ConfigError("blood pool and myocardium values must differ and be non-zero")

    def to_dict(self) -> dict:
        return asdict(self)

    def label_mapping(self) -> LabelMapping:
        """How this site's label files name their labels."""
        base, segs = LabelMapping(), RoleMapping()
        segs = replace(segs, **{k: v for k, v in {
            "blood_pool": self.blood_pool_segments, "myocardium": self.myocardium_segments,
            "ignore": self.ignore_segments}.items() if v is not None})
        return LabelMapping(self.blood_pool_value, self.myocardium_value,
                            self.endo_rois or base.endo_rois, self.epi_rois or base.epi_rois,
                            segs)


# --------------------------------------------------------------------------- cases
@dataclass
class CaseResult:
    """Outcome of preprocessing one case."""

    case_id: str
    status: str  # "written", "cached" or "failed"
    reason: str = ""
    cache: str = ""
    seconds: float = 0.0
    labelled: list[int] = field(default_factory=list)


def find_cases(root: str | Path, unreadable: list[tuple[str, str]] | None = None) -> list[Path]:
    """Case folders under ``root``: each holds a ``dicom/`` folder. ``root`` itself counts.

    An entry that cannot be used as a case (a broken symbolic link, a folder that cannot be
    read, a ``dicom`` that is not a folder) is left out and added to ``unreadable`` as
    ``(name, problem)`` (without ``unreadable``: one warning each); other files, hidden
    entries and folders without ``dicom`` are not cases and are passed over.
    """
    root = Path(root)
    try:
        if not root.is_dir():
            raise ConfigError(f"{root}: not a folder")
    except OSError as e:
        raise ConfigError(f"{root}: cannot read the data folder ({_os_reason(e)})") from e
    cases, bad = [], []
    problem = _case_problem(root)
    if problem == "":
        return [root]
    if problem is not None:  # root is a case folder with an unusable dicom
        entries = []
        bad.append((root.name, problem))
    else:
        try:
            entries = sorted(root.iterdir())
        except OSError as e:
            raise ConfigError(f"{root}: cannot read the data folder ({_os_reason(e)})") from e
    for p in entries:
        if p.name.startswith("."):
            continue
        problem = _case_problem(p)
        if problem == "":
            cases.append(p)
        elif problem is not None:
            bad.append((p.name, problem))
    if unreadable is not None:
        unreadable.extend(bad)
    else:
        for name, problem in bad:
            log.warning("%s: %s; skipped", name, problem)
    if not cases and not bad:
        raise ConfigError(f"{root}: no case folders (folders holding a dicom/ folder)")
    return cases


def _case_problem(p: Path) -> str | None:
    """'' for a case folder, None for an entry that is no case, else why it cannot be used."""
    try:
        if not p.is_dir():
            if p.is_symlink() and not p.exists():
                return f"broken symbolic link (to {os.readlink(p)})"
            return None  # a file: not a case
        d = p / "dicom"
        if d.is_dir():
            return ""
        if d.is_symlink() and not d.exists():
            return f"dicom is a broken symbolic link (to {os.readlink(d)})"
        if d.exists():
            return "dicom is not a folder"
        return None  # a folder without dicom/: not a case
    except OSError as e:  # e.g. no permission, a link to a name too long
        return f"cannot read the case folder ({_os_reason(e)})"


def _os_reason(e: OSError) -> str:
    return e.strerror or type(e).__name__


def iter_labels(case_dir: Path, index: SeriesIndex, config: PreprocessConfig):
    """Yield ``(phase, labels)`` for each label file of a case (any format of
    :mod:`lvtl.data.labelfiles`), checked and relabelled to 0/1/2 on the image geometry, one
    at a time."""
    for lf in find_label_files(case_dir, index):
        yield lf.phase, read_label_file(lf, index, config.label_mapping(),
                                        name=lf.name(case_dir))


def load_labels(case_dir: Path, index: SeriesIndex, config: PreprocessConfig
                ) -> dict[int, np.ndarray]:
    """Checked label maps (0/1/2, image geometry) of the labelled phases of a case."""
    return dict(iter_labels(case_dir, index, config))


def _label_box(lab: np.ndarray, config: PreprocessConfig) -> tuple[slice, ...]:
    """The labels' bounding box with room for the repair's closing."""
    r = config.repair_radius + 2
    margin = (r if config.repair_mode == "3d" else 2, r, r)
    nz = [np.flatnonzero(lab.any(axis=tuple(j for j in range(3) if j != a))) for a in range(3)]
    return tuple(slice(max(int(i[0]) - m, 0), min(int(i[-1]) + m + 1, n))
                 for i, m, n in zip(nz, margin, lab.shape, strict=True))


def _dst_box(sub: Geometry, dst: Geometry) -> tuple[slice, ...]:
    """The part of ``dst`` that the source box ``sub`` covers."""
    idx = (dst.lps_to_index() @ np.c_[sub.corners_lps(), np.ones(8)].T)[:3]
    lo = np.maximum(np.floor(idx.min(axis=1) - 1).astype(int), 0)
    hi = np.minimum(np.ceil(idx.max(axis=1) + 1).astype(int) + 1, dst.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))


#: A case's choice of series (first non-empty line), when its export holds several.
SERIES_FILE = "series.txt"


def case_series(case_dir: str | Path, config: PreprocessConfig | None = None) -> str | None:
    """The series a case uses: its ``series.txt``, else the config's choice (None: the rule)."""
    path = Path(case_dir) / SERIES_FILE
    if path.is_file():
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines()]
        chosen = next((ln for ln in lines if ln and not ln.startswith("#")), None)
        if chosen:
            return chosen
    return config.series if config is not None else None


def _fingerprint(case_dir: Path, config: PreprocessConfig) -> str:
    h = hashlib.sha256()
    h.update(CACHE_SCHEMA.encode())
    h.update(json.dumps(config.to_dict(), sort_keys=True).encode())
    h.update(f"series={case_series(case_dir, config)}\n".encode())
    for sub in ("dicom", "labels"):
        folder = case_dir / sub
        if not folder.is_dir():
            continue
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                st = p.stat()
                h.update(f"{p.relative_to(case_dir)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def preprocess_case(case_dir: str | Path, out_root: str | Path,
                    config: PreprocessConfig | None = None, *, force: bool = False,
                    decode_workers: int | None = None) -> CaseResult:
    """DICOM and labels of one case to its cached 1 mm 4D pair under ``out_root/<case>``.

    ``decode_workers`` workers (processes for compressed data, threads for native data)
    decode and resample the phases (None: the default for the series' size,
    :func:`decode_worker_count`); the cache is the same whatever the number.
    """
    config = config or PreprocessConfig()
    case_dir, out_root = Path(case_dir), Path(out_root)
    t0 = time.perf_counter()
    case_id = case_dir.name
    final = out_root / case_id
    key = _fingerprint(case_dir, config)
    exists = final.exists()
    problem = cache_problem(final, key) if exists else None
    if exists and problem is None and not force:
        meta = json.loads((final / "meta.json").read_text())
        return CaseResult(case_id, "cached", cache=str(final), labelled=meta["labelled_phases"])
    if problem not in (None, OTHER_KEY):  # damaged, not merely made from other inputs
        log.warning("%s: damaged cache (%s); rebuilding it", case_id, problem)
    index = scan_series(case_dir / "dicom", case_series(case_dir, config))
    # Sizes from the headers before any pixel data is read: one phase of the series and of
    # the resampled grid must each fit the limit (a header cannot claim gigabytes).
    dst = canonical_grid(index.geometry, config.spacing_mm)
    for what, g in (("the series", index.geometry),
                    (f"the {config.spacing_mm:g} mm grid", dst)):
        n = int(np.prod(g.shape, dtype=np.int64))
        if n > MAX_VOXELS:
            raise PreprocessError(f"{case_id}: {what} would hold {n} voxels per phase "
                                  f"({'x'.join(map(str, g.shape))}), more than the limit of "
                                  f"{MAX_VOXELS}; check the series' spacing and positions")
    # Labels first (fail fast on a bad file), kept only as crops around the heart.
    crops: dict[int, tuple[tuple[slice, ...], np.ndarray]] = {}
    for t, lab_t in iter_labels(case_dir, index, config):
        box = _label_box(lab_t, config)
        crops[t] = (box, lab_t[box].copy())
        del lab_t
    if not crops:
        log.warning("%s: no labels; the cache holds images only", case_id)
    out_root.mkdir(parents=True, exist_ok=True)
    tmp = out_root / f".tmp-{case_id}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        shape4 = (index.n_phases, *dst.shape)
        volumes: dict[int, dict] = {}
        with (NpyWriter(tmp / "image.npy", np.int16, shape4) as img,
              NpyWriter(tmp / "label.npy", np.uint8, shape4) as lab):
            hu_min, hu_max = _write_phases(index, dst, crops, config, img, lab, volumes,
                                           workers=decode_workers)
        labelled = np.zeros(index.n_phases, bool)
        labelled[list(volumes)] = True
        np.save(tmp / "labelled.npy", labelled)
        ed = max(volumes, key=lambda t: volumes[t]["blood_pool_ml"]) if volumes else None
        es = min(volumes, key=lambda t: volumes[t]["blood_pool_ml"]) if volumes else None
        meta = {
            "schema": CACHE_SCHEMA,
            "case_id": case_id,
            "key": key,
            "config": config.to_dict(),
            "geometry": dst.to_dict(),
            "source_geometry": index.geometry.to_dict(),
            "source_orientation": index.geometry.axis_codes(),
            "series_uid": index.series_uid,
            "phase_tag": index.phase_tag,
            "phase_keys": index.phase_keys,
            "n_phases": index.n_phases,
            "labelled_phases": sorted(volumes),
            "ed_phase": ed,
            "es_phase": es,
            "volumes": {str(k): v for k, v in sorted(volumes.items())},
            "hu_range": [hu_min, hu_max],
            "skipped_files": {str(k): len(v) for k, v in index.skipped.items()},
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return CaseResult(case_id, "written", cache=str(final), labelled=sorted(volumes),
                      seconds=time.perf_counter() - t0)


#: Workers that decode and resample the phases of a large series in parallel
#: (:func:`decode_worker_count`): processes for compressed pixel data (the decoders hold
#: Python's lock), threads for native data read from file offsets (reading and numpy
#: resampling release it, and a thread costs no start-up).
DECODE_WORKERS = min(2, os.cpu_count() or 1)
#: A series with fewer voxels (all phases) is read in this process: starting a worker process
#: (a fresh interpreter importing lvtl, 1 to 2 s) would cost more than it saves.
PARALLEL_MIN_VOXELS = 100_000_000


def _needs_decoding(index: SeriesIndex) -> bool:
    """Whether any pixel data of ``index`` must be decoded (compressed, or otherwise not
    readable from a file offset): then phases go to worker processes, else to threads."""
    return any(not s.coding.fast for phase in index.phases for s in phase)


def decode_worker_count(index: SeriesIndex, workers: int | None = None) -> int:
    """How many workers decode the phases of ``index``, never more than its phases.

    ``workers`` if given, else the environment variable ``LVTL_DECODE_WORKERS`` if set, else
    :data:`DECODE_WORKERS` for a series of at least :data:`PARALLEL_MIN_VOXELS` voxels, else
    1. Without ``workers`` it is 1 in a worker process of :func:`preprocess_site` (cases
    already run in parallel there: no nested pools); worker processes are never started from
    a daemonic process (a multiprocessing pool's worker cannot start processes).
    """
    if multiprocessing.current_process().daemon and _needs_decoding(index):
        return 1
    if workers is None:
        if multiprocessing.parent_process() is not None:  # one case among parallel ones
            return 1
        env = os.environ.get("LVTL_DECODE_WORKERS", "").strip()
        if env:
            try:
                workers = int(env)
            except ValueError:
                raise ConfigError(f"LVTL_DECODE_WORKERS must be a whole number, got "
                                  f"{env!r}") from None
        elif int(np.prod(index.shape, dtype=np.int64)) < PARALLEL_MIN_VOXELS:
            return 1
        else:
            workers = DECODE_WORKERS
    if workers < 1:
        raise ConfigError(f"decode workers must be at least 1, got {workers}")
    return min(int(workers), index.n_phases)


def _image_phase(index: SeriesIndex, t: int, dst: Geometry) -> tuple[np.ndarray, float, float]:
    """Phase ``t`` resampled to ``dst`` and rounded to int16; with its HU range before
    rounding."""
    res = resample_phase(index, t, dst, fill=AIR_HU)
    lo, hi = float(res.min()), float(res.max())
    np.rint(res, out=res)
    np.clip(res, -32768, 32767, out=res)
    return res.astype(np.int16), lo, hi


def _image_phase_job(job: tuple[SeriesIndex, Geometry]) -> tuple[np.ndarray, float, float]:
    """A worker's job: the one phase of a :func:`_one_phase` index."""
    index, dst = job
    return _image_phase(index, 0, dst)


def _one_phase(index: SeriesIndex, t: int) -> SeriesIndex:
    """``index`` cut to its phase ``t`` alone, without the export's headers: light to send."""
    return dataclasses.replace(index, phases=[index.phases[t]],
                               phase_keys=[index.phase_keys[t]], skipped={},
                               first_header=None, candidate=None, discovery=None)


def _image_phases(index: SeriesIndex, dst: Geometry, workers: int
                  ) -> Iterator[tuple[np.ndarray, float, float]]:
    """:func:`_image_phase` of every phase, in order; with ``workers > 1`` computed by that
    many worker processes (data to decode) or threads (native data), at most ``workers + 1``
    phases ahead of the consumer (bounded memory)."""
    if workers <= 1:
        for t in range(index.n_phases):
            yield _image_phase(index, t, dst)
        return
    if _needs_decoding(index):
        pool: Executor = ProcessPoolExecutor(workers,
                                             mp_context=multiprocessing.get_context("spawn"))

        def submit(t: int) -> Future:
            return pool.submit(_image_phase_job, (_one_phase(index, t), dst))
    else:
        pool = ThreadPoolExecutor(workers)

        def submit(t: int) -> Future:
            return pool.submit(_image_phase, index, t, dst)
    with pool:
        pending: deque[Future] = deque()
        try:
            for t in range(index.n_phases):
                pending.append(submit(t))
                if len(pending) > workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:  # stopped early (an error): drop the phases not yet started
            for f in pending:
                f.cancel()


def _write_phases(index: SeriesIndex, dst: Geometry, crops: dict, config: PreprocessConfig,
                  img: NpyWriter, lab: NpyWriter, volumes: dict, *,
                  workers: int | None = None) -> tuple[float, float]:
    """Stream every phase: resample the image, repair and resample its labels, append both.
    Fills ``volumes`` per labelled phase; returns the HU range of the resampled images.

    The images are decoded and resampled by :func:`decode_worker_count` workers while this
    thread repairs the labels and writes; the result is the same with any number of
    workers."""
    vox_ml = config.spacing_mm**3 / 1000.0
    hu_min, hu_max = np.inf, -np.inf
    with closing(_image_phases(index, dst, decode_worker_count(index, workers))) as images:
        for t, (res, lo, hi) in enumerate(images):
            hu_min, hu_max = min(hu_min, lo), max(hu_max, hi)
            img.append(res)
            del res
            out_t = np.zeros(dst.shape, np.uint8)
            if t in crops:
                box, sub = crops.pop(t)
                sub_geom = index.geometry.crop(box)
                repaired = repair_labels(sub, config.repair_radius, config.repair_mode)
                dbox = _dst_box(sub_geom, dst)
                out_t[dbox] = resample_labels(repaired, sub_geom, dst.crop(dbox),
                                              config.label_interp)
                volumes[t] = {"blood_pool_ml": float((out_t == BLOOD_POOL).sum() * vox_ml),
                              "myocardium_ml": float((out_t == MYOCARDIUM).sum() * vox_ml)}
            lab.append(out_t)
    return hu_min, hu_max


def _run_case(args: tuple) -> CaseResult:
    case_dir, out_root, config, force = args
    name = Path(case_dir).name
    try:
        return preprocess_case(case_dir, out_root, config, force=force)
    except LvtlError as e:
        return CaseResult(name, "failed", reason=_one_line(str(e)))
    except Exception as e:  # one bad case must not stop the others
        log.debug("case %s failed", case_dir, exc_info=True)
        return CaseResult(name, "failed",
                          reason=f"{name}: {type(e).__name__}: {_one_line(str(e))}")


def _one_line(text: str) -> str:
    return " ".join(text.split())


#: A leftover temporary folder of an interrupted run (``.tmp-<case>-<pid>`` written by
#: :func:`preprocess_case`, ``.old-<case>-<pid>`` by :func:`lvtl.io.atomic.replace_dir`) is
#: removed by :func:`preprocess_site` when process ``<pid>`` is not running and nothing in the
#: folder changed for ``STALE_GRACE_S`` seconds (a live writer on another machine sharing the
#: cache keeps changing it), or, whatever the pid (pids are reused), when nothing changed for
#: ``STALE_AGE_S`` seconds. A folder of the running process is never removed.
STALE_GRACE_S = 10 * 60
STALE_AGE_S = 24 * 3600
_LEFTOVER = re.compile(r"\.(tmp|old)-(.+)-(\d+)")


def _pid_running(pid: int) -> bool:
    if pid <= 0:
        return False
    if os.name == "nt":  # os.kill would end the process there: rely on the age alone
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it runs, as another user
        return True
    return True


def _last_change(folder: Path) -> float:
    """The newest modification time of ``folder`` and its entries (the files grow while a
    case is written)."""
    t = folder.lstat().st_mtime
    for p in folder.iterdir():
        t = max(t, p.lstat().st_mtime)
    return t


def remove_stale_temporaries(out_root: str | Path) -> list[Path]:
    """Remove the leftover temporary folders of interrupted runs under ``out_root`` (see
    :data:`STALE_AGE_S`); returns the folders removed."""
    out_root = Path(out_root)
    removed: list[Path] = []
    try:
        entries = sorted(out_root.iterdir()) if out_root.is_dir() else []
    except OSError:
        return removed
    for p in entries:
        m = _LEFTOVER.fullmatch(p.name)
        if m is None:
            continue
        pid = int(m.group(3))
        try:
            if p.is_symlink() or not p.is_dir() or pid == os.getpid():
                continue
            age = time.time() - _last_change(p)
        except OSError:
            continue
        if age < STALE_GRACE_S or (age < STALE_AGE_S and _pid_running(pid)):
            continue
        shutil.rmtree(p, ignore_errors=True)
        if not p.exists():
            removed.append(p)
            log.info("%s: removed the leftover of an interrupted run (process %d)", p, pid)
    return removed


def preprocess_site(root: str | Path, out_root: str | Path,
                    config: PreprocessConfig | None = None, *, workers: int = 1,
                    force: bool = False, progress: bool = False) -> list[CaseResult]:
    """Preprocess every case under ``root``; failed cases are reported, the others go on.

    A case folder that cannot be read is reported as failed without stopping the others, and
    the leftovers of interrupted runs under ``out_root`` are removed first
    (:func:`remove_stale_temporaries`)."""
    config = config or PreprocessConfig()
    unreadable: list[tuple[str, str]] = []
    cases = find_cases(root, unreadable)
    remove_stale_temporaries(out_root)
    jobs = [(c, out_root, config, force) for c in cases]
    results = map_cases(_run_case, jobs, workers=workers, desc="preprocess", progress=progress)
    results += [CaseResult(name, "failed", reason=f"{name}: {problem}")
                for name, problem in unreadable]
    results.sort(key=lambda r: r.case_id)
    for r in results:
        if r.status == "failed":
            log.error("%s", r.reason)
    return results
