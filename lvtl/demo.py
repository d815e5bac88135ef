"""``lvtl demo``: the whole story on one machine.

Synthetic site-1 and site-2 -> inspection and preprocessing of every case -> Site-1 pretraining
on its dense labels -> the model owner's key and the signed artifact -> each site's own
configuration (data, cache, pinned public key) -> the NVFlare simulator job with site-1 and
site-2 (verify, fine-tune, evaluate, send metrics only) -> the server's report. Returns the
path of ``report.json``.

Rerunning it in the same folder resumes: cases, caches, the Site-1 model, the key and the
artifact are kept, and each site's study resumes from its checkpoints.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lvtl.atomic import write_text
from lvtl.dicom import scan_series
from lvtl.errors import ArtifactError, LvtlError
from lvtl.phantom import generate_site
from lvtl.preprocess import PreprocessConfig, preprocess_site

SITES = ("site-1", "site-2")


@dataclass(frozen=True)
class DemoScale:
    """How much work each step does (the default fits 15 minutes on 2 CPU cores)."""

    site1_cases: int = 6
    site2_cases: int = 8
    pretrain_epochs: int = 60
    pretrain_samples: int = 8
    sizes: tuple[int, ...] = (1, 2)
    study_epochs: int = 10
    study_samples: int = 4
    # A run of a few dozen steps needs a larger fine-tuning rate than the paper's 1e-4 for
    # 500 epochs (docs/results.md): both arms train at 1e-3 and differ only in their start.
    lr_transfer: float = 1e-3
    crop: tuple[int, int, int, int] = (4, 24, 32, 32)
    downsample: int = 2
    filters: int = 4
    blocks: tuple[int, ...] = (1, 1, 1)


def _prepare_sites(out: Path, scale: DemoScale, workers: int, echo) -> dict:
    sites = {}
    for site, n in (("site-1", scale.site1_cases), ("site-2", scale.site2_cases)):
        data, cache = out / "data" / site, out / "cache" / site
        t0 = time.perf_counter()
        made = generate_site(site, n, data, workers=workers)
        failed = [c for c, e in made if e]
        echo(f"[{site}] synthetic cases: {len(made) - len(failed)} in {data} "
             f"({time.perf_counter() - t0:.0f} s)")
        index = scan_series(data / made[0][0] / "dicom")
        g = index.geometry
        echo(f"[{site}] inspect {made[0][0]}: {index.n_phases} phases, shape "
             f"{list(index.shape)}, spacing {[round(s, 3) for s in g.spacing]} mm, "
             f"orientation {g.axis_codes()}")
        t0 = time.perf_counter()
        results = preprocess_site(data, cache, PreprocessConfig(), workers=workers)
        ok = [r for r in results if r.status != "failed"]
        echo(f"[{site}] preprocessed {len(ok)} of {len(results)} cases to {cache} "
             f"({time.perf_counter() - t0:.0f} s)")
        for r in results:
            if r.status == "failed":
                echo(f"[{site}] skipped {r.reason}")
        sites[site] = {"data": str(data), "cache": str(cache), "cases": [r.case_id for r in ok],
                       "failed": {r.case_id: r.reason for r in results if r.status == "failed"},
                       "labelled_phases": {r.case_id: r.labelled for r in ok}}
    return sites


def _pretrain(out: Path, scale: DemoScale, echo) -> Path:
    from lvtl.train import TrainConfig, train_site

    t0 = time.perf_counter()
    cfg = TrainConfig(epochs=scale.pretrain_epochs, samples_per_epoch=scale.pretrain_samples,
                      crop=scale.crop, lr=2e-3, val_every=5, seed=0)
    res = train_site(out / "cache" / "site-1", out / "site-1-model", cfg, filters=scale.filters,
                     blocks=scale.blocks, downsample=scale.downsample,
                     say=lambda m: echo(f"[site-1] {m}"))
    echo(f"[site-1] pretrained the 4D model on its dense labels: validation Dice "
         f"{res.best_val_dice:.3f} at epoch {res.best_epoch} "
         f"({time.perf_counter() - t0:.0f} s) -> {res.best_path}")
    return res.best_path


def _sign(out: Path, checkpoint: Path, echo) -> Path:
    """The model owner's key (made once) and the signed artifact (made once per model)."""
    from lvtl.artifact import PRIVATE_KEY, TrustStore, keygen, sha256_file, sign, verify

    keys, art, source = out / "owner-keys", out / "artifact", out / "artifact.source-sha256"
    if not (keys / PRIVATE_KEY).exists():
        kid = keygen(keys)
        echo(f"[owner] new Ed25519 signing key {kid} in {keys}")
    digest = sha256_file(checkpoint)[0]
    if art.exists():
        try:
            verify(art, TrustStore.from_path(keys))
            if source.read_text().strip() == digest:
                echo(f"[owner] artifact {art} holds this model and verifies; kept")
                return art
        except (ArtifactError, OSError):
            pass
        shutil.rmtree(art)
    done = sign(checkpoint, keys / PRIVATE_KEY, art, name="lv4d-site1", version="1.0.0")
    write_text(source, digest + "\n")
    echo(f"[owner] signed {checkpoint.name} as {art} (key {done.key_id})")
    return art


