"""The startup kits provisioned from sites/project.yml, and what they enforce.

Fast: the kit files (the metrics and fed privacy scopes without a default, authorization, class
allow-list, log streaming off), read back through NVFlare's own parsers; a kit whose fed scope
was deleted or changed, as ``lvtl site check --kit`` finds it. Slow: the kits end to end on this
machine (server, site-1 and site-2 each from its own kit and workspace, mutual TLS on
localhost, the coordinator submitting with the admin kit through the FLARE API): the study job
runs; a job with custom code, a job without the privacy scope and a result with an unknown
field are refused by the sites.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from federation import write_federation

from lvtl.flare.provision import (
    CLASS_PREFIX,
    DENIED,
    FED_FILTER_PATH,
    FED_SCOPE,
    PRIVACY_SCOPE,
    ROLES,
    authorization_policy,
    check_site_kit,
    privacy_policy,
)

REPO = Path(__file__).resolve().parents[2]
PROJECT = REPO / "sites" / "project.yml"
NVFLARE = Path(sys.executable).with_name("nvflare")
SITES = ("site-1", "site-2")  # the sites the end-to-end run starts
KIT_SITES = tuple(p["name"] for p in yaml.safe_load(PROJECT.read_text())["participants"]
                  if p["type"] == "client")
ADMIN = "coordinator@example.org"


def provision(project: Path, workspace: Path) -> Path:
    """``nvflare provision``; the kits' folder (``prod_00``)."""
    workspace.mkdir(parents=True, exist_ok=True)
    out = subprocess.run([str(NVFLARE), "provision", "-p", str(project), "-w", str(workspace)],
                         capture_output=True, text=True, timeout=300, cwd=workspace)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    return next(workspace.rglob("prod_00"))


@pytest.fixture(scope="module")
def kits(tmp_path_factory) -> Path:
    ws = tmp_path_factory.mktemp("provision")
    return provision(PROJECT, ws)


def test_project_yml_provisions_a_kit_per_participant(kits):
    assert KIT_SITES == ("site-1", "site-2", "site-3")
    assert sorted(p.name for p in kits.iterdir()) == [
        "coordinator@example.org", "lvtl-server.example.org", *KIT_SITES]
    for site in KIT_SITES:
        startup = kits / site / "startup"
        assert (startup / "start.sh").is_file() and (startup / "client.key").is_file()


def _privacy_manager(kit: Path, names_only: bool):
    """The privacy policy as the site's NVFlare reads it from the kit."""
    from nvflare.apis.workspace import Workspace
    from nvflare.private.fed.app.fl_conf import create_privacy_manager

    return create_privacy_manager(Workspace(str(kit), kit.name), names_only=names_only,
                                  is_server=False)


def test_each_site_kit_accepts_only_the_lvtl_privacy_scopes(kits):
    for site in KIT_SITES:
        privacy = json.loads((kits / site / "local" / "privacy.json").read_text())
        assert privacy == privacy_policy()
        assert [s["name"] for s in privacy["scopes"]] == [PRIVACY_SCOPE, FED_SCOPE]
        assert "default_scope" not in privacy  # a job without a scope is refused
        assert [[f["path"] for f in s["task_result_filters"]] for s in privacy["scopes"]] == [
            ["lvtl.flare.filters.MetricsOnlyFilter"], [FED_FILTER_PATH]]
        assert FED_FILTER_PATH == "lvtl.flare.filters.FedUpdateFilter"
        # as the site's NVFlare reads the scopes: these two, no default scope
        manager = _privacy_manager(kits / site, names_only=True)
        assert manager.is_policy_defined()
        assert manager.get_scope("") is None and manager.get_scope("other") is None
        assert manager.get_scope(PRIVACY_SCOPE) and manager.get_scope(FED_SCOPE)
    assert not (kits / "lvtl-server.example.org" / "local" / "privacy.json").exists()


