"""The coordinator's report never overstates: every mean with its n and 95% interval, no
correlation from too few cases, a plateau only with three sizes and an interval, verdicts from
paired intervals, and a plot with integer training sizes and error bars. The fed-transfer arm
is reported like the others, with its gain over local transfer paired case by case, and the
server's record of the federation in a section of its own (none for older documents)."""

import json
import math
import re

import numpy as np
import pytest
from scipy import stats

from lvtl.config import UpdateFilter
from lvtl.errors import ConfigError
from lvtl.study import report
from lvtl.study.report import merge_results, render_markdown, summarize, write_report
from lvtl.study.results import (
    FedEvent,
    FedEventKind,
    FedRun,
    FedStudy,
    Reason,
    ResultsDoc,
    Run,
    SiteResults,
    Status,
)
from lvtl.study.run import CaseEval, summarize_run

#: Case-to-case variation of the mean Dice of ten test cases (mean 0), added to a level.
CASES = np.array([0.01, -0.02, 0.015, 0.0, -0.01, 0.02, -0.015, 0.005, 0.01, -0.015])


def run(arm: str, size: int, mean_dice, thickness: bool = True) -> Run:
    """One run whose per-case mean Dice (over blood pool and LVM) is ``mean_dice``; with
    ``thickness``, predicted and true wall thicknesses that correlate."""
    evals = []
    for i, d in enumerate(mean_dice):
        true = {"median": 5.0 + 0.3 * i, "p95": 7.0 + 0.2 * i, "max": 9.0 + 0.1 * i}
        pred = {s: v + 0.2 * math.sin(3 * i) for s, v in true.items()}
        evals.append(CaseEval(f"c{i}", {"blood_pool": d + 0.02, "lvm": d - 0.02},
                              {"ED": {"pred": pred, "truth": true},
                               "ES": {"pred": pred, "truth": true}} if thickness else {}))
    return summarize_run(arm, size, evals)


def doc(**sites: list[Run]) -> ResultsDoc:
    """A report document of sites with results, each with its runs."""
    return ResultsDoc(sites={name: SiteResults(status=Status.OK, n_test=runs[0].n_test, runs=runs)
                             for name, runs in sites.items()})


def by_hand(values) -> tuple[float, float, float]:
    """Mean and 95% t-interval, computed here independently of the report."""
    v = np.asarray(values, dtype=np.float64)
    lo, hi = stats.t.interval(0.95, v.size - 1, loc=v.mean(), scale=stats.sem(v))
    return float(v.mean()), float(lo), float(hi)


def line(md: str, start: str) -> str:
    (found,) = [x for x in md.splitlines() if x.startswith(start)]
    return found


def tables(md: str) -> list[list[dict[str, str]]]:
    """The markdown tables of a report, each as its rows keyed by the header's cells."""
    out, block = [], []
    for row in [*md.splitlines(), ""]:
        if row.startswith("|"):
            block.append([c.strip() for c in row.strip("|").split("|")])
        elif block:
            out.append([dict(zip(block[0], r, strict=True)) for r in block[2:]])
            block = []
    return out


def test_every_mean_has_its_n_and_the_t_interval_computed_by_hand():
    base = 0.8 + CASES
    d = doc(**{"site-2": [run("baseline", 0, base)], "site-3": [run("baseline", 0, base[:4])]})
    s = summarize(d)
    cell = s["per_site"]["site-2"]["dice_by_size"]["baseline"][0]
    assert cell["n"] == 10
    for key, values in (("blood_pool", base + 0.02), ("lvm", base - 0.02), ("mean", base)):
        mean, lo, hi = by_hand(values)
        assert cell[key]["n"] == 10
        assert cell[key]["mean"] == pytest.approx(mean, abs=1e-6)
        assert (cell[key]["low"], cell[key]["high"]) == pytest.approx((lo, hi), abs=1e-6)
    pooled = s["pooled_dice_by_size"]["baseline"][0]
    assert pooled["n"] == 14 and pooled["sites"] == 2  # case-weighted: per-case values pooled
    mean, lo, hi = by_hand(np.concatenate([base, base[:4]]))
    assert (pooled["mean"]["mean"], pooled["mean"]["low"], pooled["mean"]["high"]) == \
        pytest.approx((mean, lo, hi), abs=1e-6)


