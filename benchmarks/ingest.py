"""Ingest benchmark: DICOM to a 1 mm 4D volume, lvtl against dcm2niix, MONAI and a plain read.

One paper-size case, site-2 case 0, seed 0 (20 phases of 512 x 512 pixels, 221 slices, 4420
files in its 4D series), written in two ways into ``--workdir`` (default ``bench-run/``) once
and reused:

``uncompressed`` (``WORKDIR/site-2-000``)
    one series with every phase, explicit VR little endian, one file per slice, nothing else
    (2.3 GB);
``export`` (``WORKDIR/jpeg-export/site-2-000``)
    as a scanner's CD/PACS export: one series per phase, JPEG Lossless (process 14, SV1), a
    DICOMDIR file-set with a localizer, a second reconstruction of every phase (2 x thicker
    slices), a dose screen and a dose report (6600-odd files).

Each method then runs once, in a fresh child process (this script run again with
``--method``), so that its time and memory are its own:

``lvtl``
    ``lvtl.data.preprocess.preprocess_case(case, out, PreprocessConfig(), force=True)``: series
    discovery and checks, decoding and resampling every phase to the canonical 1 mm grid (in
    two workers for a large series: processes for compressed data, threads for native data;
    :func:`lvtl.data.preprocess.decode_worker_count`), label repair and resampling of the
    labelled phases, and the int16 cache written to disk.
``lvtl-serial``
    the same with ``LVTL_DECODE_WORKERS=1``: every phase read in the one thread, as before
    the parallel decoding; the cache must be the same, byte for byte (sha256 compared).
``dcm2niix`` (export case)
    ``dcm2niix -z n -o OUT EXPORT``: every series of the folder to uncompressed NIfTI (and its
    BIDS JSON sidecar); no resampling. ``dcm2niix-series`` runs it on a folder of hard links to
    the 4D series' files only (like for like with what lvtl decodes).
``monai``
    Per phase: ``LoadImage(reader="PydicomReader", image_only=True)``, ``EnsureChannelFirst()``,
    ``Spacing(pixdim=(1.0, 1.0, 1.0))`` (MONAI defaults otherwise), rounded to int16 and
    appended to a 4D ``.npy`` file on disk, as lvtl writes its cache. The files are first
    grouped by phase with header-only reads (timed separately, reported as "grouping"): by
    ``TemporalPositionIndex`` in the uncompressed case; in the export, CT Image Storage files
    that are no localizer, of the reconstruction with the thinnest slices, by
    ``TemporalPositionIndex``. Each phase's files are handed to MONAI as a folder of symbolic
    links to them (made outside the timed region): a folder is read as a 3D series, while a
    flat list of files is taken as the channels of one 2D image, which fails with "affine
    matrix of all images should be the same for channel-wise concatenation" since every slice
    has its own position.
``plain``
    ``pydicom.dcmread(f).pixel_array`` for every file of the 4D series, nothing kept: the floor
    set by pydicom (and its GDCM plugin for JPEG).

Before the methods of a case, a warm-up reads every file of it once (the plain read in the
uncompressed case, every file's bytes in the export), so every method reads from a warm file
cache. Each child reports its wall time, its RSS right after its imports (``baseline``), its
peak RSS (``VmHWM`` of itself at the end; ``ru_maxrss`` is recorded too but is not used, since
on Linux it carries the parent's high-water mark across fork and exec) and, sampled every
0.05 s, the summed RSS of itself and its descendants (lvtl's decoding workers, dcm2niix) with
each one's own ``VmHWM``; dcm2niix's peak comes from GNU ``time`` (``%M``). The 1-minute load
average and ``uptime`` are recorded before every run. Afterwards lvtl runs once more per case
under cProfile with ``LVTL_DECODE_WORKERS=1`` (not timed; ``--no-profile`` skips it), so the
profile shows the decoding rather than the wait for workers.

``discovery``: ``lvtl.io.dicom.discover(folder)`` alone on a folder of more than 20,000 files:
the export case and two copies of it given new study, series, instance and frame-of-reference
UIDs and patient IDs (three patients' exams, each with its DICOMDIR, localizer, two
reconstructions of 20 phases and dose objects), written with pydicom without decoding the
pixel data; timed once with a warm file cache, then once under cProfile.

Run: ``.venv/bin/python benchmarks/ingest.py [--case uncompressed|export|discovery ...]
[--workdir DIR] [--slices N] [--keep] [--lvtl-rev REV]``. A full-size run writes
``benchmarks/results/ingest.json`` (uncompressed), ``ingest-export.json`` and
``ingest-discovery.json``; with ``--slices N`` (a smaller case with N slices per phase) the
names end in ``-slicesN``. ``--lvtl-rev REV`` measures the lvtl package of a git revision
(e.g. ``HEAD``) instead of the working tree.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
SITE, INDEX, SEED, SIZE = "site-2", 0, 0, "paper"
MIB = 1024.0 * 1024.0
DCM2NIIX = Path(sys.executable).with_name("dcm2niix")
GNU_TIME = Path("/usr/bin/time")
#: The discovery folder: the export case, this many renamed copies of it, and a small exam of
#: another site (so that it holds more than 20,000 files).
DISCOVERY_COPIES = 2
DISCOVERY_SMALL = ("site-1", 0, "small")
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


@dataclass(frozen=True)
class CaseSpec:
    """How the benchmark case's DICOM is written (``lvtl.synth.site.write_case``'s options)."""

    name: str
    folder: str  # under the workdir ("" for the uncompressed case, as before)
    layout: str
    transfer_syntax: str
    export: bool

    def options(self) -> dict:
        return {"layout": self.layout, "transfer_syntax": self.transfer_syntax,
                "export": self.export}


CASES = {
    "uncompressed": CaseSpec("uncompressed", "", "one-series", "explicit", False),
    "export": CaseSpec("export", "jpeg-export", "series-per-phase", "jpeg-lossless", True),
}
CASE_MARK = "bench-case.json"  # the options a case folder was written with


# --------------------------------------------------------------------------- memory helpers
def _status_mib(field: str, pid: int | str = "self") -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024 / MIB
    return float("nan")


def _rss_now_mib() -> float:
    """Current resident set size of this process (MiB): VmRSS."""
    return _status_mib("VmRSS")


def _peak_rss_mib() -> float:
    """Peak resident set size of this process image (MiB): VmHWM.

    Not ``ru_maxrss``: on Linux that survives fork and exec, so a child started by a large
    parent reports at least the parent's RSS. VmHWM belongs to the address space made by exec.
    """
    return _status_mib("VmHWM")


def _ru_maxrss_mib() -> float:
    """``getrusage(RUSAGE_SELF).ru_maxrss`` (KiB on Linux) in MiB, kept for reference."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MIB


class TreeMemory:
    """Samples this process and its descendants every ``period`` s: the peak of their summed
    VmRSS, and each process's own VmHWM (the last value read before it ended)."""

    def __init__(self, period: float = 0.05):
        import psutil

        self.me = psutil.Process()
        self.period, self.peak_sum, self.hwm = period, 0.0, {}
        self.names: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self._sample()

    def _sample(self) -> None:
        try:
            procs = [self.me, *self.me.children(recursive=True)]
        except Exception:
            return
        total = 0.0
        for p in procs:
            try:
                rss, hwm = _status_mib("VmRSS", p.pid), _status_mib("VmHWM", p.pid)
                if p.pid not in self.names:
                    self.names[p.pid] = p.name()
            except (OSError, ValueError, Exception):
                continue  # ended meanwhile
            total += rss
            self.hwm[p.pid] = max(self.hwm.get(p.pid, 0.0), hwm)
        self.peak_sum = max(self.peak_sum, total)

    def report(self) -> dict:
        own = os.getpid()
        others = {pid: v for pid, v in self.hwm.items() if pid != own}
        return {"tree_peak_rss_mib": self.peak_sum,
                "tree_hwm_sum_mib": sum(self.hwm.values()),
                "descendants": [{"pid": pid, "name": self.names.get(pid, "?"),
                                 "hwm_mib": round(v, 1)} for pid, v in sorted(others.items())]}


