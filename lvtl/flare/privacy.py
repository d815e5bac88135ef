"""The allow-list of what may leave a site, generated from the typed results.

Pure Python (no NVFlare), so the site task checks its own output and the NVFlare result
filter enforces the same rule on the way out. The allowed fields, their kinds and their bounds
are read off :class:`lvtl.study.results.SiteResults` (see that module for the kinds): known
fields only; finite numbers; Enum values from their Enum; text of at most ``MAX_TEXT``
characters; per-case lists no longer than the section's ``n_test``; other lists and tuples at
most ``MAX_ITEMS`` long. Anything else (an unknown field, an array, bytes, a long list or text)
is refused with the path of the offending field. A field added to the results types is allowed
here without a change.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from enum import Enum
from numbers import Real
from typing import Any

from lvtl.study.results import MAX_ITEMS, MAX_TEXT, SiteResults, hints, optional


def check_section(section: Any) -> list[str]:
    """Problems that keep a site's results section from leaving the site (empty: it may)."""
    if not isinstance(section, dict):
        return [f"results: expected an object, got {type(section).__name__}"]
    n_test = section.get("n_test", 0)
    if isinstance(n_test, bool) or not isinstance(n_test, int) or n_test < 0:
        return ["results.n_test: expected a non-negative integer"]
    problems: list[str] = []
    _check(SiteResults, section, "results", n_test, problems)
    return problems


def _check(tp: Any, value: Any, path: str, n_test: int, problems: list[str],
           per_case: bool = False) -> None:
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
                   per_case=bool(meta[k].get("per_case")))
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
    elif tp is str:
        if not isinstance(value, str) or len(value) > MAX_TEXT:
            problems.append(f"{path}: expected text of at most {MAX_TEXT} characters")
    else:  # a kind the results types do not use: refuse rather than guess
        problems.append(f"{path}: no rule for {tp!r}")


def _number(v: Any) -> bool:
    return isinstance(v, Real) and not isinstance(v, bool) and math.isfinite(v)
