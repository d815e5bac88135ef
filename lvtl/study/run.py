"""The transfer-learning study at one site (the paper's protocol), metrics only out.

Split the site's cached cases 45 : 20 : 30 (test : validation : train, scaled), draw nested
training sets, then for each arm (:class:`~lvtl.study.protocol.Arm`) and size train (or not)
and evaluate on the test split:

- ``baseline``: the Site-1 model as shipped, no fine-tuning (train size 0);
- ``random``: the same architecture from random initialisation, learning rate 1e-3;
- ``transfer``: initialised from the Site-1 model, learning rate 1e-4.

Evaluation at each test case's labelled phases, ED being the one with the largest blood pool
and ES the smallest: Dice per label (mean and max over cases), and the wall thickness of the
prediction and of the truth (median, 95th percentile, max) with Pearson r across cases.

The evaluation grid (:class:`~lvtl.study.protocol.EvalGrid`, the protocol's ``eval_grid``):
when the study runs at ``downsample`` = ``f`` > 1, ``native`` (the default, what the paper
measures) brings the predicted class probabilities back to the cache's 1 mm grid
(:func:`lvtl.model.infer.upsample_proba`: trilinear, coarse voxel ``i`` at cache voxel
``f * i``, the axis tails taking the last coarse voxel's values), takes the most probable class
there and compares it with the cache's own labels; ``model`` compares the coarse prediction
with the downsampled labels at ``f`` mm. With ``downsample`` 1 both are the same grid and
nothing is resampled. Each run records the evaluation grid's spacing (``eval_spacing_mm``).

The output is a :class:`~lvtl.study.results.SiteResults` section: numbers per run and at most
one number per test case per field, never an image, label or weight.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from lvtl.data.cache import CachedCase
from lvtl.data.splits import MIN_CASES, ed_es, nested_subsets, split_cases
from lvtl.errors import ConfigError, ThicknessError
from lvtl.io.atomic import write_text
from lvtl.labels import KEYS
from lvtl.measure.metrics import case_dice, pearson, summarize
from lvtl.measure.thickness import wall_thickness
from lvtl.model.checkpoint import build_model, load_checkpoint_weights
from lvtl.model.infer import predict_labels
from lvtl.model.train import TrainConfig, init_weights, train
from lvtl.parallel import Say
from lvtl.study.protocol import Arm, EvalGrid, Protocol
from lvtl.study.results import (
    PHASES,
    STATS,
    DicePair,
    DicePerCase,
    Interval,
    NoR,
    PhaseCI,
    PhaseR,
    PhaseUnmeasurable,
    ResultsDoc,
    Run,
    SiteResults,
    SplitSizes,
    Status,
    Summary,
    ThicknessCI,
    ThicknessR,
    Unmeasurable,
    UnmeasurableCount,
)

log = logging.getLogger(__name__)


@dataclass
class CaseEval:
    case_id: str
    dice: dict
    thickness: dict = field(default_factory=dict)  # {"ED": {"pred": stats, "truth": stats}}
    unmeasurable: dict = field(default_factory=dict)  # {"ED": Unmeasurable}


def _thickness(labels: np.ndarray, spacing: tuple[float, float, float]) -> dict | None:
    try:
        r = wall_thickness(labels, spacing)
    except ThicknessError:
        return None
    return {s: getattr(r, s) for s in STATS}


def _factor(case) -> int:
    """How many cache voxels one voxel of the case's arrays spans per axis
    (:func:`lvtl.data.cache.downsample`)."""
    return int(getattr(case, "factor", 1))


def eval_truth(case, grid: EvalGrid | str = EvalGrid.NATIVE
               ) -> tuple[np.ndarray, tuple[float, float, float]]:
    """The truth labels ``(t, z, y, x)`` of a case on the evaluation ``grid`` and that grid's
    spacing (mm, ``(z, y, x)``): for ``native``, the cache's own labels at the cache spacing
    (a downsampled case's ``native_label``); for ``model``, the case's labels at ``factor``
    times it. The cache spacing is the case's geometry's (1 mm for an object without one)."""
    geometry = getattr(case, "geometry", None)
    spacing = (1.0, 1.0, 1.0) if geometry is None else tuple(float(v) for v in geometry.spacing)
    f = _factor(case)
    if f == 1 or EvalGrid(grid) is EvalGrid.MODEL:
        return np.asarray(case.label), tuple(v * f for v in spacing)
    if getattr(case, "native_label", None) is None:
        raise ConfigError(f"{case.case_id}: downsampled without its cache grid's labels; load "
                          "it with lvtl.data.cache.load_site_cases")
    return np.asarray(case.native_label), spacing


def truth_thickness(case, grid: EvalGrid | str = EvalGrid.NATIVE) -> dict:
    """Thickness statistics of the ground truth at ED and ES on the evaluation ``grid``
    (:func:`eval_truth`; None where not measurable); the same for every run of a study, so
    computed once per test case."""
    label, spacing = eval_truth(case, grid)
    return {name: _thickness(label[p], spacing) for name, p in ed_es(label, case.labelled).items()}


def evaluate_case(model: torch.nn.Module, case, crop, device: str = "cpu",
                  grid: EvalGrid | str = EvalGrid.NATIVE, truth: dict | None = None) -> CaseEval:
    """Dice at the labelled phases and thickness at ED and ES of one test case.

    Args:
        model: the network, in eval mode.
        case: a test case at the model's grid (``case.factor`` times the cache grid).
        crop: the inference window ``(t, z, y, x)``.
        device: torch device.
        grid: where to compare (:func:`eval_truth`): ``native`` upsamples a downsampled case's
            class probabilities to the cache grid before the most probable class is taken.
        truth: :func:`truth_thickness` of the case on ``grid``, computed here when not given.
    """
    label, spacing = eval_truth(case, grid)
    phases = np.flatnonzero(case.labelled).tolist()
    f = _factor(case)
    shape = label.shape[1:] if f > 1 and EvalGrid(grid) is EvalGrid.NATIVE else None
    pred, _ = predict_labels(model, np.asarray(case.image), crop, device, phases, factor=f,
                             shape=shape)
    per_phase = [case_dice(pred[i], label[p]) for i, p in enumerate(phases)]
    ev = CaseEval(case.case_id, {k: float(np.mean([d[k] for d in per_phase]))
                                 for k in KEYS})
    truth = truth_thickness(case, grid) if truth is None else truth
    for name, p in ed_es(label, case.labelled).items():
        if truth[name] is None:
            ev.unmeasurable[name] = Unmeasurable.TRUTH
            continue
        got = _thickness(pred[phases.index(p)], spacing)
        if got is None:
            ev.unmeasurable[name] = Unmeasurable.PREDICTION
            continue
        ev.thickness[name] = {"pred": got, "truth": truth[name]}
    return ev


def summarize_run(arm: Arm | str, size: int, evals: list[CaseEval], **extra) -> Run:
    """One run's results: Dice summaries and thickness Pearson r (with CI and n); ``extra``:
    the evaluation grid's ``eval_spacing_mm`` and the training run's ``best_epoch``,
    ``val_dice``, ``train_seconds``."""
    thickness_r, thickness_ci = {}, {}
    for phase in PHASES:
        pairs = [e.thickness[phase] for e in evals if phase in e.thickness]
        rs, cis = {}, {}
        for s in STATS:
            x = [p["pred"][s] for p in pairs]
            y = [p["truth"][s] for p in pairs]
            try:
                pr = pearson(x, y)
            except ValueError:  # fewer than 3 cases, or a constant column
                why = NoR.TOO_FEW_CASES if len(pairs) < 3 else NoR.CONSTANT
                rs[s], cis[s] = None, Interval(n=len(pairs), why=why)
                continue
            rs[s] = pr["r"]
            cis[s] = Interval(n=pr["n"], low=pr["ci_low"], high=pr["ci_high"])
        thickness_r[phase], thickness_ci[phase] = ThicknessR(**rs), ThicknessCI(**cis)
    per_case = {k: [e.dice[k] for e in evals] for k in KEYS}
    return Run(
        arm=Arm(arm), train_size=int(size), n_test=len(evals),
        dice=DicePair(**{k: Summary(**summarize(v)) for k, v in per_case.items()}),
        dice_per_case=DicePerCase(**{k: [round(x, 6) for x in v] for k, v in per_case.items()}),
        thickness_r=PhaseR(**thickness_r), thickness_r_ci=PhaseCI(**thickness_ci),
        # cases whose wall could not be measured, counted (no case ids leave the site)
        thickness_unmeasurable=PhaseUnmeasurable(**{
            phase: UnmeasurableCount(**{side.value: sum(e.unmeasurable.get(phase) == side
                                                         for e in evals)
                                        for side in Unmeasurable})
            for phase in PHASES}),
        **extra)


def train_config(protocol: Protocol, arm: Arm, progress: bool = False) -> TrainConfig:
    """How an arm trains under the protocol (the fed-transfer arm: the transfer arm's
    schedule, split into rounds)."""
    return TrainConfig(epochs=protocol.epochs, samples_per_epoch=protocol.samples_per_epoch,
                       crop=tuple(protocol.crop), spacing_mm=float(protocol.downsample),
                       seed=protocol.seed, lr=protocol.lr(arm), val_every=protocol.val_every,
                       device=protocol.device, bf16=protocol.bf16, progress=progress)


@dataclass(frozen=True)
class SiteSplit:
    """A site's split and nested training sets under a protocol (the same for every arm)."""

    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]
    subsets: dict[int, tuple[str, ...]]


