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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lvtl.artifact import ARTIFACT_FILES, MANIFEST, TrustStore, load_model_source
from lvtl.config import SiteConfig, load_site_config
from lvtl.data.cache import load_site_cases
from lvtl.data.preprocess import preprocess_site
from lvtl.data.splits import MIN_CASES
from lvtl.errors import ArtifactError, ConfigError, LvtlError
from lvtl.flare.privacy import check_section
from lvtl.model.checkpoint import build_model
from lvtl.model.train import steps_per_epoch, train_round
from lvtl.parallel import Say
from lvtl.study.fed import shapes_of, weights_problem
from lvtl.study.protocol import Arm, Protocol
from lvtl.study.results import ArtifactInfo, FedEventKind, Reason, SiteResults
from lvtl.study.run import run_study, site_split, train_config

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




class Refused(LvtlError):
    """A site task that stops with a fixed reason code (the message stays at the site)."""

    def __init__(self, reason: Reason, message: str):
        super().__init__(message)
        self.reason = Reason(reason)


@dataclass
class Prepared:
    """What every task of a job needs at a site: its config, the protocol (with the site's
    own split seed), the verified Site-1 model and the site's usable cached cases."""

    cfg: SiteConfig
    protocol: Protocol
    state: dict  # the signed model's weights
    source_config: dict
    manifest: dict
    cases: list
    excluded: dict
    preprocess_failed: int
    work: Path  # this study's work folder at the site

    def artifact_info(self) -> ArtifactInfo:
        return ArtifactInfo(**{k: self.manifest[k] for k in ("name", "version", "key_id")})


def prepare(site: str, params: dict, say: Say = log.info) -> Prepared:
    """Load the site's config, take the protocol, verify the artifact the task carries,
    preprocess (cached) and load the usable cases. A problem raises :class:`Refused` with the
    reason code of the stage it happened in."""
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
            raise Refused(Reason.NO_USABLE_CASES,
                          f"[{site}] {len(cases)} usable case(s) in {cfg.cache_root}; the "
                          f"study needs at least {MIN_CASES}")
        key = hashlib.sha256(files[MANIFEST] + json.dumps(
            protocol.to_dict(), sort_keys=True).encode()).hexdigest()[:12]
        work = Path(os.environ.get("LVTL_WORK_DIR") or cfg.cache_root.parent / "lvtl-study")
    except Refused:
        raise
    except ArtifactError as e:
        raise Refused(Reason(f"artifact_refused:{e.why}"),  # each refusal names its kind
                      f"[{site}] artifact refused: {e}") from e
    except LvtlError as e:
        raise Refused(stage, f"[{site}] failed ({stage}): {e}") from e
    return Prepared(cfg=cfg, protocol=protocol, state=state, source_config=source_config,
                    manifest=manifest, cases=cases, excluded=excluded,
                    preprocess_failed=len(bad), work=work / site / key)


def run_task(site: str, params: dict, say: Say = log.info) -> dict:
    """The site's results section (JSON form) for one task ``{"artifact": {file: bytes},
    "protocol", "fed"}`` (``fed``: the fed-transfer arm's final models, ``{size: {"params":
    weights, "sites": [names]}}``, evaluated where this site took part). A refusal or failure
    comes back as a ``failed`` section whose reason is a fixed code
    (:class:`~lvtl.study.results.Reason`); the detail (paths, case ids, the traceback) goes to
    ``say`` and the site's log only. The site's own config decides its data, its trusted keys
    and its split (its ``split_seed`` replaces the job's)."""
    try:
        prep = prepare(site, params, say)
        fed = fed_models(site, params.get("fed"), prep.state)
        section = run_study(prep.cases, prep.state, prep.source_config, prep.protocol,
                            prep.work, site=site, excluded=prep.excluded,
                            fed_models=fed if Arm.FED_TRANSFER in prep.protocol.arms else None,
                            say=say)
        section = dataclasses.replace(
            section, role=prep.cfg.role, preprocess_failed=prep.preprocess_failed,
            artifact=prep.artifact_info(),
            weight_sharing=prep.cfg.federation.allow_weight_sharing,
            update_filter=prep.cfg.federation.update_filter)
    except Refused as e:
        say(str(e))
        return failed(e.reason)
    except LvtlError as e:
        say(f"[{site}] failed ({Reason.SITE_ERROR}): {e}")
        return failed(Reason.SITE_ERROR)
    except Exception:  # noqa: BLE001 - the code goes back; the traceback stays here
        log.error("[%s] %s", site, traceback.format_exc())
        return failed(Reason.INTERNAL_ERROR)
    out = section.to_dict()
    problems = check_section(out)
    if problems:
        say(f"[{site}] results blocked by the privacy allow-list: " + "; ".join(problems[:5]))
        return failed(Reason.BLOCKED)
    return out


def fed_models(site: str, fed: object, reference: dict) -> dict[int, dict]:
    """The fed-transfer models this site took part in, by size, as tensors; each must have
    the signed model's weights' names and shapes and finite values (else :class:`Refused`)."""
    out: dict[int, dict] = {}
    for size, run in (fed or {}).items() if isinstance(fed, dict) else ():
        if not isinstance(run, dict) or site not in (run.get("sites") or ()):
            continue
        problem = weights_problem(run.get("params"), shapes_of(reference))
        if problem:
            raise Refused(Reason.FED_MODEL_INVALID,
                          f"[{site}] the fed-transfer model of size {size} was refused: "
                          f"{problem}")
        out[int(size)] = {k: torch.as_tensor(np.asarray(v)) for k, v in run["params"].items()}
    return out


