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
import multiprocessing
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from lvtl.artifact import (
    PRIVATE_KEY,
    PUBLIC_SUFFIX,
    TrustStore,
    keygen,
    sha256_file,
    sign,
    verify,
)
from lvtl.config import SiteRole
from lvtl.data.preprocess import PreprocessConfig, preprocess_site
from lvtl.errors import ArtifactError, LvtlError
from lvtl.flare.job import JobSettings, run_job
from lvtl.io.atomic import write_text
from lvtl.io.dicom import scan_series
from lvtl.model.train import TrainConfig, train_site
from lvtl.parallel import Say
from lvtl.study.protocol import LOCAL_ARMS, Arm, Protocol
from lvtl.study.results import ResultsDoc, Status
from lvtl.synth.site import generate_site

SITES = ("site-1", "site-2")
#: The federation of the fed-transfer demo (``lvtl demo --fed``): a third site with a third
#: scanner and contrast profile, so the sites' data are not alike.
FED_SITES = ("site-1", "site-2", "site-3")
#: A site's own progress line in its NVFlare log: the message starts with ``[site-N]``.
SITE_LINE = re.compile(r" - (\[site-[^\]]+\] .*?)\s*$")


@dataclass(frozen=True)
class DemoScale:
    """How much work each step does. The default tells the paper's story in 15 minutes on 2
    CPU cores, install included (docs/results.md: the protocol, its timing and its report):
    site 2 has enough test cases (7) for intervals that separate the arms, three training
    sizes (the plateau rule needs three), a Site-1 model trained long enough to be worth
    transferring, and fine-tuning runs long enough to adapt it."""

    site1_cases: int = 8  # 6 train / 2 validation for pretraining
    site2_cases: int = 14  # split 4 train / 3 validation / 7 test
    pretrain_epochs: int = 110
    pretrain_samples: int = 8  # 880 steps
    pretrain_val_every: int = 22
    sizes: tuple[int, ...] = (1, 2, 4)
    study_epochs: int = 40
    study_samples: int = 8  # 320 steps per training run (160 left transfer below baseline)
    study_val_every: int = 40  # one validation, at the end: each costs a full inference
    # A run of a hundred-odd steps needs a larger fine-tuning rate than the paper's 1e-4 for
    # 500 epochs (docs/results.md): both arms train at 1e-3 and differ only in their start.
    lr_transfer: float = 1e-3
    crop: tuple[int, int, int, int] = (4, 24, 32, 32)
    downsample: int = 2
    filters: int = 4
    blocks: tuple[int, ...] = (1, 1, 1)
    #: the first case of each site is a full CD export (DICOMDIR, localizer, dose objects, a
    #: second reconstruction); the others are their 4D series alone, as a PACS query gives
    export_cases: int = 1
    site3_cases: int = 14  # the fed-transfer demo's third site, split as site 2
    fed_rounds: int = 8  # fed-transfer: 8 rounds x 5 epochs x 8 crops = the local 320 steps


#: How each demo site's scanner exports its cases, as hospitals' PACS do (lvtl inspect finds
#: the 4D series in them): site 1 one series per phase in JPEG Lossless on a CD with a
#: DICOMDIR, a localizer, a dose report and a second reconstruction, labels as NIfTI masks;
#: site 2 one Enhanced CT object per case in JPEG-LS, exported the same way, labels as
#: RTSTRUCT endocardial and epicardial contours (as the paper's contouring tool gave them).
EXPORTS = {"site-1": {"layout": "series-per-phase", "transfer_syntax": "jpeg-lossless",
                      "export": True},
           "site-2": {"layout": "enhanced", "transfer_syntax": "jpeg-ls", "export": True,
                      "labels": "rtstruct"},
           "site-3": {"layout": "one-series", "transfer_syntax": "jpeg-lossless",
                      "export": True}}


