"""The allow-list of what may leave a site: the metrics of the study's results section.

Pure Python (no NVFlare), so the site task checks its own output and the NVFlare result
filter enforces the same rule on the way out. Allowed: the documented fields, numbers,
short strings, and lists no longer than the number of test cases. Anything else (an unknown
field, an array, bytes, a long list or text) is refused with the path of the offending field.
"""

from __future__ import annotations

from numbers import Real

MAX_TEXT = 500
ARMS = ("baseline", "random", "transfer")
_NUM = "number"
_INT = "int"
_TEXT = "text"
_STATS = {"mean": _NUM, "max": _NUM, "min": _NUM, "std": _NUM, "n": _INT}
_PER_LABEL = ("blood_pool", "lvm")
_PHASES = ("ED", "ES")
_THICK = ("median", "p95", "max")

RUN = {
    "arm": _TEXT, "train_size": _INT, "n_test": _INT,
    "dice": {k: _STATS for k in _PER_LABEL},
    "dice_per_case": {k: "list" for k in _PER_LABEL},
    "thickness_r": {p: {s: _NUM for s in _THICK} for p in _PHASES},
    "thickness_r_ci": {p: {s: {"low": _NUM, "high": _NUM, "n": _INT, "why": _TEXT}
                           for s in _THICK} for p in _PHASES},
    "thickness_unmeasurable": {p: {"truth": _INT, "prediction": _INT} for p in _PHASES},
    "best_epoch": _INT, "val_dice": _NUM, "train_seconds": _NUM,
}
SECTION = {
    "status": _TEXT, "reason": _TEXT, "n_test": _INT, "n_cases": _INT,
    "split": {"train": _INT, "val": _INT, "test": _INT},
    "excluded": _INT, "preprocess_failed": _INT, "seconds": _NUM,
    "protocol": "protocol", "runs": "runs", "artifact": {"name": _TEXT, "version": _TEXT,
                                                         "key_id": _TEXT},
}


def _check(value, spec, path: str, n_test: int, problems: list[str]) -> None:
    if value is None:
        return
    if isinstance(spec, dict):
        if not isinstance(value, dict):
            problems.append(f"{path}: expected an object")
            return
        for k, v in value.items():
            if k not in spec:
                problems.append(f"{path}.{k}: not an allowed field")
                continue
            _check(v, spec[k], f"{path}.{k}", n_test, problems)
    elif spec == _NUM or spec == _INT:
        if isinstance(value, bool) or not isinstance(value, Real):
            problems.append(f"{path}: expected a number, got {type(value).__name__}")
    elif spec == _TEXT:
        if not isinstance(value, str) or len(value) > MAX_TEXT:
            problems.append(f"{path}: expected text of at most {MAX_TEXT} characters")
    elif spec == "list":
        if not isinstance(value, list) or len(value) > n_test:
            problems.append(f"{path}: a list longer than the {n_test} test cases, or not a "
                            "list")
        elif not all(isinstance(v, Real) and not isinstance(v, bool) for v in value):
            problems.append(f"{path}: only numbers may be listed")
    elif spec == "runs":
        if not isinstance(value, list) or len(value) > 64:
            problems.append(f"{path}: expected a list of at most 64 runs")
            return
        for i, run in enumerate(value):
            _check(run, RUN, f"{path}[{i}]", n_test, problems)
    elif spec == "protocol":
        if not isinstance(value, dict):
            problems.append(f"{path}: expected an object")
            return
        for k, v in value.items():
            ok = (isinstance(v, (str, bool, Real)) and len(str(v)) <= MAX_TEXT) or (
                isinstance(v, list) and len(v) <= 16
                and all(isinstance(x, (str, Real)) for x in v))
            if not ok:
                problems.append(f"{path}.{k}: not a short scalar or list")


def check_section(section) -> list[str]:
    """Problems that keep a site's results section from leaving the site (empty: it may)."""
    problems: list[str] = []
    if not isinstance(section, dict):
        return [f"results: expected an object, got {type(section).__name__}"]
    n_test = section.get("n_test", 0)
    if isinstance(n_test, bool) or not isinstance(n_test, int) or n_test < 0:
        return ["results.n_test: expected a non-negative integer"]
    _check(section, SECTION, "results", n_test, problems)
    return problems
