"""The server workflow: one task to every site, then the cross-site report."""

from __future__ import annotations

import threading
import time

from nvflare.app_common.abstract.fl_model import FLModel
from nvflare.app_common.workflows.model_controller import ModelController

from lvtl.errors import ConfigError
from lvtl.flare.alive import DEAD_AFTER, heartbeats, silent_for
from lvtl.flare.fed import artifact_folder, job_state_dir, read_global, read_record
from lvtl.flare.site import pack_artifact
from lvtl.study.protocol import Arm, Protocol
from lvtl.study.report import write_report
from lvtl.study.results import Reason, ResultsDoc, SiteResults, Status

TASK = "lvtl_study"
#: Seconds the server waits for a site's results (a week: a paper-scale study at a site runs
#: for days on a GPU); 0 waits without limit.
DEFAULT_TIMEOUT = 7 * 24 * 3600


class StudyController(ModelController):
    """Sends the signed artifact and the study protocol to every site (one task each), waits up
    to ``timeout`` seconds (0: no limit) for each site's results, and keeps ``report.json``,
    ``report.md`` and plots in the server's run folder up to date: written at the start (every
    site pending) and again as each site's results arrive, so a server crash loses nothing
    received. A site whose task has not said it is alive (it does every ``ALIVE_EVERY`` s) for
    ``dead_after`` seconds is taken as dead. A site that fails, refuses
    the model, dies or does not answer in time is in the report with its reason code; a dead
    site's results that still arrive while others run replace the verdict."""

    def __init__(self, artifact: str = "artifact", protocol: dict | None = None,
                 timeout: int = DEFAULT_TIMEOUT, task_name: str = TASK,
                 dead_after: float = DEAD_AFTER, fed_state: str = ""):
        super().__init__(persistor_id="", ignore_result_error=True)
        self.artifact = artifact
        self.protocol = dict(protocol or {})
        self.timeout = int(timeout)
        self.task_name = task_name
        self.dead_after = float(dead_after)
        self.fed_state = fed_state  # where the fed-transfer workflows keep their state

    def run(self) -> None:
        # the job carries the artifact's files in the server app's config folder (not in
        # custom/: the job brings no code)
        files = pack_artifact(artifact_folder(self, self.artifact))
        clients = self.sample_clients()
        sites = {name: SiteResults.pending() for name in clients}
        protocol = Protocol.from_dict(self.protocol)
        federation, fed = self._federation(files, protocol)
        lock = threading.Lock()

        def write() -> None:  # after every change: a server crash loses nothing received
            with lock:
                out = write_report(ResultsDoc(sites=dict(sites), protocol=protocol,
                                              federation=federation), self.get_run_dir())
            self.info(f"report written: {out}")

        def collect(result: FLModel) -> None:
            name = result.meta.get("client_name", "?")
            if name not in sites:
                self.error(f"results from {name}, which was not sent the study: ignored")
                return
            try:
                sites[name] = SiteResults.from_dict((result.params or {}).get("site"))
            except ConfigError as e:
                self.error(f"results from {name} refused: {e}")
                sites[name] = SiteResults.failed(Reason.INVALID_RESULTS)
            self.info(f"results from {name}: {sites[name].status}")
            write()

        write()  # every site pending
        # one task per site: a site that dies or times out ends only its own task, so the
        # others' results are never dropped with it
        sent = time.monotonic()
        heartbeats(self.engine)  # from now on the sites' signs of life are recorded
        self.info(f"sending the study to {', '.join(clients)}")
        for name in clients:
            # a site gets the federation's models of the sizes it trained, no others
            mine = {size: run for size, run in fed.items() if name in run["sites"]}
            task = FLModel(params={"artifact": files, "protocol": self.protocol, "fed": mine},
                           current_round=0, total_rounds=1)
            self.send_model(task_name=self.task_name, data=task, targets=[name],
                            timeout=self.timeout, callback=collect)
        while self.get_num_standing_tasks() > 0 and not self.abort_signal.triggered:
            time.sleep(1.0)
            for name, sec in sites.items():
                # silent: its process died, it lost the network, or it never took the task
                # (refused the job at deployment, was not started)
                if (sec.status == Status.PENDING
                        and silent_for(self.engine, name, sent) > self.dead_after):
                    self.error(f"{name} has not been heard from for {self.dead_after:.0f} s: "
                               "taken as lost")
                    sites[name] = SiteResults.failed(Reason.SITE_LOST)
                    write()
            if all(sec.status != Status.PENDING for sec in sites.values()):
                self.cancel_all_tasks()
                break
        for name in clients:
            if sites[name].status == Status.PENDING:
                self.error(f"no results from {name}: its task failed, its process ended, or it "
                           f"did not finish within the timeout ({self.timeout or 'none'} s)")
                sites[name] = SiteResults.failed(Reason.NO_RESULTS)
        write()

    def _federation(self, files: dict[str, bytes], protocol: Protocol) -> tuple:
        """The fed-transfer arm's record and final models (run by the
        :class:`~lvtl.flare.fed.FedTransfer` workflows before this one): ``(FedStudy or
        None, {size: {"params": weights, "sites": names}})``."""
        if Arm.FED_TRANSFER not in protocol.arms:
            return None, {}
        folder = job_state_dir(self, self.fed_state, files, protocol)
        record = read_record(folder, protocol)
        fed = {}
        for run in record.runs:
            params = (read_global(folder, run.size, run.completed) if run.completed and run.sites
                      else None)
            if params is not None:
                fed[str(run.size)] = {"params": params, "sites": list(run.sites)}
        self.info(f"fed-transfer models to evaluate: sizes {', '.join(fed) or 'none'}")
        return record, fed
