"""What a site does with the task: verify the model, preprocess, run the study, report.

Importable without NVFlare (the Client API loop is in :func:`main`), so the logic is tested
on its own. The site's private settings come from its own configuration, never from the job:
``LVTL_SITE_CONFIG`` (a site TOML file), else ``$LVTL_SITES_DIR/<site>/site.toml``.
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
from lvtl.errors import ArtifactError, ConfigError, LvtlError
from lvtl.flare.privacy import check_section
from lvtl.parallel import Say
from lvtl.study.protocol import Protocol
from lvtl.study.results import ArtifactInfo, SiteResults
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
    "protocol"}``; a refusal or failure comes back as a ``failed`` section with the reason.
    The site's own config decides its data, its trusted keys and its split (its
    ``split_seed`` replaces the job's)."""
    try:
        cfg = load_site_config(site_config_path(site))
        if cfg.data_root is None or cfg.cache_root is None:
            raise ConfigError(f"{cfg.source}: [data] root and cache are required")
        protocol = dataclasses.replace(Protocol.from_dict(dict(params.get("protocol") or {})),
                                       split_seed=cfg.split_seed)
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
        results = preprocess_site(cfg.data_root, cfg.cache_root, cfg.preprocess)
        bad = [r for r in results if r.status == "failed"]
        for r in bad:
            say(f"[{site}] preprocessing skipped {r.reason}")
        cases, excluded = load_site_cases(cfg.cache_root, protocol.downsample)
        key = hashlib.sha256(files[MANIFEST] + json.dumps(
            protocol.to_dict(), sort_keys=True).encode()).hexdigest()[:12]
        work = Path(os.environ.get("LVTL_WORK_DIR") or cfg.cache_root.parent / "lvtl-study")
        section = run_study(cases, state, source_config, protocol, work / site / key, site=site,
                            excluded=excluded, say=say)
        section = dataclasses.replace(
            section, role=cfg.role, preprocess_failed=len(bad),
            artifact=ArtifactInfo(**{k: manifest[k] for k in ("name", "version", "key_id")}))
    except ArtifactError as e:
        say(f"[{site}] artifact refused: {e}")
        return failed(f"artifact refused: {e}")
    except LvtlError as e:
        say(f"[{site}] failed: {e}")
        return failed(str(e))
    except Exception as e:  # noqa: BLE001 - the reason goes back; the traceback stays here
        log.error("%s", traceback.format_exc())
        return failed(f"unexpected {type(e).__name__}: {e}")
    out = section.to_dict()
    problems = check_section(out)
    if problems:
        return failed("results blocked by the privacy allow-list: " + "; ".join(problems[:3]))
    return out


def failed(reason: str) -> dict:
    """A ``failed`` section in its JSON form."""
    return SiteResults.failed(reason).to_dict()


def main() -> None:
    """The Client API loop (run by NVFlare's ScriptRunner at each site)."""
    import nvflare.client as flare
    from nvflare.app_common.abstract.fl_model import FLModel

    logging.basicConfig(level=logging.INFO)
    flare.init()
    site = flare.get_site_name()
    while flare.is_running():
        task = flare.receive()
        if task is None:
            break
        section = run_task(site, task.params or {}, say=lambda m: log.info("%s", m))
        flare.send(FLModel(params={"site": section}))
