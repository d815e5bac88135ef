"""The site's NVFlare executor: runs the study task with the lvtl installed at the site.

The job names this class (``lvtl.flare.executor.StudyExecutor``) and carries no code of its
own: NVFlare builds the executor from the site's installed lvtl, which the site's class
allow-list admits (``lvtl.flare.provision``). The work is :func:`lvtl.flare.site.run_task`.
"""

from __future__ import annotations

import os

from nvflare.apis.app_validation import AppValidationKey
from nvflare.apis.dxo import DXO, DataKind, from_shareable
from nvflare.apis.executor import Executor
from nvflare.apis.fl_constant import FLContextKey, FLMetaKey, ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.fl_exception import UnsafeJobError
from nvflare.apis.shareable import Shareable, make_reply
from nvflare.apis.signal import Signal
from nvflare.app_common.abstract.fl_model import FLModel, ParamsType
from nvflare.app_common.utils.fl_model_utils import FLModelUtils

from lvtl.flare.alive import KeepAlive
from lvtl.flare.controller import TASK
from lvtl.flare.fed import ARTIFACT, EVENT, FED_TASK, N_TRAIN, PROTOCOL, REASON, SIZE
from lvtl.flare.site import FedReply, FedSite, run_task


def ships_code(fl_ctx: FLContext) -> bool:
    """Whether the running job brought code of its own (a ``custom/`` folder in its app, or
    NVFlare's BYOC mark in the job's meta)."""
    meta = fl_ctx.get_prop(FLContextKey.JOB_META) or {}
    if isinstance(meta, dict) and meta.get(AppValidationKey.BYOC):
        return True
    engine, job_id = fl_ctx.get_engine(), fl_ctx.get_job_id()
    workspace = engine.get_workspace() if engine is not None and job_id else None
    return workspace is not None and os.path.isdir(workspace.get_app_custom_dir(job_id))


class StudyExecutor(Executor):
    """Runs one ``lvtl_study`` task: ``{"artifact": {file: bytes}, "protocol": {...}}`` in,
    a DXO of kind ``WEIGHTS`` with data ``{"site": results section}`` out (what the site's
    :class:`~lvtl.flare.filters.MetricsOnlyFilter` lets leave and the server's
    :class:`~lvtl.flare.controller.StudyController` reads).

    A job that ships code of its own is refused before anything is read: the executor raises
    NVFlare's ``UnsafeJobError``, which marks the job unsafe and aborts it. This is a second
    line behind the kit's ``byoc`` right, which refuses such a job when it is deployed; code in
    the job could replace this executor, so it is no guard on its own.
    """

    def __init__(self, task_name: str = TASK, fed_task_name: str = FED_TASK):
        super().__init__()
        self.task_name, self.fed_task_name = task_name, fed_task_name
        self._fed: FedSite | None = None  # the fed-transfer arm's state for this job

    def execute(self, task_name: str, shareable: Shareable, fl_ctx: FLContext,
                abort_signal: Signal) -> Shareable:
        if task_name not in (self.task_name, self.fed_task_name):
            self.log_error(fl_ctx, f"unknown task {task_name!r}: only {self.task_name!r} and "
                                   f"{self.fed_task_name!r} run")
            return make_reply(ReturnCode.TASK_UNKNOWN)
        if ships_code(fl_ctx):
            self.log_error(fl_ctx, "refused the job: it ships code of its own (custom/), and "
                                   "this site runs only the lvtl it installed")
            raise UnsafeJobError("the job ships custom code")
        if task_name == self.fed_task_name:
            return self._fed_round(shareable, fl_ctx)
        try:
            params = from_shareable(shareable).data
        except ValueError:
            params = None
        site = fl_ctx.get_identity_name()
        with KeepAlive(fl_ctx):  # the server hears from this task while it runs
            section = run_task(site, params if isinstance(params, dict) else {},
                               say=lambda m: self.log_info(fl_ctx, m))
        return DXO(DataKind.WEIGHTS, data={"site": section}).to_shareable()

    def _fed_round(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        """One fed-transfer round (:class:`lvtl.flare.site.FedSite`); the reply is the
        weight update (or why there is none) that the site's
        :class:`~lvtl.flare.filters.FedUpdateFilter` checks on its way out."""
        site = fl_ctx.get_identity_name()
        if self._fed is None:
            self._fed = FedSite(site, say=lambda m: self.log_info(fl_ctx, m))
        try:
            task = FLModelUtils.from_shareable(shareable)
        except (ValueError, TypeError):
            task = FLModel(params={}, meta={})
        meta = task.meta or {}
        params = {"protocol": meta.get(PROTOCOL), "artifact": meta.get(ARTIFACT),
                  "size": meta.get(SIZE), "round": task.current_round}
        with KeepAlive(fl_ctx):
            reply = self._fed.round(params, task.params)
        return FLModelUtils.to_shareable(fed_result(reply))


def fed_result(reply: FedReply) -> FLModel:
    """A site's fed-transfer round reply as NVFlare's FLModel: the weight difference with its
    number of training cases and steps, or no weights and the fixed codes of why."""
    if reply.update is None:
        return FLModel(params={}, params_type=ParamsType.DIFF,
                       meta={EVENT: reply.event.value if reply.event else "",
                             REASON: reply.reason.value})
    return FLModel(params=reply.update, params_type=ParamsType.DIFF,
                   meta={N_TRAIN: reply.n_train, FLMetaKey.NUM_STEPS_CURRENT_ROUND: reply.steps})