def _cpu_busy_seconds() -> float:
    """CPU seconds spent busy by the whole machine since boot (``/proc/stat``, all CPUs)."""
    with open("/proc/stat") as fh:
        v = [int(x) for x in fh.readline().split()[1:]]
    idle = v[3] + (v[4] if len(v) > 4 else 0)  # idle + iowait
    return (sum(v[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _children_cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def others_busy(seconds: float = 3.0) -> float:
    """CPU cores kept busy by other processes over the next ``seconds`` (this one idles)."""
    a = _cpu_busy_seconds()
    time.sleep(seconds)
    return (_cpu_busy_seconds() - a) / seconds


def wait_quiet(max_cores: float | None, max_wait: float) -> float:
    """Wait (up to ``max_wait`` s) until other processes keep fewer than ``max_cores`` cores
    busy; the last measurement."""
    busy = others_busy()
    if max_cores is None:
        return busy
    t0 = time.monotonic()
    while busy >= max_cores and time.monotonic() - t0 < max_wait:
        print(f"(others busy {busy:.2f} cores, waiting)", end=" ", flush=True)
        time.sleep(10)
        busy = others_busy()
    return busy


def load_now() -> dict:
    """The load averages and ``uptime``'s line, before a run."""
    try:
        up = subprocess.run(["uptime"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        up = ""
    return {"load_average": list(os.getloadavg()), "uptime": up.strip()}


# --------------------------------------------------------------------------- the case
def case_params(slices: int | None):
    """Parameters of the benchmark case; with ``slices``, a shorter variant of it."""
    import dataclasses

    from lvtl.synth.profiles import draw_case

    params = draw_case(SITE, INDEX, seed=SEED, size=SIZE)
    if slices is not None:
        params = dataclasses.replace(params, slices=int(slices),
                                     case_id=f"{params.case_id}-s{int(slices)}")
    return params


def ensure_case(workdir: Path, spec: CaseSpec, slices: int | None) -> tuple[Path, float | None]:
    """The case folder of ``spec`` under ``workdir``, generated if missing; and the seconds
    that took. Generation runs in a child process so that this (parent) process stays small."""
    params = case_params(slices)
    root = workdir / spec.folder if spec.folder else workdir
    final = root / params.case_id
    if (final / "dicom").is_dir():
        stored = _stored_params(final)
        mark = _stored_mark(final)
        same_dicom = mark == spec.options() or (mark is None and spec.name == "uncompressed")
        if stored == json.loads(json.dumps(params.to_dict())) and same_dicom:
            return final, None
        print(f"{final} was written by another version of lvtl.synth or with other DICOM "
              f"options; regenerating it", flush=True)
    print(f"generating {params.case_id} ({params.slices} slices x 20 phases of "
          f"{params.rows} x {params.cols}, {spec.layout}, {spec.transfer_syntax}"
          f"{', export' if spec.export else ''}) into {root} ...", flush=True)
    t0 = time.perf_counter()
    root.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--method", "generate",
           "--out", str(root), "--spec", spec.name]
    if slices is not None:
        cmd += ["--slices", str(slices)]
    subprocess.run(cmd, check=True, cwd=REPO, env=_child_env())
    (final / CASE_MARK).write_text(json.dumps(spec.options()) + "\n")
    secs = time.perf_counter() - t0
    print(f"generated in {secs:.0f} s", flush=True)
    return final, secs


def _stored_params(case_dir: Path) -> dict | None:
    try:
        return json.loads((case_dir / "truth" / "case.json").read_text())["params"]
    except (OSError, ValueError, KeyError):
        return None


def _stored_mark(case_dir: Path) -> dict | None:
    try:
        return json.loads((case_dir / CASE_MARK).read_text())
    except (OSError, ValueError):
        return None


# --------------------------------------------------------------------------- lvtl snapshot
# lvtl may change while a long run goes on (it is being worked on); every process of one run
# imports the same copy of it, taken at the start and put first on the module search path.
_SNAPSHOT: Path | None = None


def _git(*a: str) -> str:
    try:
        return subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def snapshot_lvtl(scratch: Path, rev: str | None = None) -> dict:
    """Copy the lvtl package (of the working tree, or of git revision ``rev``) into
    ``scratch`` and use that copy from now on; its provenance."""
    import hashlib

    global _SNAPSHOT
    root = scratch / "lvtl-snapshot"
    if rev is None:
        shutil.copytree(REPO / "lvtl", root / "lvtl",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    else:
        root.mkdir(parents=True)
        archive = subprocess.run(["git", "archive", rev, "lvtl"], cwd=REPO, check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(root)], input=archive, check=True)
    _SNAPSHOT = root
    sys.path.insert(0, str(root))
    h = hashlib.sha256()
    for f in sorted((root / "lvtl").rglob("*.py")):
        h.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes())
    return {"git_head": _git("rev-parse", "HEAD"),
            "measured": "working tree" if rev is None else f"git {rev}",
            "measured_commit": _git("rev-parse", rev) if rev else _git("rev-parse", "HEAD"),
            "lvtl_dirty": bool(_git("status", "--porcelain", "--", "lvtl")) if rev is None
            else False,
            "lvtl_sha256": h.hexdigest()}


def _child_env(extra: dict | None = None) -> dict:
    env = dict(os.environ)
    env.pop("LVTL_DECODE_WORKERS", None)
    if _SNAPSHOT is not None:
        env["PYTHONPATH"] = os.pathsep.join(
            [str(_SNAPSHOT), *filter(None, [env.get("PYTHONPATH")])])
    env.update(extra or {})
    return env


def dicom_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))


# --------------------------------------------------------------------------- child methods
def child_readall(args: argparse.Namespace) -> dict:
    """Warm-up: every file's bytes, read once."""
    files = dicom_files(Path(args.folder))
    t0 = time.perf_counter()
    nbytes = 0
    for f in files:
        with open(f, "rb") as fh:
            while chunk := fh.read(1 << 22):
                nbytes += len(chunk)
    return {"seconds": time.perf_counter() - t0, "baseline_rss_mib": _rss_now_mib(),
            "files": len(files), "bytes": nbytes}


def child_plain(args: argparse.Namespace) -> dict:
    import pydicom

    files = ([Path(p) for p in Path(args.files).read_text().split("\n") if p] if args.files
             else dicom_files(Path(args.case) / "dicom"))
    baseline = _rss_now_mib()
    t0 = time.perf_counter()
    nbytes = 0
    for f in files:
        nbytes += pydicom.dcmread(f).pixel_array.nbytes
    secs = time.perf_counter() - t0
    return {"seconds": secs, "baseline_rss_mib": baseline, "files": len(files),
            "pixel_bytes": nbytes}


def child_lvtl(args: argparse.Namespace) -> dict:
    import numpy as np

    from lvtl.artifact import sha256_file
    from lvtl.data.cache import load_cached
    from lvtl.data.preprocess import PreprocessConfig, preprocess_case

    case_dir, out_dir = Path(args.case), Path(args.out)
    baseline = _rss_now_mib()
    config = PreprocessConfig()
    with TreeMemory() as mem:
        t0 = time.perf_counter()
        if not args.profile_to:
            res = preprocess_case(case_dir, out_dir, config, force=True)
        else:
            import cProfile

            prof = cProfile.Profile()
            res = prof.runcall(preprocess_case, case_dir, out_dir, config, force=True)
            prof.dump_stats(args.profile_to)
        secs = time.perf_counter() - t0
    peak = _peak_rss_mib()
    cache = load_cached(res.cache)
    return {"seconds": secs, "baseline_rss_mib": baseline, "peak_rss_mib": peak,
            **mem.report(), "decode_workers_env": os.environ.get("LVTL_DECODE_WORKERS"),
            "status": res.status, "output_shape": list(cache.image.shape),
            "output_dtype": str(cache.image.dtype),
            "output_bytes": int(cache.image.nbytes + cache.label.nbytes),
            "labelled_phases": res.labelled, "hu_range": cache.meta["hu_range"],
            "skipped_files": cache.meta.get("skipped_files"),
            "image_sha256": sha256_file(Path(res.cache) / "image.npy")[0],
            "label_sha256": sha256_file(Path(res.cache) / "label.npy")[0],
            "output_mean_hu": float(np.mean(cache.image[0], dtype=np.float64))}


def child_list_series(args: argparse.Namespace) -> dict:
    """Untimed set-up: the files of the 4D series lvtl chooses (one per line, to args.out)."""
    from lvtl.io.dicom import scan_series

    index = scan_series(Path(args.case) / "dicom")
    paths = sorted({str(s.path) for p in index.phases for s in p})
    Path(args.out).write_text("\n".join(paths) + "\n")
    return {"seconds": 0.0, "baseline_rss_mib": 0.0, "files": len(paths),
            "series": len(index.candidate.series_uids) if index.candidate else None}


def child_dcm2niix(args: argparse.Namespace) -> dict:
    folder, out_dir = Path(args.folder), Path(args.out)
    timing = out_dir.parent / f"{out_dir.name}.time"
    log = out_dir.parent / f"{out_dir.name}.log"
    cmd = [str(GNU_TIME), "-f", "%e %M", "-o", str(timing), str(DCM2NIIX), "-z", "n",
           "-o", str(out_dir), str(folder)]
    baseline = _rss_now_mib()
    with TreeMemory() as mem, open(log, "w") as fh:
        t0 = time.perf_counter()
        rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT).returncode
        secs = time.perf_counter() - t0
    gnu_secs, gnu_kib = timing.read_text().split()[-2:]
    text = log.read_text(errors="replace")
    nii = sorted(p.name for p in out_dir.glob("*.nii"))
    sidecars = sorted(p.name for p in out_dir.glob("*.json"))
    others = sorted(p.name for p in out_dir.iterdir() if p.suffix not in (".nii", ".json"))
    nbytes = sum(p.stat().st_size for p in out_dir.iterdir())
    import nibabel as nib

    shapes: dict[str, int] = {}
    for name in nii:
        shape = "x".join(map(str, nib.load(out_dir / name).shape))
        shapes[shape] = shapes.get(shape, 0) + 1
    return {"seconds": secs, "returncode": rc, "baseline_rss_mib": baseline,
            "peak_rss_mib": int(gnu_kib) / 1024.0, "gnu_time_seconds": float(gnu_secs),
            **mem.report(), "command": " ".join(cmd[5:]), "nifti_files": len(nii),
            "json_files": len(sidecars), "other_files": others, "output_bytes": nbytes,
            "nifti_shapes": shapes, "nifti_names_first": nii[:6],
            "log_warnings": sum("warning" in ln.lower() for ln in text.splitlines()),
            "log_tail": text.splitlines()[-8:]}


