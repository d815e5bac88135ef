"""The study protocol: what a site runs, and the one declaration of the study's options.

:class:`Protocol` is sent by the server as part of the task in the federated job, built from
``lvtl study``'s options, from ``jobs/lvtl_study/job.py``'s options, and by the demo. Each
field's metadata holds its help text; :func:`options` lists the fields as command-line options
(flag, kind, default, help) and :func:`parse_option` turns an option's text into the field's
value, so the CLI (typer) and the job (argparse) build their options from this one place.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import asdict, dataclass, field
from enum import Enum, StrEnum
from typing import Any

from lvtl.data.splits import PAPER_SIZES
from lvtl.errors import ConfigError, choose
from lvtl.model.options import Init


class Arm(StrEnum):
    """An arm of the study."""

    BASELINE = "baseline"  # the Site-1 model as shipped, no fine-tuning (train size 0)
    RANDOM = "random"  # the same architecture from random initialisation
    TRANSFER = "transfer"  # initialised from the Site-1 model, then fine-tuned
    # initialised from the Site-1 model, fine-tuned by FedAvg across the receiving sites
    # (federated job only: each site's weight updates leave it, where it opts in)
    FED_TRANSFER = "fed-transfer"

    @property
    def trains(self) -> bool:
        return self is not Arm.BASELINE

    @property
    def local(self) -> bool:
        """Run by a site on its own (every arm but ``fed-transfer``)."""
        return self is not Arm.FED_TRANSFER


#: The arms a study runs unless told otherwise (the paper's three, all local).
LOCAL_ARMS = (Arm.BASELINE, Arm.RANDOM, Arm.TRANSFER)


class EvalGrid(StrEnum):
    """The grid on which a study with ``downsample`` > 1 measures Dice and wall thickness."""

    NATIVE = "native"  # the cache's 1 mm grid: probabilities upsampled, the cache's own truth
    MODEL = "model"  # the model's grid: the truth downsampled like the training labels


#: Where an option is offered: ``lvtl study`` at a site only, or also the federated job.
SITE_ONLY = "site-only"


def _opt(default: Any, help: str, *, site_only: bool = False) -> Any:  # noqa: A002
    return field(default=default, metadata={"help": help, SITE_ONLY: site_only})


@dataclass(frozen=True)
class Protocol:
    """What a site runs: arms, nested training sizes, the training schedule and the grid."""

    arms: tuple[Arm, ...] = _opt(LOCAL_ARMS, "Arms, comma-separated: baseline,random,transfer "
                                             "and, in the federated job, fed-transfer.")
    sizes: tuple[int, ...] = _opt(PAPER_SIZES, "Nested training sizes, comma-separated.")
    epochs: int = _opt(500, "Epochs per training run (the paper: 500).")
    samples_per_epoch: int = _opt(0, "Crops per epoch (0: one per training case).")
    crop: tuple[int, int, int, int] = _opt((16, 64, 96, 96), "Crop t,z,y,x (the paper's).")
    seed: int = _opt(0, "Seed of training.")
    split_seed: int = _opt(0, "Seed of the split and the nested subsets (a site's own config "
                              "sets its own).")
    init: Init = _opt(Init.DEFAULT, "Random arm's init: default (Kaiming) or normal (the "
                                    "paper's N(0, 1)).")
    lr_random: float = _opt(1e-3, "Learning rate of the random arm (the paper: 1e-3).")
    lr_transfer: float = _opt(1e-4, "Learning rate of the transfer arm (the paper: 1e-4).")
    val_every: int = _opt(1, "Epochs between validations.")
    downsample: int = _opt(1, "Study at this multiple of the 1 mm cache grid (demo: 2); must "
                              "match the model's training.")
    eval_grid: EvalGrid = _opt(EvalGrid.NATIVE, "Grid of Dice and thickness when downsample > "
                                                "1: native (the 1 mm cache grid, class "
                                                "probabilities upsampled trilinearly; the "
                                                "paper's) or model (the downsampled grid).")
    fed_rounds: int = _opt(8, "fed-transfer: FedAvg rounds; each round every site trains "
                               "epochs/fed_rounds epochs (so epochs x crops per epoch local "
                               "steps in all, as the local transfer arm); epochs must be a "
                               "multiple.")
    fed_mu: float = _opt(0.0, "fed-transfer: FedProx proximal weight mu (0: plain FedAvg).")
    device: str = _opt("cpu", "Torch device: cpu, cuda, cuda:1, ...", site_only=True)
    bf16: bool = _opt(False, "bfloat16 autocast (GPU).", site_only=True)

    def __post_init__(self) -> None:
        # values given as text or JSON (lists, strings) become tuples and Enums here, once
        if isinstance(self.arms, str) or not self.arms:
            raise ConfigError(f"arms must be a non-empty list, got {self.arms!r}")
        set_ = object.__setattr__
        set_(self, "arms", tuple(choose(Arm, a, "arm") for a in self.arms))
        set_(self, "init", choose(Init, self.init, "init"))
        set_(self, "eval_grid", choose(EvalGrid, self.eval_grid, "eval_grid"))
        for name in ("sizes", "crop"):
            value = getattr(self, name)
            if not isinstance(value, (list, tuple)) or not all(
                    isinstance(v, int) and not isinstance(v, bool) for v in value):
                raise ConfigError(f"{name} must be a list of integers, got {value!r}")
            set_(self, name, tuple(value))
        if not self.sizes or min(self.sizes) < 1:
            raise ConfigError(f"training sizes must be positive, got {list(self.sizes)}")
        if len(self.crop) != 4 or min(self.crop) < 1:
            raise ConfigError(f"crop must be four positive sizes (t, z, y, x), got {self.crop}")
        for name in ("lr_random", "lr_transfer"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if not self.fed_mu >= 0:
            raise ConfigError(f"fed_mu must be at least 0, got {self.fed_mu}")
        for name in ("epochs", "val_every", "downsample", "fed_rounds"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if Arm.FED_TRANSFER in self.arms and self.epochs % self.fed_rounds:
            raise ConfigError(f"fed-transfer: epochs ({self.epochs}) must be a multiple of "
                              f"fed_rounds ({self.fed_rounds}), so that every round trains "
                              "the same number of epochs")

    def lr(self, arm: Arm) -> float:
        return self.lr_random if arm is Arm.RANDOM else self.lr_transfer

    @property
    def fed_epochs(self) -> int:
        """Epochs each site trains in one fed-transfer round."""
        return self.epochs // self.fed_rounds

    @classmethod
    def from_dict(cls, d: dict) -> Protocol:
        """From its JSON form (as the task carries it); unknown fields are refused."""
        if not isinstance(d, dict):
            raise ConfigError("the protocol must be an object")
        known = {f.name for f in dataclasses.fields(cls)}
        bad = sorted(set(d) - known)
        if bad:
            raise ConfigError(f"unknown protocol field {bad[0]!r}")
        try:
            return cls(**d)
        except TypeError as e:
            raise ConfigError(f"protocol: {e}") from None

    def to_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self)))


# --------------------------------------------------------------------------- as options
@dataclass(frozen=True)
class Option:
    """One protocol field as a command-line option."""

    name: str  # the field
    flag: str  # --like-this
    kind: type  # what the option's value is on the command line: str, int, float, bool, Enum
    default: Any  # the default as that kind (a list as comma-separated text)
    help: str
    site_only: bool


def _kind(tp: Any) -> type:
    if typing.get_origin(tp) is tuple:
        return str  # comma-separated
    return tp


def _text(value: Any) -> Any:
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return value


def options() -> list[Option]:
    """The protocol's fields as options, in declaration order."""
    types_ = typing.get_type_hints(Protocol)
    return [Option(f.name, "--" + f.name.replace("_", "-"), _kind(types_[f.name]),
                   _text(f.default), f.metadata["help"], f.metadata[SITE_ONLY])
            for f in dataclasses.fields(Protocol)]