# --------------------------------------------------------------------------- fed-transfer
@dataclass
class FedReply:
    """A site's answer to one fed-transfer round: its weight update (the trained weights
    minus the round's global weights) with the number of training cases it used and the
    optimiser steps it took, or why it sends none."""

    update: dict[str, np.ndarray] | None = None
    n_train: int = 0
    steps: int = 0
    event: FedEventKind | None = None  # why no update
    reason: Reason = Reason.NONE


class FedSite:
    """A site's side of the fed-transfer arm for the length of one job: the preparation of the
    first task (config, verified artifact, cases) is kept for the rounds that follow, which
    carry no artifact."""

    def __init__(self, site: str, say: Say = log.info):
        self.site, self.say = site, say
        self._prepared: dict[str, Prepared] = {}  # protocol + artifact digest -> preparation

    def round(self, params: dict, global_params: object) -> FedReply:
        """Train one round: ``params`` (the task's meta) holds ``protocol``, ``size``,
        ``round`` and, in the first round a job sends, ``artifact``; ``global_params`` the
        round's global weights. Round 0 must start from the signed model itself."""
        site, say = self.site, self.say
        try:
            prep = self._prepare(params)
            fed = prep.cfg.federation
            if not fed.allow_weight_sharing:
                say(f"[{site}] fed-transfer: this site's config ({prep.cfg.source}) does not "
                    "allow weight sharing; no weights are sent")
                return FedReply(event=FedEventKind.OPTED_OUT)
            size, rnd = int(params["size"]), int(params["round"])
            protocol = prep.protocol
            if not 0 <= rnd < protocol.fed_rounds or size not in protocol.sizes:
                raise Refused(Reason.PROTOCOL, f"[{site}] fed-transfer: round {rnd} of size "
                                               f"{size} is not in the protocol")
            split = site_split([c.case_id for c in prep.cases], protocol)
            if size > len(split.train):
                say(f"[{site}] fed-transfer: {len(split.train)} training case(s), fewer than "
                    f"size {size}: skipped for this size")
                return FedReply(event=FedEventKind.TOO_FEW_CASES)
            start = self._start_weights(prep, global_params, rnd)
            model = build_model(prep.source_config, start)
            by_id = {c.case_id: c for c in prep.cases}
            cfg = train_config(protocol, Arm.FED_TRANSFER)
            first = rnd * protocol.fed_epochs
            folder = prep.work / "fed" / f"size-{size}"
            res = train_round(model, [by_id[i] for i in split.subsets[size]], cfg,
                              folder / "round.pt", first, first + protocol.fed_epochs,
                              transfer=True, mu=protocol.fed_mu,
                              say=lambda m: say(f"[{site}] {m}"))
            trained = model.state_dict()
            update = {k: (trained[k].detach().cpu() - start[k]).numpy().astype(np.float32)
                      for k in start}
            # the site's own record of what it sent (what left it), one file per round
            np.savez(folder / f"update-round-{rnd}.npz", **update)
            say(f"[{site}] fed-transfer size {size} round {rnd + 1}/{protocol.fed_rounds}: "
                f"{res.steps} steps, loss {res.loss:.4f}")
            # optimiser steps of the round, also when it was read back
            steps = protocol.fed_epochs * steps_per_epoch(cfg, res.cases)
            return FedReply(update=update, n_train=res.cases, steps=steps)
        except Refused as e:
            say(str(e))
            return FedReply(event=FedEventKind.REFUSED, reason=e.reason)
        except LvtlError as e:
            say(f"[{site}] fed-transfer failed: {e}")
            return FedReply(event=FedEventKind.REFUSED, reason=Reason.SITE_ERROR)

    def _prepare(self, params: dict) -> Prepared:
        key = json.dumps(params.get("protocol") or {}, sort_keys=True)
        if params.get("artifact"):
            prep = prepare(self.site, params, self.say)
            self._prepared[key] = prep
        if key not in self._prepared:
            raise Refused(Reason.ARTIFACT_INVALID, f"[{self.site}] fed-transfer: a round "
                          "without the signed model, and none verified in this job")
        return self._prepared[key]

    def _start_weights(self, prep: Prepared, global_params: object, rnd: int) -> dict:
        """The round's starting weights: the global model, checked against the signed
        model's names and shapes; in round 0 it must be the signed model itself."""
        reference = shapes_of(prep.state)
        problem = weights_problem(global_params, reference)
        if problem:
            raise Refused(Reason.FED_MODEL_INVALID, f"[{self.site}] fed-transfer: the "
                          f"round's global model was refused: {problem}")
        start = {k: torch.as_tensor(np.asarray(global_params[k]), dtype=prep.state[k].dtype)
                 for k in prep.state}
        if rnd == 0 and not all(torch.equal(start[k], prep.state[k].cpu()) for k in start):
            raise Refused(Reason.FED_MODEL_INVALID, f"[{self.site}] fed-transfer: round 0 "
                          "does not start from the signed model")
        return start


def failed(reason: Reason) -> dict:
    """A ``failed`` section in its JSON form."""
    return SiteResults.failed(reason).to_dict()
