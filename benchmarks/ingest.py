"""Ingest benchmark: DICOM series to a 1 mm 4D volume, lvtl against MONAI and a plain read.

One paper-size case (site-2 case 0, seed 0: 20 phases of 512 x 512 pixels, 221 slices, 4420
files, about 2.3 GB) is generated once into ``--workdir`` (default ``bench-run/``) and reused.
Three methods are then timed, each in a fresh child process (this script run again with
``--method``), so that each one's peak resident memory is its own:

``lvtl``
    ``lvtl.data.preprocess.preprocess_case(case, out, PreprocessConfig(), force=True)``: header scan
    and checks, phase-by-phase read, resampling to the canonical 1 mm grid, label repair and
    resampling of the labelled phases, and the int16 cache written to disk.
``monai``
    Per phase: ``LoadImage(reader="PydicomReader", image_only=True)``, ``EnsureChannelFirst()``,
    ``Spacing(pixdim=(1.0, 1.0, 1.0))`` (MONAI defaults otherwise), rounded to int16 and
    appended to a 4D ``.npy`` file on disk, as lvtl writes its cache. The files are first
    grouped by phase with a header-only read of ``TemporalPositionIndex`` (timed separately,
    reported as "grouping"); each phase's files are handed to MONAI as a folder of symbolic
    links to them (made outside the timed region): a folder is read as a 3D series, while a flat
    list of files is taken as the channels of one 2D image, which fails with "affine matrix of all
    images should be the same for channel-wise concatenation" since every slice has its own
    position.
``plain``
    ``pydicom.dcmread(f).pixel_array`` for every file, nothing kept: the floor set by pydicom.

Before the three, the plain read runs once as a warm-up so every method reads from a warm file
cache. Each child reports its wall time, its RSS right after its imports (``baseline``) and its
peak RSS (``VmHWM`` of itself at the end; ``ru_maxrss`` is recorded too but is not used, since on
Linux it carries the parent's high-water mark across fork and exec). Afterwards lvtl runs once
more under cProfile (not timed; ``--no-profile`` skips it) to show where its time goes.

Run: ``.venv/bin/python benchmarks/ingest.py [--workdir DIR] [--slices N] [--keep]``. A full run
writes ``benchmarks/results/ingest.json``; a ``--slices N`` run (a smaller case with N slices per
phase) writes ``benchmarks/results/ingest-slicesN.json``.
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
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
SITE, INDEX, SEED, SIZE = "site-2", 0, 0, "paper"
MIB = 1024.0 * 1024.0


# --------------------------------------------------------------------------- memory helpers
def _proc_status_mib(field: str) -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024 / MIB
    return float("nan")


def _rss_now_mib() -> float:
    """Current resident set size of this process (MiB): VmRSS."""
    return _proc_status_mib("VmRSS")


def _peak_rss_mib() -> float:
    """Peak resident set size of this process image (MiB): VmHWM.

    Not ``ru_maxrss``: on Linux that survives fork and exec, so a child started by a large
    parent reports at least the parent's RSS. VmHWM belongs to the address space made by exec.
    """
    return _proc_status_mib("VmHWM")


def _ru_maxrss_mib() -> float:
    """``getrusage(RUSAGE_SELF).ru_maxrss`` (KiB on Linux) in MiB, kept for reference."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MIB


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


def ensure_case(workdir: Path, slices: int | None) -> tuple[Path, float | None]:
    """The case folder under ``workdir``, generated if missing; and the seconds that took.

    Generation runs in a child process so that this (parent) process stays small.
    """
    params = case_params(slices)
    final = workdir / params.case_id
    if (final / "dicom").is_dir():
        stored = _stored_params(final)
        if stored == json.loads(json.dumps(params.to_dict())):
            return final, None
        print(f"{final} was drawn by another version of lvtl.synth.profiles.draw_case "
              f"({'no truth/case.json' if stored is None else 'parameters differ'}); "
              f"regenerating it", flush=True)
    print(f"generating {params.case_id} ({params.slices} slices x 20 phases of "
          f"{params.rows} x {params.cols}) into {workdir} ...", flush=True)
    t0 = time.perf_counter()
    workdir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--method", "generate",
           "--out", str(workdir)]
    if slices is not None:
        cmd += ["--slices", str(slices)]
    subprocess.run(cmd, check=True, cwd=REPO, env=_child_env())
    secs = time.perf_counter() - t0
    print(f"generated in {secs:.0f} s", flush=True)
    return final, secs


