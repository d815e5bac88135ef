"""The server workflow: one task to every site, then the cross-site report."""

from __future__ import annotations

import os
from pathlib import Path

from nvflare.app_common.abstract.fl_model import FLModel
from nvflare.app_common.workflows.model_controller import ModelController

from lvtl.flare.site import failed, pack_artifact

TASK = "lvtl_study"


class StudyController(ModelController):
    """Sends the signed artifact and the study protocol to every site as one task, waits up to
    ``timeout`` seconds (0: no limit) for the results, and writes ``report.json``,
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
            if (cand / "manifest.json").is_file():
                return cand
        return app / "custom" / self.artifact

    def run(self) -> None:
        from lvtl.report import write_report

        files = pack_artifact(self._artifact_dir())
        clients = self.sample_clients()
        self.info(f"sending the study to {', '.join(clients)}")
        task = FLModel(params={"artifact": files, "protocol": self.protocol},
                       current_round=0, total_rounds=1)
        results = self.send_model_and_wait(task_name=self.task_name, data=task,
                                           targets=clients, timeout=self.timeout)
        sites = {}
        for r in results:
            name = r.meta.get("client_name", "?")
            section = (r.params or {}).get("site")
            sites[name] = section if isinstance(section, dict) else failed(
                "the site sent no results section")
        for name in clients:
            if name not in sites:
                sites[name] = failed("no results: the site's task failed or did not finish "
                                     f"within the timeout ({self.timeout or 'none'} s); see "
                                     "the site's log")
        doc = {"schema": "lvtl.report/1", "protocol": self.protocol, "sites": sites}
        out = write_report(doc, self.get_run_dir())
        self.info(f"report written: {out}")