def group_by_phase(files: list[Path]) -> dict[int, list[Path]]:
    """Files grouped by TemporalPositionIndex (header-only reads), in file-name order."""
    import pydicom

    groups: dict[int, list[Path]] = {}
    for f in files:
        ds = pydicom.dcmread(f, stop_before_pixels=True, specific_tags=["TemporalPositionIndex"])
        groups.setdefault(int(ds.TemporalPositionIndex), []).append(f)
    return dict(sorted(groups.items()))


def group_export_by_phase(files: list[Path]) -> tuple[dict[int, list[Path]], dict]:
    """An export's files grouped by phase as a MONAI user would (header-only reads): CT Image
    Storage files that are no localizer, of the reconstruction with the thinnest slices, by
    TemporalPositionIndex. Also what was left out."""
    import pydicom

    tags = ["SOPClassUID", "ImageType", "SeriesInstanceUID", "SliceThickness",
            "TemporalPositionIndex"]
    images: list[tuple[float, int, Path]] = []
    left_out = {"not CT image storage": 0, "localizer": 0, "thicker reconstruction": 0}
    for f in files:
        ds = pydicom.dcmread(f, stop_before_pixels=True, specific_tags=tags)
        if str(ds.get("SOPClassUID", "")) != CT_IMAGE_STORAGE:
            left_out["not CT image storage"] += 1
        elif "LOCALIZER" in [str(v).upper() for v in ds.get("ImageType", [])]:
            left_out["localizer"] += 1
        else:
            images.append((float(ds.SliceThickness), int(ds.TemporalPositionIndex), f))
    thinnest = min(t for t, _, _ in images)
    groups: dict[int, list[Path]] = {}
    for thick, phase, f in images:
        if thick > thinnest + 1e-6:
            left_out["thicker reconstruction"] += 1
            continue
        groups.setdefault(phase, []).append(f)
    return dict(sorted(groups.items())), left_out


def child_monai(args: argparse.Namespace) -> dict:
    import numpy as np
    import torch
    from monai.transforms import EnsureChannelFirst, LoadImage, Spacing

    case_dir, out_dir = Path(args.case), Path(args.out)
    load = LoadImage(reader="PydicomReader", image_only=True)
    channel_first = EnsureChannelFirst()
    spacing = Spacing(pixdim=(1.0, 1.0, 1.0))
    files = dicom_files(case_dir / "dicom")
    baseline = _rss_now_mib()

    with TreeMemory() as mem:
        t0 = time.perf_counter()
        left_out = None
        if args.spec == "export":
            groups, left_out = group_export_by_phase(files)
        else:
            groups = group_by_phase(files)
        grouping = time.perf_counter() - t0

        # Untimed: a folder of symbolic links per phase, the form PydicomReader reads as a
        # series.
        link_root = out_dir / "phases"
        phase_dirs = []
        for t, (_, members) in enumerate(groups.items()):
            d = link_root / f"phase_{t:02d}"
            d.mkdir(parents=True)
            for i, f in enumerate(members):
                (d / f"{i:05d}_{f.name}").symlink_to(f.resolve())
            phase_dirs.append(d)

        # Each resampled phase is rounded to int16 and appended to a 4D .npy file with plain
        # writes, as lvtl writes its cache, so neither process holds its output in memory.
        t_load = t_space = t_store = 0.0
        fh = None
        t1 = time.perf_counter()
        for d in phase_dirs:
            a = time.perf_counter()
            img = channel_first(load(str(d)))
            b = time.perf_counter()
            res = spacing(img)
            c = time.perf_counter()
            arr = res.numpy()[0]
            if fh is None:
                out_shape = (len(phase_dirs), *arr.shape)
                in_shape, in_dtype, out_dtype = list(img.shape), str(img.dtype), str(res.dtype)
                fh = open(out_dir / "image.npy", "wb")
                np.lib.format.write_array_header_1_0(
                    fh, {"descr": "<i2", "fortran_order": False, "shape": out_shape})
            fh.write(np.clip(np.rint(arr), -32768, 32767).astype("<i2").tobytes())
            del img, res, arr
            t_load += b - a
            t_space += c - b
            t_store += time.perf_counter() - c
        fh.close()
        secs = time.perf_counter() - t1
    peak = _peak_rss_mib()
    out = np.load(out_dir / "image.npy", mmap_mode="r")
    return {"seconds": secs, "grouping_seconds": grouping, "baseline_rss_mib": baseline,
            "peak_rss_mib": peak, **mem.report(), "load_seconds": t_load,
            "spacing_seconds": t_space, "store_seconds": t_store, "phases": len(phase_dirs),
            "files_per_phase": sorted({len(v) for v in groups.values()}),
            "grouping_left_out": left_out,
            "input_shape_per_phase": in_shape, "input_dtype": in_dtype,
            "spacing_output_dtype": out_dtype, "output_shape": list(out.shape),
            "output_bytes": int(out.nbytes), "torch_threads": torch.get_num_threads(),
            "output_mean_hu": float(np.mean(out[0], dtype=np.float64))}