def test_every_mean_in_report_md_has_an_interval_or_says_why_not():
    d = doc(**{"site-2": [run("baseline", 0, 0.8 + CASES), run("transfer", 5, 0.9 + CASES)],
               "site-3": [run("baseline", 0, [0.7]), run("transfer", 5, [0.85])]})
    dice = [t for t in tables(render_markdown(d, summarize(d))) if t and "LVM" in t[0]]
    assert [len(t) for t in dice] == [2, 2, 2]  # site-2, site-3, pooled
    assert [r["n"] for t in dice for r in t] == ["10", "10", "1", "1", "11", "11"]
    assert [r["sites"] for r in dice[2]] == ["2", "2"]  # pooled, case-weighted
    with_interval = re.compile(r"^\d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\]$")
    for row in (r for t in dice for r in t):
        for key in ("blood pool", "LVM", "mean of both"):
            assert (with_interval.match(row[key]) if row["n"] != "1"
                    else re.match(r"^\d\.\d{3} \(no interval: n=1\)$", row[key])), row
    mean, lo, hi = by_hand(0.9 + CASES)
    assert dice[0][1]["mean of both"] == f"{mean:.3f} [{lo:.3f}, {hi:.3f}]"


def test_a_correlation_from_too_few_cases_is_not_a_number(tmp_path):
    few = run("transfer", 5, 0.9 + CASES[:4])
    r_site = few.thickness_r.ED.median
    assert r_site is not None and few.thickness_r_ci.ED.median.n == 4  # the site computed one
    many = run("transfer", 5, 0.9 + CASES)
    write_report(doc(**{"site-2": [few], "site-3": [many]}), tmp_path)
    md = (tmp_path / "report.md").read_text()
    full = json.loads((tmp_path / "report.json").read_text())
    row = line(md.split("## site-2")[1], "| transfer | 5 | too few")
    assert row.count("too few cases (n=4)") == 6 and f"{r_site:.2f}" not in row
    cor = full["summary"]["per_site"]["site-2"]["thickness_r"]["transfer"]["5"]["ED"]["median"]
    assert cor == {"r": None, "low": None, "high": None, "n": 4, "why": "too_few_cases"}
    assert full["sites"]["site-2"]["runs"][0]["thickness_r"]["ED"]["median"] == r_site
    # from MIN_CASES_R cases on: the number with its interval and n
    ci = many.thickness_r_ci.ES.p95
    shown = full["summary"]["per_site"]["site-3"]["thickness_r"]["transfer"]["5"]["ES"]["p95"]
    assert shown == {"r": many.thickness_r.ES.p95, "low": ci.low, "high": ci.high, "n": 10,
                     "why": None}
    assert (f"{many.thickness_r.ES.p95:.2f} [{ci.low:.2f}, {ci.high:.2f}] (n=10)"
            in md.split("## site-3")[1])


def test_a_constant_input_is_said_in_words():
    flat = run("baseline", 0, 0.8 + CASES, thickness=False)
    flat.thickness_r.ED.max = None
    flat.thickness_r_ci.ED.max.n, flat.thickness_r_ci.ED.max.why = 10, "constant_input"
    md = render_markdown(doc(s=[flat]), summarize(doc(s=[flat])))
    assert "constant input (n=10)" in md


def test_a_plateau_with_two_sizes_is_not_assessed():
    d = doc(s=[run("transfer", 5, 0.85 + CASES), run("transfer", 10, 0.85 + CASES)])
    s = summarize(d)
    assert s["per_site"]["s"]["transfer_plateau"]["size"] is None
    assert ("- transfer plateau: not assessed (needs at least 3 training sizes, got 2)"
            in render_markdown(d, s))