def _prepare_sites(out: Path, scale: DemoScale, workers: int, say: Say,
                   names: tuple[str, ...] = SITES) -> dict:
    sites = {}
    counts = {"site-1": scale.site1_cases, "site-2": scale.site2_cases,
              "site-3": scale.site3_cases}
    for site in names:
        n = counts[site]
        data, cache = out / "data" / site, out / "cache" / site
        t0 = time.perf_counter()
        made = generate_site(site, n, data, workers=workers, export_cases=scale.export_cases,
                             **EXPORTS[site])
        failed = [c for c, e in made if e]
        say(f"[{site}] synthetic cases: {len(made) - len(failed)} in {data} "
            f"({time.perf_counter() - t0:.0f} s)")
        index = scan_series(data / made[0][0] / "dicom")
        g = index.geometry
        skipped = ", ".join(f"{len(v)} {k}" for k, v in index.skipped.items())
        say(f"[{site}] inspect {made[0][0]}: {index.candidate.layout}, "
            f"{index.n_phases} phases, shape {list(index.shape)}, spacing "
            f"{[round(s, 3) for s in g.spacing]} mm, orientation {g.axis_codes()}; "
            f"{len(index.discovery.candidates)} candidate series, skipped {skipped}")
        t0 = time.perf_counter()
        results = preprocess_site(data, cache, PreprocessConfig(), workers=workers)
        ok = [r for r in results if r.status != "failed"]
        say(f"[{site}] preprocessed {len(ok)} of {len(results)} cases to {cache} "
            f"({time.perf_counter() - t0:.0f} s)")
        for r in results:
            if r.status == "failed":
                say(f"[{site}] skipped {r.reason}")
        sites[site] = {"data": str(data), "cache": str(cache), "cases": [r.case_id for r in ok],
                       "failed": {r.case_id: r.reason for r in results if r.status == "failed"},
                       "labelled_phases": {r.case_id: r.labelled for r in ok}}
    return sites


def _pretrain(out: Path, scale: DemoScale, say: Say) -> Path:

    t0 = time.perf_counter()
    cfg = TrainConfig(epochs=scale.pretrain_epochs, samples_per_epoch=scale.pretrain_samples,
                      crop=scale.crop, lr=2e-3, val_every=scale.pretrain_val_every, seed=0)
    res = train_site(out / "cache" / "site-1", out / "site-1-model", cfg, filters=scale.filters,
                     blocks=scale.blocks, downsample=scale.downsample,
                     say=lambda m: say(f"[site-1] {m}"))
    say(f"[site-1] pretrained the 4D model on its dense labels: validation Dice "
        f"{res.best_val_dice:.3f} at epoch {res.best_epoch} "
        f"({time.perf_counter() - t0:.0f} s) -> {res.best_path}")
    return res.best_path


def _sign(out: Path, checkpoint: Path, say: Say) -> Path:
    """The model owner's key (made once) and the signed artifact (made once per model)."""

    keys, art, source = out / "owner-keys", out / "artifact", out / "artifact.source-sha256"
    if not (keys / PRIVATE_KEY).exists():
        kid = keygen(keys)
        say(f"[owner] new Ed25519 signing key {kid} in {keys}")
    digest = sha256_file(checkpoint)[0]
    if art.exists():
        try:
            verify(art, TrustStore.from_path(keys))
            if source.read_text().strip() == digest:
                say(f"[owner] artifact {art} holds this model and verifies; kept")
                return art
        except (ArtifactError, OSError):
            pass
        shutil.rmtree(art)
    done = sign(checkpoint, keys / PRIVATE_KEY, art, name="lv4d-site1", version="1.0.0")
    write_text(source, digest + "\n")
    say(f"[owner] signed {checkpoint.name} as {art} (key {done.key_id})")
    return art


def _site_configs(out: Path, say: Say, names: tuple[str, ...] = SITES,
                  share: bool = False) -> Path:
    """Each hospital's own configuration: where its data and cache are and which key it pins
    (the job never says where a site's data is); with ``share``, each allows its weight
    updates to leave for the fed-transfer arm."""
    root = out / "sites"
    for site in names:
        d = root / site
        (d / "trusted").mkdir(parents=True, exist_ok=True)
        for pub in (out / "owner-keys").glob(f"*{PUBLIC_SUFFIX}"):
            shutil.copy(pub, d / "trusted" / pub.name)
        role = SiteRole.MODEL_OWNER if site == SITES[0] else SiteRole.PARTICIPANT
        write_text(d / "site.toml",
                   f'[site]\nname = "{site}"\nrole = "{role}"\n[data]\n'
                   f'root = "{out / "data" / site}"\ncache = "{out / "cache" / site}"\n'
                   '[trust]\nkeys = "trusted"\nmin_version = "1.0.0"\n'
                   + ("[federation]\nallow_weight_sharing = true\n" if share else ""))
    say(f"[sites] configuration and pinned public key per site in {root}")
    return root


def _job_process(protocol: Protocol, settings: JobSettings, env: dict[str, str],
                 log_path: Path) -> None:
    """The NVFlare job in its own process: the sites' thread settings apply before torch
    starts, and everything the simulator prints goes to ``log_path``."""
    os.environ.update(env)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    run_job(protocol, settings)


