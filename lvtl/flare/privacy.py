"""The allow-list of what may leave a site, generated from the typed results.

Pure Python (no NVFlare), so the site task checks its own output and the NVFlare result
filter enforces the same rule on the way out. The allowed fields, their kinds and their bounds
are read off :class:`lvtl.study.results.SiteResults` (see that module for the kinds): known
fields only; finite numbers; Enum values from their Enum; text of at most ``MAX_TEXT``
characters; numbers within their field's range (Dice in [0, 1], r in [-1, 1], counts);
per-case lists no longer than the section's ``n_test`` (at most ``MAX_TEST_CASES``, and every
run's ``n_test`` must be the section's); other lists and tuples at most ``MAX_ITEMS`` long; the
echoed protocol valid by the protocol's own checks. Anything else (an unknown field, an
array, bytes, a long list or text) is refused with the path of the offending field. A field
added to the results types is allowed here without a change.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from enum import Enum
from numbers import Real
from typing import Any

from lvtl.errors import ConfigError
from lvtl.study.protocol import Protocol
from lvtl.study.results import (
    MAX_ITEMS,
    MAX_TEST_CASES,
    MAX_TEXT,
    SiteResults,
    hints,
    optional,
)


def check_section(section: Any) -> list[str]:
    """Problems that keep a site's results section from leaving the site (empty: it may)."""
    if not isinstance(section, dict):
        return [f"results: expected an object, got {type(section).__name__}"]
    n_test = section.get("n_test", 0)
    if isinstance(n_test, bool) or not isinstance(n_test, int) or n_test < 0:
        return ["results.n_test: expected a non-negative integer"]
    if n_test > MAX_TEST_CASES:
        return [f"results.n_test: more than {MAX_TEST_CASES} test cases"]
    problems: list[str] = []
    _check(SiteResults, section, "results", n_test, problems)
    for i, run in enumerate(section.get("runs") or []):
        if isinstance(run, dict) and run.get("n_test") != n_test:
            problems.append(f"results.runs[{i}].n_test: differs from the section's {n_test}")
    return problems


def _check(tp: Any, value: Any, path: str, n_test: int, problems: list[str],
           per_case: bool = False, bounds: tuple[float, float] | None = None) -> None:
    tp, _ = optional(tp)
    if value is None:
        return  # an absent value: nothing leaves
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            problems.append(f"{path}: expected an object")
            return
        types_ = hints(tp)
        meta = {f.name: f.metadata for f in dataclasses.fields(tp)}
        for k, v in value.items():
            if k not in types_:
                problems.append(f"{path}.{k}: not an allowed field")
                continue
            _check(types_[k], v, f"{path}.{k}", n_test, problems,
                   per_case=bool(meta[k].get("per_case")), bounds=meta[k].get("range"))
        if tp is Protocol and not problems:
            try:  # the echoed protocol against the protocol's own definition
                Protocol.from_dict(value)
            except ConfigError as e:
                problems.append(f"{path}: not a valid protocol ({e})")
        return
    origin = typing.get_origin(tp)
    if origin in (list, tuple):
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        limit = n_test if per_case else MAX_ITEMS
        if not isinstance(value, list):
            problems.append(f"{path}: expected a list")
        elif len(value) > limit:
            problems.append(f"{path}: a list longer than the {n_test} test cases" if per_case
                            else f"{path}: a list longer than {MAX_ITEMS} items")
        elif per_case and not all(_number(v) for v in value):
            problems.append(f"{path}: only numbers may be listed")
        elif per_case and bounds and not all(bounds[0] <= v <= bounds[1] for v in value):
            problems.append(f"{path}: a value outside [{bounds[0]}, {bounds[1]}]")
        else:
            for i, v in enumerate(value):
                _check(args[min(i, len(args) - 1)], v, f"{path}[{i}]", n_test, problems)
        return
    if isinstance(tp, type) and issubclass(tp, Enum):
        if value not in {m.value for m in tp}:
            problems.append(f"{path}: not one of {', '.join(str(m.value) for m in tp)}")
    elif tp is bool:
        if not isinstance(value, bool):
            problems.append(f"{path}: expected true or false")
    elif tp in (int, float):
        if not _number(value) or (tp is int and not isinstance(value, int)):
            problems.append(f"{path}: expected a finite {'integer' if tp is int else 'number'}"
                            f", got {type(value).__name__}")
        elif bounds and not bounds[0] <= value <= bounds[1]:
            problems.append(f"{path}: {value!r} outside [{bounds[0]}, {bounds[1]}]")
    elif tp is str:
        if not isinstance(value, str) or len(value) > MAX_TEXT:
            problems.append(f"{path}: expected text of at most {MAX_TEXT} characters")
    else:  # a kind the results types do not use: refuse rather than guess
        problems.append(f"{path}: no rule for {tp!r}")


def _number(v: Any) -> bool:
    return isinstance(v, Real) and not isinstance(v, bool) and math.isfinite(v)
