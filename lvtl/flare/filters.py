"""The site's outgoing filters (NVFlare task-result filters): only the allow-listed metrics
leave, and under the fed-transfer scope a checked weight update for that task only.
"""

from __future__ import annotations

import numpy as np
from nvflare.apis.dxo import DXO, DataKind, from_shareable
from nvflare.apis.filter import Filter
from nvflare.apis.fl_constant import FLContextKey, FLMetaKey
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable

from lvtl.config import load_site_config
from lvtl.flare.fed import EVENT, FED_TASK, FILTER, N_TRAIN, REASON
from lvtl.flare.privacy import check_section
from lvtl.flare.site import site_config_path
from lvtl.sitecheck import build_update_filter
from lvtl.study.results import FedEventKind, Reason, SiteResults


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


class FedUpdateFilter(Filter):
    """The site's outgoing filter under the fed-transfer privacy scope (``lvtl_fed``).

    For the fed-transfer task only, a model weight update may leave: a fresh reply holding
    the weight difference (named arrays of finite numbers) with the site's number of training
    cases and steps, and nothing else — only if the site's own config allows weight sharing
    (``[federation] allow_weight_sharing``), and after the site's chosen NVFlare privacy
    filter (``update_filter``; its name goes along, so the coordinator's report says which each
    site used). A reply without weights leaves as its fixed codes only. Anything else — weights
    from a site that does not share them, a reply that is not a weight difference, values that
    are not finite numbers, any error while checking — is replaced by a reply without weights
    that says ``blocked_by_privacy_filter`` (fail closed). Every other task's result goes
    through :class:`MetricsOnlyFilter`, so metrics-only stays the rule for them.
    """

    def process(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        if fl_ctx.get_prop(FLContextKey.TASK_NAME) != FED_TASK:
            return MetricsOnlyFilter().process(shareable, fl_ctx)
        site = fl_ctx.get_identity_name()
        try:
            cfg = load_site_config(site_config_path(site))
            dxo = from_shareable(shareable)
            out = self._update(dxo, cfg, fl_ctx)
        except Exception as e:  # noqa: BLE001 - unreadable, broken or hostile: block
            self.log_error(fl_ctx, f"blocked an outgoing fed-transfer reply: {e}")
            out = _no_update(FedEventKind.REFUSED, Reason.BLOCKED)
        return out.to_shareable()

    def _update(self, dxo: DXO, cfg, fl_ctx: FLContext) -> DXO:
        data, meta = dxo.data, dxo.meta or {}
        if not isinstance(data, dict):
            raise ValueError("the reply holds no named weights")
        if not data:  # no weights: only the fixed codes go on
            return _no_update(FedEventKind(meta.get(EVENT)), Reason(meta.get(REASON) or ""))
        fed = cfg.federation
        if not fed.allow_weight_sharing:
            raise ValueError(f"{cfg.source}: weight sharing is not allowed; the update stays")
        if dxo.data_kind != DataKind.WEIGHT_DIFF:
            raise ValueError(f"only a weight difference may leave, not {dxo.data_kind}")
        weights = {}
        for name, value in data.items():
            arr = np.asarray(value)
            if not isinstance(name, str) or arr.dtype.kind != "f" or not np.isfinite(arr).all():
                raise ValueError(f"{name!r}: not an array of finite numbers")
            weights[name] = arr.astype(np.float32, copy=False)
        n_train, steps = meta.get(N_TRAIN), meta.get(FLMetaKey.NUM_STEPS_CURRENT_ROUND)
        for key, value in ((N_TRAIN, n_train), ("steps", steps)):
            if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= 10**9:
                raise ValueError(f"{key}: expected a positive count, got {value!r}")
        out = DXO(DataKind.WEIGHT_DIFF, data=weights,
                  meta={N_TRAIN: n_train, FLMetaKey.NUM_STEPS_CURRENT_ROUND: steps})
        task_id = fl_ctx.get_prop(FLContextKey.TASK_ID)
        privacy = build_update_filter(fed, cfg.source)
        # the kit's scope and the job both run this filter: the site's filter applies once
        if privacy is not None and fl_ctx.get_prop(_FILTERED) != task_id:
            out = privacy.process_dxo(out, out.to_shareable(), fl_ctx) or out
            fl_ctx.set_prop(_FILTERED, task_id, private=True, sticky=False)
        # only these leave, whatever meta the NVFlare filter added
        out.meta = {N_TRAIN: n_train, FLMetaKey.NUM_STEPS_CURRENT_ROUND: steps,
                    FILTER: fed.update_filter.value}
        return out


#: The fl_ctx property saying for which task the site's privacy filter has been applied.
_FILTERED = "lvtl.update_filter_applied"


def _no_update(kind: FedEventKind, reason: Reason) -> DXO:
    return DXO(DataKind.WEIGHT_DIFF, data={}, meta={EVENT: kind.value, REASON: reason.value})
