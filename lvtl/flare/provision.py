"""The startup-kit policy: what every provisioned kit enforces, in one place.

``sites/project.yml`` lists :class:`LvtlKitBuilder` (after NVFlare's ``StaticFileBuilder``,
before ``CertBuilder``), so ``nvflare provision`` and ``nvflare poc prepare`` write into each
kit's ``local/`` folder:

- at each site, ``privacy.json``: two privacy scopes and no ``default_scope``. NVFlare runs
  the filters of the scope a job names on every task result, before the job's own filters, and
  refuses at deploy time a job whose meta does not name a scope of the site's ``privacy.json``
  (with no default scope, a job without a scope is refused too):

  - :data:`PRIVACY_SCOPE` (``lvtl_metrics``), the study job's: its task-result filter is
    :class:`~lvtl.flare.filters.MetricsOnlyFilter`, so only the allow-listed metrics leave;
  - :data:`FED_SCOPE` (``lvtl_fed``), the scope of a job with the fed-transfer arm: its
    task-result filter is ``FedUpdateFilter`` (:data:`FED_FILTER_PATH`), which lets a checked
    model weight update leave for the fed-transfer task only, and only where the site's own
    ``[federation]`` allows weight sharing, through the NVFlare privacy filter the site chose
    there; every other task's result goes through the metrics-only filter. A site that never
    wants weights to leave deletes this scope from its kit, and NVFlare then refuses such a job
    at deployment (:func:`check_site_kit` reports the scope absent as a choice, not a fault);
- at the server and each site, ``authorization.json``: no role may bring custom code
  (``byoc``), run shell commands (``ls``, ``cat``, ``grep``, ... on the site's files) or
  operate the site (``sys_info``, ``report_env``, restart, shutdown); only the project admin
  (the coordinator) submits, manages and downloads jobs;
- ``resources.json.default``: the class allow-list of jobs without custom code: the server
  takes NVFlare's default list plus ``lvtl.flare.``; a site takes ``lvtl.flare.`` alone, so a
  job can run nothing at a site but lvtl's own NVFlare classes. At each site, log streaming is
  off (``allow_log_streaming: false``, and no ``site_log_streamer`` component), so the site's
  log, which holds paths and case ids, never leaves it.

The NVFlare simulator has no kits and applies none of this; it only checks the class allow-list
of a job without custom code against its workspace's ``local/resources.json``:
:func:`allow_in_simulator` (``python -m lvtl.flare.provision WORKSPACE``) admits lvtl's classes
there.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from nvflare.app_common.default_component_policy import DEFAULT_CLASS_ALLOW_LIST
from nvflare.lighter.constants import ParticipantType
from nvflare.lighter.spec import Builder, Project, ProvisionContext

from lvtl.flare.filters import MetricsOnlyFilter

#: The privacy scope of the study job (metrics only leave); the job names it in its meta
#: (``"scope"``).
PRIVACY_SCOPE = "lvtl_metrics"
#: The privacy scope of a job with the fed-transfer arm (model weight updates may leave a site
#: for that arm's task, where the site's config allows it).
FED_SCOPE = "lvtl_fed"
#: The class path of the fed scope's task-result filter (named, not imported: the kit policy
#: is written where the class may not be importable, and NVFlare builds it at the site).
FED_FILTER_PATH = "lvtl.flare.filters.FedUpdateFilter"
#: The class-path prefix of the lvtl components a job may use without custom code.
CLASS_PREFIX = "lvtl.flare."
#: The admin roles NVFlare knows; the coordinator is ``project_admin``.
ROLES = ("project_admin", "org_admin", "lead", "member")
#: Rights no role has at any participant.
DENIED = ("byoc", "shell_commands", "operate", "server-predeployed-flwr")
#: Rights of the coordinator (``project_admin``): submit, follow and fetch the study job.
COORDINATOR_RIGHTS = ("submit_job", "clone_job", "manage_job", "download_job", "view")
RIGHTS = COORDINATOR_RIGHTS + DENIED
#: The client component that streams a site's log to the server.
LOG_STREAMER_ID = "site_log_streamer"
RESOURCES_FILES = ("resources.json.default", "resources.json")


def class_path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _scope(name: str, result_filter: str) -> dict[str, Any]:
    return {"name": name, "properties": {}, "task_data_filters": [],
            "task_result_filters": [{"path": result_filter, "args": {}}]}


def privacy_policy() -> dict[str, Any]:
    """A site's ``privacy.json``: the metrics scope and the fed scope, no default scope."""
    return {"scopes": [_scope(PRIVACY_SCOPE, class_path(MetricsOnlyFilter)),
                       _scope(FED_SCOPE, FED_FILTER_PATH)],
            "components": []}