def _stored_params(case_dir: Path) -> dict | None:
    try:
        return json.loads((case_dir / "truth" / "case.json").read_text())["params"]
    except (OSError, ValueError, KeyError):
        return None


# --------------------------------------------------------------------------- lvtl snapshot
# lvtl may change while a long run goes on (it is being worked on); every process of one run
# imports the same copy of it, taken at the start and put first on the module search path.
_SNAPSHOT: Path | None = None


def snapshot_lvtl(scratch: Path) -> dict:
    """Copy the lvtl package into ``scratch`` and use that copy from now on; its provenance."""
    import hashlib

    global _SNAPSHOT
    root = scratch / "lvtl-snapshot"
    shutil.copytree(REPO / "lvtl", root / "lvtl",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    _SNAPSHOT = root
    sys.path.insert(0, str(root))
    h = hashlib.sha256()
    for f in sorted((root / "lvtl").rglob("*.py")):
        h.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes())

    def git(*a: str) -> str:
        try:
            return subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True,
                                  check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return ""

    return {"git_head": git("rev-parse", "HEAD"),
            "lvtl_dirty": bool(git("status", "--porcelain", "--", "lvtl")),
            "lvtl_sha256": h.hexdigest()}


def _child_env() -> dict:
    env = dict(os.environ)
    if _SNAPSHOT is not None:
        env["PYTHONPATH"] = os.pathsep.join(
            [str(_SNAPSHOT), *filter(None, [env.get("PYTHONPATH")])])
    return env


def dicom_files(case_dir: Path) -> list[Path]:
    folder = case_dir / "dicom"
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))


# --------------------------------------------------------------------------- child methods
def child_plain(case_dir: Path, out_dir: Path) -> dict:
    import pydicom

    files = dicom_files(case_dir)
    baseline = _rss_now_mib()
    t0 = time.perf_counter()
    nbytes = 0
    for f in files:
        nbytes += pydicom.dcmread(f).pixel_array.nbytes
    secs = time.perf_counter() - t0
    return {"seconds": secs, "baseline_rss_mib": baseline, "files": len(files),
            "pixel_bytes": nbytes}


def child_lvtl(case_dir: Path, out_dir: Path, profile: Path | None = None) -> dict:
    import numpy as np

    from lvtl.data.cache import load_cached
    from lvtl.data.preprocess import PreprocessConfig, preprocess_case

    baseline = _rss_now_mib()
    config = PreprocessConfig()
    t0 = time.perf_counter()
    if profile is None:
        res = preprocess_case(case_dir, out_dir, config, force=True)
    else:
        import cProfile

        prof = cProfile.Profile()
        res = prof.runcall(preprocess_case, case_dir, out_dir, config, force=True)
        prof.dump_stats(profile)
    secs = time.perf_counter() - t0
    peak = _peak_rss_mib()
    cache = load_cached(res.cache)
    return {"seconds": secs, "baseline_rss_mib": baseline, "peak_rss_mib": peak,
            "status": res.status, "output_shape": list(cache.image.shape),
            "output_dtype": str(cache.image.dtype),
            "output_bytes": int(cache.image.nbytes + cache.label.nbytes),
            "labelled_phases": res.labelled, "hu_range": cache.meta["hu_range"],
            "output_mean_hu": float(np.mean(cache.image[0], dtype=np.float64))}


def group_by_phase(files: list[Path]) -> dict[int, list[Path]]:
    """Files grouped by TemporalPositionIndex (header-only reads), in file-name order."""
    import pydicom

    groups: dict[int, list[Path]] = {}
    for f in files:
        ds = pydicom.dcmread(f, stop_before_pixels=True, specific_tags=["TemporalPositionIndex"])
        groups.setdefault(int(ds.TemporalPositionIndex), []).append(f)
    return dict(sorted(groups.items()))