def test_a_clear_plateau_with_three_sizes_is_claimed_with_its_interval():
    noise = np.array([0.001, -0.001, 0.002, 0.0, -0.002, 0.001, 0.0, -0.001, 0.002, -0.001])
    curve = {1: 0.7 + CASES, 2: 0.85 + CASES, 3: 0.852 + CASES + noise}
    d = doc(s=[run("transfer", k, v) for k, v in curve.items()])
    s = summarize(d)
    p = s["per_site"]["s"]["transfer_plateau"]
    assert p["size"] == 2 and p["compared_with"] == 3
    mean, lo, hi = by_hand(curve[3] - curve[2])
    assert (p["difference"]["mean"], p["difference"]["low"], p["difference"]["high"]) == \
        pytest.approx((mean, lo, hi), abs=1e-5)
    assert hi < report.PLATEAU
    assert (f"- transfer plateau: at 2 training cases (every larger size gains less than "
            f"{report.PLATEAU} mean Dice by the upper end of its 95% interval; highest upper "
            f"end, at 3: {mean:+.3f} [{lo:+.3f}, {hi:+.3f}], paired over 10 test cases)"
            ) in render_markdown(d, s)


def test_a_noisy_plateau_is_not_claimed():
    rng = np.random.default_rng(0)
    curve = {1: 0.7 + CASES, 2: 0.85 + CASES, 3: np.clip(0.85 + rng.normal(0, 0.05, 10),
                                                         0.1, 0.9)}
    d = doc(s=[run("transfer", k, v) for k, v in curve.items()])
    s = summarize(d)
    assert s["per_site"]["s"]["transfer_plateau"]["size"] is None
    assert "- transfer plateau: not shown (at no size below the largest (3)" in \
        render_markdown(d, s)


def test_verdicts_when_transfer_clearly_beats_random_and_the_baseline():
    d = doc(s=[run("baseline", 0, 0.75 + np.roll(CASES, 3)),
               *[run(arm, k, level + noise) for k in (5, 10, 15)
                 for arm, level, noise in (("random", 0.5 + 0.05 * k / 5, CASES[::-1]),
                                           ("transfer", 0.9, CASES))]])
    s = summarize(d)
    md = render_markdown(d, s)
    assert ("- transfer beats random init at every size: yes (3 of 3 sizes with the interval "
            "above 0)") in md
    assert ("- baseline (no tuning) beats random init at every size: yes (3 of 3 sizes with "
            "the interval above 0)") in md
    assert "- transfer beats baseline at every size: yes (3 of 3 sizes" in md
    (tr,) = [c for c in s["per_site"]["s"]["comparisons"] if c["worse"] == "random"
             and c["better"] == "transfer"]
    mean, lo, hi = by_hand(CASES - CASES[::-1] + 0.9 - 0.55)
    diff = tr["by_size"][5]
    assert (diff["mean"], diff["low"], diff["high"]) == pytest.approx((mean, lo, hi), abs=1e-5)
    assert diff["n"] == 10 and diff["outcome"] == "above 0" and 0 < lo < mean


