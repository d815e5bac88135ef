"""The site's outgoing filter: only the allow-listed metrics leave (NVFlare task-result filter).
"""

from __future__ import annotations

from nvflare.apis.dxo import from_shareable
from nvflare.apis.filter import Filter
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable

from lvtl.flare.privacy import check_section


class MetricsOnlyFilter(Filter):
    """Blocks any task result that is not a metrics-only results section.

    A result whose content breaks the allow-list (an unknown field, an array longer than the
    number of test cases, bytes, ...) is replaced by a failure that names the problem, and the
    block is logged at the site; nothing of the original content leaves.
    """

    def process(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        try:
            dxo = from_shareable(shareable)
        except Exception:  # noqa: BLE001 - not a data result (an error reply): nothing to send
            return shareable
        data = dxo.data if isinstance(dxo.data, dict) else {}
        problems = [] if set(data) == {"site"} else [
            "result: only the field 'site' may leave, got " + ", ".join(sorted(map(str, data)))]
        if not problems:
            problems = check_section(data["site"])
        if not problems:
            return shareable
        self.log_error(fl_ctx, "blocked an outgoing result: " + "; ".join(problems[:5]))
        dxo.data = {"site": {"status": "failed", "n_test": 0, "runs": [],
                             "reason": "blocked by the site's privacy filter: "
                                       + "; ".join(problems[:3])[:400]}}
        dxo.meta = {}
        out = dxo.to_shareable()
        for key in ("__headers__",):
            if key in shareable:
                out[key] = shareable[key]
        return out