def authorization_policy() -> dict[str, Any]:
    """``authorization.json`` (server and sites): the coordinator submits and reads the study;
    nobody brings code, runs shell commands or operates a participant."""
    permissions = {}
    for role in ROLES:
        allowed = COORDINATOR_RIGHTS if role == "project_admin" else ("view",)
        permissions[role] = {right: "any" if right in allowed else "none" for right in RIGHTS}
    return {"format_version": "1.0", "permissions": permissions}


def class_allow_list(participant_type: str, current: list[str]) -> list[str]:
    """The ``class_allow_list`` of a participant's resources, from the one provisioned."""
    if participant_type == ParticipantType.CLIENT:
        return [CLASS_PREFIX]
    return [CLASS_PREFIX] + [c for c in current if c != CLASS_PREFIX]


def kit_resources(participant_type: str, resources: dict[str, Any]) -> dict[str, Any]:
    """A participant's ``resources.json`` with the kit's class allow-list and, at a site, log
    streaming off."""
    out = dict(resources)
    out["class_allow_list"] = class_allow_list(participant_type,
                                               list(resources.get("class_allow_list") or []))
    out["class_list_enforcement_mode"] = "enforce"
    if participant_type == ParticipantType.CLIENT:
        out["allow_log_streaming"] = False
        out["components"] = [c for c in resources.get("components") or []
                             if c.get("id") != LOG_STREAMER_ID]
    return out


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


class LvtlKitBuilder(Builder):
    """Writes the kit policy of this module into the server's and each site's ``local/``.

    List it in ``project.yml`` after ``StaticFileBuilder`` (which writes the resources files it
    edits) and before ``CertBuilder``/``SignatureBuilder``."""

    def build(self, project: Project, ctx: ProvisionContext) -> None:
        server = project.get_server()
        for participant in ([server] if server else []) + list(project.get_clients()):
            local = Path(ctx.get_local_dir(participant))
            found = [local / name for name in RESOURCES_FILES if (local / name).is_file()]
            if not found:
                raise RuntimeError(f"{participant.name}: no resources file in {local}; list "
                                   "LvtlKitBuilder after StaticFileBuilder in project.yml")
            for path in found:
                _write_json(path, kit_resources(participant.type, json.loads(path.read_text())))
            _write_json(local / "authorization.json", authorization_policy())
            if participant.type == ParticipantType.CLIENT:
                _write_json(local / "privacy.json", privacy_policy())


def allow_in_simulator(workspace: str | Path) -> Path:
    """Admit lvtl's classes in an NVFlare simulator workspace (the ``-w`` of ``nvflare
    simulator``; ``<workspace root>/<job name>`` for the Recipe API's ``SimEnv``): its
    ``local/resources.json`` gets NVFlare's default class allow-list plus ``lvtl.flare.``,
    kept with anything else the file holds. The simulator enforces nothing else of the kits."""
    path = Path(workspace) / "local" / "resources.json"
    resources = json.loads(path.read_text()) if path.is_file() else {"format_version": 2}
    current = resources.get("class_allow_list") or list(DEFAULT_CLASS_ALLOW_LIST)
    resources["class_allow_list"] = class_allow_list(ParticipantType.SERVER, current)
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_json(path, resources)
    return path


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m lvtl.flare.provision",
                                 description=allow_in_simulator.__doc__.splitlines()[0])
    ap.add_argument("workspace", help="the simulator workspace (nvflare simulator -w)")
    print(allow_in_simulator(ap.parse_args(argv).workspace))


