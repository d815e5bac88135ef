"""The fed-transfer arm on the server: NVFlare's FedAvg, one workflow per training size.

:class:`FedTransfer` is NVFlare's :class:`~nvflare.app_common.workflows.fedavg.FedAvg` (its
round loop, task sending and model update) with lvtl's parts:

- the start: the signed Site-1 model's weights; the first round a job sends carries the
  signed artifact, which each site verifies (round 0 must start from exactly its weights);
- the sites: the job's sites minus those left out before (opted out, refused, dropped, update
  rejected: for the rest of the job; too few cases: for this size and the larger ones);
- :class:`CheckedAggregator`: each update is checked against the model's weight names and
  shapes and for finite values (a bad one is rejected and named), then the updates are
  averaged weighted by each site's number of training cases (:func:`lvtl.study.fed.
  weighted_mean`); a site that sent nothing in a round (failed, died, lost) is dropped;
- the record: after every round the global model and the server's record of the run
  (:class:`~lvtl.study.results.FedStudy`) are written atomically to the study's state folder
  (:func:`state_dir`); a rerun of the job resumes each size after its last completed round.

The study workflow (:class:`~lvtl.flare.controller.StudyController`) runs after these and
sends each size's final model to the sites that took part, which evaluate it on their test
split as the ``fed-transfer`` arm.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import threading
import time
from pathlib import Path

import numpy as np
from nvflare.app_common.abstract.fl_model import FLModel, ParamsType
from nvflare.app_common.aggregators.model_aggregator import ModelAggregator
from nvflare.app_common.workflows.fedavg import FedAvg
from safetensors.numpy import load as st_load

from lvtl.artifact import MANIFEST, WEIGHTS
from lvtl.config import UpdateFilter
from lvtl.errors import ArtifactError
from lvtl.flare.alive import DEAD_AFTER, heartbeats, silent_for
from lvtl.flare.site import pack_artifact
from lvtl.io.atomic import write_bytes, write_text
from lvtl.study.fed import Shapes, nbytes, shapes_of, weighted_mean, weights_problem
from lvtl.study.protocol import Protocol
from lvtl.study.results import (
    FedEvent,
    FedEventKind,
    FedRun,
    FedStudy,
    Reason,
    from_dict,
    to_dict,
)

log = logging.getLogger(__name__)

FED_TASK = "lvtl_fed_train"
#: Keys of a site's reply meta: its number of training cases, its update filter, and, in a
#: reply without weights, why (a FedEventKind value and a Reason value).
N_TRAIN, FILTER, EVENT, REASON = "lvtl_n_train", "lvtl_update_filter", "lvtl_event", "lvtl_reason"
#: Keys of a round task's meta: the protocol, the size, and (first round of a job) the artifact.
PROTOCOL, SIZE, ARTIFACT = "lvtl_protocol", "lvtl_size", "lvtl_artifact"
RECORD = "federation.json"
#: The server's environment variable naming its fed-transfer state folder.
FED_STATE_ENV = "LVTL_FED_STATE"


class _NoSitesLeft(Exception):
    """Every site is left out: the size's run ends."""


def study_key(files: dict[str, bytes], protocol: Protocol, sites: list[str]) -> str:
    """Names one federated study: the signed model, the protocol and the sites."""
    doc = json.dumps({"protocol": protocol.to_dict(), "sites": sorted(sites)}, sort_keys=True)
    return hashlib.sha256(files[MANIFEST] + doc.encode()).hexdigest()[:16]


def state_dir(root: str | Path, files: dict[str, bytes], protocol: Protocol,
              sites: list[str]) -> Path:
    """Where the server keeps a federated study's global models and record across jobs:
    ``<root>/lvtl-fed/<study key>`` (``root``: :func:`state_root`)."""
    return Path(root) / "lvtl-fed" / study_key(files, protocol, sites)


def signed_weights(files: dict[str, bytes]) -> dict[str, np.ndarray]:
    """The artifact's weights as arrays, checked against the hash its manifest signs (the
    sites verify the signature itself)."""
    manifest = json.loads(files[MANIFEST])
    data = files[WEIGHTS]
    if hashlib.sha256(data).hexdigest() != manifest["files"][WEIGHTS]["sha256"]:
        raise ArtifactError(f"{WEIGHTS}: does not match the artifact's manifest")
    return {k: np.ascontiguousarray(v) for k, v in st_load(data).items()}