def test_the_site_builds_the_filter_of_each_scope(kits):
    from lvtl.flare import filters

    if not hasattr(filters, "FedUpdateFilter"):
        pytest.skip(f"{FED_FILTER_PATH} is not written yet")
    manager = _privacy_manager(kits / "site-3", names_only=False)
    for scope, name in ((PRIVACY_SCOPE, "MetricsOnlyFilter"), (FED_SCOPE, "FedUpdateFilter")):
        assert [type(f).__name__ for f in manager.get_scope(scope).task_result_filters["out"]] \
            == [name]


def _edit_privacy(kit: Path, edit) -> None:
    path = kit / "local" / "privacy.json"
    privacy = json.loads(path.read_text())
    edit(privacy)
    path.write_text(json.dumps(privacy))


def _fed(privacy: dict) -> dict:
    return next(s for s in privacy["scopes"] if s["name"] == FED_SCOPE)


def test_a_site_refuses_federated_fine_tuning_by_deleting_the_fed_scope(kits, tmp_path):
    """docs/hospital-it.md: delete the scope ``lvtl_fed`` from the kit's privacy.json; NVFlare
    then knows no such scope (a job naming it is refused at deployment), the metrics scope
    still builds its filter, and ``lvtl site check --kit`` reports the refusal as fine."""
    kit = tmp_path / "site-2"
    shutil.copytree(kits / "site-2", kit)
    _edit_privacy(kit, lambda p: p.update(scopes=[s for s in p["scopes"]
                                                  if s["name"] != FED_SCOPE]))
    manager = _privacy_manager(kit, names_only=False)
    assert manager.get_scope(FED_SCOPE) is None
    assert [type(f).__name__ for f in manager.get_scope(PRIVACY_SCOPE).task_result_filters[
        "out"]] == ["MetricsOnlyFilter"]
    found = check_site_kit(kit)
    assert all(ok for ok, _ in found), found
    assert (True, "kit privacy scope 'lvtl_fed': absent, this site refuses federated "
                  "fine-tuning jobs") in found


@pytest.mark.parametrize("edit", [
    lambda p: _fed(p).update(task_result_filters=[]),
    lambda p: _fed(p).update(task_result_filters=[
        {"path": "lvtl.flare.filters.MetricsOnlyFilter", "args": {}}]),
    lambda p: _fed(p)["task_result_filters"].append(
        {"path": "nvflare.app_common.filters.exclude_vars.ExcludeVars", "args": {}}),
    lambda p: p.update(default_scope=FED_SCOPE),
])
def test_a_changed_fed_scope_is_a_problem(kits, tmp_path, edit):
    kit = tmp_path / "site-3"
    shutil.copytree(kits / "site-3", kit)
    _edit_privacy(kit, edit)
    bad = [what for ok, what in check_site_kit(kit) if not ok]
    assert bad and bad[-1].startswith(f"kit privacy scope {FED_SCOPE!r}: result filters"), bad
    assert FED_FILTER_PATH in bad[-1] and "delete the scope" in bad[-1]


def test_no_role_brings_code_runs_shell_commands_or_operates(kits):
    from nvflare.fuel.sec.authz import AuthzContext, Person
    from nvflare.security.security import FLAuthorizer

    for kit in ("lvtl-server.example.org", *KIT_SITES):
        policy = json.loads((kits / kit / "local" / "authorization.json").read_text())
        assert policy == authorization_policy()
        assert set(policy["permissions"]) == set(ROLES)
        org = "coordinator" if kit.startswith("lvtl-server") else f"hospital_{kit[-1]}"
        authz = FLAuthorizer(org, policy)

        def allowed(role, right, authz=authz, org=org):
            user = Person(ADMIN, org, role)
            return authz.authorize(AuthzContext(right=right, user=user, submitter=user))[0]

        for role in ROLES:
            for right in ("byoc", "shell_commands", "operate", "ls", "cat", "grep", "tail",
                          "report_env", "sys_info", "shutdown", "restart"):
                assert not allowed(role, right), (kit, role, right)
            for right in DENIED:
                assert policy["permissions"][role][right] == "none"
        for right in ("submit_job", "abort_job", "download_job", "list_jobs", "check_status"):
            assert allowed("project_admin", right), (kit, right)
        for role in ("org_admin", "lead", "member"):
            assert not allowed(role, "submit_job") and not allowed(role, "download_job")