def test_verdicts_when_the_intervals_include_zero_or_lie_below_it(tmp_path):
    # at 10, transfer is ahead on average but the paired interval includes 0
    ahead = np.array([0.06, -0.05, 0.04, -0.03, 0.05, -0.04, 0.03, -0.05, 0.04, -0.03])
    mean, lo, hi = by_hand(ahead)
    assert mean > 0 > lo
    random = [run("random", 5, 0.7 + CASES), run("random", 10, 0.7 + CASES)]
    d = doc(s=[*random, run("transfer", 5, 0.6 + CASES[::-1]),
               run("transfer", 10, 0.7 + CASES + ahead)])
    write_report(d, tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert ("- transfer beats random init at every size: no: interval below 0 at 5; interval "
            "includes 0 at 10 (0 of 2 sizes with the interval above 0)") in md
    d = doc(s=[*random, run("transfer", 5, 0.9 + CASES[::-1]),
               run("transfer", 10, 0.7 + CASES + ahead)])
    md = render_markdown(d, summarize(d))
    assert ("- transfer beats random init at every size: not shown: interval includes 0 at 10 "
            "(1 of 2 sizes with the interval above 0)") in md
    assert f"| transfer − random | 10 | 10 | {mean:+.3f} [{lo:+.3f}, {hi:+.3f}] | includes 0 |" \
        in md
    assert "baseline" not in md  # only the arms that were run are compared
    comp = json.loads((tmp_path / "report.json").read_text())["summary"]["per_site"]["s"][
        "comparisons"]
    assert [(c["verdict"], c["above_zero"], c["sizes"]) for c in comp] == [("no", 0, 2)]
    assert [comp[0]["by_size"][k]["outcome"] for k in ("5", "10")] == ["below 0", "includes 0"]


@pytest.mark.parametrize("sizes", [(1, 2, 3), (5, 10), (2, 5, 7, 30)])
def test_the_plot_has_integer_ticks_error_bars_and_a_baseline_band(sizes):
    from matplotlib.container import ErrorbarContainer

    d = doc(s=[run("baseline", 0, 0.75 + CASES),
               *[run(a, k, 0.8 + CASES) for k in sizes for a in ("random", "transfer")]])
    fig = report._figure(summarize(d))
    (ax,) = fig.axes
    fig.canvas.draw()
    assert [t.get_text() for t in ax.get_xticklabels()] == [str(k) for k in sizes]
    bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert len(bars) == 2 and all(c.has_yerr for c in bars)
    assert any("interval" in t.get_text() for t in ax.get_legend().get_texts())
    assert len(ax.patches) == 1  # the baseline's interval as a band
    assert "n=10" in ax.get_title()


def test_the_plot_draws_a_site_with_one_test_case_without_intervals():
    d = doc(s=[run("baseline", 0, [0.7]), run("transfer", 5, [0.85])])
    (ax,) = report._figure(summarize(d)).axes
    assert len(ax.patches) == 0 and "n=1" in ax.get_title()  # no band: no interval


def test_the_site_section_says_which_grid_it_was_measured_on():
    native = summarize_run("baseline", 0, [CaseEval(f"c{i}", {"blood_pool": 0.7, "lvm": 0.7}, {})
                                           for i in range(3)], eval_spacing_mm=1.0)
    older = run("baseline", 0, [0.7] * 3)  # results written before the grid was recorded
    for runs, want in (([native], "measured on the 1 mm grid"), ([older], None)):
        d = doc(s=runs)
        first = render_markdown(d, summarize(d)).split("## s", 1)[1].splitlines()[2]
        assert ("measured on the" in first) == (want is not None)
        if want:
            assert want in first


# --------------------------------------------------------------------------- fed-transfer
def mean_per_case(r: Run) -> np.ndarray:
    """Per-case mean Dice over the labels, from what the site sent."""
    return (np.asarray(r.dice_per_case.blood_pool) + np.asarray(r.dice_per_case.lvm)) / 2


def fed_doc(fed_levels: dict[int, float], noise=CASES[::-1]) -> tuple[ResultsDoc, dict]:
    """One site with transfer at 0.85 and fed-transfer at ``fed_levels`` (size -> level, plus
    ``noise``); returns the document and its runs by (arm, size)."""
    runs = {("transfer", k): run("transfer", k, 0.85 + CASES) for k in fed_levels}
    runs |= {("fed-transfer", k): run("fed-transfer", k, v + noise)
             for k, v in fed_levels.items()}
    return doc(s=[run("baseline", 0, 0.75 + CASES), *runs.values()]), runs


def federation(mu: float = 0.0) -> FedStudy:
    return FedStudy(rounds=4, epochs_per_round=5, mu=mu, runs=[
        FedRun(size=2, rounds=4, completed=4, sites=["site-2", "site-3"],
               update_bytes=[3000, 3000, 2000, 2000], param_bytes=1000,
               round_seconds=[10.0, 14.0],
               events=[FedEvent("site-4", 2, FedEventKind.DROPPED),
                       FedEvent("site-5", 0, FedEventKind.REFUSED,
                                Reason.ARTIFACT_UNTRUSTED_KEY)]),
        FedRun(size=5, rounds=4, completed=2, sites=["site-2"], resumed_from=1,
               update_bytes=[2000, 1000], param_bytes=1000,
               events=[FedEvent("site-3", 1, FedEventKind.REJECTED,
                                detail="NaN in block1.conv.weight"),
                       FedEvent("site-6", 0, FedEventKind.OPTED_OUT)]),
    ])


def test_fed_transfer_has_its_rows_with_n_and_intervals_per_site_and_pooled():
    fed = [run("fed-transfer", k, 0.88 + CASES[::-1]) for k in (2, 5)]
    fed3 = run("fed-transfer", 5, 0.8 + CASES[:6])
    d = doc(**{"site-2": [run("transfer", 2, 0.85 + CASES), run("transfer", 5, 0.86 + CASES),
                          *fed],
               "site-3": [run("transfer", 5, 0.8 + CASES[:6]), fed3]})
    s = summarize(d)
    cell = s["per_site"]["site-2"]["dice_by_size"]["fed-transfer"][5]
    mean, lo, hi = by_hand(mean_per_case(fed[1]))
    assert cell["n"] == 10 and cell["mean"]["n"] == 10
    assert (cell["mean"]["mean"], cell["mean"]["low"], cell["mean"]["high"]) == \
        pytest.approx((mean, lo, hi), abs=1e-6)
    pooled = s["pooled_dice_by_size"]["fed-transfer"]
    assert (pooled[2]["sites"], pooled[2]["n"], pooled[5]["sites"], pooled[5]["n"]) == \
        (1, 10, 2, 16)
    pmean, plo, phi = by_hand(np.concatenate([mean_per_case(fed[1]), mean_per_case(fed3)]))
    assert (pooled[5]["mean"]["mean"], pooled[5]["mean"]["low"], pooled[5]["mean"]["high"]) == \
        pytest.approx((pmean, plo, phi), abs=1e-6)
    dice = [t for t in tables(render_markdown(d, s)) if t and "LVM" in t[0]]
    assert [[(r["arm"], r["training cases"]) for r in t if r["arm"] == "fed-transfer"]
            for t in dice] == [[("fed-transfer", "2"), ("fed-transfer", "5")],
                               [("fed-transfer", "5")],
                               [("fed-transfer", "2"), ("fed-transfer", "5")]]
    (row,) = [r for r in dice[0] if r["arm"] == "fed-transfer" and r["training cases"] == "5"]
    assert row["n"] == "10" and row["mean of both"] == f"{mean:.3f} [{lo:.3f}, {hi:.3f}]"
    (row,) = [r for r in dice[2] if r["arm"] == "fed-transfer" and r["training cases"] == "5"]
    assert (row["sites"], row["n"]) == ("2", "16")
    assert row["mean of both"] == f"{pmean:.3f} [{plo:.3f}, {phi:.3f}]"


def test_the_gain_of_federation_is_paired_case_by_case_with_its_interval(tmp_path):
    d, runs = fed_doc({2: 0.87, 5: 0.9})
    write_report(d, tmp_path)
    md = (tmp_path / "report.md").read_text()
    gain = json.loads((tmp_path / "report.json").read_text())["summary"]["per_site"]["s"][
        "federation_gain"]
    assert gain["verdict"] == "yes" and (gain["above_zero"], gain["sizes"]) == (2, 2)
    (table,) = [t for t in tables(md) if t and "gain [95% t-interval]" in t[0]]
    assert [r["training cases"] for r in table] == ["2", "5"]
    for k, row in zip((2, 5), table, strict=True):
        diff = mean_per_case(runs["fed-transfer", k]) - mean_per_case(runs["transfer", k])
        mean, lo, hi = by_hand(diff)
        got = gain["by_size"][str(k)]
        assert (got["mean"], got["low"], got["high"]) == pytest.approx((mean, lo, hi), abs=1e-6)
        assert got["n"] == 10 and got["outcome"] == "above 0" and lo > 0
        assert row["n"] == "10" and row["outcome"] == "above 0"
        assert row["gain [95% t-interval]"] == f"{mean:+.3f} [{lo:+.3f}, {hi:+.3f}]"
        tmean, tlo, thi = by_hand(mean_per_case(runs["transfer", k]))
        assert row["transfer"] == f"{tmean:.3f} [{tlo:.3f}, {thi:.3f}]"
    # in a table of its own, not among the other paired differences
    (others,) = [t for t in tables(md) if t and "comparison" in t[0]]
    assert [r["comparison"] for r in others] == ["transfer − baseline"] * 2


@pytest.mark.parametrize(("levels", "want"), [
    ({2: 0.87, 5: 0.9}, "yes (2 of 2 sizes with the interval above 0)"),
    ({2: 0.87, 5: 0.8}, "no: interval below 0 at 5 (1 of 2 sizes with the interval above 0)"),
    ({2: 0.85, 5: 0.9}, "not shown: interval includes 0 at 2 (1 of 2 sizes with the interval "
                        "above 0)"),
])
def test_the_verdict_of_federation_over_local_transfer(levels, want):
    d, runs = fed_doc(levels)
    s = summarize(d)
    assert line(render_markdown(d, s), "- fed-transfer beats local transfer at every size: ") \
        == f"- fed-transfer beats local transfer at every size: {want}"
    assert s["per_site"]["s"]["federation_gain"]["verdict"] == want.split(":")[0].split(" (")[0]
    # the outcome at each size agrees with the interval computed here
    for k in levels:
        _, lo, hi = by_hand(mean_per_case(runs["fed-transfer", k])
                            - mean_per_case(runs["transfer", k]))
        want_k = "above 0" if lo > 0 else "below 0" if hi < 0 else "includes 0"
        assert s["per_site"]["s"]["federation_gain"]["by_size"][k]["outcome"] == want_k


def test_the_federation_section_lists_settings_sizes_and_every_site_left_out(tmp_path):
    d, _ = fed_doc({2: 0.87, 5: 0.9})
    d.federation = federation()
    path = write_report(d, tmp_path)
    md = (tmp_path / "report.md").read_text()
    fed_md = md.split("## Federation", 1)[1]
    assert ("4 rounds planned, 5 epochs per site per round; plain FedAvg (FedProx mu = 0)."
            in fed_md)
    (table,) = tables(fed_md)
    assert [(r["training cases"], r["rounds completed"], r["sites in the last round"],
             r["resumed after round"]) for r in table] == [("2", "4 of 4", "site-2, site-3", "–"),
                                                          ("5", "2 of 4", "site-2", "1")]
    # size 2: site-4 dropped at round 2 (from 0), so 3, 3, 2, 2 sites sent 1000 bytes each
    assert (table[0]["update per round, all sites"], table[0]["update per site per round"],
            table[0]["against the parameters"], table[0]["mean seconds per round"]) == \
        ("2.5 kB", "1.0 kB", "1.00 × 1.0 kB", "12.0")
    # size 5: site-3's update of round 1 was rejected (its bytes not counted): 2 sites, then 1
    assert (table[1]["update per round, all sites"], table[1]["update per site per round"],
            table[1]["against the parameters"], table[1]["mean seconds per round"]) == \
        ("1.5 kB", "1.0 kB", "1.00 × 1.0 kB", "–")
    events = [x for x in fed_md.splitlines() if x.startswith("- ")]
    assert events == [
        "- 2 training cases, round 3: **site-4** dropped out (no update); left out of later "
        "rounds",
        "- 2 training cases, round 1: **site-5** refused the task: artifact refused: signed by "
        "a key the site does not trust (`artifact_refused:untrusted_key`)",
        "- 5 training cases, round 2: **site-3** update rejected at aggregation; left out of "
        "later rounds (NaN in block1.conv.weight)",
        "- 5 training cases, round 1: **site-6** opted out (its config does not allow weight "
        "sharing)"]
    full = json.loads(path.read_text())
    runs = full["summary"]["federation"]["runs"]
    assert runs[0]["updating_sites_per_round"] == [3, 3, 2, 2]
    assert runs[0]["site_update_bytes"] == 1000 and runs[0]["site_update_to_params"] == 1
    assert runs[1]["updating_sites_per_round"] == [2, 1]
    assert [(e["site"], e["round"], e["kind"]) for e in runs[1]["events"]] == \
        [("site-3", 1, "update_rejected"), ("site-6", 0, "opted_out")]
    # the record itself is in the document and reads back as it was
    assert ResultsDoc.from_dict(full) == d and full["federation"]["runs"][1]["resumed_from"] == 1


def test_fedprox_and_a_federation_without_runs_are_said_in_words():
    d = doc(s=[run("baseline", 0, 0.75 + CASES)])
    d.federation = FedStudy(rounds=8, epochs_per_round=2, mu=0.01)
    md = render_markdown(d, summarize(d))
    assert "8 rounds planned, 2 epochs per site per round; FedProx, proximal weight mu = 0.01." \
        in md
    assert "No fed-transfer run recorded." in md and "Sites left out" not in md


def test_a_federation_where_nobody_was_left_out_says_so():
    d = doc(s=[run("baseline", 0, 0.75 + CASES)])
    d.federation = FedStudy(rounds=2, epochs_per_round=2, runs=[
        FedRun(size=2, rounds=2, completed=2, sites=["a", "b"])])
    md = render_markdown(d, summarize(d))
    assert "No site was left out of any fed-transfer run." in md
    assert line(md, "| 2 |") == "| 2 | 2 of 2 | a, b | – | – | – | – | – |"


@pytest.mark.parametrize(("sharing", "update_filter", "want"), [
    (False, UpdateFilter.NONE, "Fed-transfer: weights not shared"),
    (True, UpdateFilter.PERCENTILE, "Fed-transfer: weight updates shared through NVFlare "
                                    "PercentilePrivacy"),
    (True, UpdateFilter.NONE, "Fed-transfer: weight updates shared through no privacy filter"),
    (None, None, None),  # results from before the fed-transfer arm
])
def test_the_site_section_says_how_its_weight_updates_left_it(sharing, update_filter, want):
    d = doc(s=[run("baseline", 0, 0.75 + CASES)])
    d.sites["s"].weight_sharing, d.sites["s"].update_filter = sharing, update_filter
    first = render_markdown(d, summarize(d)).split("## s", 1)[1].splitlines()[2]
    assert ("Fed-transfer" in first) == (want is not None)
    if want:
        assert want in first


def test_an_older_document_has_no_fed_transfer_in_its_report(tmp_path):
    d = doc(**{"site-2": [run("baseline", 0, 0.75 + CASES),
                          *[run(a, k, 0.8 + CASES) for k in (2, 5) for a in ("random",
                                                                            "transfer")]]})
    path = write_report(d, tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert [x for x in md.splitlines() if x.startswith("#")] == [
        "# Cross-site transfer-learning report", "## site-2",
        "## Pooled over the sites (case-weighted)"]
    assert not re.search("fed|shared|gain of", md, re.IGNORECASE)
    full = json.loads(path.read_text())
    assert full["federation"] is None and full["summary"]["federation"] is None
    assert full["summary"]["per_site"]["site-2"]["federation_gain"] is None
    assert [c["claim"] for c in full["summary"]["per_site"]["site-2"]["comparisons"]] == [
        "transfer beats random init at every size",
        "baseline (no tuning) beats random init at every size",
        "transfer beats baseline at every size"]


def test_the_plot_draws_fed_transfer_as_its_own_curve_with_error_bars():
    from matplotlib.container import ErrorbarContainer

    d, _ = fed_doc({2: 0.87, 5: 0.9})
    (ax,) = report._figure(summarize(d)).axes
    bars = {c.get_label(): c for c in ax.containers if isinstance(c, ErrorbarContainer)}
    assert set(bars) == {"transfer (95% interval)", "fed-transfer (95% interval)"}
    assert all(c.has_yerr for c in bars.values())
    fed, local = (bars[f"{a} (95% interval)"].lines[0] for a in ("fed-transfer", "transfer"))
    assert fed.get_marker() != local.get_marker() and fed.get_color() != local.get_color()
    # beside, not on top of, the transfer curve; the ticks stay at the sizes run
    assert all(fed.get_xdata() > local.get_xdata())
    assert [t.get_text() for t in ax.get_xticklabels()] == ["2", "5"]


def test_merging_results_keeps_the_federations_record(tmp_path):
    d, _ = fed_doc({2: 0.87})
    d.federation = federation()
    write_report(d, tmp_path / "a")
    other = doc(**{"site-9": [run("baseline", 0, 0.7 + CASES)]})
    (tmp_path / "b.json").write_text(json.dumps(other.to_dict()))
    merged = merge_results([tmp_path / "a" / "report.json", tmp_path / "b.json"])
    assert merged.federation == d.federation and set(merged.sites) == {"s", "site-9"}
    d.sites = {"t": d.sites["s"]}
    write_report(d, tmp_path / "c")
    with pytest.raises(ConfigError, match="second record of the federation"):
        merge_results([tmp_path / "a" / "report.json", tmp_path / "c" / "report.json"])
