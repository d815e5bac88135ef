"""The site's NVFlare executor: runs the study task with the lvtl installed at the site.

The job names this class (``lvtl.flare.executor.StudyExecutor``) and carries no code of its
own: NVFlare builds the executor from the site's installed lvtl, which the site's class
allow-list admits (``lvtl.flare.provision``). The work is :func:`lvtl.flare.site.run_task`.
"""

from __future__ import annotations

import os
import threading

from nvflare.apis.app_validation import AppValidationKey
from nvflare.apis.dxo import DXO, DataKind, from_shareable
from nvflare.apis.executor import Executor
from nvflare.apis.fl_constant import FLContextKey, ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.fl_exception import UnsafeJobError
from nvflare.apis.shareable import Shareable, make_reply
from nvflare.apis.signal import Signal

from lvtl.flare.controller import ALIVE_EVERY, ALIVE_TOPIC, TASK
from lvtl.flare.site import run_task


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

    def __init__(self, task_name: str = TASK):
        super().__init__()
        self.task_name = task_name

    def execute(self, task_name: str, shareable: Shareable, fl_ctx: FLContext,
                abort_signal: Signal) -> Shareable:
        if task_name != self.task_name:
            self.log_error(fl_ctx, f"unknown task {task_name!r}: only {self.task_name!r} runs")
            return make_reply(ReturnCode.TASK_UNKNOWN)
        if ships_code(fl_ctx):
            self.log_error(fl_ctx, "refused the job: it ships code of its own (custom/), and "
                                   "this site runs only the lvtl it installed")
            raise UnsafeJobError("the job ships custom code")
        try:
            params = from_shareable(shareable).data
        except ValueError:
            params = None
        site = fl_ctx.get_identity_name()
        done = threading.Event()
        alive = threading.Thread(target=self._keep_alive, args=(fl_ctx, done), daemon=True,
                                 name="lvtl-alive")
        alive.start()
        try:
            section = run_task(site, params if isinstance(params, dict) else {},
                               say=lambda m: self.log_info(fl_ctx, m))
        finally:
            done.set()
        return DXO(DataKind.WEIGHTS, data={"site": section}).to_shareable()

    def _keep_alive(self, fl_ctx: FLContext, done: threading.Event) -> None:
        """Tell the server every ``ALIVE_EVERY`` seconds that the task is still running (an
        empty message: the topic is all it says), so a site whose process died is found in
        minutes, not after the task's timeout."""
        engine = fl_ctx.get_engine()
        while not done.wait(ALIVE_EVERY):
            with engine.new_context() as ctx:
                engine.send_aux_request(targets=None, topic=ALIVE_TOPIC, request=Shareable(),
                                        timeout=0, fl_ctx=ctx, optional=True)