def test_class_allow_list_and_log_streaming(kits):
    assert yaml.safe_load(PROJECT.read_text())["allow_log_streaming"] is False  # top level
    server = json.loads((kits / "lvtl-server.example.org" / "local" /
                         "resources.json.default").read_text())
    assert CLASS_PREFIX in server["class_allow_list"]
    assert server["class_list_enforcement_mode"] == "enforce"
    for site in KIT_SITES:
        res = json.loads((kits / site / "local" / "resources.json.default").read_text())
        assert res["class_allow_list"] == [CLASS_PREFIX]  # a job runs only lvtl's classes
        assert res["class_list_enforcement_mode"] == "enforce"
        assert res["allow_log_streaming"] is False
        assert "site_log_streamer" not in {c["id"] for c in res["components"]}


def test_the_simulator_workspace_admits_lvtl_classes_and_keeps_its_settings(tmp_path):
    from nvflare.app_common.default_component_policy import DEFAULT_CLASS_ALLOW_LIST

    from lvtl.flare.provision import allow_in_simulator

    path = allow_in_simulator(tmp_path / "ws")
    res = json.loads(path.read_text())
    assert path == tmp_path / "ws" / "local" / "resources.json"
    assert res["class_allow_list"] == [CLASS_PREFIX, *DEFAULT_CLASS_ALLOW_LIST]
    path.write_text(json.dumps({"format_version": 2, "class_allow_list": ["x.y."], "k": 1}))
    allow_in_simulator(tmp_path / "ws")
    assert json.loads(path.read_text()) == {"format_version": 2, "k": 1,
                                            "class_allow_list": [CLASS_PREFIX, "x.y."]}


# --- the kits end to end ------------------------------------------------------------------

