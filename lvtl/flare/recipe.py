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
from lvtl.flare.alive import DEAD_AFTER
from lvtl.flare.controller import DEFAULT_TIMEOUT, TASK, StudyController
from lvtl.flare.executor import StudyExecutor
from lvtl.flare.fed import FED_TASK, FedTransfer
from lvtl.flare.filters import FedUpdateFilter, MetricsOnlyFilter
from lvtl.flare.provision import FED_SCOPE, PRIVACY_SCOPE
from lvtl.flare.site import pack_artifact
from lvtl.study.protocol import Arm, Protocol

#: The folder of the signed artifact inside the server app's config folder.
ARTIFACT_DIR = "artifact"


class StudyRecipe(Recipe):
    """One task, ``lvtl_study``: the signed ``artifact`` folder (shipped inside the job, in
    the server app's config folder) and the ``protocol`` go to every site; each returns its
    metrics through :class:`~lvtl.flare.filters.MetricsOnlyFilter` (the job's, and the site
    kit's own under the privacy scope); the server writes the report. ``timeout`` (seconds,
    0 = none) bounds the wait for each site.

    With the ``fed-transfer`` arm in the protocol, NVFlare FedAvg workflows
    (:class:`~lvtl.flare.fed.FedTransfer`, one per training size, smallest first) run before
    the study, with task ``lvtl_fed_train``; the job then names the privacy scope
    ``lvtl_fed``, whose filter (:class:`~lvtl.flare.filters.FedUpdateFilter`) lets a checked
    weight update leave for that task only, where the site's own config allows it; the study
    sends each size's final model to the sites that trained it, which evaluate it.
    ``fed_state``: the server's folder for the federation's state across jobs (default: the
    server's workspace; a rerun resumes after the last completed round). ``dead_after``:
    seconds of silence after which a site is taken as lost (it then drops out of the
    fed-transfer rounds, and its study results are marked lost). ``mandatory_clients``: sites
    the job must not start without (a POC starts every site of its project file, and the job
    would otherwise start with whichever ``min_clients`` came up first)."""

    def __init__(self, artifact: str | Path, protocol: Protocol, *, name: str = "lvtl_study",
                 min_clients: int = 1, timeout: int = DEFAULT_TIMEOUT, fed_state: str = "",
                 dead_after: float = DEAD_AFTER, mandatory_clients: tuple[str, ...] = ()):
        artifact = Path(artifact).resolve()
        pack_artifact(artifact)  # refuse a folder that is not an artifact now, not at run time
        fed = Arm.FED_TRANSFER in protocol.arms
        job = FedJob(name=name, min_clients=min_clients,
                     mandatory_clients=list(mandatory_clients) or None,
                     meta_props={"scope": FED_SCOPE if fed else PRIVACY_SCOPE})
        job.set_app_packages(["lvtl"])  # the sites' installed lvtl, never code in the job
        for size in sorted(set(protocol.sizes)) if fed else ():
            job.to_server(FedTransfer(size, artifact=ARTIFACT_DIR, protocol=protocol.to_dict(),
                                      timeout=timeout, fed_state=fed_state,
                                      dead_after=dead_after), id=f"fed_transfer_{size}")
        job.to_server(StudyController(artifact=ARTIFACT_DIR, protocol=protocol.to_dict(),
                                      timeout=timeout, fed_state=fed_state,
                                      dead_after=dead_after))
        # data, not code: the artifact's files (and nothing else of its folder) go into the
        # server app's config folder
        for file in ARTIFACT_FILES:
            job.add_file_to_server(str(artifact / file), dest_dir=ARTIFACT_DIR,
                                   app_folder_type="config")
        job.to_clients(StudyExecutor(), tasks=[TASK, FED_TASK] if fed else [TASK])
        # the job's own copy of the filters: the simulator, which applies no site privacy
        # scopes, filters with them too
        job.to_clients(MetricsOnlyFilter(), filter_type=FilterType.TASK_RESULT, tasks=[TASK])
        if fed:
            job.to_clients(FedUpdateFilter(), filter_type=FilterType.TASK_RESULT,
                           tasks=[FED_TASK])
        super().__init__(job)
