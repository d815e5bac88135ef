"""Training: the loop (Adam, exponential decay, best model by validation Dice, resume).

The loss is :func:`lvtl.model.loss.masked_dice_loss` over the labelled phases only; crops come
from :mod:`lvtl.data.crops`; checkpoints are :mod:`lvtl.model.checkpoint`'s format.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from lvtl.data.cache import load_site_cases
from lvtl.data.crops import random_crop
from lvtl.data.splits import split_cases
from lvtl.errors import ConfigError, TrainError, choose
from lvtl.io.atomic import write_text
from lvtl.model import checkpoint
from lvtl.model.heap import reuse_freed_memory
from lvtl.model.infer import evaluate_dice
from lvtl.model.loss import masked_dice_loss
from lvtl.model.network import Conv4d, LVNet4d
from lvtl.model.options import Init
from lvtl.parallel import Say

log = logging.getLogger(__name__)


def _log(msg: str) -> None:
    log.info("%s", msg)


@dataclass
class TrainConfig:
    """How to train. ``lr`` None: 1e-3 from random init, 1e-4 when fine-tuning (the paper).

    The learning rate is multiplied by ``lr_decay`` (exponential decay, the paper's 0.9) after
    every ``decay_every`` epochs; None: ``epochs // 20`` (at least 1), so it ends near 0.12x its
    start whatever the epoch count (stepping every epoch for the paper's 500 epochs would end at
    1e-23x).
    """

    epochs: int = 500
    samples_per_epoch: int = 0  # 0: one per training case
    batch_size: int = 1
    crop: tuple[int, int, int, int] = (16, 64, 96, 96)  # (t, z, y, x), the paper's crop
    spacing_mm: float = 1.0  # grid of the training cases (recorded in the checkpoint)
    lr: float | None = None
    lr_decay: float = 0.9
    decay_every: int | None = None
    foreground: float = 0.67  # share of crops centred on the heart
    augment_intensity: float = 0.1  # random scale and shift of the normalised image (0: off)
    augment_noise: float = 0.02  # Gaussian noise, standard deviation (0: off)
    val_every: int = 1  # epochs between validations (best model by validation Dice)
    seed: int = 0
    device: str = "cpu"
    bf16: bool = False  # autocast to bfloat16 (GPU option)
    compile: bool = False  # torch.compile the model (GPU option)
    progress: bool = False

    def resolved_lr(self, transfer: bool) -> float:
        return self.lr if self.lr is not None else (1e-4 if transfer else 1e-3)

    def resolved_decay_every(self) -> int:
        return self.decay_every if self.decay_every else max(1, self.epochs // 20)

    def check(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.samples_per_epoch < 0:
            raise ConfigError("epochs and batch size must be at least 1")
        if len(self.crop) != 4 or min(self.crop) < 1:
            raise ConfigError(f"crop must be four positive sizes (t, z, y, x), got {self.crop}")
        if not 0 < self.lr_decay <= 1:
            raise ConfigError(f"lr_decay must be in (0, 1], got {self.lr_decay}")


#: Settings a resumed run must share with the interrupted one.
RESUME_KEYS = ("epochs", "samples_per_epoch", "batch_size", "lr_decay", "foreground",
               "augment_intensity", "augment_noise", "seed")


@dataclass
class TrainResult:
    best_path: Path
    last_path: Path
    best_epoch: int
    best_val_dice: float
    epochs_run: int
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    loading_share: float = 0.0  # share of step time spent making crops
    excluded: dict[str, str] = field(default_factory=dict)  # case id -> why it was left out


def init_weights(model: torch.nn.Module, scheme: Init | str = Init.DEFAULT,
                 seed: int = 0) -> None:
    """``default``: PyTorch's (Kaiming-uniform) convolution init; ``normal``: every weight
    from N(0, 1) as in the paper (biases zero, GroupNorm left at 1 and 0). GroupNorm after
    each convolution keeps N(0, 1) weights trainable, but the first steps are far from a
    useful function; the default starts at unit-variance activations."""

    scheme = choose(Init, scheme, "init")
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, Conv4d):
            if scheme == Init.NORMAL:
                with torch.no_grad():
                    m.weight.copy_(torch.randn(m.weight.shape, generator=gen))
                    if m.bias is not None:
                        m.bias.zero_()
            else:
                torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
                m.reset_parameters()


def _batch(cases, cfg: TrainConfig, rng: np.random.Generator):

    imgs, labs, masks = [], [], []
    for _ in range(cfg.batch_size):
        c = cases[int(rng.integers(len(cases)))]
        img, lab, lm = random_crop(c.image, c.label, c.labelled, cfg.crop, rng, cfg.foreground,
                                   foreground_voxels=getattr(c, "foreground", None))
        if cfg.augment_intensity:
            a = cfg.augment_intensity
            img = img * np.float32(1 + rng.uniform(-a, a)) + np.float32(rng.uniform(-a, a))
        if cfg.augment_noise:
            img = img + rng.normal(0, cfg.augment_noise, img.shape).astype(np.float32)
        imgs.append(img)
        labs.append(lab)
        masks.append(lm)
    return (torch.from_numpy(np.stack(imgs)), torch.from_numpy(np.stack(labs)),
            torch.from_numpy(np.stack(masks)))


def data_fingerprint(train_cases: list, val_cases: list) -> str:
    """A hash of what a run trains and validates on: each case's id and cache key (the key
    covers the case's input files and preprocessing settings)."""
    def ids(cases: list) -> list:
        return sorted([c.case_id, getattr(c, "meta", {}).get("key", "")] for c in cases)

    doc = json.dumps({"train": ids(train_cases), "val": ids(val_cases)}, sort_keys=True)
    return hashlib.sha256(doc.encode()).hexdigest()


def batch_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, m: torch.Tensor,
               bf16: bool = False) -> torch.Tensor:
    """The training loss of one batch: the forward pass (in bfloat16 autocast if ``bf16``) and
    ``masked_dice_loss`` in float32."""
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
        logits = model(x)
    return masked_dice_loss(logits.float(), y, m)