def child_discover(args: argparse.Namespace) -> dict:
    from lvtl.io.dicom import discover

    folder = Path(args.folder)
    baseline = _rss_now_mib()
    if args.profile_to:
        import cProfile

        prof = cProfile.Profile()
        t0 = time.perf_counter()
        found = prof.runcall(discover, folder)
        secs = time.perf_counter() - t0
        prof.dump_stats(args.profile_to)
    else:
        t0 = time.perf_counter()
        found = discover(folder)
        secs = time.perf_counter() - t0
    return {"seconds": secs, "baseline_rss_mib": baseline, "peak_rss_mib": _peak_rss_mib(),
            "files": found.files if isinstance(found.files, int) else len(found.files),
            "candidates": [c.line() for c in found.candidates],
            "skipped": {str(k): v for k, v in found.skipped_counts().items()},
            "problems": found.problems[:5]}


def child_copy_export(args: argparse.Namespace) -> dict:
    """Copy an export folder with new study, series, instance and frame-of-reference UIDs and
    patient ID/name (``args.copy_id``): the same exam as another patient's. Pixel data is
    copied as stored (never decoded)."""
    import pydicom
    from pydicom.uid import generate_uid

    src, dst, tag = Path(args.folder), Path(args.out), args.copy_id
    uid_keys = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID",
                "FrameOfReferenceUID", "MediaStorageSOPInstanceUID")
    mapping: dict[str, str] = {}

    def new(uid: str) -> str:
        if uid not in mapping:
            mapping[uid] = generate_uid(entropy_srcs=[tag, uid])
        return mapping[uid]

    t0 = time.perf_counter()
    n = 0
    for f in dicom_files(src):
        out = dst / f.relative_to(src)
        out.parent.mkdir(parents=True, exist_ok=True)
        if f.name == "DICOMDIR":  # its records name the source's UIDs: kept as a copy
            shutil.copyfile(f, out)
            n += 1
            continue
        ds = pydicom.dcmread(f)
        for key in uid_keys:
            for d in (ds, ds.file_meta):
                if key in d:
                    setattr(d, key, new(str(getattr(d, key))))
        for seq in ("ReferencedSeriesSequence", "ReferencedImageSequence"):
            for item in ds.get(seq, []):
                for key in ("SeriesInstanceUID", "ReferencedSOPInstanceUID"):
                    if key in item:
                        setattr(item, key, new(str(getattr(item, key))))
        ds.PatientID = f"{ds.get('PatientID', '')}-{tag}"
        ds.PatientName = f"{ds.get('PatientName', '')}^{tag}"
        ds.save_as(out)
        n += 1
    return {"seconds": time.perf_counter() - t0, "baseline_rss_mib": 0.0, "files": n}


def run_child_method(args: argparse.Namespace) -> None:
    if args.method == "generate":
        from lvtl.synth.profiles import draw_case
        from lvtl.synth.site import write_case

        spec = CASES[args.spec]
        if args.other:  # SITE:INDEX:SIZE
            site, index, size = args.other.split(":")
            params = draw_case(site, int(index), seed=SEED, size=size)
        else:
            params = case_params(args.slices)
        write_case(params, Path(args.out), overwrite=True, **spec.options())
        return
    if args.out and args.method in ("lvtl", "monai", "plain", "dcm2niix"):
        Path(args.out).mkdir(parents=True, exist_ok=True)
    res = {"readall": child_readall, "plain": child_plain, "lvtl": child_lvtl,
           "monai": child_monai, "dcm2niix": child_dcm2niix, "discover": child_discover,
           "list-series": child_list_series, "copy-export": child_copy_export}[args.method](args)
    res.setdefault("peak_rss_mib", _peak_rss_mib())
    res["ru_maxrss_mib"] = _ru_maxrss_mib()
    res["method"] = args.method
    res["pid"] = os.getpid()
    if "lvtl" in sys.modules:
        res["lvtl_file"] = sys.modules["lvtl"].__file__
    Path(args.result).write_text(json.dumps(res, indent=2) + "\n")


# --------------------------------------------------------------------------- parent
#: (cores, seconds): before each timed run, wait up to this long until other processes keep
#: fewer than this many cores busy (--quiet).
QUIET: tuple[float | None, float] = (None, 0.0)


def spawn(label: str, method: str, scratch: Path, *, keep: bool = False,
          env: dict | None = None, timed: bool = True, **opts) -> dict:
    """Run one method in a fresh interpreter (``opts`` become its ``--option value``s);
    its result dict, with the load before it."""
    out_dir = scratch / f"out-{label}"
    if out_dir.exists():
        shutil.rmtree(out_dir)
    result = scratch / f"result-{label}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--method", method,
           "--out", str(opts.pop("out", out_dir)), "--result", str(result)]
    for k, v in opts.items():
        if v is not None:
            cmd += [f"--{k.replace('_', '-')}", str(v)]
    print(f"  {label} ...", end=" ", flush=True)
    busy_before = wait_quiet(QUIET[0], QUIET[1]) if timed else None
    before = load_now()
    print(f"(load {before['load_average'][0]:.2f}) ...", end=" ", flush=True)
    t0 = time.perf_counter()
    cpu0, kids0 = _cpu_busy_seconds(), _children_cpu_seconds()
    subprocess.run(cmd, check=True, cwd=REPO, env=_child_env(env))
    wall = time.perf_counter() - t0
    cpu = _cpu_busy_seconds() - cpu0
    kids = _children_cpu_seconds() - kids0
    res = json.loads(result.read_text())
    res["child_wall_seconds"] = wall
    res["cpu_seconds"] = kids  # the child's and its descendants' CPU time
    # CPU cores other processes kept busy meanwhile (the machine's busy time less the child's)
    res["others_busy_cores_during"] = max(cpu - kids, 0.0) / wall
    res["others_busy_cores_before"] = busy_before
    if "lvtl_file" in res and _SNAPSHOT is not None and not res["lvtl_file"].startswith(
            str(_SNAPSHOT)):
        raise RuntimeError(f"{method} child imported {res['lvtl_file']}, not the snapshot")
    res["load_before"] = before
    res["load_average_after"] = os.getloadavg()
    if env:
        res["env"] = env
    result.unlink()
    tree = res.get("tree_peak_rss_mib")
    print(f"{res['seconds']:.1f} s, peak RSS {res['peak_rss_mib']:.0f} MiB"
          f"{f' (tree {tree:.0f} MiB)' if tree else ''}, others busy "
          f"{res['others_busy_cores_during']:.2f} cores", flush=True)
    if not keep:
        shutil.rmtree(out_dir, ignore_errors=True)
    return res