def _site_configs(out: Path, echo) -> Path:
    """Each hospital's own configuration: where its data and cache are and which key it pins
    (the job never says where a site's data is)."""
    root = out / "sites"
    for site in SITES:
        d = root / site
        (d / "trusted").mkdir(parents=True, exist_ok=True)
        for pub in (out / "owner-keys").glob("*.pub.pem"):
            shutil.copy(pub, d / "trusted" / pub.name)
        write_text(d / "site.toml",
                   f'[site]\nname = "{site}"\n[data]\nroot = "{out / "data" / site}"\n'
                   f'cache = "{out / "cache" / site}"\n[trust]\nkeys = "trusted"\n')
    echo(f"[sites] configuration and pinned public key per site in {root}")
    return root


def _run_job(out: Path, art: Path, sites_dir: Path, scale: DemoScale, echo) -> Path:
    ws, log_path = out / "flare", out / "logs" / "flare-simulator.log"
    report_dir = out / "report"
    shutil.rmtree(ws, ignore_errors=True)  # a fresh simulator run; site work dirs are kept
    log_path.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "lvtl.flare.job", "--artifact", str(art), "--env", "sim",
           "--clients", ",".join(SITES), "--workspace", str(ws),
           "--arms", "baseline,random,transfer", "--sizes", ",".join(map(str, scale.sizes)),
           "--epochs", str(scale.study_epochs), "--samples-per-epoch", str(scale.study_samples),
           "--crop", ",".join(map(str, scale.crop)), "--downsample", str(scale.downsample),
           "--val-every", "5", "--lr-transfer", str(scale.lr_transfer), "--timeout", "3600",
           "--report-dir", str(report_dir)]
    env = {**os.environ, "LVTL_SITES_DIR": str(sites_dir), "PYTHONUNBUFFERED": "1",
           "LVTL_WORK_DIR": str(out / "site-work"),
           # the sites share this machine's cores: one share each, no oversubscription
           "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // len(SITES)))}
    echo(f"[flare] NVFlare simulator: server + {', '.join(SITES)}; full log {log_path}")
    t0 = time.perf_counter()
    seen: dict[Path, int] = {}

    def relay() -> None:  # the sites' own progress lines, from their simulator logs
        for f in sorted(ws.glob("*/site-*/log.txt")):
            with open(f, errors="replace") as fh:
                fh.seek(seen.get(f, 0))
                for line in fh:
                    at = line.find(" - INFO - [site-")
                    if at >= 0:
                        echo("  " + line[at + 10:].rstrip())
                seen[f] = fh.tell()

    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        while proc.poll() is None:
            time.sleep(2)
            relay()
    relay()
    if proc.returncode != 0:
        lines = [ln.strip() for ln in log_path.read_text(errors="replace").splitlines()
                 if ln.strip()]
        raise LvtlError(f"the NVFlare job failed (exit {proc.returncode}): "
                        f"{lines[-1] if lines else 'no output'}; see {log_path}")
    echo(f"[flare] job done ({time.perf_counter() - t0:.0f} s)")
    return report_dir / "report.json"


def run_demo(out: str | Path, scale: DemoScale | None = None, *, workers: int = 2,
             echo: Callable[[str], None] = print) -> Path:
    scale = scale or DemoScale()
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    summary: dict = {"schema": "lvtl.demo/2", "sites": _prepare_sites(out, scale, workers, echo)}
    checkpoint = _pretrain(out, scale, echo)
    art = _sign(out, checkpoint, echo)
    sites_dir = _site_configs(out, echo)
    report = _run_job(out, art, sites_dir, scale, echo)
    doc = json.loads(report.read_text())
    for name, sec in doc["sites"].items():
        if sec.get("status") != "ok":
            echo(f"[report] {name} failed: {sec.get('reason')}")
            continue
        for run in sec["runs"]:
            echo(f"[report] {name} {run['arm']:8s} n={run['train_size']}: Dice blood pool "
                 f"{run['dice']['blood_pool']['mean']:.3f}, LVM {run['dice']['lvm']['mean']:.3f}")
    summary.update({"model": str(checkpoint), "artifact": str(art), "sites_config":
                    str(sites_dir), "report": str(report),
                    "seconds": round(time.perf_counter() - t_start, 1)})
    write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    echo(f"demo finished in {summary['seconds']:.0f} s; summary {out / 'summary.json'}; "
         f"report ({report.parent / 'report.md'}):")
    return report