def make_optimizer(model: torch.nn.Module, lr: float) -> torch.optim.Adam:
    """The training optimiser: Adam, in PyTorch's fused implementation on the CPU and CUDA
    (the same update in one kernel: 0.2 ms a step against 1.2 ms for the demo's network)."""
    device = next(model.parameters()).device.type
    return torch.optim.Adam(model.parameters(), lr=lr,
                            fused=True if device in ("cpu", "cuda") else None)


def _epoch(step_model: torch.nn.Module, model: torch.nn.Module, opt: torch.optim.Optimizer,
           usable: list, cfg: TrainConfig, epoch: int, last_path: Path,
           prox: Proximal | None = None) -> tuple[float, float, float]:
    """One epoch of training steps (crops drawn from the epoch's own generator, so a resumed
    or split-up run draws the same); returns the mean loss and the seconds spent making
    crops and in all. ``prox`` adds FedProx's proximal term to each step's loss."""
    rng = np.random.default_rng([cfg.seed, epoch])
    torch.manual_seed(cfg.seed * 100003 + epoch)
    device = torch.device(cfg.device)
    model.train()
    losses, t_load, t_total = [], 0.0, 0.0
    for _ in range(steps_per_epoch(cfg, len(usable))):
        t0 = time.perf_counter()
        x, y, m = _batch(usable, cfg, rng)
        t1 = time.perf_counter()
        x, y, m = x.to(device), y.to(device), m.to(device)
        try:
            loss = batch_loss(step_model, x, y, m, cfg.bf16)
            value = float(loss.detach())
            if not np.isfinite(value):
                raise TrainError(f"epoch {epoch + 1}: the loss is {value}; stopped. "
                                 f"The last good checkpoint is {last_path}")
            if prox is not None:
                loss = loss + prox.term(model)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        except torch.OutOfMemoryError:
            raise TrainError(f"out of memory at crop {tuple(cfg.crop)} with batch "
                             f"{cfg.batch_size}: choose a smaller crop or batch") from None
        losses.append(value)
        t_load += t1 - t0
        t_total += time.perf_counter() - t0
    return float(np.mean(losses)), t_load, t_total


