"""What a site does with the task: verify the model, preprocess, run the study, report.

Importable without NVFlare (:class:`lvtl.flare.executor.StudyExecutor` runs it at the site), so
the logic is tested on its own. The site's private settings come from its own configuration,
never from the job: ``LVTL_SITE_CONFIG`` (a site TOML file), else
``$LVTL_SITES_DIR/<site>/site.toml``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import tempfile
import traceback
from pathlib import Path

from lvtl.artifact import ARTIFACT_FILES, MANIFEST, TrustStore, load_model_source
from lvtl.config import load_site_config
from lvtl.data.cache import load_site_cases
from lvtl.data.preprocess import preprocess_site
from lvtl.data.splits import MIN_CASES
from lvtl.errors import ArtifactError, ConfigError, LvtlError
from lvtl.flare.privacy import check_section
from lvtl.parallel import Say
from lvtl.study.protocol import Protocol
from lvtl.study.results import ArtifactInfo, Reason, SiteResults
from lvtl.study.run import run_study

log = logging.getLogger(__name__)


def site_config_path(site: str) -> Path:
    if os.environ.get("LVTL_SITE_CONFIG"):
        return Path(os.environ["LVTL_SITE_CONFIG"])
    if os.environ.get("LVTL_SITES_DIR"):
        return Path(os.environ["LVTL_SITES_DIR"]) / site / "site.toml"
    raise ConfigError(f"{site}: set LVTL_SITE_CONFIG (the site's TOML file) or LVTL_SITES_DIR")


def pack_artifact(folder: str | Path) -> dict[str, bytes]:
    """The signed artifact's files as bytes, to travel in the task."""
    folder = Path(folder)
    missing = [f for f in ARTIFACT_FILES if not (folder / f).is_file()]
    if missing:
        raise ArtifactError(f"{folder}: not an artifact folder (missing {', '.join(missing)})")
    return {f: (folder / f).read_bytes() for f in ARTIFACT_FILES}




def run_task(site: str, params: dict, say: Say = log.info) -> dict:
    """The site's results section (JSON form) for one task ``{"artifact": {file: bytes},
    "protocol"}``. A refusal or failure comes back as a ``failed`` section whose reason is a
    fixed code (:class:`~lvtl.study.results.Reason`); the detail (paths, case ids, the
    traceback) goes to ``say`` and the site's log only. The site's own config decides its
    data, its trusted keys and its split (its ``split_seed`` replaces the job's)."""
    stage = Reason.SITE_CONFIG
    try:
        cfg = load_site_config(site_config_path(site))
        if cfg.data_root is None or cfg.cache_root is None:
            raise ConfigError(f"{cfg.source}: [data] root and cache are required")
        if not cfg.data_root.is_dir():
            raise ConfigError(f"{cfg.source}: [data] root {cfg.data_root} is not a folder")
        stage = Reason.PROTOCOL
        protocol = dataclasses.replace(Protocol.from_dict(dict(params.get("protocol") or {})),
                                       split_seed=cfg.split_seed)
        stage = Reason.ARTIFACT_INVALID
        files = params.get("artifact") or {}
        if set(files) != set(ARTIFACT_FILES) or not all(isinstance(v, bytes)
                                                        for v in files.values()):
            raise ArtifactError("the task carries no complete artifact")
        store = TrustStore.from_site_config(cfg)
        with tempfile.TemporaryDirectory() as tmp:
            art = Path(tmp) / "artifact"
            art.mkdir()
            for name, data in files.items():
                (art / name).write_bytes(data)
            state, source_config = load_model_source(art, store)
            manifest = json.loads(files[MANIFEST])
        say(f"[{site}] artifact verified: {manifest['name']} {manifest['version']}, key "
            f"{manifest['key_id']}")
        stage = Reason.SITE_ERROR
        results = preprocess_site(cfg.data_root, cfg.cache_root, cfg.preprocess)
        bad = [r for r in results if r.status == "failed"]
        for r in bad:
            say(f"[{site}] preprocessing skipped {r.reason}")
        cases, excluded = load_site_cases(cfg.cache_root, protocol.downsample)
        if len(cases) < MIN_CASES:
            say(f"[{site}] {len(cases)} usable case(s) in {cfg.cache_root}; the study needs "
                f"at least {MIN_CASES}")
            return failed(Reason.NO_USABLE_CASES)
        key = hashlib.sha256(files[MANIFEST] + json.dumps(
            protocol.to_dict(), sort_keys=True).encode()).hexdigest()[:12]
        work = Path(os.environ.get("LVTL_WORK_DIR") or cfg.cache_root.parent / "lvtl-study")
        section = run_study(cases, state, source_config, protocol, work / site / key, site=site,
                            excluded=excluded, say=say)
        section = dataclasses.replace(
            section, role=cfg.role, preprocess_failed=len(bad),
            artifact=ArtifactInfo(**{k: manifest[k] for k in ("name", "version", "key_id")}))
    except ArtifactError as e:
        reason = Reason(f"artifact_refused:{e.why}")  # each refusal's code names its kind
        say(f"[{site}] artifact refused ({reason}): {e}")
        return failed(reason)
    except LvtlError as e:
        say(f"[{site}] failed ({stage}): {e}")
        return failed(stage)
    except Exception:  # noqa: BLE001 - the code goes back; the traceback stays here
        log.error("[%s] %s", site, traceback.format_exc())
        return failed(Reason.INTERNAL_ERROR)
    out = section.to_dict()
    problems = check_section(out)
    if problems:
        say(f"[{site}] results blocked by the privacy allow-list: " + "; ".join(problems[:5]))
        return failed(Reason.BLOCKED)
    return out


def failed(reason: Reason) -> dict:
    """A ``failed`` section in its JSON form."""
    return SiteResults.failed(reason).to_dict()
