"""The NVFlare job end to end in the real simulator, and the metrics-only filter.

One simulator run with three sites on tiny synthetic DICOM data: site-1 and site-2 run the
study; site-3's own configuration points at a data folder that does not exist, so it fails
and the report must show why while the others complete.
"""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from federation import write_federation
from procs import kill_all_under, simulator_pid

from lvtl.flare.privacy import check_section
from lvtl.study.results import SiteResults, Status, to_dict
from lvtl.study.run import CaseEval, summarize_run

REPO = Path(__file__).resolve().parents[2]


def good_section(n_test=2):
    """An honest site's section: one transfer run over ``n_test`` cases, as the study builds
    it (no thickness pairs, so no r)."""
    evals = [CaseEval(f"c{i}", {"blood_pool": 0.8, "lvm": 0.7 + 0.1 * i}) for i in range(n_test)]
    return SiteResults(status=Status.OK, n_test=n_test,
                       runs=[summarize_run("transfer", 1, evals)]).to_dict()


def test_allow_list_passes_metrics_and_blocks_images_and_unknown_fields():
    assert check_section(good_section()) == []
    leak = good_section()
    leak["runs"][0]["dice_per_case"]["lvm"] = np.zeros(64).tolist()  # longer than n_test
    assert any("longer than the 2 test cases" in p for p in check_section(leak))
    leak = good_section()
    leak["image"] = [[0, 1], [2, 3]]
    assert any("results.image: not an allowed field" in p for p in check_section(leak))
    leak = good_section()
    leak["reason"] = b"\x00" * 10
    assert check_section(leak)
    leak = good_section()
    leak["runs"][0]["dice_per_case"]["lvm"] = [[1, 2], [3, 4]]  # nested: an image in disguise
    assert any("only numbers" in p for p in check_section(leak))


def test_result_filter_stops_a_client_that_sends_an_image():
    from nvflare.apis.dxo import DXO, DataKind, from_shareable
    from nvflare.apis.fl_context import FLContext

    from lvtl.flare.filters import MetricsOnlyFilter

    image = np.random.default_rng(0).integers(0, 2000, (8, 8, 8)).astype(np.int16)
    sneaky = good_section()
    sneaky["runs"][0]["dice_per_case"]["lvm"] = image.ravel().tolist()
    for data in ({"site": sneaky}, {"site": good_section(), "image": image}):
        out = MetricsOnlyFilter().process(DXO(DataKind.WEIGHTS, data=data).to_shareable(),
                                          FLContext())
        sent = from_shareable(out).data
        assert set(sent) == {"site"} and sent["site"]["status"] == "failed"
        assert sent["site"]["reason"] == "blocked_by_privacy_filter"
        assert "image" not in json.dumps(sent["site"]["runs"]) and not sent["site"]["runs"]
    ok = DXO(DataKind.WEIGHTS, data={"site": good_section()}).to_shareable()
    assert from_shareable(MetricsOnlyFilter().process(ok, FLContext())).data["site"][
        "status"] == "ok"


def test_result_filter_sends_only_the_section_not_meta_metrics_or_extra_keys():
    """An honest section with an image hidden in the DXO's meta, in FLModel metrics (as the
    Client API carries them) and under an extra key of the reply: only the section leaves."""
    from nvflare.apis.dxo import from_shareable
    from nvflare.apis.fl_context import FLContext
    from nvflare.apis.shareable import Shareable
    from nvflare.app_common.abstract.fl_model import FLModel
    from nvflare.app_common.utils.fl_model_utils import FLModelUtils

    from lvtl.flare.filters import MetricsOnlyFilter

    image = np.arange(4096, dtype=np.int16).tobytes().hex()
    reply = FLModelUtils.to_shareable(FLModel(params={"site": good_section()},
                                              metrics={"pixels": image}, meta={"hu": image}))
    reply["smuggled"] = image
    out = MetricsOnlyFilter().process(reply, FLContext())
    assert image not in repr(dict(out))
    assert set(out) <= {"DXO", "__headers__"} and from_shareable(out).meta == {}
    assert from_shareable(out).data == {"site": good_section()}
    broken = MetricsOnlyFilter().process(Shareable(), FLContext())  # not a DXO at all
    assert from_shareable(broken).data["site"]["reason"] == "blocked_by_privacy_filter"


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    """Three sites' private folders (two with data, case folders named like medical record
    numbers) and configs, keys, a signed tiny model, and what must never reach the server."""
    root = tmp_path_factory.mktemp("federation")
    secrets = write_federation(root, ("site-1", "site-2"), ("site-1", "site-2", "site-3"),
                               case_name=lambda s, i: f"MRN{31_770_000 + 1000 * s + i:08d}")
    (root / "secrets.json").write_text(json.dumps(secrets))
    return root


