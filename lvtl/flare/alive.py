"""Signs of life: a site's running task tells the server it is alive every ``ALIVE_EVERY``
seconds (an empty aux message on ``ALIVE_TOPIC``); the server's workflows take a site silent
for ``dead_after`` seconds as lost, in minutes rather than after a task's timeout.

NVFlare lets one handler per topic be registered with the server's engine, and a job's
workflows (the fed-transfer rounds, then the study) run one after the other in one engine, so
the handler is registered once per engine and the workflows share what it records.
"""

from __future__ import annotations

import threading
import time

from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable

#: A running site task tells the server it is alive this often (seconds) ...
ALIVE_EVERY = 10.0
#: ... and a site silent for this long is taken as dead (the default).
DEAD_AFTER = 120.0
ALIVE_TOPIC = "lvtl.alive"

_SEEN: dict[int, dict[str, float]] = {}
_LOCK = threading.Lock()


def heartbeats(engine) -> dict[str, float]:
    """Site name -> the monotonic time of its last sign of life, for the server ``engine``
    (the handler is registered on the first call)."""
    with _LOCK:
        seen = _SEEN.get(id(engine))
        if seen is None:
            seen = _SEEN[id(engine)] = {}

            def alive(topic: str, request: Shareable, fl_ctx: FLContext) -> Shareable:
                peer = fl_ctx.get_peer_context()
                if peer is not None:
                    seen[peer.get_identity_name()] = time.monotonic()
                return Shareable()

            engine.register_aux_message_handler(ALIVE_TOPIC, alive)
        return seen


def silent_for(engine, site: str, since: float) -> float:
    """Seconds since ``site``'s last sign of life, counting from ``since`` (a monotonic time:
    when it was sent its task) if it has not been heard from after that."""
    return time.monotonic() - max(heartbeats(engine).get(site, since), since)


class KeepAlive:
    """At a site, while a task runs (``with KeepAlive(fl_ctx):``): an empty message on
    ``ALIVE_TOPIC`` to the server as the task starts and then every ``ALIVE_EVERY``
    seconds."""

    def __init__(self, fl_ctx: FLContext):
        self.engine = fl_ctx.get_engine()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True, name="lvtl-alive")

    def __enter__(self) -> KeepAlive:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.done.set()

    def _run(self) -> None:
        wait = 0.0  # the first at once: the server knows the task was taken
        while not self.done.wait(wait):
            wait = ALIVE_EVERY
            with self.engine.new_context() as ctx:
                self.engine.send_aux_request(targets=None, topic=ALIVE_TOPIC,
                                             request=Shareable(), timeout=0, fl_ctx=ctx,
                                             optional=True)