def summarise_profile(path: Path, top: int = 15) -> dict:
    import pstats

    st = pstats.Stats(str(path))
    stats = st.stats  # {(file, line, func): (cc, nc, tottime, cumtime, callers)}
    total = max(v[3] for v in stats.values())

    def name(key) -> str:
        file, line, func = key
        if file == "~":
            return func
        parts = Path(file).parts
        short = "/".join(parts[-2:]) if "site-packages" not in parts else "/".join(
            parts[parts.index("site-packages") + 1:])
        return f"{short}:{line}({func})"

    def callers(k) -> list[dict]:
        """The two callers that spent most of ``k``'s own time."""
        cs = sorted(stats[k][4].items(), key=lambda kv: kv[1][2], reverse=True)[:2]
        return [{"caller": name(c), "calls": v[1], "tottime": round(v[2], 3)} for c, v in cs]

    def is_lvtl(key) -> bool:
        return f"{os.sep}lvtl{os.sep}" in key[0]

    memo: dict = {}

    def lvtl_share(key) -> dict:
        """How ``key``'s calls split over its nearest lvtl callers (fractions, by cumtime)."""
        if key in memo:
            return memo[key] or {}
        memo[key] = None  # cycle guard
        edges = stats[key][4]
        total = sum(v[3] for v in edges.values())
        out: dict = {}
        for c, v in edges.items():
            w = v[3] / total if total > 0 else 1.0 / len(edges)
            for k2, f in ({c: 1.0} if is_lvtl(c) else lvtl_share(c)).items():
                out[k2] = out.get(k2, 0.0) + w * f
        memo[key] = out
        return out

    def via_lvtl(k) -> list[dict]:
        """The nearest lvtl functions above ``k`` that its own time is spent for."""
        if is_lvtl(k):
            return []
        edges = stats[k][4]
        total = sum(v[2] for v in edges.values())
        out: dict = {}
        for c, v in edges.items():
            w = v[2] / total if total > 0 else 1.0 / max(len(edges), 1)
            for k2, f in ({c: 1.0} if is_lvtl(c) else lvtl_share(c)).items():
                out[k2] = out.get(k2, 0.0) + w * f * stats[k][2]
        best = sorted(out.items(), key=lambda kv: kv[1], reverse=True)[:2]
        return [{"lvtl": name(c), "tottime": round(t, 3)} for c, t in best]

    def rows(idx: int) -> list[dict]:
        keys = sorted(stats, key=lambda k: stats[k][idx], reverse=True)[:top]
        return [{"function": name(k), "calls": stats[k][1], "tottime": round(stats[k][2], 3),
                 "cumtime": round(stats[k][3], 3), "callers": callers(k),
                 "via_lvtl": via_lvtl(k)} for k in keys]

    # lvtl's own functions by cumulative time (nested: a caller includes its callees).
    lv_keys = sorted((k for k in stats if is_lvtl(k) and stats[k][3] >= 0.01 * total),
                     key=lambda k: stats[k][3], reverse=True)[:top]
    steps = [{"step": name(k), "calls": stats[k][1], "cumtime": round(stats[k][3], 3),
              "tottime": round(stats[k][2], 3)} for k in lv_keys]
    return {"total_seconds": round(total, 3), "steps": steps, "by_tottime": rows(2),
            "by_cumtime": rows(3)}


def _profile_md(prof: dict | None, what: str) -> list[str]:
    if not prof:
        return []
    lines = [
        "",
        f"#### Where lvtl's time goes ({what}: cProfile, separate run, "
        f"{prof['total_seconds']:.1f} s under the profiler)",
        "",
        "lvtl functions taking at least 1% (cumulative: a function includes its callees):",
        "",
        "| lvtl function | Calls | Cumulative (s) | Share | Own (s) |",
        "|---|---:|---:|---:|---:|",
    ]
    for s in prof["steps"]:
        lines.append(f"| `{s['step']}` | {s['calls']} | {s['cumtime']:.1f} | "
                     f"{100 * s['cumtime'] / prof['total_seconds']:.0f}% | "
                     f"{s['tottime']:.1f} |")
    lines += ["", "Top functions by own time:", "",
              "| Function | Calls | Own (s) | Cumulative (s) | For (nearest lvtl caller, s) |",
              "|---|---:|---:|---:|---|"]
    for f in prof["by_tottime"]:
        via = "; ".join(f"`{c['lvtl']}` ({c['tottime']:.1f})" for c in f["via_lvtl"])
        lines.append(f"| `{f['function']}` | {f['calls']} | {f['tottime']:.1f} | "
                     f"{f['cumtime']:.1f} | {via} |")
    return lines


def _mem(res: dict) -> str:
    tree = res.get("tree_peak_rss_mib")
    return f"{tree:.0f}" if tree else "-"


def _load(res: dict) -> str:
    """The 1-minute load average before a run, and the cores other processes kept busy
    during it."""
    return (f"{res['load_before']['load_average'][0]:.2f} / "
            f"{res['others_busy_cores_during']:.2f}")


def _provenance(results: dict) -> str:
    lv = results["lvtl"]
    what = (f"lvtl at git {lv['git_head'][:7]}"
            f"{' + uncommitted changes' if lv['lvtl_dirty'] else ''}"
            if lv["measured"] == "working tree" else
            f"lvtl of {lv['measured']} ({lv['measured_commit'][:7]})")
    return (f"Host: {results['host']['cpus']} CPUs, Python {results['host']['python']}; "
            f"{what}.")


def _same_cache(runs: dict, how: str) -> list[str]:
    """The line saying whether the ``how`` (threaded, parallel) and the serial lvtl runs
    wrote the same cache; none without a serial run."""
    if "lvtl-serial" not in runs:
        return []
    one, many = runs["lvtl-serial"], runs["lvtl"]
    same = all(one[k] == many[k] for k in ("image_sha256", "label_sha256"))
    return [f"Cache of the {how} and the serial run identical (sha256 of image.npy and "
            f"label.npy): {'yes' if same else 'NO'}."]


