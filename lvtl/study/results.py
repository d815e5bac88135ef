"""The results a site sends and the coordinator reads: typed, with one schema name.

A site's study ends in a :class:`SiteResults` section; the coordinator's ``report.json`` is a
:class:`ResultsDoc` holding one section per site (schema ``lvtl.report/1``). These
dataclasses are the one definition of that format: the study builds them, the report reads
them (:meth:`ResultsDoc.from_dict`), and the site's privacy allow-list is generated from them
(:mod:`lvtl.flare.privacy`), so a field is added here and nowhere else.

Kinds of value a field may hold (read off its type): ``int``, ``float``, ``bool``, ``str``
(at most :data:`MAX_TEXT` characters), an Enum (one of its values), a nested dataclass, a
``list`` of numbers marked ``per_case`` (at most one number per test case), a ``list`` of
dataclasses (at most :data:`MAX_ITEMS`), a ``tuple`` of numbers or Enum values (at most
:data:`MAX_ITEMS`), a ``dict`` from site name to a dataclass, and ``None`` where the type
allows it. Nothing else (no arrays, bytes or free-form mappings) can be expressed.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from typing import Any, Union

from lvtl.config import SiteRole
from lvtl.data.splits import ED_ES
from lvtl.errors import ConfigError
from lvtl.labels import KEYS
from lvtl.measure.metrics import THICKNESS_STATS
from lvtl.study.protocol import Arm, Protocol

SCHEMA = "lvtl.report/1"
MAX_TEXT = 500  # characters of any text field
MAX_ITEMS = 64  # items of a list of runs or of a tuple

#: The thickness statistics per phase, and the phases (ED: largest blood pool, ES: smallest).
STATS = THICKNESS_STATS
PHASES = ED_ES


def per_case() -> Any:
    """A list with at most one number per test case (the field's metadata says so)."""
    return field(default_factory=list, metadata={"per_case": True})


class Status(StrEnum):
    OK = "ok"
    FAILED = "failed"


class Unmeasurable(StrEnum):
    """Which side of a thickness comparison had a wall that could not be measured."""

    TRUTH = "truth"
    PREDICTION = "prediction"


# --------------------------------------------------------------------------- one run
@dataclass
class Summary:
    """Summary of per-case scores (:func:`lvtl.measure.metrics.summarize`)."""

    mean: float
    max: float
    min: float
    std: float
    n: int


@dataclass
class DicePair:
    """One value per foreground label (:data:`lvtl.labels.KEYS`)."""

    blood_pool: Summary
    lvm: Summary


@dataclass
class DicePerCase:
    blood_pool: list[float] = per_case()
    lvm: list[float] = per_case()


@dataclass
class ThicknessR:
    """Pearson r of predicted against true thickness, per statistic (None: not computable)."""

    median: float | None = None
    p95: float | None = None
    max: float | None = None


@dataclass
class Interval:
    """95% interval of an r and its n; ``why`` says why there is no r (too few cases, ...)."""

    n: int
    low: float | None = None
    high: float | None = None
    why: str | None = None


@dataclass
class ThicknessCI:
    median: Interval
    p95: Interval
    max: Interval


@dataclass
class PhaseR:
    ED: ThicknessR
    ES: ThicknessR


@dataclass
class PhaseCI:
    ED: ThicknessCI
    ES: ThicknessCI


@dataclass
class UnmeasurableCount:
    """Test cases whose wall could not be measured, counted (no case ids leave the site)."""

    truth: int = 0
    prediction: int = 0


@dataclass
class PhaseUnmeasurable:
    ED: UnmeasurableCount
    ES: UnmeasurableCount


@dataclass
class Run:
    """One arm at one training size, evaluated on the site's test split."""

    arm: Arm
    train_size: int
    n_test: int
    dice: DicePair
    dice_per_case: DicePerCase
    thickness_r: PhaseR
    thickness_r_ci: PhaseCI
    thickness_unmeasurable: PhaseUnmeasurable
    best_epoch: int | None = None
    val_dice: float | None = None
    train_seconds: float | None = None

    def mean_dice(self) -> float:
        """Mean over the labels of the mean Dice."""
        return sum(getattr(self.dice, k).mean for k in KEYS) / len(KEYS)


# --------------------------------------------------------------------------- a site's section
@dataclass
class SplitSizes:
    train: int
    val: int
    test: int


@dataclass
class ArtifactInfo:
    name: str
    version: str
    key_id: str


@dataclass
class SiteResults:
    """What one site sends back: its status and, when ``ok``, the runs."""

    status: Status
    reason: str = ""
    n_test: int = 0
    runs: list[Run] = field(default_factory=list)
    role: SiteRole | None = None
    n_cases: int | None = None
    split: SplitSizes | None = None
    excluded: int | None = None
    preprocess_failed: int | None = None
    seconds: float | None = None
    protocol: Protocol | None = None
    artifact: ArtifactInfo | None = None

    @classmethod
    def failed(cls, reason: str) -> SiteResults:
        return cls(status=Status.FAILED, reason=reason[:MAX_TEXT])

    def to_dict(self) -> dict:
        return to_dict(self)

    @classmethod
    def from_dict(cls, d: dict) -> SiteResults:
        return from_dict(cls, d, "site")


@dataclass
class ResultsDoc:
    """A results file (one site) or the coordinator's report (every site)."""

    sites: dict[str, SiteResults]
    schema: str = SCHEMA
    protocol: Protocol | None = None

    def to_dict(self) -> dict:
        return to_dict(self)

    @classmethod
    def from_dict(cls, d: Any, source: str = "document") -> ResultsDoc:
        if not isinstance(d, dict) or d.get("schema") != SCHEMA:
            raise ConfigError(f"{source}: not a {SCHEMA} document")
        return from_dict(cls, {k: v for k, v in d.items() if k != "summary"}, source)


# --------------------------------------------------------------------------- (de)serialising
def to_dict(obj: Any) -> Any:
    """Plain JSON values of a results object (Enums as their values, tuples as lists)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Enum):
        return obj.value
    if isinstance(obj, dict):
        return {str(k): to_dict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    return obj


def hints(cls: type) -> dict[str, Any]:
    """The resolved field types of a results dataclass."""
    return typing.get_type_hints(cls)


def optional(tp: Any) -> tuple[Any, bool]:
    """``(T, True)`` for ``T | None``, else ``(tp, False)``."""
    if typing.get_origin(tp) in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def from_dict(cls: type, d: Any, path: str) -> Any:
    """A results dataclass from its plain JSON form; unknown fields and wrong kinds are a
    :class:`~lvtl.errors.ConfigError` naming the field's path."""
    if not isinstance(d, dict):
        raise ConfigError(f"{path}: expected an object")
    if cls is Protocol:
        return Protocol.from_dict(d)
    types_ = hints(cls)
    unknown = sorted(set(d) - set(types_))
    if unknown:
        raise ConfigError(f"{path}.{unknown[0]}: not a field of {cls.__name__}")
    try:
        return cls(**{k: _value(types_[k], v, f"{path}.{k}") for k, v in d.items()})
    except TypeError as e:  # a required field is missing
        raise ConfigError(f"{path}: {e}") from None


def _value(tp: Any, v: Any, path: str) -> Any:
    tp, may_be_none = optional(tp)
    if v is None:
        if may_be_none:
            return None
        raise ConfigError(f"{path}: missing")
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, v, path)
    if isinstance(tp, type) and issubclass(tp, Enum):
        try:
            return tp(v)
        except ValueError:
            raise ConfigError(f"{path}: {v!r} is not one of "
                              f"{', '.join(str(m.value) for m in tp)}") from None
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(v, list):
            raise ConfigError(f"{path}: expected a list")
        return [_value(item, x, f"{path}[{i}]") for i, x in enumerate(v)]
    if origin is dict:
        _, item = typing.get_args(tp)
        if not isinstance(v, dict):
            raise ConfigError(f"{path}: expected an object")
        return {str(k): _value(item, x, f"{path}.{k}") for k, x in v.items()}
    return v


__all__ = ["SCHEMA", "MAX_TEXT", "MAX_ITEMS", "STATS", "PHASES", "Status", "Unmeasurable",
           "Summary", "DicePair", "DicePerCase", "ThicknessR", "Interval", "ThicknessCI",
           "PhaseR", "PhaseCI", "UnmeasurableCount", "PhaseUnmeasurable", "Run", "SplitSizes",
           "ArtifactInfo", "SiteResults", "ResultsDoc", "to_dict", "from_dict", "hints",
           "optional", "per_case"]
