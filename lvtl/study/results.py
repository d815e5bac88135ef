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

from lvtl.config import SiteRole, UpdateFilter
from lvtl.data.splits import ED_ES
from lvtl.errors import ConfigError
from lvtl.labels import KEYS
from lvtl.measure.metrics import THICKNESS_STATS
from lvtl.study.protocol import Arm, Protocol

SCHEMA = "lvtl.report/1"
MAX_TEXT = 500  # characters of any text field
MAX_ITEMS = 64  # items of a list of runs or of a tuple
MAX_TEST_CASES = 1000  # a hard bound on a site's test split (the paper's: 45)
MAX_COUNT = 1_000_000  # cases, epochs, sizes: any count a site reports

#: The thickness statistics per phase, and the phases (ED: largest blood pool, ES: smallest).
STATS = THICKNESS_STATS
PHASES = ED_ES


def per_case(lo: float = 0.0, hi: float = 1.0) -> Any:
    """A list with at most one number per test case, each in ``[lo, hi]``."""
    return field(default_factory=list, metadata={"per_case": True, "range": (lo, hi)})


def bounded(lo: float, hi: float, default: Any = dataclasses.MISSING) -> Any:
    """A number field whose values must lie in ``[lo, hi]`` (the allow-list checks it)."""
    return field(default=default, metadata={"range": (lo, hi)})


def unit(default: Any = dataclasses.MISSING) -> Any:
    """A score in [0, 1] (a Dice)."""
    return bounded(0.0, 1.0, default)


def correlation(default: Any = None) -> Any:
    """A correlation or an end of its interval, in [-1, 1]."""
    return bounded(-1.0, 1.0, default)


def count(hi: int = MAX_COUNT, default: Any = dataclasses.MISSING) -> Any:
    """A non-negative count of at most ``hi``."""
    return bounded(0, hi, default)


class Status(StrEnum):
    OK = "ok"
    FAILED = "failed"
    PENDING = "pending"  # in a report written while the job runs: no results yet


class Reason(StrEnum):
    """Why a site has no results, as a fixed code: a reason leaves a site as one of these and
    nothing else, so no path, case id or traceback can ride along (the detail stays in the
    site's own log). :data:`REASON_TEXT` says each in words."""

    NONE = ""
    ARTIFACT_UNTRUSTED_KEY = "artifact_refused:untrusted_key"
    ARTIFACT_REVOKED_KEY = "artifact_refused:revoked_key"
    ARTIFACT_TOO_OLD = "artifact_refused:version_too_old"
    ARTIFACT_INVALID = "artifact_refused:invalid"
    SITE_CONFIG = "site_config_error"
    PROTOCOL = "protocol_refused"
    NO_USABLE_CASES = "no_usable_cases"
    SITE_ERROR = "site_error"
    INTERNAL_ERROR = "internal_error"
    BLOCKED = "blocked_by_privacy_filter"
    NO_RESULTS = "no_results"
    SITE_LOST = "site_lost"
    INVALID_RESULTS = "invalid_results"
    FED_MODEL_INVALID = "fed_model_refused"


REASON_TEXT = {
    Reason.NONE: "",
    Reason.ARTIFACT_UNTRUSTED_KEY: "artifact refused: signed by a key the site does not trust",
    Reason.ARTIFACT_REVOKED_KEY: "artifact refused: signed by a key the site has revoked",
    Reason.ARTIFACT_TOO_OLD: "artifact refused: older than the site's minimum version",
    Reason.ARTIFACT_INVALID: "artifact refused: missing, malformed or tampered with",
    Reason.SITE_CONFIG: "the site's configuration is incomplete or invalid",
    Reason.PROTOCOL: "the site refused the study protocol",
    Reason.NO_USABLE_CASES: "too few usable cases for the study (train, validation, test)",
    Reason.SITE_ERROR: "the study failed at the site",
    Reason.INTERNAL_ERROR: "an unexpected error at the site",
    Reason.BLOCKED: "blocked by the site's privacy filter",
    Reason.NO_RESULTS: "no results: the site's task failed, its process ended or it timed out",
    Reason.SITE_LOST: ("site lost: not heard from for minutes (its process ended, its network "
                       "went down, or it refused or never started the job)"),
    Reason.INVALID_RESULTS: "the site's reply was not a valid results section",
    Reason.FED_MODEL_INVALID: ("the federation's model was refused: not the signed model's "
                               "layers and shapes, non-finite values, or round 0 not the "
                               "signed model"),
}


class Unmeasurable(StrEnum):
    """Which side of a thickness comparison had a wall that could not be measured."""

    TRUTH = "truth"
    PREDICTION = "prediction"


# --------------------------------------------------------------------------- one run
@dataclass
class Summary:
    """Summary of per-case scores (:func:`lvtl.measure.metrics.summarize`)."""

    mean: float = unit()
    max: float = unit()
    min: float = unit()
    std: float = unit()
    n: int = count(MAX_TEST_CASES)


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

    median: float | None = correlation()
    p95: float | None = correlation()
    max: float | None = correlation()


class NoR(StrEnum):
    """Why a correlation could not be computed."""

    TOO_FEW_CASES = "too_few_cases"  # fewer than 3 pairs
    CONSTANT = "constant_input"  # every case has the same value


@dataclass
class Interval:
    """95% interval of an r and its n; ``why`` says why there is no r."""

    n: int = count(MAX_TEST_CASES)
    low: float | None = correlation()
    high: float | None = correlation()
    why: NoR | None = None


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

    truth: int = count(MAX_TEST_CASES, 0)
    prediction: int = count(MAX_TEST_CASES, 0)