def markdown_uncompressed(results: dict) -> str:
    r = results["runs"]
    lv, mo, pl = r["lvtl"], r["monai"], r["plain"]
    case = results["case"]
    lines = [
        f"### Ingest benchmark, uncompressed: {case['case_id']} ({case['phases']} phases x "
        f"{case['slices']} slices of {case['rows']} x {case['cols']}, {case['files']} files, "
        f"{case['bytes'] / 1e9:.2f} GB)",
        "",
        f"Each method ran once in a fresh child process, after a warm-up plain read "
        f"({r['warmup']['seconds']:.1f} s), so all read from a warm file cache. "
        + _provenance(results),
        "",
        "| Method | Time (s) | Peak RSS (MiB) | Process tree peak (MiB) | "
        "RSS after imports (MiB) | Load before / others' cores during |",
        "|---|---:|---:|---:|---:|---:|",
    ]

    def row(label: str, res: dict, secs: float | None = None) -> str:
        s = res["seconds"] if secs is None else secs
        return (f"| {label} | {s:.1f} | {res['peak_rss_mib']:.0f} | {_mem(res)} | "
                f"{res['baseline_rss_mib']:.0f} | {_load(res)} |")

    mo_total = mo["seconds"] + mo["grouping_seconds"]
    lines.append(row("lvtl `preprocess_case` (DICOM to cached 1 mm 4D pair; phases in 2 "
                     "threads)", lv))
    if "lvtl-serial" in r:
        lines.append(row("lvtl, `LVTL_DECODE_WORKERS=1` (phases in one thread)",
                         r["lvtl-serial"]))
    lines += [
        row("MONAI `LoadImage(PydicomReader)` + `Spacing(1 mm)`, per phase", mo),
        row("MONAI incl. grouping files by TemporalPositionIndex", mo, mo_total),
        row("plain read: `pydicom.dcmread(f).pixel_array`, every file", pl),
        "",
        "| Ratio | Value |",
        "|---|---:|",
        f"| MONAI / lvtl time (grouping excluded) | {mo['seconds'] / lv['seconds']:.2f} |",
        f"| MONAI / lvtl time (grouping included) | {mo_total / lv['seconds']:.2f} |",
        f"| lvtl / plain-read time | {lv['seconds'] / pl['seconds']:.2f} |",
    ]
    if "lvtl-serial" in r:
        lines.append(f"| lvtl serial / lvtl time | "
                     f"{r['lvtl-serial']['seconds'] / lv['seconds']:.2f} |")
    lines += [
        "",
        f"MONAI split: grouping {mo['grouping_seconds']:.1f} s (header-only reads, timed "
        f"separately), LoadImage {mo['load_seconds']:.1f} s, Spacing {mo['spacing_seconds']:.1f} s "
        f"(output {mo['spacing_output_dtype']}, {mo['torch_threads']} torch threads), "
        f"int16 store {mo['store_seconds']:.1f} s; per-phase input {mo['input_shape_per_phase']}, "
        f"output {mo['output_shape']}. lvtl output {lv['output_shape']} int16 "
        f"(plus uint8 labels; labelled phases {lv['labelled_phases']}).",
    ]
    lines += _same_cache(r, "threaded")
    lines += _profile_md(results.get("profile"), "one process")
    return "\n".join(lines)


def markdown_export(results: dict) -> str:
    r = results["runs"]
    lv, dc, mo = r["lvtl"], r["dcm2niix"], r["monai"]
    case = results["case"]
    lines = [
        f"### Ingest benchmark, JPEG Lossless export: {case['case_id']} ({case['phases']} "
        f"phases x {case['slices']} slices of {case['rows']} x {case['cols']}, one series per "
        f"phase; {case['files']} files in the export, {case['series_files']} in the 4D series, "
        f"{case['bytes'] / 1e9:.2f} GB)",
        "",
        f"Each method ran once in a fresh child process, after a warm-up read of every file "
        f"({r['warmup']['seconds']:.1f} s). " + _provenance(results),
        "",
        "| Method | Time (s) | Peak RSS (MiB) | Process tree peak (MiB) | "
        "Sum of per-process peaks (MiB) | Load before / others' cores during |",
        "|---|---:|---:|---:|---:|---:|",
    ]

    def row(label: str, res: dict, secs: float | None = None) -> str:
        s = res["seconds"] if secs is None else secs
        hwm = res.get("tree_hwm_sum_mib")
        return (f"| {label} | {s:.1f} | {res['peak_rss_mib']:.0f} | {_mem(res)} | "
                f"{f'{hwm:.0f}' if hwm else '-'} | {_load(res)} |")

    mo_total = mo["seconds"] + mo["grouping_seconds"]
    lines.append(row("lvtl `preprocess_case`: discovery, decoding and resampling in 2 worker "
                     "processes, labels, cache", lv))
    if "lvtl-serial" in r:
        lines.append(row("lvtl, `LVTL_DECODE_WORKERS=1`", r["lvtl-serial"]))
    lines.append(row(f"dcm2niix `-z n` on the export folder ({dc['nifti_files']} NIfTI + "
                     f"{dc['json_files']} JSON written)", dc))
    if "dcm2niix-series" in r:
        ds = r["dcm2niix-series"]
        lines.append(row(f"dcm2niix `-z n` on the 4D series' files only "
                         f"({ds['nifti_files']} NIfTI)", ds))
    lines += [
        row("MONAI `LoadImage(PydicomReader)` + `Spacing(1 mm)`, per phase", mo),
        row("MONAI incl. grouping the export's files by phase", mo, mo_total),
    ]
    if "plain" in r:
        lines.append(row("plain read: `pydicom.dcmread(f).pixel_array` (GDCM), 4D series",
                         r["plain"]))
    lv_mem = lv.get("tree_peak_rss_mib") or lv["peak_rss_mib"]
    lines += [
        "",
        "| Ratio | Value | Goal |",
        "|---|---:|---|",
        f"| lvtl / dcm2niix time (export folder) | {lv['seconds'] / dc['seconds']:.2f} | "
        f"<= 1.2 |",
    ]
    if "dcm2niix-series" in r:
        lines.append(f"| lvtl / dcm2niix time (4D series' files only) | "
                     f"{lv['seconds'] / r['dcm2niix-series']['seconds']:.2f} | - |")
    lines += [
        f"| MONAI / lvtl time (grouping excluded) | {mo['seconds'] / lv['seconds']:.2f} | >= 3 |",
        f"| MONAI / lvtl time (grouping included) | {mo_total / lv['seconds']:.2f} | - |",
        f"| lvtl process tree peak (MiB) | {lv_mem:.0f} | < 1024 |",
    ]
    if "lvtl-serial" in r:
        lines.append(f"| lvtl serial / lvtl time | "
                     f"{r['lvtl-serial']['seconds'] / lv['seconds']:.2f} | - |")
    lines += [
        "",
        f"dcm2niix wrote {dc['nifti_files']} NIfTI files ({dc['output_bytes'] / 1e9:.2f} GB; "
        f"shapes {dc['nifti_shapes']}) and {dc['json_files']} JSON sidecars"
        f"{'; other files ' + str(dc['other_files']) if dc['other_files'] else ''}. "
        f"MONAI grouping left out {mo['grouping_left_out']}; split: grouping "
        f"{mo['grouping_seconds']:.1f} s, LoadImage {mo['load_seconds']:.1f} s, Spacing "
        f"{mo['spacing_seconds']:.1f} s, int16 store {mo['store_seconds']:.1f} s. lvtl output "
        f"{lv['output_shape']} int16 (plus uint8 labels; labelled phases "
        f"{lv['labelled_phases']}); skipped {lv.get('skipped_files')}.",
    ]
    lines += _same_cache(r, "parallel")
    lines += _profile_md(results.get("profile"), "LVTL_DECODE_WORKERS=1")
    return "\n".join(lines)