def site_split(case_ids: list[str], protocol: Protocol) -> SiteSplit:
    """The protocol's split of a site's cases and its nested training sets."""
    split = split_cases(sorted(case_ids), seed=protocol.split_seed)
    return SiteSplit(tuple(split.train), tuple(split.val), tuple(split.test),
                     nested_subsets(split.train, protocol.sizes, seed=protocol.split_seed))


def run_study(cases: list[CachedCase], source_state: dict, source_config: dict,
              protocol: Protocol, out_dir: str | Path, *, site: str = "site",
              excluded: dict | None = None, progress: bool = False,
              fed_models: dict[int, dict] | None = None, say: Say = print) -> SiteResults:
    """Run the protocol on a site's cases (:func:`lvtl.data.cache.load_site_cases`); returns
    the site's results section and writes it to ``out_dir/results.json`` (atomically).
    Training runs live in ``out_dir/runs/<arm>-<size>/`` and resume from their checkpoints
    when rerun. ``fed_models``: the fed-transfer arm's final model per training size, trained
    by the federation (the federated job; a size the site did not take part in is absent),
    evaluated here like the other arms."""
    t_start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if len(cases) < MIN_CASES:
        raise ConfigError(f"{site}: {len(cases)} usable case(s); the study needs at least "
                          f"{MIN_CASES} (train, validation, test)")
    off_grid = sum(_factor(c) != protocol.downsample for c in cases)
    if off_grid:
        raise ConfigError(f"{site}: {off_grid} case(s) not at the protocol's grid (downsample "
                          f"{protocol.downsample}); load them with load_site_cases(cache, "
                          "protocol.downsample)")
    if Arm.FED_TRANSFER in protocol.arms and fed_models is None:
        raise ConfigError("the fed-transfer arm runs only in the federated job "
                          "(jobs/lvtl_study/job.py); a site alone runs the other arms")
    by_id = {c.case_id: c for c in cases}
    split = site_split(list(by_id), protocol)
    subsets = split.subsets
    test = [by_id[i] for i in split.test]
    val = [by_id[i] for i in split.val]
    say(f"[{site}] {len(cases)} cases: {len(split.train)} train, {len(val)} val, "
        f"{len(test)} test; sizes {sorted(subsets)}")
    runs: list[Run] = []
    grid = protocol.eval_grid
    # the evaluation grid's spacing (a site's cases share one; the coarsest if not)
    eval_mm = max(max(eval_truth(c, grid)[1]) for c in test)
    say(f"[{site}] evaluation on the {grid} grid ({eval_mm:g} mm)")
    truths = [truth_thickness(c, grid) for c in test]

    def evaluate(model: torch.nn.Module, arm: Arm, size: int, **extra) -> None:
        model.eval()
        evals = [evaluate_case(model, c, protocol.crop, protocol.device, grid, truths[i])
                 for i, c in enumerate(test)]
        run = summarize_run(arm, size, evals, eval_spacing_mm=eval_mm, **extra)
        runs.append(run)
        say(f"[{site}] {arm:8s} n={size:2d}: Dice blood pool "
            f"{run.dice.blood_pool.mean:.3f}, LVM {run.dice.lvm.mean:.3f}")

    if Arm.BASELINE in protocol.arms:
        evaluate(build_model(source_config, source_state), Arm.BASELINE, 0)
    for size, ids in subsets.items():
        for arm in [a for a in Arm if a.trains and a.local and a in protocol.arms]:
            if arm is Arm.TRANSFER:
                model = build_model(source_config, source_state)
            else:
                model = build_model(source_config)
                init_weights(model, protocol.init, seed=protocol.seed)
            cfg = train_config(protocol, arm, progress)
            res = train(model, [by_id[i] for i in ids], val, cfg, out / "runs" / f"{arm}-{size}",
                        transfer=arm is Arm.TRANSFER, meta={"provenance": {"site": site}},
                        say=lambda m: say(f"[{site}] {m}"), restart_on_change=True)
            load_checkpoint_weights(model, res.best_path)
            evaluate(model, arm, size, best_epoch=res.best_epoch, val_dice=res.best_val_dice,
                     train_seconds=round(res.seconds, 2))
        if Arm.FED_TRANSFER in protocol.arms and size in (fed_models or {}):
            evaluate(build_model(source_config, fed_models[size]), Arm.FED_TRANSFER, size)
    section = SiteResults(
        status=Status.OK, n_test=len(test), n_cases=len(cases),
        split=SplitSizes(train=len(split.train), val=len(split.val), test=len(split.test)),
        excluded=len(excluded or {}), protocol=protocol, runs=runs,
        seconds=round(time.perf_counter() - t_start, 1))
    doc = ResultsDoc(sites={site: section})
    write_text(out / "results.json", json.dumps(doc.to_dict(), indent=1) + "\n")
    return section


__all__ = ["CaseEval", "run_study", "train_config", "site_split", "SiteSplit", "evaluate_case",
           "eval_truth", "summarize_run", "truth_thickness"]