def job_state_dir(controller, fed_state: str, files: dict[str, bytes],
                  protocol: Protocol) -> Path:
    """The state folder of the study a server workflow runs (:func:`state_dir` of the job's
    sites), the same for the fed-transfer workflows and the study workflow after them."""
    sites = sorted(c.name for c in controller.engine.get_clients())
    return state_dir(state_root(controller, fed_state), files, protocol, sites)


def read_record(folder: Path, protocol: Protocol) -> FedStudy:
    """The server's record of the study (a fresh one when none is there yet)."""
    path = folder / RECORD
    if path.is_file():
        return from_dict(FedStudy, json.loads(path.read_text()), str(path))
    return FedStudy(rounds=protocol.fed_rounds, epochs_per_round=protocol.fed_epochs,
                    mu=protocol.fed_mu)


def write_record(folder: Path, record: FedStudy) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    write_text(folder / RECORD, json.dumps(to_dict(record), indent=1) + "\n")


def global_path(folder: Path, size: int, rounds: int) -> Path:
    """The global model after ``rounds`` aggregated rounds of a size (one file per round)."""
    return folder / f"size-{size}" / f"global-{rounds}.npz"


def read_global(folder: Path, size: int, rounds: int) -> dict[str, np.ndarray] | None:
    """The global model after ``rounds`` rounds of a size, or None if it is not there."""
    path = global_path(folder, size, rounds)
    if not path.is_file():
        return None
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def left_out(record: FedStudy, size: int) -> dict[str, FedEvent]:
    """Sites not to train a size, with the event that left them out: any exclusion but "too
    few cases" counts for the rest of the job; "too few cases" for that size and larger."""
    out: dict[str, FedEvent] = {}
    for run in record.runs:
        for e in run.events:
            if e.kind is not FedEventKind.TOO_FEW_CASES or run.size <= size:
                out.setdefault(e.site, e)
    return out


class CheckedAggregator(ModelAggregator):
    """Checks each site's update and averages the accepted ones, weighted by the site's
    number of training cases. The controller reads :attr:`received` (sites that answered),
    :attr:`events` (sites left out this round) and :attr:`bytes_in` after each round."""

    def __init__(self, reference: Shapes | None = None):
        super().__init__()
        self.reference = dict(reference or {})
        self.reset_stats()

    def reset_stats(self) -> None:
        self.updates: dict[str, tuple[dict, float]] = {}
        self.received: set[str] = set()
        self.events: list[FedEvent] = []
        self.bytes_in = 0
        self.round = getattr(self, "round", 0)  # set by the controller as a round starts

    def _event(self, site: str, kind: FedEventKind, reason: Reason = Reason.NONE,
               detail: str = "") -> None:
        self.events.append(FedEvent(site=site, round=self.round, kind=kind, reason=reason,
                                    detail=detail[:200]))

    def accept_model(self, model: FLModel) -> None:
        meta = model.meta or {}
        site = str(meta.get("client_name", "?"))
        self.received.add(site)
        params = model.params or {}
        if not params:  # a reply without weights says why, as fixed codes
            try:
                kind = FedEventKind(meta.get(EVENT))
                reason = Reason(meta.get(REASON) or "")
            except ValueError:
                kind, reason = FedEventKind.REFUSED, Reason.INVALID_RESULTS
            self._event(site, kind, reason)
            return
        n_train = meta.get(N_TRAIN)
        partial = meta.get(FILTER) == UpdateFilter.EXCLUDE_VARS.value
        problem = (weights_problem(params, self.reference, partial=partial)
                   if model.params_type == ParamsType.DIFF else "not a weight difference")
        if problem is None and (isinstance(n_train, bool) or not isinstance(n_train, int)
                                or n_train < 1):
            problem = f"the number of training cases is {n_train!r}"
        self.bytes_in += nbytes(params) if problem is None else 0
        if problem:
            log.error("update of %s rejected: %s", site, problem)
            self._event(site, FedEventKind.REJECTED, detail=problem)
            return
        self.updates[site] = ({k: np.asarray(v) for k, v in params.items()}, float(n_train))

    def aggregate_model(self) -> FLModel:
        mean = weighted_mean(self.updates) if self.updates else {}
        return FLModel(params=mean, params_type=ParamsType.DIFF,
                       meta={"sites": sorted(self.updates)})