def steps_per_epoch(cfg: TrainConfig, n_usable: int) -> int:
    """Optimiser steps in one epoch: the crops per epoch (one per usable training case when
    not set) over the batch size, at least one."""
    return max(1, (cfg.samples_per_epoch or n_usable) // cfg.batch_size)


@dataclass
class Proximal:
    """FedProx's proximal term ``mu / 2 * ||w - w_anchor||^2`` over the model's parameters,
    the anchor being the round's global model."""

    mu: float
    anchor: list[torch.Tensor]

    @classmethod
    def of(cls, model: torch.nn.Module, mu: float) -> Proximal | None:
        if not mu:
            return None
        return cls(mu, [p.detach().clone() for p in model.parameters()])

    def term(self, model: torch.nn.Module) -> torch.Tensor:
        return 0.5 * self.mu * sum(((p - a) ** 2).sum()
                                   for p, a in zip(model.parameters(), self.anchor, strict=True))


def usable_cases(train_cases: list, say: Say) -> list:
    """The training cases with a labelled phase (the others are named and left out)."""
    usable = [c for c in train_cases if bool(np.asarray(c.labelled).any())]
    for c in train_cases:
        if c not in usable:
            say(f"{c.case_id}: no labelled phase; excluded from training")
    if not usable:
        raise TrainError("no training case has a labelled phase")
    return usable


@reuse_freed_memory()  # freed activations kept for the whole run
def train(model: torch.nn.Module, train_cases: list, val_cases: list, cfg: TrainConfig,
          out_dir: str | Path, *, transfer: bool = False, meta: dict | None = None,
          say: Say | None = None, restart_on_change: bool = False) -> TrainResult:
    """Train ``model`` on cached cases (:class:`lvtl.data.preprocess.CachedCase`); keep the best
    model on the validation cases and resume from ``out_dir/last.pt`` if it is there.

    Writes ``last.pt`` (model, optimiser, schedule, epoch; after every epoch, atomically) and
    ``best.pt`` (the artifact-compatible checkpoint of the best validation Dice). A non-finite
    loss stops training with :class:`TrainError`, leaving the last good checkpoints in place.
    A run resumes only with the same settings and the same data (the training and validation
    cases and their cache keys, :func:`data_fingerprint`); otherwise it stops with
    :class:`ConfigError`, or with ``restart_on_change`` starts over (a study rerun after a
    site changed its cases must not reuse runs trained on the old split).
    """

    cfg.check()
    say = say or _log
    usable = usable_cases(train_cases, say)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    last_path, best_path = out / "last.pt", out / "best.pt"
    device = torch.device(cfg.device)
    model.to(device)
    opt = make_optimizer(model, cfg.resolved_lr(transfer))
    sched = torch.optim.lr_scheduler.StepLR(opt, cfg.resolved_decay_every(), cfg.lr_decay)
    start, best, best_epoch, history = 0, -1.0, -1, []
    settings = {k: getattr(cfg, k) for k in RESUME_KEYS}
    settings["lr"] = cfg.resolved_lr(transfer)
    settings["decay_every"] = cfg.resolved_decay_every()
    settings["crop"] = list(cfg.crop)
    settings["data"] = data_fingerprint(usable, val_cases)
    state = (torch.load(last_path, map_location=device, weights_only=False)
             if last_path.exists() else None)
    if state is not None:
        old = state.get("settings", {})
        changed = [k if k == "data" else f"{k}={old.get(k)!r} (now {v!r})"
                   for k, v in settings.items() if old.get(k) != v]
        if changed and restart_on_change:
            say(f"{out}: {', '.join(changed)} changed since the last run; starting over")
            for f in (last_path, best_path, out / "history.json"):
                f.unlink(missing_ok=True)
            state = None
        elif changed:
            raise ConfigError(f"{last_path} was written with other settings or data: "
                              + ", ".join(changed) + "; rerun with the same settings to "
                              "resume, or use a new output folder")
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start, best, best_epoch = state["epoch"] + 1, state["best"], state["best_epoch"]
        history = state["history"]
        say(f"resumed from {last_path} after epoch {state['epoch'] + 1}")
    step_model = torch.compile(model) if cfg.compile else model
    t_start, t_load, t_total = time.perf_counter(), 0.0, 0.0
    bar = _progress(cfg.epochs, start, cfg.progress)
    for epoch in range(start, cfg.epochs):
        loss, t1, t2 = _epoch(step_model, model, opt, usable, cfg, epoch, last_path)
        t_load, t_total = t_load + t1, t_total + t2
        sched.step()
        row = {"epoch": epoch + 1, "loss": loss, "lr": float(opt.param_groups[0]["lr"])}
        if val_cases and ((epoch + 1) % cfg.val_every == 0 or epoch + 1 == cfg.epochs):
            row["val_dice"] = evaluate_dice(model, val_cases, cfg.crop, device)
        elif not val_cases:
            row["val_dice"] = -row["loss"]  # no validation split: the lowest training loss
        history.append(row)
        if row.get("val_dice", -np.inf) > best:
            best, best_epoch = row["val_dice"], epoch + 1
            checkpoint.save(checkpoint.model_checkpoint(model, cfg, {**(meta or {}), "metrics": {
                "best_epoch": best_epoch, "val_dice": best}}), best_path)
        checkpoint.save({"settings": settings, "model": model.state_dict(),
                      "optimizer": opt.state_dict(),
                      "scheduler": sched.state_dict(), "epoch": epoch, "best": best,
                      "best_epoch": best_epoch, "history": history}, last_path)
        bar(row)
    bar(None)
    seconds = time.perf_counter() - t_start
    return TrainResult(best_path=best_path, last_path=last_path, best_epoch=best_epoch,
                       best_val_dice=float(best), epochs_run=cfg.epochs - start,
                       history=history, seconds=seconds,
                       loading_share=t_load / t_total if t_total else 0.0)


@dataclass
class RoundResult:
    """One round of a run split into rounds (:func:`train_round`)."""

    steps: int  # optimiser steps taken (0 when the round had been trained before)
    loss: float  # mean training loss of the round's epochs
    seconds: float
    resumed: bool = False  # the round's result was read back, not trained again
    cases: int = 0  # the training cases used (those with a labelled phase)


@reuse_freed_memory()  # freed activations kept for the whole run
def train_round(model: torch.nn.Module, train_cases: list, cfg: TrainConfig,
                state_path: str | Path, first_epoch: int, last_epoch: int, *,
                transfer: bool = True, mu: float = 0.0, say: Say | None = None) -> RoundResult:
    """Train epochs ``[first_epoch, last_epoch)`` of ``cfg``'s schedule from the weights
    ``model`` holds (a fed-transfer round: the round's global model), leaving the result in
    ``model``.

    The epochs draw the same crops and use the same learning rate as those epochs of one
    uninterrupted :func:`train` run. The optimiser (Adam's moments) and the schedule continue
    from ``state_path``, written by the previous round (at epoch 0 they start fresh; if that
    state is missing or from other settings, they start fresh at the schedule's epoch, with a
    message). The round's end state and resulting weights are written there (atomically), so a
    round asked for again (a resumed job) returns the same weights without training. ``mu`` > 0
    adds FedProx's proximal term to the global weights.
    """
    cfg.check()
    say = say or _log
    if not 0 <= first_epoch < last_epoch <= cfg.epochs:
        raise ConfigError(f"a round must cover epochs within 0..{cfg.epochs}, got "
                          f"{first_epoch}..{last_epoch}")
    usable = usable_cases(train_cases, say)
    path = Path(state_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    device = torch.device(cfg.device)
    model.to(device)
    opt = make_optimizer(model, cfg.resolved_lr(transfer))
    sched = torch.optim.lr_scheduler.StepLR(opt, cfg.resolved_decay_every(), cfg.lr_decay)
    settings = {k: getattr(cfg, k) for k in RESUME_KEYS}
    settings.update(lr=cfg.resolved_lr(transfer), decay_every=cfg.resolved_decay_every(),
                    crop=list(cfg.crop), data=data_fingerprint(usable, []), mu=float(mu))
    state = torch.load(path, map_location=device, weights_only=False) if path.exists() else None
    if state is not None and state.get("settings") != settings:
        say(f"{path}: written with other settings or data; the optimiser starts afresh")
        state = None
    if state is not None and state["epoch"] == last_epoch and state.get("first") == first_epoch:
        model.load_state_dict(state["model"])
        say(f"epochs {first_epoch + 1}-{last_epoch} were trained before: read from {path}")
        return RoundResult(steps=0, loss=state["loss"], seconds=0.0, resumed=True,
                           cases=len(usable))
    if state is not None and state["epoch"] == first_epoch:
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
    else:
        if first_epoch:
            say(f"no optimiser state after epoch {first_epoch} in {path}; Adam starts afresh "
                "at this round")
        with warnings.catch_warnings():  # stepping the schedule alone is the point here
            warnings.simplefilter("ignore", UserWarning)
            for _ in range(first_epoch):  # the learning rate at the round's first epoch
                sched.step()
    prox = Proximal.of(model, mu)
    step_model = torch.compile(model) if cfg.compile else model
    t0, losses, steps = time.perf_counter(), [], 0
    for epoch in range(first_epoch, last_epoch):
        loss, _, _ = _epoch(step_model, model, opt, usable, cfg, epoch, path, prox)
        losses.append(loss)
        steps += steps_per_epoch(cfg, len(usable))
        sched.step()
    loss = float(np.mean(losses))
    checkpoint.save({"settings": settings, "first": first_epoch, "epoch": last_epoch,
                     "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                     "model": model.state_dict(), "loss": loss}, path)
    return RoundResult(steps=steps, loss=loss, seconds=time.perf_counter() - t0,
                       cases=len(usable))


def train_site(cache: str | Path, out_dir: str | Path, cfg: TrainConfig, *, filters: int = 8,
               blocks: tuple[int, ...] = (1, 2, 4), downsample: int = 1,
               init: Init | str = Init.DEFAULT,
               say: Say | None = None, restart_on_change: bool = False) -> TrainResult:
    """Train a model from random initialisation on every usable case of a site's cache (Site 1:
    the model that becomes the signed artifact), validating on the split's validation cases;
    writes ``best.pt``, ``last.pt`` and ``history.json`` in ``out_dir`` and resumes when rerun.
    ``say`` gets progress messages; the cases left out, with the reason, are in the result's
    ``excluded``.
    """
    cases, excluded = load_site_cases(cache, downsample)
    if len(cases) < 2:
        raise ConfigError(f"{cache}: {len(cases)} usable case(s); training needs at least 2")
    split = split_cases([c.case_id for c in cases], seed=cfg.seed) if len(cases) >= 3 else None
    val_ids = set(split.val) if split else {cases[-1].case_id}
    model = LVNet4d(init_filters=filters, blocks_down=tuple(blocks), groups=min(8, filters))
    init_weights(model, init, cfg.seed)
    cfg = replace(cfg, spacing_mm=float(downsample))
    meta = {"provenance": {"cases": len(cases), "downsample": downsample, "seed": cfg.seed,
                           "epochs": cfg.epochs}}
    res = train(model, [c for c in cases if c.case_id not in val_ids],
                [c for c in cases if c.case_id in val_ids], cfg, out_dir, meta=meta,
                say=say)
    write_text(Path(out_dir) / "history.json", json.dumps(res.history, indent=1) + "\n")
    return replace(res, excluded=dict(excluded))


def _progress(total: int, start: int, enabled: bool):
    """A tqdm bar over epochs on stderr (loss, learning rate, validation Dice)."""
    if not enabled:
        return lambda row: None

    bar = tqdm(total=total, initial=start, desc="train", unit="epoch", leave=False)

    def update(row):
        if row is None:
            bar.close()
            return
        post = {"loss": f"{row['loss']:.3f}", "lr": f"{row['lr']:.1e}"}
        if "val_dice" in row:
            post["val"] = f"{row['val_dice']:.3f}"
        bar.set_postfix(post)
        bar.update(1)

    return update