@dataclass
class PhaseUnmeasurable:
    ED: UnmeasurableCount
    ES: UnmeasurableCount


@dataclass
class Run:
    """One arm at one training size, evaluated on the site's test split."""

    arm: Arm
    train_size: int = count()
    n_test: int = count(MAX_TEST_CASES)
    dice: DicePair
    dice_per_case: DicePerCase
    thickness_r: PhaseR
    thickness_r_ci: PhaseCI
    thickness_unmeasurable: PhaseUnmeasurable
    # the spacing (mm) of the grid Dice and thickness were measured on (the protocol's
    # eval_grid); None in results written before it was recorded (the model's grid)
    eval_spacing_mm: float | None = bounded(0.01, 100.0, None)
    best_epoch: int | None = count(default=None)
    val_dice: float | None = bounded(-1.0, 1.0, None)  # -loss when there is no validation
    train_seconds: float | None = bounded(0.0, 1e8, None)

    def mean_dice(self) -> float:
        """Mean over the labels of the mean Dice."""
        return sum(getattr(self.dice, k).mean for k in KEYS) / len(KEYS)


# --------------------------------------------------------------------------- a site's section
@dataclass
class SplitSizes:
    train: int = count()
    val: int = count()
    test: int = count(MAX_TEST_CASES)


@dataclass
class ArtifactInfo:
    name: str
    version: str
    key_id: str


@dataclass
class SiteResults:
    """What one site sends back: its status and, when ``ok``, the runs."""

    status: Status
    reason: Reason = Reason.NONE
    n_test: int = count(MAX_TEST_CASES, 0)
    runs: list[Run] = field(default_factory=list)
    role: SiteRole | None = None
    n_cases: int | None = count(default=None)
    split: SplitSizes | None = None
    excluded: int | None = count(default=None)
    preprocess_failed: int | None = count(default=None)
    seconds: float | None = bounded(0.0, 1e8, None)
    protocol: Protocol | None = None
    artifact: ArtifactInfo | None = None
    # the site's own fed-transfer settings (its config's [federation]): whether its weight
    # updates may leave it, and the NVFlare privacy filter they leave through
    weight_sharing: bool | None = None
    update_filter: UpdateFilter | None = None

    @classmethod
    def pending(cls) -> SiteResults:
        return cls(status=Status.PENDING)

    @classmethod
    def failed(cls, reason: Reason) -> SiteResults:
        return cls(status=Status.FAILED, reason=Reason(reason))

    def to_dict(self) -> dict:
        return to_dict(self)

    @classmethod
    def from_dict(cls, d: dict) -> SiteResults:
        return from_dict(cls, d, "site")


# --------------------------------------------------------------------------- the federation
class FedEventKind(StrEnum):
    """What happened to a site in a fed-transfer run (the server's record)."""

    OPTED_OUT = "opted_out"  # its config does not allow weight sharing: never sent weights
    TOO_FEW_CASES = "too_few_cases"  # fewer training cases than the size: skipped for it
    REFUSED = "refused"  # refused the task (artifact, configuration, protocol): see reason
    REJECTED = "update_rejected"  # names, shapes or values wrong: not aggregated, left out after
    DROPPED = "dropped"  # no update (failed, died or lost): left out of later rounds


FED_EVENT_TEXT = {
    FedEventKind.OPTED_OUT: "opted out (its config does not allow weight sharing)",
    FedEventKind.TOO_FEW_CASES: "skipped: fewer training cases than the size",
    FedEventKind.REFUSED: "refused the task",
    FedEventKind.REJECTED: "update rejected at aggregation; left out of later rounds",
    FedEventKind.DROPPED: "dropped out (no update); left out of later rounds",
}


@dataclass
class FedEvent:
    """One site's exclusion from a fed-transfer run, from the round it happened in."""

    site: str
    round: int = count()
    kind: FedEventKind = FedEventKind.DROPPED
    reason: Reason = Reason.NONE  # a refusal's code
    detail: str = ""  # what the server found wrong with a rejected update


@dataclass
class FedRun:
    """The fed-transfer run of one training size (the server's record)."""

    size: int = count()
    rounds: int = count()  # planned
    completed: int = count(default=0)  # aggregated rounds
    sites: list[str] = field(default_factory=list)  # whose updates made the last round
    events: list[FedEvent] = field(default_factory=list)
    resumed_from: int | None = count(default=None)  # the first round this job ran, if resumed
    update_bytes: list[int] = field(default_factory=list)  # per round: model update bytes in
    round_sites: list[int] = field(default_factory=list)  # per round: updates aggregated
    param_bytes: int | None = count(hi=10**12, default=None)  # the model's parameters, bytes
    round_seconds: list[float] = field(default_factory=list)  # per round run in this job


@dataclass
class FedStudy:
    """The fed-transfer arm as the server ran it: FedAvg (NVFlare) per training size."""

    rounds: int = count()
    epochs_per_round: int = count()
    mu: float = 0.0  # FedProx proximal weight (0: plain FedAvg)
    runs: list[FedRun] = field(default_factory=list)


@dataclass
class ResultsDoc:
    """A results file (one site) or the coordinator's report (every site)."""

    sites: dict[str, SiteResults]
    schema: str = SCHEMA
    protocol: Protocol | None = None
    federation: FedStudy | None = None  # the server's record of the fed-transfer arm

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
           "optional", "per_case", "bounded", "unit", "correlation", "count", "NoR", "Reason",
           "REASON_TEXT", "MAX_TEST_CASES", "MAX_COUNT", "FedEventKind", "FED_EVENT_TEXT",
           "FedEvent", "FedRun", "FedStudy"]