PROBE = '''"""A test executor that sends its results section, plus an image at site-2."""
from nvflare.apis.dxo import DXO, DataKind
from nvflare.apis.executor import Executor

from lvtl.study.results import SiteResults, Status
from lvtl.study.run import CaseEval, summarize_run


class LeakyExecutor(Executor):
    def execute(self, task_name, shareable, fl_ctx, abort_signal):
        evals = [CaseEval("c0", {"blood_pool": 0.8, "lvm": 0.7})]
        section = SiteResults(status=Status.OK, n_test=1,
                              runs=[summarize_run("transfer", 1, evals)]).to_dict()
        data = {"site": section}
        if fl_ctx.get_identity_name() == "site-2":
            data["image"] = [[0, 1], [2, 3]]
        return DXO(DataKind.WEIGHTS, data=data).to_shareable()
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _local_project(tmp: Path) -> Path:
    """sites/project.yml with the server on localhost at a free port (builders unchanged)."""
    conf = yaml.safe_load(PROJECT.read_text())
    server = next(p for p in conf["participants"] if p["type"] == "server")
    server["name"] = "localhost"  # binds the loopback interface only
    server["fed_learn_port"] = _free_port()
    path = tmp / "project.yml"
    path.write_text(yaml.safe_dump(conf, sort_keys=False))
    return path


def _jobs(root: Path, artifact: Path) -> dict[str, Path]:
    """The study job, and three variants the sites must refuse."""
    from lvtl.flare.job import JobSettings, recipe
    from lvtl.study.protocol import Protocol

    protocol = Protocol.from_dict({"arms": ["baseline", "transfer"], "sizes": [1], "epochs": 1,
                                   "samples_per_epoch": 1, "crop": [2, 24, 32, 32],
                                   "downsample": 2})
    recipe(protocol, JobSettings(artifact=artifact, timeout=600)).export(str(root / "study"))
    study = root / "study" / "lvtl_study"
    jobs = {"study": study}

    # code in the job: the sites' app carries a custom/ folder (the server's does not)
    custom = root / "custom" / "lvtl_study"
    shutil.copytree(study, custom)
    shutil.copytree(custom / "app", custom / "app_site")
    (custom / "app" / "config" / "config_fed_client.json").unlink()
    (custom / "app_site" / "custom").mkdir()
    (custom / "app_site" / "custom" / "helper.py").write_text("X = 1\n")
    meta = json.loads((custom / "meta.json").read_text())
    meta["deploy_map"] = {"app": ["server"], "app_site": list(SITES)}
    (custom / "meta.json").write_text(json.dumps(meta))
    jobs["custom"] = custom

    # no privacy scope in the job's meta
    noscope = root / "noscope" / "lvtl_study"
    shutil.copytree(study, noscope)
    meta = json.loads((noscope / "meta.json").read_text())
    del meta["scope"]
    (noscope / "meta.json").write_text(json.dumps(meta))
    jobs["noscope"] = noscope

    # a site executor that adds a field (site-2) and no filter of the job's own
    leaky = root / "leaky" / "lvtl_study"
    shutil.copytree(study, leaky)
    cfg_path = leaky / "app" / "config" / "config_fed_client.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["executors"][0]["executor"] = {"path": "lvtl_kit_probe.LeakyExecutor", "args": {}}
    cfg["task_result_filters"] = []
    cfg_path.write_text(json.dumps(cfg))
    jobs["leaky"] = leaky
    return jobs


def _processes_under(path: Path) -> list[int]:
    """Processes whose command line names ``path`` (the ones this test started)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and str(path).encode() in (proc / "cmdline").read_bytes():
                found.append(int(proc.name))
        except OSError:
            pass
    return found


def _stop(procs: list[subprocess.Popen], root: Path) -> None:
    """End every process this test started: their process groups, then any job process left
    under the test's folder."""
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
    deadline = time.time() + 20
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=10)
    for pid in _processes_under(root):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def _wait_job(sess, job_id: str, timeout: float) -> dict:
    return sess.wait_for_job(job_id, timeout=timeout, poll_interval=1.0)


def _report(sess, job_id: str, dest: Path) -> dict:
    result = sess.download_job_result(job_id, destination=str(dest))
    return json.loads(next(Path(result).rglob("report.json")).read_text())


@pytest.mark.slow
def test_provisioned_kits_run_the_study_and_refuse_what_they_must(tmp_path):
    from nvflare.fuel.flare_api.flare_api import new_secure_session

    t0 = time.time()
    root = tmp_path
    write_federation(root / "fed", SITES)
    prod = provision(_local_project(root), root / "prov")
    server_kit = prod / "localhost"
    admin_kit = prod / ADMIN
    # the probe executor is test code the sites allow explicitly (a site's own resources)
    probe = root / "probe"
    probe.mkdir()
    (probe / "lvtl_kit_probe.py").write_text(PROBE)
    for site in SITES:
        path = prod / site / "local" / "resources.json.default"
        res = json.loads(path.read_text())
        res["class_allow_list"].append("lvtl_kit_probe.")
        path.write_text(json.dumps(res, indent=2))

    venv_bin = str(Path(sys.executable).parent)
    base = {**os.environ, "PATH": venv_bin + os.pathsep + os.environ.get("PATH", ""),
            "OMP_NUM_THREADS": "1"}
    site_env = {**base, "LVTL_SITES_DIR": str(root / "fed" / "sites"),
                "LVTL_WORK_DIR": str(root / "work"), "PYTHONPATH": str(probe)}
    procs: list[subprocess.Popen] = []
    sess = None
    try:
        for kit, env in ((server_kit, base), *((prod / s, site_env) for s in SITES)):
            log = open(root / f"{kit.name}.out", "w")  # noqa: SIM115 - closed with the process
            procs.append(subprocess.Popen(["bash", str(kit / "startup" / "sub_start.sh"),
                                           "--once"], cwd=kit, env=env, stdout=log,
                                          stderr=subprocess.STDOUT, start_new_session=True))
        deadline = time.time() + 120
        while sess is None:
            try:
                sess = new_secure_session(ADMIN, str(admin_kit), timeout=5)
            except Exception:  # noqa: BLE001 - the server is still starting
                assert time.time() < deadline, "the server never accepted the admin"
                assert all(p.poll() is None for p in procs), "a participant exited"
        while {c.name for c in sess.get_system_info().client_info} != set(SITES):
            assert time.time() < deadline, "the sites never connected"
            time.sleep(1)

        # the kits deny shell commands and operating a site, even to the project admin
        for call in (lambda: sess.ls_target("site-1"), lambda: sess.get_client_env(["site-1"])):
            with pytest.raises(Exception, match="(?i)not authorized|authoriz"):
                call()

        jobs = _jobs(root / "jobs", root / "fed" / "artifact")
        server_log = server_kit / "log.txt"

        statuses = {}
        for kind, refusal in (("custom", "BYOC not permitted"),
                              ("noscope", "privacy scope '' is not allowed")):
            job_id = sess.submit_job(str(jobs[kind]))
            meta = _wait_job(sess, job_id, 120)
            statuses[kind] = meta["status"]
            assert meta["status"] != "FINISHED:COMPLETED", meta
            log = server_log.read_text()
            for site in SITES:
                assert f"{site}: NVFLARE_ERROR: {refusal}" in log, meta

        job_id = sess.submit_job(str(jobs["leaky"]))
        meta = _wait_job(sess, job_id, 300)
        assert meta["status"] == "FINISHED:COMPLETED", meta
        report = _report(sess, job_id, root / "results" / "leaky")
        assert report["sites"]["site-1"]["status"] == "ok"  # honest metrics pass
        assert report["sites"]["site-2"]["status"] == "failed"
        assert report["sites"]["site-2"]["reason"] == "blocked_by_privacy_filter"
        assert "image" not in json.dumps(report)
        # the detail stays in the site's own log of the job
        assert "blocked an outgoing result" in (prod / "site-2" / job_id / "log.txt").read_text()

        job_id = sess.submit_job(str(jobs["study"]))
        meta = _wait_job(sess, job_id, 900)
        assert meta["status"] == "FINISHED:COMPLETED", meta
        report = _report(sess, job_id, root / "results" / "study")
        for site in SITES:
            sec = report["sites"][site]
            assert sec["status"] == "ok", sec
            assert [r["arm"] for r in sec["runs"]] == ["baseline", "transfer"]
            assert sec["artifact"]["version"] == "1.0.0"
        print(f"kits end to end: {time.time() - t0:.0f} s; refused jobs: {statuses}")
    finally:
        if sess is not None:
            sess.close()
        _stop(procs, root)
    assert not _processes_under(root), "processes of the test still running"


def test_site_check_reads_the_kit_and_finds_a_loosened_one(kits, tmp_path):
    """``lvtl site check --kit``: the provisioned kit passes; a kit whose privacy scopes got a
    default (a problem of each scope), whose authorization lets the coordinator bring code, and
    whose log streaming was turned on gets one problem line each."""
    for site in KIT_SITES:
        found = check_site_kit(kits / site)
        assert all(ok for ok, _ in found), found
        assert any(what.startswith(f"kit privacy scope {FED_SCOPE!r}: weight updates of the "
                                   "fed-transfer task only") for _, what in found)
    loose = tmp_path / "site-1"
    shutil.copytree(kits / "site-1", loose)
    privacy = json.loads((loose / "local" / "privacy.json").read_text())
    (loose / "local" / "privacy.json").write_text(json.dumps({**privacy,
                                                              "default_scope": "lvtl_metrics"}))
    authz = json.loads((loose / "local" / "authorization.json").read_text())
    authz["permissions"]["project_admin"]["byoc"] = "any"
    (loose / "local" / "authorization.json").write_text(json.dumps(authz))
    for name in ("resources.json.default", "resources.json"):
        if (loose / "local" / name).is_file():
            res = json.loads((loose / "local" / name).read_text())
            (loose / "local" / name).write_text(json.dumps({**res, "allow_log_streaming": True}))
    bad = [what for ok, what in check_site_kit(loose) if not ok]
    assert len(bad) == 4, bad
    assert "default" in bad[0] and FED_SCOPE in bad[1] and "default" in bad[1]
    assert "project_admin:byoc" in bad[2] and "streaming: on" in bad[3]
