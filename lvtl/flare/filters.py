"""The site's outgoing filter: only the allow-listed metrics leave (NVFlare task-result filter).
"""

from __future__ import annotations

from nvflare.apis.dxo import DXO, DataKind, from_shareable
from nvflare.apis.filter import Filter
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable

from lvtl.flare.privacy import check_section
from lvtl.study.results import Reason, SiteResults


class MetricsOnlyFilter(Filter):
    """Lets a task result leave only as a fresh reply that holds one checked results section.

    The reply that leaves is built anew: a DXO whose data is ``{"site": section}`` and nothing
    else — no DXO meta, no ``FLModel`` metrics or meta, no extra keys or headers of the
    original (NVFlare adds the task's name and id after the filter). A result that is not a
    DXO, holds anything besides ``site``, or whose section breaks the allow-list is replaced by
    a ``failed`` section with the fixed reason ``blocked_by_privacy_filter``; the problems are
    logged at the site only. Any error while checking blocks too (fail closed).
    """

    def process(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        section = None
        try:
            dxo = from_shareable(shareable)
            data = dxo.data
            if not isinstance(data, dict) or set(data) != {"site"}:
                keys = sorted(map(str, data)) if isinstance(data, dict) else type(data).__name__
                problems = [f"result: only the field 'site' may leave, got {keys}"]
            else:
                problems = check_section(data["site"])
            if dxo.meta or set(shareable) - {"DXO", "__headers__"}:
                self.log_warning(fl_ctx, "dropped the outgoing result's meta data, metrics and "
                                         "extra keys: only the results section leaves")
            if not problems:
                section = data["site"]
        except Exception as e:  # noqa: BLE001 - not a data result, or a broken one: block
            problems = [f"result: not a metrics result ({type(e).__name__})"]
        if section is None:
            self.log_error(fl_ctx, "blocked an outgoing result: " + "; ".join(problems[:5]))
            section = SiteResults.failed(Reason.BLOCKED).to_dict()
        # as the Client API sends a result (FLModel params -> DXO of kind WEIGHTS)
        return DXO(DataKind.WEIGHTS, data={"site": section}).to_shareable()