def markdown_discovery(results: dict) -> str:
    r = results["runs"]["discover"]
    f = results["folder"]
    lines = [
        f"### Discovery: `lvtl.io.dicom.discover` on {r['files']} files",
        "",
        f"Folder: {f['description']} ({f['files']} files, {f['bytes'] / 1e9:.1f} GB). "
        + _provenance(results),
        "",
        "| Step | Time (s) | Peak RSS (MiB) | Load before / others' cores during |",
        "|---|---:|---:|---:|",
        f"| `discover(folder)` (warm file cache) | {r['seconds']:.1f} | "
        f"{r['peak_rss_mib']:.0f} | {_load(r)} |",
        "",
        f"Found {len(r['candidates'])} candidate series; skipped {r['skipped']}.",
    ]
    prof = results.get("profile")
    if prof:
        lines += ["", f"Under cProfile ({prof['total_seconds']:.1f} s), top functions by own "
                  f"time:", "", "| Function | Calls | Own (s) | Cumulative (s) |",
                  "|---|---:|---:|---:|"]
        for x in prof["by_tottime"][:10]:
            lines.append(f"| `{x['function']}` | {x['calls']} | {x['tottime']:.1f} | "
                         f"{x['cumtime']:.1f} |")
        lines += ["", "| lvtl function | Calls | Cumulative (s) |", "|---|---:|---:|"]
        for s in prof["steps"][:8]:
            lines.append(f"| `{s['step']}` | {s['calls']} | {s['cumtime']:.1f} |")
    return "\n".join(lines)


def host_info() -> dict:
    from importlib.metadata import version

    dcm = subprocess.run([str(DCM2NIIX), "--version"], capture_output=True, text=True)
    return {"cpus": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform(),
            "dcm2niix": (dcm.stdout.strip().splitlines() or [""])[-1],
            **{k: version(k) for k in ("numpy", "scipy", "pydicom", "monai", "torch",
                                       "python-gdcm")}}


def _case_info(params, spec: CaseSpec, case_dir: Path, files: list[Path],
               gen_secs: float | None) -> dict:
    return {"case_id": params.case_id, "site": SITE, "seed": SEED, "size": SIZE,
            "phases": 20, "slices": params.slices, "rows": params.rows, "cols": params.cols,
            "pixel_mm": params.pixel_mm, "slice_mm": params.slice_mm, **spec.options(),
            "files": len(files), "bytes": sum(f.stat().st_size for f in files),
            "path": str(case_dir), "generated_seconds": gen_secs}


def _write(results: dict, name: str, args: argparse.Namespace, md) -> None:
    try:
        md = md(results)
    except KeyError as e:  # a partial run (--lvtl-only): the JSON only
        md = f"(no table: run without {e})"
    print()
    print(md)
    folder = Path(args.results) if args.results else RESULTS
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (f"{name}.json" if args.slices is None else
                     f"{name}-slices{args.slices}.json")
    results["markdown"] = md
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nresults written to {path}")


def _common(args: argparse.Namespace, provenance: dict) -> dict:
    return {"command": " ".join([".venv/bin/python", "benchmarks/ingest.py", *sys.argv[1:]]),
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "lvtl": provenance,
            "host": host_info()}


NOTES = [
    "each method in a fresh child process (subprocess of this script); peak RSS is the "
    "child's own VmHWM at the end (ru_maxrss is not used: on Linux it inherits the parent's "
    "high-water mark across fork+exec), dcm2niix's from GNU time (%M); 'process tree peak' "
    "is the largest sum of VmRSS over the child and its descendants, sampled every 0.05 s; "
    "tree_hwm_sum_mib adds each process's own VmHWM (an upper bound)",
    "load_before: 1-minute load average and `uptime` just before each run (2-core machine, "
    "shared with other work); others_busy_cores_during: the machine's busy CPU time during "
    "the run (/proc/stat) less the child's and its descendants' own (getrusage), per second "
    "of wall time: the cores other work took meanwhile; others_busy_cores_before: the same "
    "over 3 s before the run",
    "a warm-up read ran first, so every method read from a warm file cache",
    "MONAI output rounded to int16 and appended phase by phase to a 4D .npy file with plain "
    "writes (no memmap), as lvtl writes its cache",
    "lvtl additionally repairs and resamples the labels of its labelled phases",
]


def run_uncompressed(args, scratch: Path, provenance: dict) -> None:
    spec = CASES["uncompressed"]
    case_dir, gen_secs = ensure_case(args.workdir, spec, args.slices)
    params = case_params(args.slices)
    files = dicom_files(case_dir / "dicom")
    print(f"case {case_dir} ({len(files)} files); scratch {scratch}", flush=True)
    runs = {"warmup": spawn("u-warmup", "plain", scratch, case_dir=case_dir)}
    runs["lvtl"] = spawn("u-lvtl", "lvtl", scratch, case_dir=case_dir, keep=args.keep)
    if args.serial:
        runs["lvtl-serial"] = spawn("u-lvtl-serial", "lvtl", scratch, case_dir=case_dir,
                                    env={"LVTL_DECODE_WORKERS": "1"})
    if not args.lvtl_only:
        runs["monai"] = spawn("u-monai", "monai", scratch, case_dir=case_dir, spec=spec.name,
                              keep=args.keep)
        runs["plain"] = spawn("u-plain", "plain", scratch, case_dir=case_dir)
    profile = _profile(args, scratch, case_dir, params, "uncompressed")
    results = {"benchmark": "ingest", "variant": "uncompressed", **_common(args, provenance),
               "case": _case_info(params, spec, case_dir, files, gen_secs),
               "notes": NOTES + [
                   "MONAI: files grouped by TemporalPositionIndex with header-only reads (timed "
                   "separately as grouping_seconds); each phase given to LoadImage as a folder "
                   "of symlinks (untimed)"],
               "runs": runs, "profile": profile}
    _write(results, "ingest", args, markdown_uncompressed)


def _profile(args, scratch: Path, case_dir: Path, params, tag: str) -> dict | None:
    if args.no_profile:
        return None
    pfile = scratch / f"lvtl-{tag}.prof"
    spawn(f"{tag}-lvtl-profile", "lvtl", scratch, case_dir=case_dir, profile_to=pfile,
          env={"LVTL_DECODE_WORKERS": "1"})
    profile = summarise_profile(pfile)
    kept = args.workdir / f"{params.case_id}-{tag}-lvtl.prof"
    shutil.copy(pfile, kept)
    profile["pstats_file"] = str(kept)
    return profile