if __name__ == "__main__":
    main()


def check_site_kit(kit: str | Path) -> list[tuple[bool, str]]:
    """``(ok, line)`` per finding about a site's startup kit (the folder holding ``startup/``
    and ``local/``): the privacy scope in force with lvtl's filter and no default scope; the
    fed scope absent (the site refuses federated fine-tuning jobs) or ending with lvtl's
    ``FedUpdateFilter``; no role allowed custom code, shell commands or operating the site, log
    streaming off, and only lvtl's classes allowed. What the kit's files say is what NVFlare
    enforces in POC and production; the simulator reads none of them."""
    local = Path(kit) / "local"
    out: list[tuple[bool, str]] = []

    def read(name: str) -> dict[str, Any] | None:
        try:
            return json.loads((local / name).read_text())
        except (OSError, ValueError) as e:
            out.append((False, f"kit {local / name}: cannot be read ({type(e).__name__})"))
            return None

    if not (Path(kit) / "startup").is_dir():
        out.append((False, f"kit {kit}: no startup/ folder; give the site's startup kit"))
    privacy = read("privacy.json")
    if privacy is not None:
        scopes = {s.get("name"): s for s in privacy.get("scopes") or []}
        ours = scopes.get(PRIVACY_SCOPE) or {}
        filters = [f.get("path") for f in ours.get("task_result_filters") or []]
        ok = class_path(MetricsOnlyFilter) in filters and not privacy.get("default_scope")
        out.append((ok, f"kit privacy scope {PRIVACY_SCOPE!r}: "
                        + ("the metrics-only filter on every result, no default scope" if ok
                           else f"missing, without the filter, or a default scope is set "
                                f"(scopes {sorted(map(str, scopes))}, default "
                                f"{privacy.get('default_scope')!r})")))
        out.append(_fed_scope(scopes.get(FED_SCOPE), privacy.get("default_scope")))
    authz = read("authorization.json")
    if authz is not None:
        perms = authz.get("permissions") or {}
        loose = sorted(f"{role}:{right}" for role, rights in perms.items() for right in DENIED
                       if (rights if isinstance(rights, str) else rights.get(right, "none"))
                       != "none")
        out.append((not loose, "kit authorization: no role may bring code, run shell commands "
                               "or operate the site" if not loose
                    else f"kit authorization allows {', '.join(loose)}"))
    resources = read("resources.json") if (local / "resources.json").is_file() else read(
        "resources.json.default")
    if resources is not None:
        streams = resources.get("allow_log_streaming", True) is not False or any(
            c.get("id") == LOG_STREAMER_ID for c in resources.get("components") or [])
        out.append((not streams, "kit log streaming: off" if not streams
                    else "kit log streaming: on (the site's log, with paths and case ids, "
                         "would reach the server)"))
        allowed = resources.get("class_allow_list") or []
        out.append((allowed == [CLASS_PREFIX], f"kit class allow-list: {allowed}"))
    return out


def _fed_scope(scope: dict[str, Any] | None, default: object) -> tuple[bool, str]:
    """The finding about the kit's fed scope: absent is the site's choice; present, it must end
    with ``FedUpdateFilter`` and there must be no default scope."""
    head = f"kit privacy scope {FED_SCOPE!r}: "
    if scope is None:
        return True, head + "absent, this site refuses federated fine-tuning jobs"
    filters = [f.get("path") for f in scope.get("task_result_filters") or []]
    if filters and filters[-1] == FED_FILTER_PATH and not default:
        return True, head + ("weight updates of the fed-transfer task only, as the site's "
                             "[federation] allows; metrics only otherwise")
    return False, head + (f"result filters {filters} (the last must be {FED_FILTER_PATH}) or a "
                          f"default scope is set (default {default!r}); delete the scope to "
                          "refuse federated fine-tuning jobs")