class FedTransfer(FedAvg):
    """NVFlare's FedAvg for the fed-transfer arm at one training ``size`` (see the module)."""

    def __init__(self, size: int, artifact: str = "artifact", protocol: dict | None = None,
                 timeout: int = 0, task_name: str = FED_TASK, fed_state: str = "",
                 dead_after: float = DEAD_AFTER):
        protocol_ = Protocol.from_dict(dict(protocol or {}))
        super().__init__(num_clients=0, num_rounds=protocol_.fed_rounds, persistor_id="",
                         save_filename=None, aggregator=CheckedAggregator(),
                         task_name=task_name, fedprox_mu=protocol_.fed_mu or None,
                         ignore_result_error=True)
        # the constructor's arguments as attributes of the same names (NVFlare's job export
        # reads them back from there)
        self.size, self.artifact, self.timeout = int(size), artifact, int(timeout)
        self.fed_state, self.dead_after = fed_state, float(dead_after)
        self.protocol = dict(protocol or {})
        self.study = protocol_
        self._files: dict[str, bytes] = {}
        self._folder: Path | None = None
        self._record: FedStudy | None = None
        self._run: FedRun | None = None
        self._targets: list[str] = []
        self._round_start = 0.0
        self._first_round = 0

    # ------------------------------------------------------------------ the run
    def run(self) -> None:
        self._files = pack_artifact(artifact_folder(self, self.artifact))
        self._folder = job_state_dir(self, self.fed_state, self._files, self.study)
        self._record = read_record(self._folder, self.study)
        runs = {r.size: r for r in self._record.runs}
        start = signed_weights(self._files)
        self.aggregator.reference = shapes_of(start)
        run = runs.get(self.size) or FedRun(size=self.size, rounds=self.study.fed_rounds,
                                           param_bytes=nbytes(start))
        if self.size not in runs:
            self._record.runs.append(run)
            self._record.runs.sort(key=lambda r: r.size)
        self._run = run
        if run.completed >= run.rounds:
            self.info(f"fed-transfer size {self.size}: all {run.rounds} rounds were completed "
                      f"before ({self._folder}); nothing to run")
            return
        saved = read_global(self._folder, self.size, run.completed) if run.completed else None
        if run.completed and saved is None:
            self.warning(f"fed-transfer size {self.size}: the record says {run.completed} "
                         "rounds but the global model is missing; starting over")
            run.completed, run.events, run.update_bytes, run.round_seconds = 0, [], [], []
            run.round_sites = []
        if run.completed:
            run.resumed_from = run.completed
            self.info(f"fed-transfer size {self.size}: resuming after round {run.completed}")
        self.model = FLModel(params=saved if run.completed else start,
                             params_type=ParamsType.FULL)
        self.start_round = self._first_round = run.completed
        self.num_rounds = run.rounds - run.completed
        write_record(self._folder, self._record)
        heartbeats(self.engine)  # from now on the sites' signs of life are recorded
        done = threading.Event()
        watch = threading.Thread(target=self._watch, args=(done,), daemon=True,
                                 name="lvtl-fed-watch")
        watch.start()
        try:
            super().run()
        except _NoSitesLeft:
            self.warning(f"fed-transfer size {self.size}: no site left to train; the run ends "
                         f"after {run.completed} round(s)")
        finally:
            done.set()
        write_record(self._folder, self._record)

    def _watch(self, done: threading.Event) -> None:
        """End a round whose remaining sites have all been silent for ``dead_after`` seconds
        (their process died or their network went down): the round is aggregated from the
        updates received, and those sites are dropped (:meth:`save_model`)."""
        while not done.wait(1.0):
            waiting = set(self._targets) - self.aggregator.received
            if not waiting or not self.get_num_standing_tasks():
                continue
            if all(silent_for(self.engine, s, self._round_start) > self.dead_after
                   for s in waiting):
                self.error(f"fed-transfer size {self.size}: {', '.join(sorted(waiting))} not "
                           f"heard from for {self.dead_after:.0f} s: the round goes on without")
                self.cancel_all_tasks()

    def sample_clients(self, num_clients: int | None = None) -> list[str]:
        """The job's sites that were not left out before."""
        out = left_out(self._record, self.size)
        sites = sorted(c.name for c in self.engine.get_clients() if c.name not in out)
        if not sites:
            raise _NoSitesLeft()
        self._targets = sites
        self.aggregator.round = self.current_round
        self._round_start = time.monotonic()
        return sites

    def send_model(self, task_name: str = FED_TASK, data: FLModel | None = None,
                   targets: list[str] | None = None, min_responses: int | None = None,
                   timeout: int = 0, callback=None) -> None:
        """FedAvg's send, with the round's task meta: the protocol and size, and in the first
        round of this job the signed artifact (the sites verify it)."""
        meta = dict(data.meta or {})
        meta.update({PROTOCOL: self.protocol, SIZE: self.size})
        if data.current_round == self._first_round:
            meta[ARTIFACT] = self._files
        task = FLModel(params=data.params, params_type=data.params_type, meta=meta,
                       current_round=data.current_round, total_rounds=self.study.fed_rounds,
                       start_round=data.start_round)

        def received(result: FLModel) -> bool:
            if not result.params:  # FedAvg skips a reply without weights: record why first
                self.aggregator.accept_model(result)
                return False
            return callback(result)

        super().send_model(task_name=task_name, data=task, targets=targets,
                           min_responses=min_responses, timeout=timeout or self.timeout,
                           callback=received if callback else None)

    def save_model(self, model: FLModel) -> None:
        """After every round: the global model and the record, atomically."""
        agg, run = self.aggregator, self._run
        for site in sorted(set(self._targets) - agg.received):
            self.error(f"fed-transfer size {self.size} round {self.current_round + 1}: no "
                       f"update from {site} (failed, died or lost); left out of later rounds")
            agg.events.append(FedEvent(site=site, round=self.current_round,
                                       kind=FedEventKind.DROPPED))
        run.events.extend(agg.events)
        contributed = sorted(agg.updates)
        run.sites = contributed
        run.completed = self.current_round + 1
        run.update_bytes.append(int(agg.bytes_in))
        run.round_sites.append(len(contributed))
        run.round_seconds.append(round(time.monotonic() - self._round_start, 2))
        path = global_path(self._folder, self.size, run.completed)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes(path, npz_bytes(model.params))
        write_record(self._folder, self._record)
        self.info(f"fed-transfer size {self.size}: round {run.completed}/{run.rounds} "
                  f"aggregated from {', '.join(contributed) or 'no site'}")