def parse_ints(text: str, name: str, n: int | None = None) -> tuple[int, ...]:
    """Comma-separated positive integers of option ``--name`` (``n`` of them if given)."""
    try:
        vals = tuple(int(v) for v in text.replace("x", ",").split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"--{name}: expected comma-separated integers, got {text!r}") from None
    if not vals or (n is not None and len(vals) != n) or min(vals) < 1:
        raise ConfigError(f"--{name}: expected {n or 'some'} positive integers, got {text!r}")
    return vals


def parse_option(name: str, value: Any) -> Any:
    """The field value of option ``name`` given as the command line gives it."""
    tp = typing.get_type_hints(Protocol)[name]
    if typing.get_origin(tp) is tuple and isinstance(value, str):
        item = typing.get_args(tp)[0]
        flag = name.replace("_", "-")
        if isinstance(item, type) and issubclass(item, Enum):
            return tuple(choose(item, v.strip(), flag) for v in value.split(",") if v.strip())
        n = len(typing.get_args(tp)) if typing.get_args(tp)[-1] is not Ellipsis else None
        return parse_ints(value, flag, n)
    return value


def from_options(values: dict[str, Any], base: Protocol | None = None) -> Protocol:
    """A protocol from option values (field name -> value as given); fields not given keep
    ``base``'s values (the defaults when no base)."""
    parsed = {k: parse_option(k, v) for k, v in values.items()}
    return dataclasses.replace(base or Protocol(), **parsed)


__all__ = ["Arm", "LOCAL_ARMS", "EvalGrid", "Protocol", "Option", "options", "parse_option",
           "parse_ints", "from_options"]