def child_monai(case_dir: Path, out_dir: Path) -> dict:
    import numpy as np
    import torch
    from monai.transforms import EnsureChannelFirst, LoadImage, Spacing

    load = LoadImage(reader="PydicomReader", image_only=True)
    channel_first = EnsureChannelFirst()
    spacing = Spacing(pixdim=(1.0, 1.0, 1.0))
    files = dicom_files(case_dir)
    baseline = _rss_now_mib()

    t0 = time.perf_counter()
    groups = group_by_phase(files)
    grouping = time.perf_counter() - t0

    # Untimed: a folder of symbolic links per phase, the form PydicomReader reads as a series.
    link_root = out_dir / "phases"
    phase_dirs = []
    for t, (_, members) in enumerate(groups.items()):
        d = link_root / f"phase_{t:02d}"
        d.mkdir(parents=True)
        for f in members:
            (d / f.name).symlink_to(f.resolve())
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
            "peak_rss_mib": peak, "load_seconds": t_load, "spacing_seconds": t_space,
            "store_seconds": t_store, "phases": len(phase_dirs),
            "input_shape_per_phase": in_shape, "input_dtype": in_dtype,
            "spacing_output_dtype": out_dtype, "output_shape": list(out.shape),
            "output_bytes": int(out.nbytes), "torch_threads": torch.get_num_threads(),
            "output_mean_hu": float(np.mean(out[0], dtype=np.float64))}


def run_child_method(args: argparse.Namespace) -> None:
    if args.method == "generate":
        from lvtl.synth.site import write_case

        write_case(case_params(args.slices), Path(args.out), overwrite=True)
        return
    case_dir, out_dir = Path(args.case), Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.method == "plain":
        res = child_plain(case_dir, out_dir)
    elif args.method == "lvtl":
        res = child_lvtl(case_dir, out_dir, Path(args.profile_to) if args.profile_to else None)
    else:
        res = child_monai(case_dir, out_dir)
    res.setdefault("peak_rss_mib", _peak_rss_mib())
    res["ru_maxrss_mib"] = _ru_maxrss_mib()
    res["method"] = args.method
    res["pid"] = os.getpid()
    if "lvtl" in sys.modules:
        res["lvtl_file"] = sys.modules["lvtl"].__file__
    Path(args.result).write_text(json.dumps(res, indent=2) + "\n")


# --------------------------------------------------------------------------- parent
def spawn(method: str, case_dir: Path, scratch: Path, *, profile_to: Path | None = None,
          keep: bool = False) -> dict:
    """Run one method in a fresh interpreter; its result dict."""
    out_dir = scratch / f"out-{method}{'-profile' if profile_to else ''}"
    if out_dir.exists():
        shutil.rmtree(out_dir)
    result = scratch / f"result-{method}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--method", method,
           "--case", str(case_dir), "--out", str(out_dir), "--result", str(result)]
    if profile_to is not None:
        cmd += ["--profile-to", str(profile_to)]
    print(f"  {method}{' (cProfile)' if profile_to else ''} ...", end=" ", flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=REPO, env=_child_env())
    res = json.loads(result.read_text())
    res["child_wall_seconds"] = time.perf_counter() - t0
    if "lvtl_file" in res and _SNAPSHOT is not None and not res["lvtl_file"].startswith(
            str(_SNAPSHOT)):
        raise RuntimeError(f"{method} child imported {res['lvtl_file']}, not the snapshot")
    res["load_average_after"] = os.getloadavg()
    result.unlink()
    print(f"{res['seconds']:.1f} s, peak RSS {res['peak_rss_mib']:.0f} MiB", flush=True)
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


