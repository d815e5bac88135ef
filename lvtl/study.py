"""The transfer-learning study at one site (the paper's protocol), metrics only out.

Split the site's cached cases 45 : 20 : 30 (test : validation : train, scaled), draw nested
training sets, then for each arm and size train (or not) and evaluate on the test split:

- ``baseline``: the Site-1 model as shipped, no fine-tuning (train size 0);
- ``random``: the same architecture from random initialisation, learning rate 1e-3;
- ``transfer``: initialised from the Site-1 model, learning rate 1e-4.

Evaluation at each test case's labelled phases, ED being the one with the largest blood pool
and ES the smallest: Dice per label (mean and max over cases), and the wall thickness of the
prediction and of the truth (median, 95th percentile, max) with Pearson r across cases.
The output is the site section of DESIGN.md's ``lvtl.report/1`` document: numbers per run and
at most one number per test case per field, never an image, label or weight.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from lvtl.atomic import write_text
from lvtl.data import ed_es, nested_subsets, split_cases
from lvtl.errors import ConfigError, ThicknessError
from lvtl.metrics import case_dice, pearson, summarize
from lvtl.thickness import wall_thickness

log = logging.getLogger(__name__)

SCHEMA = "lvtl.report/1"
ARMS = ("baseline", "random", "transfer")
STATS = ("median", "p95", "max")


@dataclass
class Protocol:
    """What a site runs; sent by the server as one task in the federated job."""

    arms: tuple[str, ...] = ARMS
    sizes: tuple[int, ...] = (5, 10, 15, 20, 25, 30)
    epochs: int = 500
    samples_per_epoch: int = 0
    crop: tuple[int, int, int, int] = (16, 64, 96, 96)
    seed: int = 0
    split_seed: int = 0
    init: str = "default"  # random arm: default (Kaiming) or normal (the paper's N(0, 1))
    lr_random: float = 1e-3
    lr_transfer: float = 1e-4
    val_every: int = 1
    downsample: int = 1  # study at this multiple of the 1 mm cache grid (demo scale: 2)
    device: str = "cpu"
    bf16: bool = False

    @classmethod
    def from_dict(cls, d: dict) -> Protocol:
        known = {f for f in cls.__dataclass_fields__}
        bad = sorted(set(d) - known)
        if bad:
            raise ConfigError(f"unknown protocol field {bad[0]!r}")
        p = cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})
        p.check()
        return p

    def to_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self)))

    def check(self) -> None:
        bad = [a for a in self.arms if a not in ARMS]
        if bad or not self.arms:
            raise ConfigError(f"unknown arm {bad[0] if bad else None!r}; choose from "
                              + ", ".join(ARMS))
        if not self.sizes or min(self.sizes) < 1:
            raise ConfigError(f"training sizes must be positive, got {list(self.sizes)}")
        for name in ("lr_random", "lr_transfer"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")


@dataclass
class CaseEval:
    case_id: str
    dice: dict
    thickness: dict = field(default_factory=dict)  # {"ED": {"pred": stats, "truth": stats}}
    unmeasurable: dict = field(default_factory=dict)  # {"ED": "truth" | "prediction"}


def _thickness(labels: np.ndarray, spacing: float) -> dict | None:
    try:
        r = wall_thickness(labels, (spacing,) * 3)
    except ThicknessError:
        return None
    return {"median": r.median, "p95": r.p95, "max": r.max}


def truth_thickness(case, spacing: float = 1.0) -> dict:
    """Thickness statistics of the ground truth at ED and ES (None where not measurable);
    the same for every run of a study, so computed once per test case."""
    label = np.asarray(case.label)
    return {name: _thickness(label[p], spacing) for name, p in ed_es(label, case.labelled).items()}


def evaluate_case(model: torch.nn.Module, case, crop, device: str = "cpu",
                  spacing: float = 1.0, truth: dict | None = None) -> CaseEval:
    """Dice at the labelled phases and thickness at ED and ES of one test case (``truth``:
    :func:`truth_thickness` of the case, computed here when not given)."""
    from lvtl.infer import predict_labels

    label = np.asarray(case.label)
    phases = np.flatnonzero(case.labelled).tolist()
    pred, _ = predict_labels(model, np.asarray(case.image), crop, device, phases)
    per_phase = [case_dice(pred[i], label[p]) for i, p in enumerate(phases)]
    ev = CaseEval(case.case_id, {k: float(np.mean([d[k] for d in per_phase]))
                                 for k in ("blood_pool", "lvm")})
    truth = truth_thickness(case, spacing) if truth is None else truth
    for name, p in ed_es(label, case.labelled).items():
        if truth[name] is None:
            ev.unmeasurable[name] = "truth"
            continue
        got = _thickness(pred[phases.index(p)], spacing)
        if got is None:
            ev.unmeasurable[name] = "prediction"
            continue
        ev.thickness[name] = {"pred": got, "truth": truth[name]}
    return ev


def summarize_run(arm: str, size: int, evals: list[CaseEval], extra: dict | None = None) -> dict:
    """One entry of ``runs``: Dice summaries and thickness Pearson r (with CI and n)."""
    run = {"arm": arm, "train_size": int(size), "n_test": len(evals), "dice": {},
           "dice_per_case": {}, "thickness_r": {}, "thickness_r_ci": {}}
    for k in ("blood_pool", "lvm"):
        vals = [e.dice[k] for e in evals]
        run["dice"][k] = summarize(vals)
        run["dice_per_case"][k] = [round(v, 6) for v in vals]
    for phase in ("ED", "ES"):
        run["thickness_r"][phase], run["thickness_r_ci"][phase] = {}, {}
        pairs = [e.thickness[phase] for e in evals if phase in e.thickness]
        for s in STATS:
            x = [p["pred"][s] for p in pairs]
            y = [p["truth"][s] for p in pairs]
            try:
                pr = pearson(x, y)
            except ValueError as e:  # fewer than 3 cases, or a constant column
                run["thickness_r"][phase][s] = None
                run["thickness_r_ci"][phase][s] = {"n": len(pairs), "why": str(e)}
                continue
            run["thickness_r"][phase][s] = pr["r"]
            run["thickness_r_ci"][phase][s] = {"low": pr["ci_low"], "high": pr["ci_high"],
                                               "n": pr["n"]}
    # cases whose wall could not be measured, counted (no case ids leave the site)
    run["thickness_unmeasurable"] = {
        phase: {side: sum(e.unmeasurable.get(phase) == side for e in evals)
                for side in ("truth", "prediction")}
        for phase in ("ED", "ES")}
    run.update(extra or {})
    return run


def downsample(case, factor: int):
    """The case at ``factor`` times the cache's spacing (a demo-scale study on a CPU): image
    by block means, labels by taking every ``factor``-th voxel."""
    if factor == 1:
        return case
    from dataclasses import replace

    img = np.asarray(case.image, np.float32)
    t, *shape = img.shape
    new = [n // factor for n in shape]
    img = img[:, :new[0] * factor, :new[1] * factor, :new[2] * factor]
    img = img.reshape(t, new[0], factor, new[1], factor, new[2], factor).mean(axis=(2, 4, 6))
    lab = np.asarray(case.label)[:, ::factor, ::factor, ::factor][:, :new[0], :new[1], :new[2]]
    return replace(case, image=np.round(img).astype(np.int16), label=np.ascontiguousarray(lab))


def load_site_cases(cache_root: str | Path, factor: int = 1):
    """Every complete cache under ``cache_root`` with a labelled phase (others are reported
    and left out), optionally downsampled; returns ``(cases, excluded)``."""
    from lvtl.preprocess import cached, load_cached

    cache_root = Path(cache_root)
    if not cache_root.is_dir():
        raise ConfigError(f"{cache_root}: no such cache folder")
    cases, skipped = [], {}
    for d in sorted(p for p in cache_root.iterdir() if p.is_dir()):
        if not cached(d):
            continue
        c = load_cached(d)
        if not bool(np.asarray(c.labelled).any()):
            skipped[c.case_id] = "no labelled phase"
            log.warning("%s: no labelled phase; excluded from the study", c.case_id)
            continue
        cases.append(downsample(c, factor))
    return cases, skipped


def load_source(path: str | Path, trust=None) -> tuple[dict, dict]:
    """The Site-1 model as ``(state_dict, config)``: a signed artifact folder, verified
    against ``trust`` (a :class:`lvtl.artifact.TrustStore`; required), or, for the model
    owner's own use, a checkpoint written by ``lvtl train``."""
    from lvtl.artifact import MANIFEST, _read_checkpoint, load_verified

    path = Path(path)
    if path.is_dir() and (path / MANIFEST).exists():
        if trust is None:
            raise ConfigError(f"{path}: a signed artifact needs trusted keys to be verified")
        state, manifest = load_verified(path, trust)
        return state, {"architecture": manifest["architecture"]}
    state, config, _ = _read_checkpoint(path)
    if "architecture" not in config:
        raise ConfigError(f"{path}: the checkpoint does not say its architecture")
    return state, config


