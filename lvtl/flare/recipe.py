"""The study as an NVFlare 2.9 Recipe: server workflow, site script, outgoing filter."""

from __future__ import annotations

from pathlib import Path

from nvflare import FedJob
from nvflare.client.config import ExchangeFormat
from nvflare.fuel.utils.constants import FrameworkType
from nvflare.job_config.defs import FilterType
from nvflare.job_config.script_runner import ScriptRunner
from nvflare.recipe.spec import Recipe

from lvtl.flare.controller import TASK, StudyController
from lvtl.flare.filters import MetricsOnlyFilter
from lvtl.flare.site import pack_artifact
from lvtl.study.protocol import Protocol

SITE_SCRIPT = Path(__file__).with_name("site_task.py")


class StudyRecipe(Recipe):
    """One task, ``lvtl_study``: the signed ``artifact`` folder (shipped inside the job) and the
    ``protocol`` go to every site; each returns its metrics through
    :class:`~lvtl.flare.filters.MetricsOnlyFilter`; the server writes the report. ``timeout``
    (seconds, 0 = none) bounds the wait for the sites."""

    def __init__(self, artifact: str | Path, protocol: Protocol, *, name: str = "lvtl_study",
                 min_clients: int = 1, timeout: int = 0):
        artifact = Path(artifact).resolve()
        pack_artifact(artifact)  # refuse a folder that is not an artifact now, not at run time
        job = FedJob(name=name, min_clients=min_clients)
        job.to_server(StudyController(artifact=artifact.name, protocol=protocol.to_dict(),
                                      timeout=timeout))
        job.to_server(str(artifact))  # travels with the job into the server app's custom/
        job.to_clients(ScriptRunner(script=str(SITE_SCRIPT), framework=FrameworkType.RAW,
                                    server_expected_format=ExchangeFormat.RAW),
                       tasks=[TASK])
        job.to_clients(MetricsOnlyFilter(), filter_type=FilterType.TASK_RESULT, tasks=[TASK])
        super().__init__(job)