def demo_protocol(scale: DemoScale, fed: bool = False) -> Protocol:
    """The study protocol the demo's job sends to the sites (with ``fed``, the fed-transfer
    arm too)."""
    return Protocol(arms=LOCAL_ARMS + ((Arm.FED_TRANSFER,) if fed else ()), sizes=scale.sizes,
                    epochs=scale.study_epochs, samples_per_epoch=scale.study_samples,
                    crop=scale.crop, downsample=scale.downsample,
                    val_every=scale.study_val_every, lr_transfer=scale.lr_transfer,
                    fed_rounds=scale.fed_rounds)


def _run_job(out: Path, art: Path, sites_dir: Path, scale: DemoScale, say: Say,
             names: tuple[str, ...] = SITES, fed: bool = False) -> Path:
    ws, log_path = out / "flare", out / "logs" / "flare-simulator.log"
    report_dir = out / "report"
    shutil.rmtree(ws, ignore_errors=True)  # a fresh simulator run; site work dirs are kept
    log_path.parent.mkdir(parents=True, exist_ok=True)
    settings = JobSettings(artifact=art, env="sim", clients=names, workspace=ws, timeout=3600,
                           report_dir=report_dir, fed_state=out / "fed-state")
    env = {"LVTL_SITES_DIR": str(sites_dir), "PYTHONUNBUFFERED": "1",
           "LVTL_WORK_DIR": str(out / "site-work"),
           # the sites share this machine's cores: one share each, no oversubscription
           "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // len(names)))}
    say(f"[flare] NVFlare simulator: server + {', '.join(names)}; full log {log_path}")
    t0 = time.perf_counter()
    seen: dict[Path, int] = {}

    def relay() -> None:  # the sites' own progress lines, from their simulator logs
        for f in sorted(ws.glob("*/site-*/log.txt")):
            with open(f, errors="replace") as fh:
                fh.seek(seen.get(f, 0))
                for line in fh:  # "... - INFO - [identity=site-2, ...] - [site-2] message"
                    found = SITE_LINE.search(line)
                    if found and " - INFO - " in line:
                        say("  " + found.group(1))
                seen[f] = fh.tell()

    proc = multiprocessing.get_context("spawn").Process(
        target=_job_process, args=(demo_protocol(scale, fed), settings, env, log_path))
    proc.start()
    while proc.is_alive():
        proc.join(2)
        relay()
    relay()
    if proc.exitcode != 0:
        lines = [ln.strip() for ln in log_path.read_text(errors="replace").splitlines()
                 if ln.strip()]
        raise LvtlError(f"the NVFlare job failed (exit {proc.exitcode}): "
                        f"{lines[-1] if lines else 'no output'}; see {log_path}")
    say(f"[flare] job done ({time.perf_counter() - t0:.0f} s)")
    return report_dir / "report.json"


def run_demo(out: str | Path, scale: DemoScale | None = None, *, workers: int = 2,
             fed: bool = False, say: Say = print) -> Path:
    """The demo in ``out``; with ``fed``, three sites (site-3 too) that share their weight
    updates, and the fed-transfer arm beside the local ones."""
    scale = scale or DemoScale()
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    names = FED_SITES if fed else SITES
    t_start = time.perf_counter()
    summary: dict = {"schema": "lvtl.demo/2",
                     "sites": _prepare_sites(out, scale, workers, say, names)}
    checkpoint = _pretrain(out, scale, say)
    art = _sign(out, checkpoint, say)
    sites_dir = _site_configs(out, say, names, share=fed)
    report = _run_job(out, art, sites_dir, scale, say, names, fed)
    doc = ResultsDoc.from_dict(json.loads(report.read_text()), str(report))
    for name, sec in doc.sites.items():
        if sec.status != Status.OK:
            say(f"[report] {name} failed: {sec.reason}")
            continue
        for run in sec.runs:
            say(f"[report] {name} {run.arm:8s} n={run.train_size}: Dice blood pool "
                f"{run.dice.blood_pool.mean:.3f}, LVM {run.dice.lvm.mean:.3f}")
    summary.update({"model": str(checkpoint), "artifact": str(art), "sites_config":
                    str(sites_dir), "report": str(report),
                    "seconds": round(time.perf_counter() - t_start, 1)})
    write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    say(f"demo finished in {summary['seconds']:.0f} s; summary {out / 'summary.json'}; "
        f"report ({report.parent / 'report.md'}):")
    return report