def build_model(source: dict) -> torch.nn.Module:
    from lvtl.model import LVNet4d

    arch = source["architecture"]
    if arch.get("name") != "LVNet4d":
        raise ConfigError(f"unsupported architecture {arch.get('name')!r}")
    hp = dict(arch["hyperparameters"])
    hp["blocks_down"] = tuple(hp["blocks_down"])
    return LVNet4d(**hp)


def run_study(cases: list, source_state: dict, source_config: dict, protocol: Protocol,
              out_dir: str | Path, *, site: str = "site", excluded: dict | None = None,
              progress: bool = False, say=print) -> dict:
    """Run the protocol on a site's cases (:func:`load_site_cases`); returns the site's
    results section and writes it to ``out_dir/results.json`` (atomically). Training runs live
    in ``out_dir/runs/<arm>-<size>/`` and resume from their checkpoints when rerun."""
    from lvtl.train import TrainConfig, init_weights, train

    protocol.check()
    t_start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    skipped = dict(excluded or {})
    if len(cases) < 3:
        raise ConfigError(f"{site}: {len(cases)} usable case(s); the study needs at least 3 "
                          "(train, validation, test)")
    by_id = {c.case_id: c for c in cases}
    split = split_cases(sorted(by_id), seed=protocol.split_seed)
    subsets = nested_subsets(split.train, protocol.sizes, seed=protocol.split_seed)
    test = [by_id[i] for i in split.test]
    val = [by_id[i] for i in split.val]
    say(f"[{site}] {len(cases)} cases: {len(split.train)} train, {len(val)} val, "
        f"{len(test)} test; sizes {sorted(subsets)}")
    runs = []
    spacing = float(protocol.downsample)
    truths = [truth_thickness(c, spacing) for c in test]

    def evaluate(model, arm, size, extra):
        model.eval()
        evals = [evaluate_case(model, c, protocol.crop, protocol.device, spacing, truths[i])
                 for i, c in enumerate(test)]
        run = summarize_run(arm, size, evals, extra)
        runs.append(run)
        say(f"[{site}] {arm:8s} n={size:2d}: Dice blood pool "
            f"{run['dice']['blood_pool']['mean']:.3f}, LVM {run['dice']['lvm']['mean']:.3f}")

    if "baseline" in protocol.arms:
        model = build_model(source_config)
        model.load_state_dict(source_state)
        evaluate(model, "baseline", 0, {})
    for size, ids in subsets.items():
        for arm in [a for a in ("random", "transfer") if a in protocol.arms]:
            model = build_model(source_config)
            if arm == "transfer":
                model.load_state_dict(source_state)
            else:
                init_weights(model, protocol.init, seed=protocol.seed)
            cfg = TrainConfig(epochs=protocol.epochs, samples_per_epoch=protocol.samples_per_epoch,
                              crop=tuple(protocol.crop), spacing_mm=spacing,
                              seed=protocol.seed,
                              lr=protocol.lr_transfer if arm == "transfer" else protocol.lr_random,
                              val_every=protocol.val_every, device=protocol.device,
                              bf16=protocol.bf16, progress=progress)
            res = train(model, [by_id[i] for i in ids], val, cfg, out / "runs" / f"{arm}-{size}",
                        transfer=arm == "transfer", meta={"provenance": {"site": site}},
                        log_fn=lambda m: say(f"[{site}] {m}"))
            best = torch.load(res.best_path, map_location="cpu", weights_only=True)
            model.load_state_dict(best["state_dict"])
            evaluate(model, arm, size, {"best_epoch": res.best_epoch,
                                        "val_dice": res.best_val_dice,
                                        "train_seconds": round(res.seconds, 2)})
    section = {"status": "ok", "reason": "", "n_test": len(test), "n_cases": len(cases),
               "split": {k: len(v) for k, v in split.to_dict().items()},
               "excluded": len(skipped), "protocol": protocol.to_dict(), "runs": runs,
               "seconds": round(time.perf_counter() - t_start, 1)}
    doc = {"schema": SCHEMA, "sites": {site: section}}
    write_text(out / "results.json", json.dumps(doc, indent=1) + "\n")
    return section


def failed_section(reason: str) -> dict:
    return {"status": "failed", "reason": reason, "n_test": 0, "runs": []}


__all__ = ["Protocol", "run_study", "evaluate_case", "summarize_run", "failed_section",
           "load_site_cases", "downsample"]