def test_simulator_runs_the_study_at_every_site_and_reports(federation, tmp_path):
    ws = tmp_path / "ws"
    env = {**os.environ, "LVTL_SITES_DIR": str(federation / "sites")}
    cmd = [sys.executable, str(REPO / "jobs" / "lvtl_study" / "job.py"), "--artifact",
           str(federation / "artifact"), "--env", "sim", "--clients", "site-1,site-2,site-3",
           "--workspace", str(ws), "--arms", "baseline,transfer", "--sizes", "1",
           "--epochs", "1", "--samples-per-epoch", "1", "--crop", "2,24,32,32",
           "--downsample", "2", "--timeout", "900", "--report-dir", str(tmp_path / "report")]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    server = ws / "lvtl_study" / "server"
    written = next(server.rglob("report.json"))
    copied = Path(out.stdout.strip().splitlines()[-1])  # the report's path, printed last
    assert copied == (tmp_path / "report" / "report.json").resolve()
    assert copied.read_bytes() == written.read_bytes()
    report = json.loads(copied.read_text())
    assert report["schema"] == "lvtl.report/1"
    sites = report["sites"]
    assert set(sites) == {"site-1", "site-2", "site-3"}
    for name in ("site-1", "site-2"):
        sec = sites[name]
        assert sec["status"] == "ok", sec
        assert [r["arm"] for r in sec["runs"]] == ["baseline", "transfer"]
        assert sec["artifact"]["version"] == "1.0.0" and sec["n_test"] == 1
    assert sites["site-3"]["status"] == "failed"
    assert sites["site-3"]["reason"] == "site_config_error"  # the detail stays at the site
    assert report["summary"]["sites_failed"] == {"site-3": sites["site-3"]["reason"]}
    md = next(server.rglob("report.md")).read_text()
    assert "site-3" in md and "## site-1" in md
    assert next(server.rglob("dice_by_size.png")).stat().st_size > 1000
    # nothing of the sites' data reached the server: no DICOM, NIfTI, numpy or torch files,
    # and no weights except the artifact the server itself shipped
    shipped = (federation / "artifact" / "weights.safetensors").read_bytes()
    for f in server.rglob("*"):
        if not f.is_file():
            continue
        data = f.read_bytes()
        assert data[128:132] != b"DICM", f
        assert not data.startswith((b"\x1f\x8b", b"\x93NUMPY", b"PK\x03\x04")), f
        if f.suffix == ".safetensors":
            assert data == shipped, f
    # no record number, patient or study identifier, or site path on the server side, and no
    # more numbers per site than the results schema allows for its runs and test cases
    secrets = json.loads((federation / "secrets.json").read_text())
    server_side = [f for f in [*server.rglob("*"), *(tmp_path / "report").rglob("*")]
                   if f.is_file()]
    leaks = [f"{f}: {x}" for f in server_side for x in secrets if x.encode() in f.read_bytes()]
    leaks += [f"{f}: a record number" for f in server_side
              if re.search(rb"MRN\d{8}", f.read_bytes())]
    assert not leaks, leaks[:10]
    for name in ("site-1", "site-2"):
        assert check_section(sites[name]) == []
        assert _numbers(sites[name]) <= _most_numbers(sites[name]), name


