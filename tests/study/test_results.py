"""The typed results: one definition that the study writes, the report reads and the privacy
allow-list is generated from."""

import dataclasses
import json

import pytest

from lvtl.errors import ConfigError
from lvtl.flare.privacy import check_section
from lvtl.study import results
from lvtl.study.protocol import Protocol
from lvtl.study.report import write_report
from lvtl.study.results import ResultsDoc, SiteResults, Status
from lvtl.study.run import CaseEval, summarize_run


def section(n_test=3, **run_extra) -> dict:
    evals = [CaseEval(f"c{i}", {"blood_pool": 0.8 + 0.01 * i, "lvm": 0.7}) for i in range(n_test)]
    sec = SiteResults(status=Status.OK, n_test=n_test, protocol=Protocol(sizes=(1,)),
                      runs=[summarize_run("transfer", 1, evals)]).to_dict()
    sec["runs"][0].update(run_extra)
    return sec


def test_round_trip_keeps_every_field():
    doc = {"schema": results.SCHEMA, "sites": {"site-2": section()}}
    back = ResultsDoc.from_dict(json.loads(json.dumps(doc)))
    assert back.to_dict()["sites"] == doc["sites"]
    assert back.sites["site-2"].runs[0].arm == "transfer"
    assert back.sites["site-2"].protocol == Protocol(sizes=(1,))


@pytest.mark.parametrize("change,words", [
    (lambda d: d["sites"]["s"].update(colour="blue"), ["sites.s.colour", "not a field"]),
    (lambda d: d["sites"]["s"]["runs"][0].update(arm="magic"), ["arm", "'magic'"]),
    (lambda d: d.update(schema="lvtl.report/0"), ["not a lvtl.report/1 document"]),
    (lambda d: d["sites"]["s"]["runs"][0].pop("dice"), ["dice"]),
])
def test_a_malformed_document_is_named(change, words):
    doc = {"schema": results.SCHEMA, "sites": {"s": section()}}
    change(doc)
    with pytest.raises(ConfigError) as err:
        ResultsDoc.from_dict(doc, "r.json")
    for w in words:
        assert w in str(err.value)


def test_a_new_schema_field_is_allowed_and_reported_without_touching_flare_or_report(
        monkeypatch, tmp_path):
    """Add a field to the run type (as a developer would, in lvtl/study/results.py): the
    site's privacy allow-list lets it out and the report carries it; before, it is blocked."""
    sec = section(hausdorff_mm=4.25)
    assert any("hausdorff_mm: not an allowed field" in p for p in check_section(sec))

    @dataclasses.dataclass
    class RunWithHausdorff(results.Run):
        hausdorff_mm: float | None = None

    monkeypatch.setattr(results, "Run", RunWithHausdorff)  # SiteResults.runs: list[Run]
    assert check_section(sec) == []
    assert check_section(section(hausdorff_mm="4.25 mm")) != []  # and its type is enforced
    report = write_report({"schema": results.SCHEMA, "sites": {"site-2": sec}}, tmp_path)
    doc = json.loads(report.read_text())
    assert doc["sites"]["site-2"]["runs"][0]["hausdorff_mm"] == 4.25


def test_the_allow_list_follows_the_types_field_by_field():
    assert check_section(section()) == []
    sec = section()
    sec["protocol"]["pixels"] = "ff" * 100  # data hidden under the echoed protocol
    assert any("results.protocol.pixels: not an allowed field" in p for p in check_section(sec))
    sec = section()
    sec["protocol"]["sizes"] = list(range(1, 1000))
    assert any("results.protocol.sizes" in p for p in check_section(sec))
    sec = section()
    sec["runs"][0]["dice"]["lvm"]["mean"] = float("nan")
    assert any("dice.lvm.mean: expected a finite number" in p for p in check_section(sec))
    sec = section()
    sec["runs"][0]["arm"] = "exfiltrate"
    assert any("arm: not one of baseline, random, transfer" in p for p in check_section(sec))
    sec = section()
    sec["reason"] = "failed: /data/site-2/MRN00177312/label.npy"  # a reason is a fixed code
    assert any("results.reason: not one of" in p for p in check_section(sec))
    sec = section()
    sec["artifact"] = {"name": "x" * (results.MAX_TEXT + 1), "version": "1", "key_id": "k"}
    assert any("results.artifact.name: expected text" in p for p in check_section(sec))
    sec = section()
    sec["runs"][0]["dice_per_case"]["lvm"] = [0.5, 2.0, 0.5]  # not a Dice
    assert any("outside [0.0, 1.0]" in p for p in check_section(sec))
    sec = section()
    sec["runs"][0]["thickness_r"]["ED"]["median"] = 7.5  # not a correlation
    assert any("thickness_r.ED.median: 7.5 outside" in p for p in check_section(sec))
    sec = section()
    sec["protocol"]["epochs"] = 0  # type-correct, but not a protocol the study could run
    assert any("not a valid protocol" in p for p in check_section(sec))


def test_a_section_cannot_claim_room_for_more_numbers():
    """Per-case lists are bounded by the test count, which is bounded and must agree."""
    sec = section(n_test=3)
    sec["n_test"] = 262_144
    assert check_section(sec) == ["results.n_test: more than 1000 test cases"]
    sec = section(n_test=3)
    sec["n_test"] = 900  # room for 900 per-case values, but the runs were on 3 cases
    assert any("runs[0].n_test: differs" in p for p in check_section(sec))


def test_the_report_marks_the_model_owners_home_evaluation(tmp_path):
    owner, participant = section(), section()
    owner["role"], participant["role"] = "model-owner", "participant"
    write_report({"schema": results.SCHEMA, "sites": {"site-1": owner, "site-2": participant}},
                 tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "## site-1 (the model owner" in md and "## site-2\n" in md


def test_every_kind_of_artifact_refusal_has_its_reason_code():
    """A site reports an artifact refusal as ``artifact_refused:<the error's why>``."""
    from lvtl import errors

    kinds = [errors.ArtifactError, *errors.ArtifactError.__subclasses__()]
    assert len(kinds) == 4
    codes = {results.Reason(f"artifact_refused:{k.why}") for k in kinds}
    assert len(codes) == 4


def test_the_evaluation_grid_spacing_leaves_the_site_bounded_and_old_results_still_load():
    sec = section(eval_spacing_mm=1.0)
    assert check_section(sec) == []
    doc = {"schema": results.SCHEMA, "sites": {"s": sec}}
    back = ResultsDoc.from_dict(json.loads(json.dumps(doc)))
    assert back.sites["s"].runs[0].eval_spacing_mm == 1.0
    assert any("eval_spacing_mm: 1000.0 outside" in p
               for p in check_section(section(eval_spacing_mm=1000.0)))
    assert check_section(section(eval_spacing_mm="1 mm")) != []
    old = section()  # written before the field (and the protocol's eval_grid) existed
    del old["runs"][0]["eval_spacing_mm"]
    del old["protocol"]["eval_grid"]
    back = ResultsDoc.from_dict({"schema": results.SCHEMA, "sites": {"s": old}})
    assert back.sites["s"].runs[0].eval_spacing_mm is None
