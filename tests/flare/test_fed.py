"""The fed-transfer arm in the real NVFlare simulator (FedAvg across three small sites, a
fourth that keeps its weights), and its server and site parts on their own."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from federation import write_federation
from safetensors.numpy import load_file

from lvtl.flare.privacy import check_section

REPO = Path(__file__).resolve().parents[2]
SHARING = ("site-1", "site-2", "site-3")


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    """Three sites with data that share weight updates; site-4, metrics only, uses site-1's
    data through its own config and cache."""
    root = tmp_path_factory.mktemp("fed")
    write_federation(root, SHARING, SHARING + ("site-4",))
    for site in SHARING:
        with open(root / "sites" / site / "site.toml", "a") as f:
            f.write("[federation]\nallow_weight_sharing = true\n")
    toml = root / "sites" / "site-4" / "site.toml"
    toml.write_text(toml.read_text().replace("/data/site-4", "/data/site-1"))
    return root


def fed_job(federation, ws, report, work, *extra):
    env = {**os.environ, "LVTL_SITES_DIR": str(federation / "sites"), "LVTL_WORK_DIR": str(work),
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(REPO / "jobs" / "lvtl_study" / "job.py"), "--artifact",
           str(federation / "artifact"), "--env", "sim", "--clients",
           "site-1,site-2,site-3,site-4", "--workspace", str(ws),
           "--arms", "baseline,fed-transfer", "--sizes", "1", "--epochs", "2",
           "--fed-rounds", "2", "--samples-per-epoch", "1", "--crop", "2,24,32,32",
           "--downsample", "2", "--timeout", "900", "--report-dir", str(report), *extra]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1500)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return json.loads((report / "report.json").read_text())


def test_fedavg_in_the_simulator_averages_the_sites_updates(federation, tmp_path):
    ws, work = tmp_path / "ws", tmp_path / "work"
    report = fed_job(federation, ws, tmp_path / "report", work)
    fed = report["federation"]
    assert fed["rounds"] == 2 and fed["epochs_per_round"] == 1 and fed["mu"] == 0
    (run,) = fed["runs"]
    assert run["size"] == 1 and run["completed"] == 2 and run["sites"] == list(SHARING)
    # the metrics-only site sent no weights: named as opted out, in the first round
    assert [(e["site"], e["round"], e["kind"]) for e in run["events"]] == [
        ("site-4", 0, "opted_out")]
    # what the server took in per round: three updates, each the model's parameter size
    start = load_file(str(federation / "artifact" / "weights.safetensors"))
    param_bytes = sum(v.nbytes for v in start.values())
    assert run["param_bytes"] == param_bytes
    assert run["update_bytes"] == [3 * param_bytes, 3 * param_bytes]
    assert run["round_sites"] == [3, 3]

    # each round's global model is the case-weighted mean of the updates the sites recorded
    # as sent (one training case each), added to the round's start: computed here anew
    (folder,) = [p for p in (ws / "lvtl-fed-state" / "lvtl-fed").iterdir() if p.is_dir()]
    updates = {site: [dict(np.load(next(work.glob(f"{site}/*/fed/size-1/"
                                                    f"update-round-{r}.npz"))))
                      for r in range(2)] for site in SHARING}
    assert not list(work.glob("site-4/*/fed/size-1/update-round-*.npz"))
    weights = {site: 1.0 for site in SHARING}
    expected = {k: v.astype(np.float64) for k, v in start.items()}
    for r in range(2):
        got = dict(np.load(folder / "size-1" / f"global-{r + 1}.npz"))
        for k in expected:
            mean = sum(weights[s] * updates[s][r][k].astype(np.float64) for s in SHARING)
            expected[k] = expected[k] + mean / sum(weights.values())
            np.testing.assert_allclose(got[k], expected[k], rtol=1e-5, atol=1e-7, err_msg=k)
        assert any(np.abs(updates[s][r][k]).max() > 0 for s in SHARING for k in start)

    # the sites evaluated the federation's model beside their own arms; site-4 did not train
    # it, so it has no fed-transfer run; every site says whether it shares weights
    sites = report["sites"]
    for name in SHARING:
        sec = sites[name]
        assert sec["status"] == "ok", sec
        assert [r["arm"] for r in sec["runs"]] == ["baseline", "fed-transfer"]
        assert sec["weight_sharing"] is True and sec["update_filter"] == "none"
        assert check_section(sec) == []
    assert [r["arm"] for r in sites["site-4"]["runs"]] == ["baseline"]
    assert sites["site-4"]["weight_sharing"] is False
    md = (tmp_path / "report" / "report.md").read_text()
    assert "site-4" in md and "opted out" in md


def test_a_site_that_drops_out_is_left_out_and_a_rerun_resumes(federation, tmp_path):
    """site-3's process is killed once it has trained its first round: the round it was in
    goes on without it once it has been silent for --dead-after, and it is left out after;
    then the server is killed. The rerun resumes after the last completed round, without
    site-3, and finishes."""
    import signal
    import time

    from procs import kill_all_under, simulator_pid

    ws, work = tmp_path / "ws", tmp_path / "work"
    env = {**os.environ, "LVTL_SITES_DIR": str(federation / "sites"), "LVTL_WORK_DIR": str(work),
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(REPO / "jobs" / "lvtl_study" / "job.py"), "--artifact",
           str(federation / "artifact"), "--env", "sim", "--clients", ",".join(SHARING),
           "--workspace", str(ws), "--arms", "fed-transfer", "--sizes", "1", "--epochs", "4",
           "--fed-rounds", "4", "--samples-per-epoch", "4", "--crop", "2,24,32,32",
           "--downsample", "2", "--timeout", "900", "--dead-after", "30"]
    state = ws / "lvtl-fed-state" / "lvtl-fed"

    def record():
        found = list(state.glob("*/federation.json"))
        return json.loads(found[0].read_text())["runs"][0] if found else None

    def wait_for(ready, proc, seconds):
        deadline = time.time() + seconds
        while not ready(record()):
            assert time.time() < deadline and proc.poll() is None, "never came"
            time.sleep(0.2)
        return record()

    proc = subprocess.Popen([*cmd, "--report-dir", str(tmp_path / "r1")], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 600
        while not list(work.glob("site-3/*/fed/size-1/update-round-0.npz")):
            assert time.time() < deadline and proc.poll() is None, "site-3 never trained"
            time.sleep(0.1)
        os.kill(simulator_pid(b"simulator_worker", "site-3", under=ws), signal.SIGKILL)
        run = wait_for(lambda r: r["events"], proc, 300)  # a round ended without site-3
    finally:
        proc.kill()  # the server, before the last round
        kill_all_under(ws)
        proc.communicate(timeout=60)
    events = [(e["site"], e["round"], e["kind"]) for e in run["events"]]
    ((site, dropped, kind),) = events
    assert (site, kind) == ("site-3", "dropped")
    run = record()
    assert dropped + 1 <= run["completed"] < 4 and run["sites"] == ["site-1", "site-2"]

    again = subprocess.run([*cmd, "--report-dir", str(tmp_path / "r2")], env=env,
                           capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    doc = json.loads((tmp_path / "r2" / "report.json").read_text())
    (fed,) = doc["federation"]["runs"]
    assert fed["completed"] == 4 and fed["resumed_from"] == run["completed"]
    assert fed["sites"] == ["site-1", "site-2"] and len(fed["round_seconds"]) == 4
    assert [(e["site"], e["round"], e["kind"]) for e in fed["events"]] == [
        ("site-3", dropped, "dropped")]
    for name in ("site-1", "site-2"):
        assert [r["arm"] for r in doc["sites"][name]["runs"]] == ["fed-transfer"]
    assert doc["sites"]["site-3"]["runs"] == []  # it did not train the federation's model
    md = (tmp_path / "r2" / "report.md").read_text()
    assert "site-3" in md and "dropped" in md


def test_the_exported_fed_job_runs_fedavg_per_size_first_under_the_fed_scope(federation,
                                                                             tmp_path):
    out = subprocess.run([sys.executable, str(REPO / "jobs" / "lvtl_study" / "job.py"),
                          "--artifact", str(federation / "artifact"), "--export",
                          "--export-dir", str(tmp_path), "--arms", "baseline,fed-transfer",
                          "--sizes", "4,1", "--epochs", "6", "--fed-rounds", "3"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    job = tmp_path / "lvtl_study"
    assert json.loads((job / "meta.json").read_text())["scope"] == "lvtl_fed"
    server = json.loads(next(job.rglob("config_fed_server.json")).read_text())
    flows = [(w["path"].rsplit(".", 1)[1], w["args"].get("size")) for w in server["workflows"]]
    assert flows == [("FedTransfer", 1), ("FedTransfer", 4), ("StudyController", None)]
    # no server folder is baked into the job: the server's own workspace (or LVTL_FED_STATE)
    assert "fed_state" not in json.dumps(server["workflows"])
    client = json.loads(next(job.rglob("config_fed_client.json")).read_text())
    assert client["executors"][0]["tasks"] == ["lvtl_study", "lvtl_fed_train"]
    assert [(f["tasks"], [x["path"].rsplit(".", 1)[1] for x in f["filters"]])
            for f in client["task_result_filters"]] == [
        (["lvtl_study"], ["MetricsOnlyFilter"]), (["lvtl_fed_train"], ["FedUpdateFilter"])]
    # a site alone, or a protocol whose epochs do not split into the rounds: refused
    bad = subprocess.run([sys.executable, str(REPO / "jobs" / "lvtl_study" / "job.py"),
                          "--artifact", str(federation / "artifact"), "--export",
                          "--export-dir", str(tmp_path / "x"), "--arms", "fed-transfer",
                          "--epochs", "5", "--fed-rounds", "3"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "multiple of fed_rounds" in bad.stderr


# --------------------------------------------------------------------------- the parts
def _shapes():
    return {"a": (2, 3), "b": (4,)}


def _update(site, params, n_train=1, kind=None):
    from nvflare.app_common.abstract.fl_model import FLModel, ParamsType

    from lvtl.flare.fed import N_TRAIN

    meta = {"client_name": site, N_TRAIN: n_train}
    return FLModel(params=params, params_type=kind or ParamsType.DIFF, meta=meta)


def test_the_aggregator_weights_by_training_cases_and_rejects_bad_updates():
    from nvflare.app_common.abstract.fl_model import ParamsType

    from lvtl.flare.fed import CheckedAggregator

    agg = CheckedAggregator(_shapes())
    agg.round = 3
    rng = np.random.default_rng(0)
    good = {s: {"a": rng.normal(size=(2, 3)).astype(np.float32),
                "b": rng.normal(size=4).astype(np.float32)} for s in ("s1", "s2")}
    agg.accept_model(_update("s1", good["s1"], n_train=1))
    agg.accept_model(_update("s2", good["s2"], n_train=3))
    nan = {"a": np.full((2, 3), np.nan, np.float32), "b": np.zeros(4, np.float32)}
    agg.accept_model(_update("s3", nan))
    agg.accept_model(_update("s4", {"a": np.zeros((3, 2), np.float32), "b": good["s1"]["b"]}))
    agg.accept_model(_update("s5", good["s1"], n_train=0))
    agg.accept_model(_update("s6", good["s1"], kind=ParamsType.FULL))
    agg.accept_model(_update("s7", {"a": good["s1"]["a"]}))  # a layer missing, no filter says so
    out = agg.aggregate_model()
    for k in ("a", "b"):  # (1 * s1 + 3 * s2) / 4, computed here
        want = (good["s1"][k].astype(np.float64) + 3 * good["s2"][k]) / 4
        np.testing.assert_allclose(out.params[k], want, rtol=1e-6)
    assert out.params_type == ParamsType.DIFF
    rejected = {e.site: (e.round, e.kind.value, e.detail) for e in agg.events}
    assert set(rejected) == {"s3", "s4", "s5", "s6", "s7"}
    assert all(r == 3 and kind == "update_rejected" for r, kind, _ in rejected.values())
    assert "non-finite" in rejected["s3"][2] and "shape (3, 2)" in rejected["s4"][2]
    assert "training cases" in rejected["s5"][2] and "difference" in rejected["s6"][2]
    assert "missing weight 'b'" in rejected["s7"][2]
    assert agg.bytes_in == 2 * (6 + 4) * 4  # only the accepted updates count
    # a reply without weights says why in fixed codes; anything else is "invalid results"
    from nvflare.app_common.abstract.fl_model import FLModel

    from lvtl.flare.fed import EVENT, REASON

    agg.reset_stats()
    agg.accept_model(FLModel(params={}, meta={"client_name": "s8", EVENT: "too_few_cases"}))
    agg.accept_model(FLModel(params={}, meta={"client_name": "s9", EVENT: "ls /etc",
                                              REASON: "x"}))
    assert [(e.site, e.kind.value, e.reason.value) for e in agg.events] == [
        ("s8", "too_few_cases", ""), ("s9", "refused", "invalid_results")]
    assert agg.aggregate_model().params == {} and agg.round == 3


def test_sites_left_out_stay_out_and_too_few_cases_only_from_that_size():
    from lvtl.flare.fed import left_out
    from lvtl.study.results import FedEvent, FedEventKind, FedRun, FedStudy

    record = FedStudy(rounds=2, epochs_per_round=1, runs=[
        FedRun(size=1, rounds=2, events=[FedEvent("s1", 1, FedEventKind.DROPPED)]),
        FedRun(size=2, rounds=2, events=[FedEvent("s2", 0, FedEventKind.TOO_FEW_CASES),
                                         FedEvent("s3", 0, FedEventKind.OPTED_OUT)])])
    assert set(left_out(record, 1)) == {"s1", "s3"}
    assert set(left_out(record, 2)) == {"s1", "s2", "s3"}
    assert set(left_out(record, 4)) == {"s1", "s2", "s3"}


def test_weighted_mean_is_the_same_in_any_arrival_order_and_skips_held_back_layers():
    from lvtl.study.fed import weighted_mean, weights_problem

    rng = np.random.default_rng(1)
    ups = {s: ({"a": rng.normal(size=5).astype(np.float32)}, w)
           for s, w in (("x", 1.0), ("y", 2.0), ("z", 5.0))}
    ups["x"][0]["b"] = np.ones(2, np.float32)  # only x sends b (the others held it back)
    a = weighted_mean(ups)
    b = weighted_mean(dict(reversed(list(ups.items()))))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    np.testing.assert_array_equal(a["b"], np.ones(2, np.float32))
    assert weights_problem({"a": np.zeros(5)}, {"a": (5,), "b": (2,)}, partial=True) is None
    assert weights_problem({"a": np.zeros(5)}, {"a": (5,), "b": (2,)}) == "missing weight 'b'"
    assert weights_problem({"c": np.zeros(1)}, {"a": (5,)}) == "unknown weight 'c'"
    assert weights_problem({"a": np.array(["x"] * 5)}, {"a": (5,)}).startswith("a: not numbers")
    assert weights_problem([], {"a": (5,)}) == "no weights"


def _ctx(site, task, task_id="t1"):
    from nvflare.apis.fl_constant import FLContextKey, ReservedKey
    from nvflare.apis.fl_context import FLContext

    ctx = FLContext()
    ctx.set_prop(ReservedKey.IDENTITY_NAME, site, private=False, sticky=True)
    ctx.set_prop(FLContextKey.TASK_NAME, task, private=True, sticky=False)
    ctx.set_prop(FLContextKey.TASK_ID, task_id, private=True, sticky=False)
    return ctx


def _site_toml(tmp_path, monkeypatch, federation_section):
    d = tmp_path / "sites" / "site-9"
    d.mkdir(parents=True)
    (d / "site.toml").write_text('[site]\nname = "site-9"\n' + federation_section)
    monkeypatch.setenv("LVTL_SITES_DIR", str(tmp_path / "sites"))
    monkeypatch.delenv("LVTL_SITE_CONFIG", raising=False)


def _reply(update, **meta):
    from nvflare.apis.fl_constant import FLMetaKey
    from nvflare.app_common.abstract.fl_model import FLModel, ParamsType
    from nvflare.app_common.utils.fl_model_utils import FLModelUtils

    from lvtl.flare.fed import N_TRAIN

    meta = {N_TRAIN: 2, FLMetaKey.NUM_STEPS_CURRENT_ROUND: 8, **meta}
    return FLModelUtils.to_shareable(FLModel(params=update, params_type=ParamsType.DIFF,
                                             meta=meta))


def test_the_update_filter_lets_weights_leave_only_where_the_site_allows(tmp_path, monkeypatch):
    from nvflare.apis.dxo import from_shareable

    from lvtl.flare.fed import EVENT, FED_TASK, REASON
    from lvtl.flare.filters import FedUpdateFilter

    update = {"w": np.linspace(-1, 1, 100, dtype=np.float32).reshape(10, 10)}
    # a metrics-only site (no [federation]: off by default) sends no weights, whatever the
    # executor produced
    _site_toml(tmp_path, monkeypatch, "")
    out = from_shareable(FedUpdateFilter().process(_reply(update), _ctx("site-9", FED_TASK)))
    assert out.data == {} and out.meta == {EVENT: "refused",
                                           REASON: "blocked_by_privacy_filter"}


def test_the_update_filter_checks_and_filters_a_sharing_sites_update(tmp_path, monkeypatch):
    from nvflare.apis.dxo import DataKind, from_shareable
    from nvflare.apis.fl_constant import FLMetaKey

    from lvtl.flare.fed import EVENT, FED_TASK, FILTER, N_TRAIN, REASON
    from lvtl.flare.filters import FedUpdateFilter

    update = {"w": np.linspace(-1, 1, 100, dtype=np.float32).reshape(10, 10)}
    _site_toml(tmp_path, monkeypatch, "[federation]\nallow_weight_sharing = true\n")
    ctx = _ctx("site-9", FED_TASK)
    reply = _reply(update, smuggled="PatientID MRN0001")
    out = from_shareable(FedUpdateFilter().process(reply, ctx))
    assert out.data_kind == DataKind.WEIGHT_DIFF
    np.testing.assert_array_equal(out.data["w"], update["w"])
    assert out.meta == {N_TRAIN: 2, FLMetaKey.NUM_STEPS_CURRENT_ROUND: 8, FILTER: "none"}
    # non-finite values, full weights instead of a difference, no case count: blocked
    bad = {"w": np.full((10, 10), np.inf, np.float32)}
    for shareable in (_reply(bad), _reply(update, **{N_TRAIN: None})):
        out = from_shareable(FedUpdateFilter().process(shareable, ctx))
        assert out.data == {} and out.meta[REASON] == "blocked_by_privacy_filter"
    # a reply without weights keeps only its fixed codes
    empty = from_shareable(FedUpdateFilter().process(
        _reply({}, **{EVENT: "too_few_cases", REASON: "", "path": "/data/x"}), ctx))
    assert empty.data == {} and empty.meta == {EVENT: "too_few_cases", REASON: ""}
    # every other task's result goes through the metrics-only filter
    other = from_shareable(FedUpdateFilter().process(_reply(update), _ctx("site-9", "x")))
    assert other.data["site"]["reason"] == "blocked_by_privacy_filter"


def test_the_sites_chosen_privacy_filter_is_applied_once(tmp_path, monkeypatch):
    from nvflare.apis.dxo import from_shareable

    from lvtl.flare.fed import FED_TASK, FILTER
    from lvtl.flare.filters import FedUpdateFilter

    update = {"w": np.linspace(-1, 1, 100, dtype=np.float32).reshape(10, 10)}
    _site_toml(tmp_path, monkeypatch, "[federation]\nallow_weight_sharing = true\n"
               'update_filter = "percentile"\n[federation.filter_args]\npercentile = 50\n'
               "gamma = 0.5\n")
    ctx = _ctx("site-9", FED_TASK)
    once = from_shareable(FedUpdateFilter().process(_reply(update), ctx))
    assert once.meta[FILTER] == "percentile"
    w = once.data["w"]
    # NVFlare's PercentilePrivacy: the smaller half of |diff| (per step) is not sent, the
    # rest is clipped to gamma per step (8 steps)
    assert (w == 0).sum() >= 49 and np.abs(w).max() <= 0.5 * 8 + 1e-6
    # the kit's scope and the job both run this filter on the same result: applied once
    twice = from_shareable(FedUpdateFilter().process(once.to_shareable(), ctx))
    np.testing.assert_array_equal(twice.data["w"], w)


def test_a_site_trains_rounds_only_from_the_signed_model_and_says_why_not(federation, tmp_path,
                                                                         monkeypatch):
    from lvtl.flare.fed import signed_weights
    from lvtl.flare.site import FedSite, pack_artifact
    from lvtl.study.protocol import Protocol

    monkeypatch.setenv("LVTL_SITES_DIR", str(federation / "sites"))
    monkeypatch.setenv("LVTL_WORK_DIR", str(tmp_path / "work"))
    files = pack_artifact(federation / "artifact")
    start = signed_weights(files)
    protocol = Protocol(arms=("baseline", "fed-transfer"), sizes=(1, 2), epochs=2,
                        fed_rounds=2, samples_per_epoch=1, crop=(2, 24, 32, 32),
                        downsample=2).to_dict()
    first = {"protocol": protocol, "artifact": files, "size": 1, "round": 0}
    site = FedSite("site-2", say=lambda m: None)
    moved = {k: v + 0.5 for k, v in start.items()}
    r = site.round(first, moved)  # round 0 must start from the signed model itself
    assert r.update is None and (r.event.value, r.reason.value) == ("refused",
                                                                    "fed_model_refused")
    cut = {k: v[..., :1] for k, v in start.items()}
    r = site.round({**first, "round": 1}, cut)
    assert r.update is None and r.reason.value == "fed_model_refused"
    r = site.round(first, start)
    assert r.update is not None and set(r.update) == set(start)
    assert r.n_train == 1 and r.steps == 1 and r.event is None
    nxt = {k: start[k] + r.update[k] for k in start}
    r2 = site.round({**first, "artifact": None, "round": 1}, nxt)  # verified at the first
    assert r2.update is not None and any(np.abs(v).max() > 0 for v in r2.update.values())
    r3 = site.round({**first, "artifact": None, "size": 2}, start)  # one training case
    assert r3.update is None and r3.event.value == "too_few_cases"
    r4 = site.round({**first, "round": 5}, start)
    assert r4.update is None and r4.reason.value == "protocol_refused"
    # a fresh job's site that was never sent the signed model trains nothing
    r5 = FedSite("site-2", say=lambda m: None).round({**first, "artifact": None}, start)
    assert r5.update is None and r5.reason.value == "artifact_refused:invalid"
    # the metrics-only site keeps its weights
    r6 = FedSite("site-4", say=lambda m: None).round(first, start)
    assert r6.update is None and r6.event.value == "opted_out"


@pytest.mark.slow
def test_the_fed_arm_runs_in_poc_under_the_kits_fed_scope(federation, tmp_path):
    """`--env poc` from sites/project.yml (site-1, site-2, site-3 as separate processes with
    the production kits' policy): the job names the kits' `lvtl_fed` scope, the kits' own
    FedUpdateFilter lets each site's update leave, and the FedAvg rounds complete."""
    venv_bin = str(Path(sys.executable).parent)
    env = {**os.environ, "LVTL_SITES_DIR": str(federation / "sites"),
           "LVTL_WORK_DIR": str(tmp_path / "work"), "NVFLARE_POC_WORKSPACE": str(tmp_path / "poc"),
           "HOME": str(tmp_path / "home"), "OMP_NUM_THREADS": "1",
           "PATH": venv_bin + os.pathsep + os.environ.get("PATH", "")}
    cmd = [sys.executable, str(REPO / "jobs" / "lvtl_study" / "job.py"), "--artifact",
           str(federation / "artifact"), "--env", "poc", "--clients", ",".join(SHARING),
           "--project", str(REPO / "sites" / "project.yml"), "--arms", "baseline,fed-transfer",
           "--sizes", "1", "--epochs", "2", "--fed-rounds", "2", "--samples-per-epoch", "1",
           "--crop", "2,24,32,32", "--downsample", "2", "--timeout", "900",
           "--fed-state", str(tmp_path / "fed-state"), "--report-dir", str(tmp_path / "report")]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1500)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    (run,) = report["federation"]["runs"]
    assert run["completed"] == 2 and run["sites"] == list(SHARING) and run["events"] == []
    for site in SHARING:
        assert [r["arm"] for r in report["sites"][site]["runs"]] == ["baseline", "fed-transfer"]
        # the kit's own scope filter and the job's both ran; the site's filter once
        assert report["sites"][site]["update_filter"] == "none"