def test_exported_job_folder_has_the_apps_no_code_and_the_privacy_scope(federation, tmp_path):
    """The job names lvtl's classes and brings no code (no ``custom/``: a kit that denies
    custom code runs it), and declares the privacy scope the sites' kits accept."""
    from lvtl.flare.provision import PRIVACY_SCOPE

    out = subprocess.run([sys.executable, str(REPO / "jobs" / "lvtl_study" / "job.py"),
                          "--artifact", str(federation / "artifact"), "--export",
                          "--export-dir", str(tmp_path), "--lr-transfer", "3e-4"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    job = tmp_path / "lvtl_study"
    meta = json.loads((job / "meta.json").read_text())
    assert meta["name"] == "lvtl_study"
    assert meta["scope"] == PRIVACY_SCOPE
    assert not [p for p in job.rglob("*") if p.name == "custom"], "the job ships code"
    server_cfg = json.loads(next(job.rglob("config_fed_server.json")).read_text())
    client_cfg = json.loads(next(job.rglob("config_fed_client.json")).read_text())
    assert "StudyController" in json.dumps(server_cfg["workflows"])
    assert '"lr_transfer": 0.0003' in json.dumps(server_cfg["workflows"])  # the protocol sent
    assert "MetricsOnlyFilter" in json.dumps(client_cfg["task_result_filters"])
    assert [e["executor"]["path"] for e in client_cfg["executors"]] == [
        "lvtl.flare.executor.StudyExecutor"]
    # the signed model travels in the job as data, in the server app's config folder
    shipped = sorted(p.name for p in job.rglob("config/artifact/*"))
    assert shipped == ["manifest.json", "signature.json", "weights.safetensors"]


def test_the_site_executor_refuses_a_job_that_ships_code():
    """A job with code of its own (NVFlare's BYOC mark) is refused before the task is read:
    NVFlare's UnsafeJobError marks the job unsafe and aborts it."""
    from nvflare.apis.dxo import DXO, DataKind
    from nvflare.apis.fl_constant import FLContextKey, ReturnCode
    from nvflare.apis.fl_context import FLContext
    from nvflare.apis.fl_exception import UnsafeJobError
    from nvflare.apis.signal import Signal

    from lvtl.flare.controller import TASK
    from lvtl.flare.executor import StudyExecutor

    task = DXO(DataKind.WEIGHTS, data={"artifact": {}, "protocol": {}}).to_shareable()
    ctx = FLContext()
    ctx.set_prop(FLContextKey.JOB_META, {"name": "x", "byoc": True}, private=True, sticky=False)
    with pytest.raises(UnsafeJobError):
        StudyExecutor().execute(TASK, task, ctx, Signal())
    reply = StudyExecutor().execute("train", task, FLContext(), Signal())
    assert reply.get_return_code() == ReturnCode.TASK_UNKNOWN


def test_report_cli_merges_site_results_and_marks_failures(tmp_path):
    from typer.testing import CliRunner

    from lvtl.cli import app

    a = {"schema": "lvtl.report/1", "sites": {"site-1": good_section()}}
    b = {"schema": "lvtl.report/1", "sites": {"site-2": {
        "status": "failed", "reason": "artifact_refused:untrusted_key", "n_test": 0, "runs": []}}}
    (tmp_path / "a.json").write_text(json.dumps(a))
    (tmp_path / "b.json").write_text(json.dumps(b))
    r = CliRunner().invoke(app, ["report", str(tmp_path / "a.json"), str(tmp_path / "b.json"),
                                 "--out", str(tmp_path / "rep")])
    assert r.exit_code == 0, r.output
    rep = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert rep["summary"]["sites_ok"] == ["site-1"]
    assert rep["summary"]["sites_failed"] == {"site-2": "artifact_refused:untrusted_key"}
    assert rep["summary"]["pooled_dice_by_size"]["transfer"]["1"]["n"] == 2  # JSON keys
    assert ("artifact refused: signed by a key the site does not trust"
            in (tmp_path / "rep" / "report.md").read_text())


def _numbers(x) -> int:
    if isinstance(x, bool) or x is None or isinstance(x, str):
        return 0
    if isinstance(x, (int, float)):
        return 1
    if isinstance(x, dict):
        return sum(_numbers(v) for v in x.values())
    return sum(_numbers(v) for v in x)


def _most_numbers(section: dict) -> int:
    """The most numbers a section with these runs and this test count can hold by the schema:
    every numeric field of a run filled, its per-case lists full, plus the section's own."""
    n = section["n_test"]
    k = max(n, 3)  # enough cases for every correlation and interval to be a number
    evals = [CaseEval(f"c{i}", {"blood_pool": 0.5, "lvm": 0.5},
                      {p: {"pred": {s: 1.0 + i for s in ("median", "p95", "max")},
                           "truth": {s: 2.0 + i * i for s in ("median", "p95", "max")}}
                       for p in ("ED", "ES")}) for i in range(k)]
    full_run = to_dict(summarize_run("transfer", 1, evals, best_epoch=1, val_dice=0.5,
                                     train_seconds=1.0))
    per_run = _numbers(full_run) - 2 * (k - n)  # two per-case Dice lists hold n, not k
    section_own = 16  # n_test, n_cases, split, counts, seconds: generously
    return len(section["runs"]) * per_run + _numbers(section.get("protocol")) + section_own


def _metrics(section):
    """A site's runs without their timings (the same seeds must give the same metrics)."""
    return [{k: v for k, v in run.items() if k != "train_seconds"} for run in section["runs"]]


def test_a_killed_site_is_lost_the_rest_finish_and_a_killed_server_loses_nothing(federation,
                                                                                tmp_path):
    """With the default settings, site-2's process is killed mid-training: site-1's results
    reach the server's report on disk as they arrive (site-2 pending), and the job ends on its
    own once site-2 has been silent for DEAD_AFTER, site-2 reported as lost. The rerun resumes
    site-2 from its checkpoints; when site-1's results (recomputed from scratch with the same
    seeds: the same metrics) reach the report, the server is killed, and the report on disk
    keeps them."""
    import signal
    import time

    from lvtl.flare.controller import DEAD_AFTER

    work = tmp_path / "work"
    env = {**os.environ, "LVTL_SITES_DIR": str(federation / "sites"),
           "LVTL_WORK_DIR": str(work), "OMP_NUM_THREADS": "1"}

    def job(n):  # no --timeout: the defaults
        return [sys.executable, str(REPO / "jobs" / "lvtl_study" / "job.py"), "--artifact",
                str(federation / "artifact"), "--env", "sim", "--clients", "site-1,site-2",
                "--workspace", str(tmp_path / f"ws{n}"), "--arms", "baseline,transfer",
                "--sizes", "1", "--epochs", "8", "--samples-per-epoch", "1", "--crop",
                "2,24,32,32", "--downsample", "2", "--report-dir", str(tmp_path / f"report{n}")]

    def report_when(n, proc, ready, deadline):
        """The server's report.json on disk once ``ready(doc)``."""
        while time.time() < deadline:
            found = list((tmp_path / f"ws{n}").rglob("server/**/report.json"))
            doc = json.loads(found[0].read_text()) if found else None
            if doc and ready(doc):
                return found[0], doc
            assert proc.poll() is None, "the job ended early"
            time.sleep(0.5)
        raise AssertionError("the report never showed what was awaited")

    proc = subprocess.Popen(job(1), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    deadline = time.time() + 300
    while not list(work.glob("site-2/*/runs/transfer-1/last.pt")):  # training has begun
        assert time.time() < deadline and proc.poll() is None, "site-2 never started training"
        time.sleep(0.2)
    pid = simulator_pid(b"simulator_worker", "site-2", under=tmp_path / "ws1")
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    killed = time.time()
    _, doc = report_when(1, proc, lambda d: d["sites"]["site-1"]["status"] == "ok",
                         killed + 300)
    assert doc["sites"]["site-2"]["status"] == "pending"
    assert doc["summary"]["sites_pending"] == ["site-2"]
    out, _ = proc.communicate(timeout=DEAD_AFTER + 240)  # ends by itself, no timeout set
    assert proc.returncode == 0, out[-3000:]
    assert time.time() - killed < DEAD_AFTER + 120
    first = json.loads(Path(out.strip().splitlines()[-1]).read_text())
    assert first["sites"]["site-1"]["status"] == "ok" and first["sites"]["site-1"]["runs"]
    assert first["sites"]["site-2"]["status"] == "failed"
    assert first["sites"]["site-2"]["reason"] == "site_lost"

    shutil.rmtree(work / "site-1")  # site-1 starts over; site-2 keeps its checkpoints
    proc = subprocess.Popen(job(2), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    report, _ = report_when(2, proc, lambda d: d["sites"]["site-1"]["status"] == "ok",
                            time.time() + 600)
    proc.kill()  # the server and the whole job
    kill_all_under(tmp_path / "ws2")
    proc.communicate(timeout=60)
    second = json.loads(report.read_text())  # still on disk, as it was
    assert _metrics(second["sites"]["site-1"]) == _metrics(first["sites"]["site-1"])
    site2_log = next((tmp_path / "ws2").rglob("site-2/log.txt")).read_text()
    assert "resumed from" in site2_log


@pytest.mark.slow
def test_poc_mode_runs_the_job_submitted_through_the_admin_api(federation, tmp_path):
    """`--env poc`: a fresh `nvflare poc` provisioned from sites/project.yml (server and two
    clients as separate processes on localhost, with the production kits' policy), the job
    submitted and its result downloaded through the admin API, the POC stopped afterwards."""
    import time

    venv_bin = str(Path(sys.executable).parent)
    poc = tmp_path / "poc"
    env = {**os.environ, "LVTL_SITES_DIR": str(federation / "sites"),
           "LVTL_WORK_DIR": str(tmp_path / "work"), "NVFLARE_POC_WORKSPACE": str(poc),
           "HOME": str(tmp_path / "home"), "OMP_NUM_THREADS": "1",
           "PATH": venv_bin + os.pathsep + os.environ.get("PATH", "")}
    cmd = [sys.executable, str(REPO / "jobs" / "lvtl_study" / "job.py"), "--artifact",
           str(federation / "artifact"), "--env", "poc", "--clients", "site-1,site-2",
           "--project", str(REPO / "sites" / "project.yml"),
           "--arms", "baseline,transfer", "--sizes", "1", "--epochs", "1",
           "--samples-per-epoch", "1", "--crop", "2,24,32,32", "--downsample", "2",
           "--timeout", "900", "--report-dir", str(tmp_path / "report")]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1500)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    report = json.loads(Path(out.stdout.strip().splitlines()[-1]).read_text())
    for site in ("site-1", "site-2"):
        assert report["sites"][site]["status"] == "ok", report["sites"][site]
        assert [r["arm"] for r in report["sites"][site]["runs"]] == ["baseline", "transfer"]
    def leftovers():
        found = []
        for proc in Path("/proc").iterdir():
            try:
                if proc.name.isdigit() and str(poc).encode() in (proc / "cmdline").read_bytes():
                    found.append(proc.name)
            except OSError:
                pass
        return found

    deadline = time.time() + 60  # the stopped server and clients finish shutting down
    while leftovers() and time.time() < deadline:
        time.sleep(1)
    assert not leftovers(), "POC processes still running a minute after the job"


@pytest.mark.slow
def test_exported_job_runs_in_the_nvflare_simulator_command(federation, tmp_path):
    """The deprecated-but-supported path: `nvflare simulator` on the exported job folder, in a
    workspace whose class allow-list admits lvtl's classes (the job carries no code)."""
    out = subprocess.run([sys.executable, str(REPO / "jobs" / "lvtl_study" / "job.py"),
                          "--artifact", str(federation / "artifact"), "--export",
                          "--export-dir", str(tmp_path / "jobs"), "--arms", "baseline",
                          "--sizes", "1", "--epochs", "1", "--crop", "2,24,32,32",
                          "--downsample", "2"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    env = {**os.environ, "LVTL_SITES_DIR": str(federation / "sites"),
           "LVTL_WORK_DIR": str(tmp_path / "work"), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "lvtl.flare.provision", str(tmp_path / "ws")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    nvflare = Path(sys.executable).with_name("nvflare")
    out = subprocess.run([str(nvflare), "simulator", str(tmp_path / "jobs" / "lvtl_study"), "-w",
                          str(tmp_path / "ws"), "-n", "2", "-c", "site-1,site-2"], env=env,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    report = json.loads(next((tmp_path / "ws").rglob("report.json")).read_text())
    assert {s: v["status"] for s, v in report["sites"].items()} == {"site-1": "ok",
                                                                    "site-2": "ok"}
    assert report["protocol"]["arms"] == ["baseline"]


def test_a_site_refuses_an_artifact_signed_by_a_key_it_does_not_pin(federation, tmp_path,
                                                                      monkeypatch):
    from lvtl.artifact import keygen
    from lvtl.flare.site import pack_artifact, run_task

    other = keygen(tmp_path / "other-keys")
    site = tmp_path / "site-9"
    (site / "trusted").mkdir(parents=True)
    shutil.copy(tmp_path / "other-keys" / f"{other}.pub.pem", site / "trusted")
    (site / "site.toml").write_text(
        f'[site]\nname = "site-9"\n[data]\nroot = "{federation}/data/site-2"\n'
        f'cache = "{tmp_path}/cache"\n[trust]\nkeys = "trusted"\nmin_version = "1.0.0"\n'
        )
    monkeypatch.setenv("LVTL_SITE_CONFIG", str(site / "site.toml"))
    said = []
    section = run_task("site-9", {"artifact": pack_artifact(federation / "artifact"),
                                  "protocol": {"arms": ["baseline"], "sizes": [1]}},
                       say=said.append)
    assert section["status"] == "failed" and section["runs"] == []
    assert section["reason"] == "artifact_refused:untrusted_key"
    assert not (tmp_path / "cache").exists()  # refused before touching the site's data
    assert any("artifact refused" in m for m in said)


def test_the_site_config_decides_split_seed_and_role(federation, tmp_path, monkeypatch):
    """The job's split seed is replaced by the site's own, and the site's role is reported."""
    from lvtl.flare.site import pack_artifact, run_task

    site = tmp_path / "site-2"
    shutil.copytree(federation / "sites" / "site-2" / "trusted", site / "trusted")
    (site / "site.toml").write_text(
        f'[site]\nname = "site-2"\nrole = "participant"\nsplit_seed = 7\n'
        f'[data]\nroot = "{federation}/data/site-2"\ncache = "{tmp_path}/cache"\n'
        '[trust]\nkeys = "trusted"\nmin_version = "1.0.0"\n')
    monkeypatch.setenv("LVTL_SITE_CONFIG", str(site / "site.toml"))
    monkeypatch.setenv("LVTL_WORK_DIR", str(tmp_path / "work"))
    section = run_task("site-2", {"artifact": pack_artifact(federation / "artifact"),
                                  "protocol": {"arms": ["baseline"], "sizes": [1],
                                               "split_seed": 0, "crop": [2, 24, 32, 32],
                                               "downsample": 2}})
    assert section["status"] == "ok", section["reason"]
    assert section["protocol"]["split_seed"] == 7 and section["role"] == "participant"
    assert check_section(section) == []
