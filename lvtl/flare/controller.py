"""The server workflow: one task to every site, then the cross-site report."""

from __future__ import annotations

import os
import time
from pathlib import Path

from nvflare.app_common.abstract.fl_model import FLModel
from nvflare.app_common.workflows.model_controller import ModelController

from lvtl.artifact import MANIFEST
from lvtl.errors import ConfigError
from lvtl.flare.site import pack_artifact
from lvtl.study.protocol import Protocol
from lvtl.study.report import write_report
from lvtl.study.results import ResultsDoc, SiteResults

TASK = "lvtl_study"


class StudyController(ModelController):
    """Sends the signed artifact and the study protocol to every site (one task each), waits up
    to ``timeout`` seconds (0: no limit) for each site's results, and writes ``report.json``,
    ``report.md`` and plots in the server's run folder. A site that fails, refuses the model or
    does not answer in time is in the report with its reason."""

    def __init__(self, artifact: str = "artifact", protocol: dict | None = None,
                 timeout: int = 0, task_name: str = TASK):
        super().__init__(persistor_id="", ignore_result_error=True)
        self.artifact = artifact
        self.protocol = dict(protocol or {})
        self.timeout = int(timeout)
        self.task_name = task_name

    def _artifact_dir(self) -> Path:
        if os.path.isabs(self.artifact):
            return Path(self.artifact)
        # FedJob copies the artifact folder's files into the server app's custom/ folder
        app = Path(self.get_app_dir())
        for cand in (app / "custom" / self.artifact, app / self.artifact, app / "custom"):
            if (cand / MANIFEST).is_file():
                return cand
        return app / "custom" / self.artifact

    def run(self) -> None:
        files = pack_artifact(self._artifact_dir())
        clients = self.sample_clients()
        sites: dict[str, SiteResults] = {}

        def collect(result: FLModel) -> None:
            name = result.meta.get("client_name", "?")
            try:
                sites[name] = SiteResults.from_dict((result.params or {}).get("site"))
            except ConfigError as e:
                self.error(f"results from {name} refused: {e}")
                sites[name] = SiteResults.failed("the site sent no valid results section")
            self.info(f"results from {name}: {sites[name].status}")

        # one task per site: a site that dies or times out ends only its own task, so the
        # others' results are never dropped with it
        self.info(f"sending the study to {', '.join(clients)}")
        for name in clients:
            task = FLModel(params={"artifact": files, "protocol": self.protocol},
                           current_round=0, total_rounds=1)
            self.send_model(task_name=self.task_name, data=task, targets=[name],
                            timeout=self.timeout, callback=collect)
        while self.get_num_standing_tasks() > 0 and not self.abort_signal.triggered:
            time.sleep(1.0)
        for name in clients:
            if name not in sites:
                sites[name] = SiteResults.failed(
                    "no results: the site's task failed, its process ended, or it did not "
                    f"finish within the timeout ({self.timeout or 'none'} s); see the site's log")
        doc = ResultsDoc(sites={name: sites[name] for name in clients},
                         protocol=Protocol.from_dict(self.protocol))
        out = write_report(doc, self.get_run_dir())
        self.info(f"report written: {out}")
