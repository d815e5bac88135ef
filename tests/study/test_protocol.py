"""The study protocol and its one declaration of options (CLI, job and demo)."""

import pytest

from lvtl.errors import ConfigError
from lvtl.flare.job import parser
from lvtl.model.options import Init
from lvtl.study import protocol as proto
from lvtl.study.protocol import Arm, Protocol


def test_text_becomes_enums_and_tuples_once():
    p = proto.from_options({"arms": " baseline, transfer ", "sizes": "1,2", "init": "normal",
                            "crop": "4,16,16,16"})
    assert p.arms == (Arm.BASELINE, Arm.TRANSFER) and p.init is Init.NORMAL
    assert p.sizes == (1, 2) and p.crop == (4, 16, 16, 16)
    assert Protocol.from_dict(p.to_dict()) == p  # JSON round trip (as the task carries it)


@pytest.mark.parametrize("values,words", [
    ({"arms": "baseline,tranfser"}, ["tranfser", "did you mean 'transfer'"]),
    ({"sizes": "0,5"}, ["--sizes", "positive"]),
    ({"crop": "4,16,16"}, ["--crop", "4 positive"]),
    ({"lr_transfer": 0.0}, ["lr_transfer must be positive"]),
])
def test_bad_options_are_named(values, words):
    with pytest.raises(ConfigError) as err:
        proto.from_options(values)
    for w in words:
        assert w in str(err.value)


def test_the_job_and_the_cli_offer_the_same_study_options():
    from typer.main import get_command

    from lvtl.cli import app

    job_flags = {a.option_strings[0] for a in parser()._actions if a.option_strings}
    study = get_command(app).commands["study"]
    cli_flags = {o for p in study.params for o in getattr(p, "opts", [])}
    for o in proto.options():
        assert o.flag in cli_flags
        assert (o.flag in job_flags) == (not o.site_only)  # device and bf16: the site's choice


def test_job_options_build_the_protocol_it_sends(tmp_path):
    from lvtl.flare import job

    args = parser().parse_args(["--artifact", "a", "--arms", "baseline,random", "--sizes", "3",
                                "--lr-transfer", "3e-4", "--init", "normal"])
    p = job.protocol_from_args(args)
    assert p == Protocol(arms=("baseline", "random"), sizes=(3,), lr_transfer=3e-4,
                         init="normal")
    assert job.JobSettings(artifact=tmp_path).env == "sim"


def test_the_evaluation_grid_is_an_option_with_a_default_and_a_json_round_trip():
    from lvtl.study.protocol import EvalGrid

    assert Protocol().eval_grid is EvalGrid.NATIVE  # what the paper measures: the 1 mm grid
    p = proto.from_options({"eval_grid": "model", "downsample": 2})
    assert p.eval_grid is EvalGrid.MODEL and p.to_dict()["eval_grid"] == "model"
    assert Protocol.from_dict(p.to_dict()) == p
    old = Protocol().to_dict()
    del old["eval_grid"]  # a protocol from before the option: the default
    assert Protocol.from_dict(old).eval_grid is EvalGrid.NATIVE
    (opt,) = [o for o in proto.options() if o.name == "eval_grid"]
    assert opt.flag == "--eval-grid" and opt.kind is EvalGrid and opt.default is EvalGrid.NATIVE
    assert not opt.site_only  # the coordinator's protocol chooses it for every site
    with pytest.raises(ConfigError, match="unknown eval_grid 'nativ' .did you mean 'native'"):
        proto.from_options({"eval_grid": "nativ"})


def test_the_fed_transfer_arm_splits_the_schedule_into_equal_rounds():
    from lvtl.errors import ConfigError
    from lvtl.study.protocol import LOCAL_ARMS, Arm, Protocol

    assert Protocol().arms == LOCAL_ARMS and Arm.FED_TRANSFER not in Protocol().arms
    p = Protocol(arms=("transfer", "fed-transfer"), epochs=40, fed_rounds=8)
    assert p.fed_epochs == 5 and p.lr(Arm.FED_TRANSFER) == p.lr_transfer
    assert not Arm.FED_TRANSFER.local and Arm.FED_TRANSFER.trains
    with pytest.raises(ConfigError, match="multiple of fed_rounds"):
        Protocol(arms=("fed-transfer",), epochs=10, fed_rounds=4)
    Protocol(epochs=10, fed_rounds=4)  # without the arm the rounds do not matter
    with pytest.raises(ConfigError, match="fed_mu"):
        Protocol(fed_mu=-0.1)
    with pytest.raises(ConfigError, match="fed_rounds must be at least 1"):
        Protocol(fed_rounds=0)
    assert Protocol.from_dict(p.to_dict()) == p
