"""The coordinator's cross-site report: ``report.json``, ``report.md`` and PNG plots.

Input: a :class:`~lvtl.study.results.ResultsDoc` (the sites' results sections). Everything
below is computed at the server from what the sites already send: the per-case Dice of each
label (``dice_per_case``; the runs of one site list the same test cases in the same order,
so they are paired case by case) and the thickness Pearson r with its Fisher-z 95% interval
and n (``thickness_r``, ``thickness_r_ci``). Added under ``summary``:

- **Dice by arm and training size**, per site and pooled over the sites (case-weighted: the
  per-case values of every site that ran the arm at that size, pooled): for the blood pool,
  the LVM and their mean (per case, the mean over the labels of that case), the mean over the
  test cases with its n and a 95% t-interval (mean ± t(0.975, n-1)·s/√n, s the sample
  standard deviation). With n < 2 there is no interval, and the report says so. An interval
  is printed as computed, not clipped to [0, 1].
- **Comparisons** per site, from paired per-case differences of mean Dice with their 95%
  t-intervals, for the arms that were run: transfer against random init and against the
  baseline (no tuning) at each training size, the baseline against random init at each size,
  and fed-transfer against local transfer at each size (the **gain of federation**: the
  fed-transfer and transfer runs of a site list the same test cases, so they are paired).
  A claim "A beats B at every size" is ``yes`` only when the interval is above 0 at every size,
  ``no`` when it is below 0 at some size, and ``not shown`` otherwise (an interval includes 0,
  or has too few cases); the line says at which sizes and counts the sizes with the interval
  above 0. Each interval is a 95% interval of its own; requiring all of them to clear 0 makes
  the "every size" claim stricter, never looser.
- **The transfer plateau**, assessed only with at least :data:`MIN_SIZES_PLATEAU` training
  sizes: the smallest size ``s`` below the largest one run such that, for every larger size
  ``t``, the paired per-case difference of mean Dice ``t - s`` has a 95% t-interval whose upper
  end is below :data:`PLATEAU`: every larger training set is shown to gain less than
  ``PLATEAU``. It is reported with the interval of the least favourable larger size (highest
  upper end). Otherwise the plateau is "not shown" or "not assessed", with the reason.
- **Thickness correlations** (the paper's Table 1) per run, each with its n and interval, but
  only from :data:`MIN_CASES_R` cases on: below, the summary's ``r``, ``low`` and ``high`` are
  ``None`` with ``why: too_few_cases`` (the site's own numbers stay in the document's
  ``sites``), and the report reads "too few cases (n=4)"; a correlation the site could not
  compute (:class:`~lvtl.study.results.NoR`) reads as its reason in words.
- **The federation** (:class:`~lvtl.study.results.FedStudy`, the server's record of the
  fed-transfer arm), when the document has one: the FedAvg settings and, per training size,
  the rounds completed of those planned, the sites whose updates made the last round, the
  rounds completed before a resumed job, the model-update bytes per round (all sites, and per
  site: a round's bytes over the sites whose accepted update they are, against the model's
  parameter bytes), the mean seconds per round, and every site left out with its round.
  The record numbers rounds from 0 (NVFlare's ``current_round``; ``update_bytes[r]`` is round
  ``r``, the bytes of the accepted updates); a site left out at round ``e`` (dropped, update
  rejected, refused, ...) sent accepted updates in the rounds before ``e``. ``report.md``
  counts rounds from 1, as the server's log does.
- The failed and pending sites, with their reasons.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from scipy import stats

from lvtl.config import SiteRole, UpdateFilter
from lvtl.errors import ConfigError
from lvtl.io.atomic import atomic_path, write_text
from lvtl.labels import KEYS
from lvtl.study.protocol import Arm
from lvtl.study.results import (
    FED_EVENT_TEXT,
    PHASES,
    REASON_TEXT,
    STATS,
    FedEvent,
    FedEventKind,
    FedRun,
    FedStudy,
    Interval,
    NoR,
    Reason,
    ResultsDoc,
    Run,
    SiteResults,
    Status,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: Coverage of every interval in the report.
CONFIDENCE = 0.95
#: A plateau: every larger training set gains less than this mean Dice (by the upper end of
#: the 95% interval of the paired difference); 0.01 is under a tenth of the paper's gain of
#: transfer over the untuned baseline (0.893 - 0.763 = 0.13).
PLATEAU = 0.01
#: Training sizes needed before a plateau is assessed: with two, a "plateau" at the smaller
#: one would rest on one difference and nothing beyond it.
MIN_SIZES_PLATEAU = 3
#: Test cases needed before a correlation is shown as a number. The Fisher-z 95% interval of
#: r has half-width 1.96/sqrt(n-3) in z: with 4 cases, r = 0.7 has the interval
#: [-0.80, 0.99] (most of [-1, 1]); 10 is the smallest round n at which r = 0.7 (about the
#: paper's values) has an interval clear of 0 ([0.13, 0.92]; at the paper's 45: [0.51, 0.82]).
MIN_CASES_R = 10
#: Key of the per-case mean over the labels, beside the label keys.
MEAN = "mean"
#: Column headings of the Dice values.
HEADINGS = {"blood_pool": "blood pool", "lvm": "LVM", MEAN: "mean of both"}
#: Why a correlation is not shown, in words.
NOR_TEXT = {NoR.TOO_FEW_CASES: "too few cases", NoR.CONSTANT: "constant input"}
#: The claims checked per site: (better arm, worse arm, the claim in words).
CLAIMS = ((Arm.TRANSFER, Arm.RANDOM, "transfer beats random init at every size"),
          (Arm.BASELINE, Arm.RANDOM, "baseline (no tuning) beats random init at every size"),
          (Arm.TRANSFER, Arm.BASELINE, "transfer beats baseline at every size"),
          (Arm.FED_TRANSFER, Arm.TRANSFER, "fed-transfer beats local transfer at every size"))
#: The claim whose paired differences are the gain of federation over local transfer (shown
#: in a table of its own, not among the other paired differences).
FED_GAIN = (Arm.FED_TRANSFER, Arm.TRANSFER)
#: How each training arm is drawn: marker, colour, and a sideways shift (a fraction of the
#: panel's span of training sizes) so that arms at one size do not hide each other's error
#: bars.
ARM_STYLE = {Arm.RANDOM: ("o", "C0", -0.012), Arm.TRANSFER: ("s", "C1", 0.0),
             Arm.FED_TRANSFER: ("^", "C2", 0.012)}
#: The privacy filter a site puts on its fed-transfer weight updates, in words.
UPDATE_FILTER_TEXT = {
    UpdateFilter.NONE: "no privacy filter",
    UpdateFilter.PERCENTILE: "NVFlare PercentilePrivacy (only the largest differences, clipped)",
    UpdateFilter.SVT: "NVFlare SVTPrivacy (sparse vector technique, differential privacy)",
    UpdateFilter.EXCLUDE_VARS: "NVFlare ExcludeVars (named layers never leave the site)",
}

#: Per arm and training size, the per-case values of each label and of their mean (``MEAN``).
Curves = dict[Arm, dict[int, dict[str, np.ndarray]]]


def _estimate(values: np.ndarray) -> dict:
    """``mean`` of per-case values, ``n``, and the 95% t-interval ``low``/``high`` (None when
    n < 2; ``mean`` None when n = 0)."""
    n = int(values.size)
    est = {"mean": float(values.mean()) if n else None, "low": None, "high": None, "n": n}
    if n >= 2:
        t = float(stats.t.ppf((1 + CONFIDENCE) / 2, n - 1))
        half = t * float(values.std(ddof=1)) / math.sqrt(n)
        est.update(low=est["mean"] - half, high=est["mean"] + half)
    return est


def _difference(a: np.ndarray, b: np.ndarray) -> dict:
    """:func:`_estimate` of the paired per-case differences ``a - b`` (n = 0 when the two do
    not list the same number of cases, so cannot be paired)."""
    return _estimate(a - b if a.size == b.size else np.empty(0))


def _per_case(run: Run) -> dict[str, np.ndarray]:
    """Per-case Dice of each label and, case by case, their mean over the labels (empty when
    the labels' lists differ in length)."""
    out = {k: np.asarray(getattr(run.dice_per_case, k), dtype=np.float64) for k in KEYS}
    paired = len({v.size for v in out.values()}) == 1
    out[MEAN] = np.mean(list(out.values()), axis=0) if paired else np.empty(0)
    return out


def _curves(runs: list[Run]) -> Curves:
    out: Curves = {}
    for r in runs:
        out.setdefault(r.arm, {})[r.train_size] = _per_case(r)
    return out


def _cell(per_case: dict[str, np.ndarray]) -> dict:
    """One arm at one size: its test cases ``n`` and an estimate per label and their mean."""
    return {"n": max(v.size for v in per_case.values()),
            **{k: _estimate(v) for k, v in per_case.items()}}


def _dice_by_size(curves: Curves) -> dict:
    return {str(arm): {size: _cell(pc) for size, pc in sorted(sizes.items())}
            for arm, sizes in curves.items()}


def _pooled(curves: list[Curves]) -> dict:
    """Per arm and size: the per-case values of every site that ran it, pooled."""
    acc: dict[Arm, dict[int, list[dict[str, np.ndarray]]]] = {}
    for site in curves:
        for arm, sizes in site.items():
            for size, pc in sizes.items():
                acc.setdefault(arm, {}).setdefault(size, []).append(pc)
    return {str(arm): {size: {"sites": len(pcs),
                              **_cell({k: np.concatenate([pc[k] for pc in pcs])
                                       for k in pcs[0]})}
                       for size, pcs in sorted(sizes.items())}
            for arm, sizes in acc.items()}


def _outcome(diff: dict) -> str:
    if diff["low"] is None:
        return "no interval"
    if diff["low"] > 0:
        return "above 0"
    return "below 0" if diff["high"] < 0 else "includes 0"


def _at(curves: Curves, arm: Arm, size: int) -> np.ndarray:
    """Per-case mean Dice of ``arm`` at training size ``size`` (the baseline: its one run)."""
    return curves[arm][size if arm.trains else min(curves[arm])][MEAN]


def _comparisons(curves: Curves) -> list[dict]:
    """Each claim of :data:`CLAIMS` whose two arms were run: the paired difference of mean
    Dice (better - worse) at each training size, its outcome, and the verdict."""
    out = []
    for better, worse, claim in CLAIMS:
        if better not in curves or worse not in curves:
            continue
        trained = [a for a in (better, worse) if a.trains]
        sizes = sorted(set.intersection(*(set(curves[a]) for a in trained)))
        if not sizes:
            continue
        by_size = {}
        for s in sizes:
            diff = _difference(_at(curves, better, s), _at(curves, worse, s))
            by_size[s] = {**diff, "outcome": _outcome(diff)}
        outcomes = [d["outcome"] for d in by_size.values()]
        verdict = ("yes" if all(o == "above 0" for o in outcomes)
                   else "no" if "below 0" in outcomes else "not shown")
        out.append({"claim": claim, "better": str(better), "worse": str(worse),
                    "verdict": verdict, "above_zero": outcomes.count("above 0"),
                    "sizes": len(sizes), "by_size": by_size})
    return out


def _plateau(curve: dict[int, dict[str, np.ndarray]]) -> dict:
    """The transfer plateau by the rule of the module docstring."""
    sizes = sorted(curve)
    out = {"assessed": len(sizes) >= MIN_SIZES_PLATEAU, "size": None, "margin": PLATEAU,
           "compared_with": None, "difference": None, "why": None}
    if not out["assessed"]:
        return {**out, "why": f"needs at least {MIN_SIZES_PLATEAU} training sizes, "
                              f"got {len(sizes)}"}
    for i, s in enumerate(sizes[:-1]):
        gains = {t: _difference(curve[t][MEAN], curve[s][MEAN]) for t in sizes[i + 1:]}
        worst = max(gains, key=lambda t: math.inf if gains[t]["high"] is None
                    else gains[t]["high"])
        if gains[worst]["high"] is not None and gains[worst]["high"] < PLATEAU:
            return {**out, "size": s, "compared_with": worst, "difference": gains[worst]}
    return {**out, "why": f"at no size below the largest ({sizes[-1]}) do all larger sizes gain "
                          f"less than {PLATEAU} mean Dice by the upper end of their 95% "
                          "intervals"}


def _correlation(r: float | None, ci: Interval) -> dict:
    """One Pearson r as the summary shows it: ``None`` with ``why`` below
    :data:`MIN_CASES_R` cases or where the site could not compute it."""
    why = (NoR.TOO_FEW_CASES if ci.n < MIN_CASES_R
           else None if r is not None else ci.why or NoR.CONSTANT)
    shown = why is None
    return {"r": r if shown else None, "low": ci.low if shown else None,
            "high": ci.high if shown else None, "n": ci.n, "why": why}


def _correlations(runs: list[Run]) -> dict:
    out: dict = {}
    for run in runs:
        out.setdefault(str(run.arm), {})[run.train_size] = {
            p: {s: _correlation(getattr(getattr(run.thickness_r, p), s),
                                getattr(getattr(run.thickness_r_ci, p), s)) for s in STATS}
            for p in PHASES}
    return out


def _is_fed_gain(c: dict) -> bool:
    return (c["better"], c["worse"]) == tuple(map(str, FED_GAIN))


def _federation_gain(comparisons: list[dict]) -> dict | None:
    """The gain of federation over local transfer, from the comparisons: its verdict and, per
    training size, the paired difference fed-transfer - transfer of mean Dice (None when the
    site did not run both arms at a common size)."""
    for c in comparisons:
        if _is_fed_gain(c):
            return {k: c[k] for k in ("verdict", "above_zero", "sizes", "by_size")}
    return None


def _updating_sites(run: FedRun) -> list[int]:
    """Per round (``update_bytes[r]`` is round ``r``, from 0): the sites whose update was
    accepted, those of the last round and those left out at a later round (a site left out at
    round ``e`` sent accepted updates in the rounds before ``e``); the server's own count
    (``round_sites``) where the record has it."""
    if len(run.round_sites) == len(run.update_bytes):
        return list(run.round_sites)
    left: dict[str, int] = {}
    for e in run.events:
        if e.site not in run.sites:
            left[e.site] = min(e.round, left.get(e.site, e.round))
    return [len(run.sites) + sum(e > r for e in left.values())
            for r in range(len(run.update_bytes))]


def _event_text(e: FedEvent) -> str:
    """What happened to a site, in words: a refusal with its reason, a rejection with what
    the server found wrong."""
    text = FED_EVENT_TEXT[FedEventKind(e.kind)]
    if e.kind == FedEventKind.REFUSED and e.reason != Reason.NONE:
        text += f": {REASON_TEXT[Reason(e.reason)]} (`{e.reason}`)"
    if e.kind == FedEventKind.REJECTED and e.detail:
        text += f" ({e.detail})"
    return text


def _fed_run(run: FedRun) -> dict:
    """One fed-transfer run as the summary shows it (the rules: the module docstring)."""
    sites = _updating_sites(run)
    per_site = [b / n for b, n in zip(run.update_bytes, sites, strict=True) if n]
    site_bytes = float(np.mean(per_site)) if per_site else None
    return {"size": run.size, "rounds": run.rounds, "completed": run.completed,
            "sites": list(run.sites), "resumed_from": run.resumed_from,
            "update_bytes_per_round": list(run.update_bytes), "updating_sites_per_round": sites,
            "site_update_bytes": site_bytes, "param_bytes": run.param_bytes,
            "site_update_to_params": (site_bytes / run.param_bytes
                                      if site_bytes is not None and run.param_bytes else None),
            "mean_round_seconds": (float(np.mean(run.round_seconds)) if run.round_seconds
                                   else None),
            "events": [{"site": e.site, "round": e.round, "kind": str(e.kind),
                        "text": _event_text(e)} for e in run.events]}


def _federation(fed: FedStudy | None) -> dict | None:
    if fed is None:
        return None
    return {"rounds": fed.rounds, "epochs_per_round": fed.epochs_per_round, "mu": fed.mu,
            "runs": [_fed_run(r) for r in fed.runs]}


def summarize(doc: ResultsDoc) -> dict:
    """Per site: Dice by arm and size with n and intervals, the comparisons of the arms, the
    gain of federation over local transfer, the transfer plateau and the thickness
    correlations; pooled Dice by arm and size; the failed and pending sites with their
    reasons; the federation's record (the rules: the module docstring)."""
    ok = {n: s for n, s in doc.sites.items() if s.status == Status.OK}
    curves = {name: _curves(sec.runs) for name, sec in ok.items()}
    per_site = {}
    for name, sec in ok.items():
        comparisons = _comparisons(curves[name])
        per_site[name] = {"n_test": sec.n_test,
                          "dice_by_size": _dice_by_size(curves[name]),
                          "comparisons": comparisons,
                          "federation_gain": _federation_gain(comparisons),
                          "transfer_plateau": (_plateau(curves[name][Arm.TRANSFER])
                                               if Arm.TRANSFER in curves[name] else None),
                          "thickness_r": _correlations(sec.runs)}
    return {"sites_ok": sorted(ok),
            "sites_failed": {n: s.reason for n, s in doc.sites.items()
                             if s.status == Status.FAILED},
            "sites_pending": sorted(n for n, s in doc.sites.items() if s.status == Status.PENDING),
            "per_site": per_site, "pooled_dice_by_size": _pooled(list(curves.values())),
            "federation": _federation(doc.federation)}


def _est(e: dict, sign: str = "") -> str:
    """A mean with its 95% interval, or why there is none; ``sign="+"`` for differences."""
    if e["mean"] is None:
        return "– (no test cases)"
    if e["low"] is None:
        return f"{e['mean']:{sign}.3f} (no interval: n={e['n']})"
    return f"{e['mean']:{sign}.3f} [{e['low']:{sign}.3f}, {e['high']:{sign}.3f}]"


def _r(c: dict) -> str:
    if c["why"] is not None:
        return f"{NOR_TEXT[NoR(c['why'])]} (n={c['n']})"
    return f"{c['r']:.2f} [{c['low']:.2f}, {c['high']:.2f}] (n={c['n']})"


def _sizes(by_size: dict, outcome: str) -> list[int]:
    return [s for s, d in by_size.items() if d["outcome"] == outcome]


def _verdict_line(c: dict) -> str:
    """``<claim>: yes|no|not shown[: where not] (k of m sizes with the interval above 0)``."""
    where = [f"{words} at {', '.join(map(str, sizes))}"
             for outcome, words in (("below 0", "interval below 0"),
                                    ("includes 0", "interval includes 0"),
                                    ("no interval", "no interval (n < 2)"))
             if (sizes := _sizes(c["by_size"], outcome))]
    return (f"- {c['claim']}: {c['verdict']}{': ' + '; '.join(where) if where else ''} "
            f"({c['above_zero']} of {c['sizes']} sizes with the interval above 0)")


def _plateau_line(p: dict) -> str:
    if not p["assessed"]:
        return f"- transfer plateau: not assessed ({p['why']})"
    if p["size"] is None:
        return f"- transfer plateau: not shown ({p['why']})"
    d = p["difference"]
    return (f"- transfer plateau: at {p['size']} training cases (every larger size gains "
            f"less than {p['margin']} mean Dice by the upper end of its 95% interval; highest "
            f"upper end, at {p['compared_with']}: {_est(d, '+')}, paired over {d['n']} test "
            "cases)")


def _grid_text(sec: SiteResults) -> str:
    """The grid the site measured on, from its runs (older results do not say)."""
    grids = sorted({r.eval_spacing_mm for r in sec.runs if r.eval_spacing_mm is not None})
    if not grids:
        return ""
    return f" Dice and thickness measured on the {' / '.join(f'{g:g}' for g in grids)} mm grid."


def _sharing_text(sec: SiteResults) -> str:
    """Whether the site's fed-transfer weight updates left it, and through which privacy
    filter (older results do not say)."""
    if sec.weight_sharing is None:
        return ""
    if not sec.weight_sharing:
        return (" Fed-transfer: weights not shared (the site's configuration does not allow "
                "weight sharing).")
    how = ("a privacy filter it did not report" if sec.update_filter is None
           else UPDATE_FILTER_TEXT[UpdateFilter(sec.update_filter)])
    return f" Fed-transfer: weight updates shared through {how}."


def _gain_table(ps: dict) -> list[str]:
    """The gain of federation over local transfer per training size: both arms' mean Dice
    and the paired difference with its interval."""
    gain = ps["federation_gain"]
    if gain is None:
        return []
    dice = ps["dice_by_size"]
    lines = ["", "Gain of federation over local transfer: fed-transfer − transfer, mean Dice "
             "paired case by case.", "",
             "| training cases | n | transfer | fed-transfer | gain [95% t-interval] | outcome |",
             "|---:|---:|---|---|---|---|"]
    lines += [f"| {s} | {d['n']} | {_est(dice[str(Arm.TRANSFER)][s][MEAN])} | "
              f"{_est(dice[str(Arm.FED_TRANSFER)][s][MEAN])} | {_est(d, '+')} | {d['outcome']} |"
              for s, d in gain["by_size"].items()]
    return lines


def _site_markdown(sec: SiteResults, ps: dict) -> list[str]:
    lines = [f"{sec.n_test} test cases.{_grid_text(sec)}{_sharing_text(sec)} Verdicts from the "
             "paired per-case differences of mean Dice and their 95% t-intervals:", ""]
    lines += [_verdict_line(c) for c in ps["comparisons"]]
    if ps["transfer_plateau"] is not None:
        lines.append(_plateau_line(ps["transfer_plateau"]))
    lines += ["", "Dice: mean [95% t-interval] over the n test cases.", "",
              "| arm | training cases | n | " + " | ".join(HEADINGS.values())
              + " | max blood pool / LVM |", "|---|---:|---:|---|---|---|---|"]
    for r in sec.runs:
        cell = ps["dice_by_size"][str(r.arm)][r.train_size]
        lines.append(f"| {r.arm} | {r.train_size} | {cell['n']} | "
                     + " | ".join(_est(cell[k]) for k in HEADINGS)
                     + f" | {r.dice.blood_pool.max:.3f} / {r.dice.lvm.max:.3f} |")
    local = [c for c in ps["comparisons"] if not _is_fed_gain(c)]
    if local:
        lines += ["", "Paired differences of mean Dice, case by case.", "",
                  "| comparison | training cases | n | difference [95% t-interval] | outcome |",
                  "|---|---:|---:|---|---|"]
        lines += [f"| {c['better']} − {c['worse']} | {s} | {d['n']} | {_est(d, '+')} "
                  f"| {d['outcome']} |"
                  for c in local for s, d in c["by_size"].items()]
    lines += _gain_table(ps)
    heads = [f"{p} {s}" for p in PHASES for s in STATS]
    lines += ["", "Wall thickness, predicted against true: Pearson r [95% interval] (n), shown "
              f"from {MIN_CASES_R} cases on.", "",
              "| arm | training cases | " + " | ".join(heads) + " |",
              "|---|---:|" + "---|" * len(heads)]
    for r in sec.runs:
        cor = ps["thickness_r"][str(r.arm)][r.train_size]
        lines.append(f"| {r.arm} | {r.train_size} | "
                     + " | ".join(_r(cor[p][s]) for p in PHASES for s in STATS) + " |")
    return lines + [""]


def _bytes(n: float | None) -> str:
    """A byte count in decimal units (``12.3 MB``)."""
    if n is None:
        return "–"
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


def _federation_markdown(fed: dict) -> list[str]:
    """The federation section: the FedAvg settings, a row per training size and every site
    left out with its round."""
    how = ("plain FedAvg (FedProx mu = 0)" if fed["mu"] == 0
           else f"FedProx, proximal weight mu = {fed['mu']:g}")
    lines = ["## Federation (the fed-transfer arm, the server's record)", "",
             f"FedAvg through NVFlare from the Site-1 model: {fed['rounds']} rounds planned, "
             f"{fed['epochs_per_round']} epochs per site per round; {how}.", ""]
    if not fed["runs"]:
        return lines + ["No fed-transfer run recorded.", ""]
    lines += ["Model updates: bytes of the accepted updates per round from all sites, and per "
              "site (a round's bytes over the sites they came from), against the model's "
              "parameters; means over the rounds. Rounds counted from 1.", "",
              "| training cases | rounds completed | sites in the last round | resumed after "
              "round | update per round, all sites | update per site per round | against the "
              "parameters | mean seconds per round |",
              "|---:|---|---|---:|---:|---:|---|---:|"]
    for r in fed["runs"]:
        total = (float(np.mean(r["update_bytes_per_round"])) if r["update_bytes_per_round"]
                 else None)
        ratio = ("–" if r["site_update_to_params"] is None
                 else f"{r['site_update_to_params']:.2f} × {_bytes(r['param_bytes'])}")
        secs = "–" if r["mean_round_seconds"] is None else f"{r['mean_round_seconds']:.1f}"
        lines.append(f"| {r['size']} | {r['completed']} of {r['rounds']} | "
                     f"{', '.join(r['sites']) or 'none'} | "
                     f"{'–' if r['resumed_from'] is None else r['resumed_from']} | "
                     f"{_bytes(total)} | {_bytes(r['site_update_bytes'])} | {ratio} | {secs} |")
    events = [(r["size"], e) for r in fed["runs"] for e in r["events"]]
    lines += ["", "Sites left out, each from the round it happened in:" if events
              else "No site was left out of any fed-transfer run.", ""]
    lines += [f"- {size} training cases, round {e['round'] + 1}: **{e['site']}** {e['text']}"
              for size, e in events]
    return lines + ([""] if events else [])


def render_markdown(doc: ResultsDoc, summary: dict) -> str:
    """``report.md``: failed and pending sites, then per site the verdicts, the Dice table,
    the paired differences (the gain of federation in a table of its own) and the
    correlations, then the pooled Dice table and, when the document has one, the
    federation."""
    lines = ["# Cross-site transfer-learning report", ""]
    if summary["sites_pending"]:
        lines += ["## Pending sites (no results yet)", ""]
        lines += [f"- **{n}**" for n in summary["sites_pending"]] + [""]
    if summary["sites_failed"]:
        lines += ["## Failed sites", ""]
        lines += [f"- **{n}**: {REASON_TEXT[Reason(why)]} (`{why}`)"
                  for n, why in summary["sites_failed"].items()] + [""]
    for name in summary["sites_ok"]:
        sec = doc.sites[name]
        owner = (" (the model owner: the model on its own site's data, not a transfer)"
                 if sec.role == SiteRole.MODEL_OWNER else "")
        lines += [f"## {name}{owner}", ""] + _site_markdown(sec, summary["per_site"][name])
    pooled = summary["pooled_dice_by_size"]
    if pooled:
        lines += ["## Pooled over the sites (case-weighted)", "",
                  "Dice: mean [95% t-interval] over the test cases of every site that ran the "
                  "arm at that size, pooled.", "",
                  "| arm | training cases | sites | n | " + " | ".join(HEADINGS.values())
                  + " |", "|---|---:|---:|---:|---|---|---|"]
        lines += [f"| {arm} | {size} | {v['sites']} | {v['n']} | "
                  + " | ".join(_est(v[k]) for k in HEADINGS) + " |"
                  for arm, sizes in pooled.items() for size, v in sizes.items()]
        lines.append("")
    if summary["federation"] is not None:
        lines += _federation_markdown(summary["federation"])
    return "\n".join(lines)


def _figure(summary: dict) -> Figure | None:
    """Mean Dice against training size, one panel per site: each training arm (random init,
    transfer, fed-transfer) with its own marker and colour and its 95% error bars, shifted a
    little sideways so that arms at one size stay apart (:data:`ARM_STYLE`); the baseline as
    a band (its interval) around a dashed line, x ticks at the training sizes run; None when
    no site has results."""
    # deferred: matplotlib takes a second to import, and only the report draws
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sites = summary["per_site"]
    if not sites:
        return None
    fig, axes = plt.subplots(1, len(sites), figsize=(5 * len(sites), 4), squeeze=False)
    for ax, (name, ps) in zip(axes[0], sites.items(), strict=True):
        ticks: set[int] = set()
        trained = [s for arm, curve in ps["dice_by_size"].items() if Arm(arm).trains
                   for s in curve]
        span = (max(trained) - min(trained) if trained else 0) or 1
        for arm, curve in ps["dice_by_size"].items():
            est = {s: c[MEAN] for s, c in curve.items()}
            if not Arm(arm).trains:
                b = est[min(est)]
                if b["mean"] is None:
                    continue
                ax.axhline(b["mean"], ls="--", color="grey", label="baseline (no tuning)")
                if b["low"] is not None:
                    ax.axhspan(b["low"], b["high"], color="grey", alpha=0.2,
                               label="baseline 95% interval")
                continue
            sizes = sorted(est)
            ticks.update(sizes)
            mean = np.array([est[s]["mean"] for s in sizes], dtype=np.float64)
            bounds = np.array([[np.nan, np.nan] if est[s]["low"] is None
                               else [est[s]["low"], est[s]["high"]] for s in sizes])
            marker, colour, shift = ARM_STYLE[Arm(arm)]
            ax.errorbar(np.asarray(sizes) + shift * span, mean,
                        yerr=[mean - bounds[:, 0], bounds[:, 1] - mean], fmt=f"{marker}-",
                        color=colour, capsize=3, label=f"{arm} (95% interval)")
        ax.set_xticks(sorted(ticks))
        ax.set(title=f"{name} (n={ps['n_test']} test cases)", xlabel="training cases",
               ylabel="mean Dice (blood pool, LVM)", ylim=(0, 1))
        ax.legend()
    fig.tight_layout()
    return fig


def _plot(summary: dict, path: Path) -> Path | None:
    """Save :func:`_figure` as a PNG at ``path``; None when there is nothing to draw."""
    import matplotlib.pyplot as plt

    fig = _figure(summary)
    if fig is None:
        return None
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return path


def write_report(doc: ResultsDoc | dict, out_dir: str | Path) -> Path:
    """Write report.json (the document plus ``summary``), report.md and dice_by_size.png into
    ``out_dir``; returns the path of report.json. ``doc`` may be given in its JSON form."""
    if isinstance(doc, dict):
        doc = ResultsDoc.from_dict(doc)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(doc)
    full = {**doc.to_dict(), "summary": summary}
    _plot(summary, out / "dice_by_size.png")
    write_text(out / "report.md", render_markdown(doc, summary) + "\n")
    write_text(out / "report.json", json.dumps(full, indent=1) + "\n")
    return out / "report.json"


def merge_results(paths: list[str | Path]) -> ResultsDoc:
    """One report document from several results files (each a ``lvtl.report/1`` doc), with
    the federation's record of the one file that has it (a ``report.json``)."""
    sites: dict[str, SiteResults] = {}
    federation: FedStudy | None = None
    for p in paths:
        try:
            raw = json.loads(Path(p).read_text())
        except (OSError, ValueError) as e:
            raise ConfigError(f"{p}: not a readable JSON results file ({e})") from None
        doc = ResultsDoc.from_dict(raw, str(p))
        for name, sec in doc.sites.items():
            if name in sites:
                raise ConfigError(f"{p}: site {name!r} appears in two results files")
            sites[name] = sec
        if doc.federation is not None:
            if federation is not None:
                raise ConfigError(f"{p}: a second record of the federation (fed-transfer); "
                                  "give the report of one federated job")
            federation = doc.federation
    return ResultsDoc(sites=sites, federation=federation)