def state_root(controller, fed_state: str) -> Path:
    """Where a server workflow keeps the federation's state across jobs: ``fed_state`` if the
    job gives it, else ``$LVTL_FED_STATE`` at the server (``job.py --env sim`` sets it: the
    simulator's workspace is made anew for every run), else the server's workspace."""
    chosen = fed_state or os.environ.get(FED_STATE_ENV)
    return Path(chosen) if chosen else Path(controller.engine.get_workspace().get_root_dir())


def artifact_folder(controller, artifact: str) -> Path:
    """The artifact folder a server workflow names: absolute, or in the server app's config
    folder (the job carries it there)."""
    if Path(artifact).is_absolute():
        return Path(artifact)
    return Path(controller.get_app_dir()) / "config" / artifact


def npz_bytes(arrays: dict) -> bytes:
    """The arrays as the bytes of an ``.npz`` file."""
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
    return buf.getvalue()


__all__ = ["FED_TASK", "FedTransfer", "CheckedAggregator", "state_dir", "study_key",
           "signed_weights", "read_record", "read_global", "left_out", "N_TRAIN", "FILTER",
           "EVENT", "REASON", "PROTOCOL", "SIZE", "ARTIFACT", "artifact_folder", "npz_bytes",
           "state_root", "FED_STATE_ENV", "job_state_dir"]
