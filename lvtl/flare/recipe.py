"""The study as an NVFlare 2.9 Recipe: server workflow, site executor, outgoing filter.

The job carries no code: it names lvtl's classes, which each participant imports from the lvtl
it installed (``set_app_packages``), so the exported job has no ``custom/`` folder and a kit
that denies custom code (``byoc``) runs it. It declares the privacy scope the sites' kits
accept (:data:`lvtl.flare.provision.PRIVACY_SCOPE`).
"""

from __future__ import annotations

from pathlib import Path

from nvflare import FedJob
from nvflare.job_config.defs import FilterType
from nvflare.recipe.spec import Recipe

from lvtl.artifact import ARTIFACT_FILES
from lvtl.flare.controller import DEFAULT_TIMEOUT, TASK, StudyController
from lvtl.flare.executor import StudyExecutor
from lvtl.flare.filters import MetricsOnlyFilter
from lvtl.flare.provision import PRIVACY_SCOPE
from lvtl.flare.site import pack_artifact
from lvtl.study.protocol import Protocol

#: The folder of the signed artifact inside the server app's config folder.
ARTIFACT_DIR = "artifact"


class StudyRecipe(Recipe):
    """One task, ``lvtl_study``: the signed ``artifact`` folder (shipped inside the job, in
    the server app's config folder) and the ``protocol`` go to every site; each returns its
    metrics through :class:`~lvtl.flare.filters.MetricsOnlyFilter` (the job's, and the site
    kit's own under the privacy scope); the server writes the report. ``timeout`` (seconds,
    0 = none) bounds the wait for each site."""

    def __init__(self, artifact: str | Path, protocol: Protocol, *, name: str = "lvtl_study",
                 min_clients: int = 1, timeout: int = DEFAULT_TIMEOUT):
        artifact = Path(artifact).resolve()
        pack_artifact(artifact)  # refuse a folder that is not an artifact now, not at run time
        job = FedJob(name=name, min_clients=min_clients, meta_props={"scope": PRIVACY_SCOPE})
        job.set_app_packages(["lvtl"])  # the sites' installed lvtl, never code in the job
        job.to_server(StudyController(artifact=ARTIFACT_DIR, protocol=protocol.to_dict(),
                                      timeout=timeout))
        # data, not code: the artifact's files (and nothing else of its folder) go into the
        # server app's config folder
        for file in ARTIFACT_FILES:
            job.add_file_to_server(str(artifact / file), dest_dir=ARTIFACT_DIR,
                                   app_folder_type="config")
        job.to_clients(StudyExecutor(), tasks=[TASK])
        # the job's own copy of the filter: the simulator, which applies no site privacy
        # scopes, filters with it too
        job.to_clients(MetricsOnlyFilter(), filter_type=FilterType.TASK_RESULT, tasks=[TASK])
        super().__init__(job)