def run_export(args, scratch: Path, provenance: dict) -> None:
    spec = CASES["export"]
    case_dir, gen_secs = ensure_case(args.workdir, spec, args.slices)
    params = case_params(args.slices)
    files = dicom_files(case_dir / "dicom")
    print(f"case {case_dir} ({len(files)} files); scratch {scratch}", flush=True)
    # untimed set-up: the 4D series' files (as lvtl chooses them), hard-linked into a folder
    listing = scratch / "series-files.txt"
    spawn("e-list-series", "list-series", scratch, case_dir=case_dir, out=listing,
          timed=False)
    series_files = [Path(p) for p in listing.read_text().split("\n") if p]
    only = scratch / "series-only"
    for f in series_files:
        dst = only / f.relative_to(case_dir / "dicom")
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.link(f, dst)
    runs = {"warmup": spawn("e-warmup", "readall", scratch, folder=case_dir / "dicom")}
    runs["lvtl"] = spawn("e-lvtl", "lvtl", scratch, case_dir=case_dir, keep=args.keep)
    if args.serial:
        runs["lvtl-serial"] = spawn("e-lvtl-serial", "lvtl", scratch, case_dir=case_dir,
                                    env={"LVTL_DECODE_WORKERS": "1"})
    if not args.lvtl_only:
        runs["dcm2niix"] = spawn("e-dcm2niix", "dcm2niix", scratch, folder=case_dir / "dicom",
                                 keep=args.keep)
        runs["dcm2niix-series"] = spawn("e-dcm2niix-series", "dcm2niix", scratch, folder=only)
        runs["monai"] = spawn("e-monai", "monai", scratch, case_dir=case_dir, spec=spec.name,
                              keep=args.keep)
        runs["plain"] = spawn("e-plain", "plain", scratch, case_dir=case_dir, files=listing)
    profile = _profile(args, scratch, case_dir, params, "export")
    info = _case_info(params, spec, case_dir, files, gen_secs)
    info["series_files"] = len(series_files)
    info["series_bytes"] = sum(f.stat().st_size for f in series_files)
    results = {"benchmark": "ingest", "variant": "export", **_common(args, provenance),
               "case": info,
               "notes": NOTES + [
                   "dcm2niix converts every series of the folder (the 4D series' 20, the second "
                   "reconstruction's 20, the localizer, the dose screen as it sees fit) and "
                   "writes a BIDS JSON sidecar per NIfTI; it does not resample",
                   "dcm2niix-series: the same on a folder of hard links to the 4D series' files "
                   "only (listed by lvtl's discovery, untimed)",
                   "MONAI: the export's files grouped with header-only reads (SOPClassUID, "
                   "ImageType, SeriesInstanceUID, SliceThickness, TemporalPositionIndex): CT "
                   "Image Storage, no localizer, thinnest reconstruction, by "
                   "TemporalPositionIndex (timed separately as grouping_seconds); each phase "
                   "given to LoadImage as a folder of symlinks (untimed)",
                   "plain: pydicom pixel_array (GDCM plugin) of the 4D series' files only"],
               "runs": runs, "profile": profile}
    _write(results, "ingest-export", args, markdown_export)


def run_discovery(args, scratch: Path, provenance: dict) -> None:
    spec = CASES["export"]
    case_dir, _ = ensure_case(args.workdir, spec, args.slices)
    params = case_params(args.slices)
    folder = args.workdir / "discovery" / params.case_id
    site, index, size = DISCOVERY_SMALL
    small_id = f"{site}-{index:03d}"
    parts = {"exam-0": lambda out: shutil.copytree(case_dir / "dicom", out,
                                                   copy_function=os.link)}
    for k in range(1, DISCOVERY_COPIES + 1):
        parts[f"exam-{k}"] = lambda out, k=k: spawn(
            f"d-copy-{k}", "copy-export", scratch, folder=case_dir / "dicom", out=out,
            copy_id=f"COPY{k}", timed=False)

    def small(out: Path) -> None:
        tmp = scratch / "small"
        subprocess.run([sys.executable, str(Path(__file__).resolve()), "--method", "generate",
                        "--out", str(tmp), "--spec", spec.name,
                        "--other", f"{site}:{index}:{size}"], check=True, cwd=REPO,
                       env=_child_env())
        shutil.move(tmp / small_id / "dicom", out)

    parts[f"exam-{small_id}-{size}"] = small
    for name, make in parts.items():  # each part built once (a marker when complete)
        if not (folder / f".{name}.complete").is_file():
            print(f"building {folder / name} ...", flush=True)
            shutil.rmtree(folder / name, ignore_errors=True)
            folder.mkdir(parents=True, exist_ok=True)
            make(folder / name)
            (folder / f".{name}.complete").write_text("")
    files = dicom_files(folder)
    print(f"discovery folder {folder} ({len(files)} files)", flush=True)
    spawn("d-warmup", "readall", scratch, folder=folder)
    runs = {"discover": spawn("d-discover", "discover", scratch, folder=folder)}
    profile = None
    if not args.no_profile:
        pfile = scratch / "discover.prof"
        runs["discover_profiled"] = spawn("d-discover-profile", "discover", scratch,
                                          folder=folder, profile_to=pfile)
        profile = summarise_profile(pfile)
    results = {"benchmark": "ingest-discovery", **_common(args, provenance),
               "folder": {"path": str(folder), "files": len(files),
                          "bytes": sum(f.stat().st_size for f in files),
                          "description": (
                              f"the export case ({params.case_id}, JPEG Lossless, hard links) "
                              f"and {DISCOVERY_COPIES} copies of it with new study, series, "
                              f"instance and frame-of-reference UIDs and patient IDs (each "
                              f"exam: DICOMDIR, localizer, 20 + 20 series of two "
                              f"reconstructions, dose screen, dose report), and {small_id} at "
                              f"size {size} exported the same way"),
                          "parts": {p.name: len(dicom_files(p)) for p in
                                    sorted(folder.iterdir()) if p.is_dir()}},
               "notes": ["discover() reads every file's header (pixel data deferred); timed "
                         "once after a warm-up read of every file (warm file cache)"],
               "runs": runs, "profile": profile}
    _write(results, "ingest-discovery", args, markdown_discovery)


def parent(args: argparse.Namespace) -> None:
    args.workdir = (Path(args.workdir) if args.workdir else REPO / "bench-run").resolve()
    args.workdir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="ingest-", dir=args.workdir))
    try:
        provenance = snapshot_lvtl(scratch, args.lvtl_rev)
        print(f"lvtl: {provenance['measured']} (git HEAD {provenance['git_head'][:12]}"
              f"{', lvtl/ has uncommitted changes' if provenance['lvtl_dirty'] else ''}), "
              f"snapshot sha256 {provenance['lvtl_sha256'][:12]}", flush=True)
        for case in args.case:
            print(f"== {case}", flush=True)
            {"uncompressed": run_uncompressed, "export": run_export,
             "discovery": run_discovery}[case](args, scratch, provenance)
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--case", action="append", choices=("uncompressed", "export", "discovery"),
                    help="which benchmark (repeatable; default: all three)")
    ap.add_argument("--workdir", help="where the cases are generated and reused "
                    "(default: bench-run/ in the repository)")
    ap.add_argument("--slices", type=int, help="a smaller case with this many slices per phase")
    ap.add_argument("--keep", action="store_true",
                    help="keep the outputs (lvtl cache, MONAI volume, NIfTI) in the workdir")
    ap.add_argument("--no-profile", action="store_true", help="skip the cProfile runs")
    ap.add_argument("--no-serial", dest="serial", action="store_false",
                    help="skip the lvtl run with LVTL_DECODE_WORKERS=1")
    ap.add_argument("--quiet", type=float, nargs=2, metavar=("CORES", "SECONDS"),
                    help="before each timed run wait up to SECONDS until other processes "
                    "keep fewer than CORES cores busy")
    ap.add_argument("--results", help="where the JSON results go (default: benchmarks/results)")
    ap.add_argument("--lvtl-only", action="store_true",
                    help="time lvtl only (no dcm2niix, MONAI or plain read): JSON, no table")
    ap.add_argument("--lvtl-rev", help="measure the lvtl package of this git revision "
                    "(e.g. HEAD) instead of the working tree")
    ap.add_argument("--method", choices=("lvtl", "monai", "plain", "generate", "readall",
                                         "dcm2niix", "discover", "list-series", "copy-export"),
                    help=argparse.SUPPRESS)
    for hidden in ("--case-dir", "--out", "--result", "--profile-to", "--folder", "--files",
                   "--spec", "--copy-id", "--other"):
        ap.add_argument(hidden, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.slices is not None and args.slices < 2:
        ap.error("--slices must be at least 2")
    if args.method:
        args.case = args.case_dir
        run_child_method(args)
    else:
        args.case = args.case or ["uncompressed", "export", "discovery"]
        if args.quiet:
            global QUIET
            QUIET = (args.quiet[0], args.quiet[1])
        parent(args)


if __name__ == "__main__":
    main()