def markdown(results: dict) -> str:
    r = results["runs"]
    lv, mo, pl = r["lvtl"], r["monai"], r["plain"]
    case = results["case"]
    n = len(lv.get("rounds", [lv]))
    rounds = "once" if n == 1 else f"{n} rounds, the fastest shown"
    lines = [
        f"### Ingest benchmark: {case['case_id']} ({case['phases']} phases x {case['slices']} "
        f"slices of {case['rows']} x {case['cols']}, {case['files']} files, "
        f"{case['bytes'] / 1e9:.2f} GB)",
        "",
        f"Each method ran in a fresh child process ({rounds}), after a warm-up plain read "
        f"({r['warmup']['seconds']:.1f} s), so all three read from a warm file cache. "
        f"Host: {results['host']['cpus']} CPUs, Python {results['host']['python']}; lvtl at "
        f"git {results['lvtl']['git_head'][:7]}"
        f"{' + uncommitted changes' if results['lvtl']['lvtl_dirty'] else ''}.",
        "",
        "| Method | Time (s) | Peak RSS (MiB) | RSS after imports (MiB) | "
        "Peak - after imports (MiB) |",
        "|---|---:|---:|---:|---:|",
    ]

    def row(label: str, res: dict, secs: float | None = None) -> str:
        s = res["seconds"] if secs is None else secs
        return (f"| {label} | {s:.1f} | {res['peak_rss_mib']:.0f} | "
                f"{res['baseline_rss_mib']:.0f} | "
                f"{res['peak_rss_mib'] - res['baseline_rss_mib']:.0f} |")

    mo_total = mo["seconds"] + mo["grouping_seconds"]
    lines += [
        row("lvtl `preprocess_case` (DICOM to cached 1 mm 4D pair)", lv),
        row("MONAI `LoadImage(PydicomReader)` + `Spacing(1 mm)`, per phase", mo),
        row("MONAI incl. grouping files by TemporalPositionIndex", mo, mo_total),
        f"| plain read: `pydicom.dcmread(f).pixel_array`, every file | {pl['seconds']:.1f} | "
        f"{pl['peak_rss_mib']:.0f} | {pl['baseline_rss_mib']:.0f} | "
        f"{pl['peak_rss_mib'] - pl['baseline_rss_mib']:.0f} |",
        "",
        "| Ratio | Value |",
        "|---|---:|",
        f"| MONAI / lvtl time (grouping excluded) | {mo['seconds'] / lv['seconds']:.2f} |",
        f"| MONAI / lvtl time (grouping included) | {mo_total / lv['seconds']:.2f} |",
        f"| lvtl / plain-read time | {lv['seconds'] / pl['seconds']:.2f} |",
        f"| MONAI / plain-read time (grouping excluded) | {mo['seconds'] / pl['seconds']:.2f} |",
        f"| MONAI / lvtl peak RSS above imports | "
        f"{(mo['peak_rss_mib'] - mo['baseline_rss_mib']) / (lv['peak_rss_mib'] - lv['baseline_rss_mib']):.2f} |",  # noqa: E501
        "",
        f"MONAI split: grouping {mo['grouping_seconds']:.1f} s (header-only reads, timed "
        f"separately), LoadImage {mo['load_seconds']:.1f} s, Spacing {mo['spacing_seconds']:.1f} s "
        f"(output {mo['spacing_output_dtype']}, {mo['torch_threads']} torch threads), "
        f"int16 store {mo['store_seconds']:.1f} s; per-phase input {mo['input_shape_per_phase']}, "
        f"output {mo['output_shape']}. lvtl output {lv['output_shape']} int16 "
        f"(plus uint8 labels; labelled phases {lv['labelled_phases']}).",
    ]
    prof = results.get("profile")
    if prof:
        lines += [
            "",
            f"#### Where lvtl's time goes (cProfile, separate run: {prof['total_seconds']:.1f} s "
            f"under the profiler)",
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
    return "\n".join(lines)


def parent(args: argparse.Namespace) -> None:
    workdir = (Path(args.workdir) if args.workdir else REPO / "bench-run").resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="ingest-", dir=workdir))
    runs = {}
    try:
        provenance = snapshot_lvtl(scratch)
        print(f"lvtl: git HEAD {provenance['git_head'][:12]}"
              f"{' (lvtl/ has uncommitted changes)' if provenance['lvtl_dirty'] else ''}, "
              f"snapshot sha256 {provenance['lvtl_sha256'][:12]}", flush=True)
        case_dir, gen_secs = ensure_case(workdir, args.slices)
        params = case_params(args.slices)
        files = dicom_files(case_dir)
        nbytes = sum(f.stat().st_size for f in files)
        print(f"case {case_dir} ({len(files)} files, {nbytes / 1e9:.2f} GB); scratch {scratch}",
              flush=True)
        load_before = os.getloadavg()
        print(f"load average before: {load_before}", flush=True)
        print("warm-up (plain read, fills the file cache):", flush=True)
        runs["warmup"] = spawn("plain", case_dir, scratch)
        print("timed runs:", flush=True)
        all_runs: dict[str, list[dict]] = {"lvtl": [], "monai": [], "plain": []}
        for i in range(args.repeat):
            if args.repeat > 1:
                print(f" round {i + 1} of {args.repeat}", flush=True)
            for method in all_runs:
                last = i == args.repeat - 1
                all_runs[method].append(spawn(method, case_dir, scratch,
                                              keep=args.keep and last))
        for method, rs in all_runs.items():  # the fastest round, every round kept
            runs[method] = dict(min(rs, key=lambda r: r["seconds"]))
            runs[method]["rounds"] = [
                {k: r[k] for k in ("seconds", "peak_rss_mib", "baseline_rss_mib",
                                   "grouping_seconds") if k in r} for r in rs]
        profile = None
        if not args.no_profile:
            print("profile:", flush=True)
            pfile = scratch / "lvtl.prof"
            runs["lvtl_profiled"] = spawn("lvtl", case_dir, scratch, profile_to=pfile)
            profile = summarise_profile(pfile)
            kept = workdir / f"{params.case_id}-lvtl.prof"
            shutil.copy(pfile, kept)
            profile["pstats_file"] = str(kept)
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    from importlib.metadata import version

    results = {
        "benchmark": "ingest",
        "command": " ".join([".venv/bin/python", "benchmarks/ingest.py", *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "case": {"case_id": params.case_id, "site": SITE, "seed": SEED, "size": SIZE,
                 "phases": 20, "slices": params.slices, "rows": params.rows,
                 "cols": params.cols, "pixel_mm": params.pixel_mm,
                 "slice_mm": params.slice_mm, "files": len(files), "bytes": nbytes,
                 "path": str(case_dir), "generated_seconds": gen_secs},
        "lvtl": provenance,
        "host": {"cpus": os.cpu_count(), "python": platform.python_version(),
                 "platform": platform.platform(), "load_average_before": load_before,
                 **{k: version(k) for k in ("numpy", "scipy", "pydicom", "monai", "torch")}},
        "notes": [
            "each method in a fresh child process (subprocess of this script); peak RSS is the "
            "child's own VmHWM at the end (ru_maxrss is not used: on Linux it inherits the "
            "parent's high-water mark across fork+exec), baseline its VmRSS right after its "
            "imports",
            "a warm-up plain read ran first, so every method read from a warm file cache",
            "MONAI: files grouped by TemporalPositionIndex with header-only reads (timed "
            "separately as grouping_seconds); each phase given to LoadImage as a folder of "
            "symlinks (untimed): a folder is read as a 3D series, while a flat file list is "
            "taken as channels of one 2D image and fails (each slice has its own affine)",
            "MONAI output rounded to int16 and appended phase by phase to a 4D .npy file with "
            "plain writes (no memmap), as lvtl writes its cache",
            "lvtl additionally repairs and resamples the labels of its labelled phases",
        ],
        "runs": runs,
        "profile": profile,
    }
    md = markdown(results)
    print()
    print(md)
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "ingest.json" if args.slices is None else f"ingest-slices{args.slices}.json"
    out = Path(args.json) if args.json else RESULTS / name
    results["markdown"] = md
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nresults written to {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", help="where the case is generated and reused "
                    "(default: bench-run/ in the repository)")
    ap.add_argument("--slices", type=int, help="a smaller case with this many slices per phase")
    ap.add_argument("--keep", action="store_true",
                    help="keep the outputs (lvtl cache, MONAI volume) in the workdir")
    ap.add_argument("--no-profile", action="store_true", help="skip the cProfile run of lvtl")
    ap.add_argument("--repeat", type=int, default=1,
                    help="timed rounds of the three methods (the fastest is reported)")
    ap.add_argument("--json", help="where to write the results (default: benchmarks/results/)")
    ap.add_argument("--method", choices=("lvtl", "monai", "plain", "generate"),
                    help=argparse.SUPPRESS)
    ap.add_argument("--case", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    ap.add_argument("--profile-to", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.slices is not None and args.slices < 2:
        ap.error("--slices must be at least 2")
    if args.method:
        run_child_method(args)
    else:
        parent(args)


if __name__ == "__main__":
    main()
