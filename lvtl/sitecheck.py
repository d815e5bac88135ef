"""Hospital IT's pre-flight check of a site: ``lvtl site check --config site.toml``.

One :class:`Finding` per check, each a line a person can act on: the configuration is valid;
the data root is a readable folder of cases; the cache can be written; the trusted keys parse
and the revocations are well-formed; a minimum model version is set; whether the site's model
weight updates may leave it (``[federation]``, the fed-transfer arm) and through which NVFlare
privacy filter, built from its settings as the site task will build it; and neither the
configuration nor the trust folder can be changed by the account the NVFlare client runs as
(a site task that could rewrite its own trust would trust whatever a job told it to).

:func:`build_update_filter` is the one place a site's ``[federation] update_filter`` and
``filter_args`` become an NVFlare filter: here for the check, in ``lvtl.flare.filters`` for the
fed-transfer task's outgoing update. Its settings are checked by lvtl before NVFlare sees them:
only the settings listed in :data:`FILTER_ARGS` (a filter's ``data_kinds`` is lvtl's to set,
not the site's), each of its type and range, because NVFlare's filters accept values with which
they would let an update leave unfiltered (a percentile outside 0..100 or ``gamma`` 0 in
PercentilePrivacy, an empty pattern in ExcludeVars) or fail only when the first update is sent
(an SVT privacy budget that does not add up).

What the permission check can tell: whether ``account`` (default: the account running the
check) may write the files and folders, from their owner, group and mode bits. What it
cannot: access granted by ACLs, capabilities, or root — root may change any file whatever its
mode, so a client running as root is reported as able to change its trust, and the only fix
is to run the client under its own unprivileged account.
"""

from __future__ import annotations

import difflib
import grp
import inspect
import math
import os
import pwd
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from nvflare.apis.filter import Filter
from nvflare.app_common.filters.exclude_vars import ExcludeVars
from nvflare.app_common.filters.percentile_privacy import PercentilePrivacy
from nvflare.app_common.filters.svt_privacy import SVTPrivacy

from lvtl.artifact import PUBLIC_SUFFIX, TrustStore
from lvtl.config import Federation, SiteConfig, UpdateFilter, load_site_config
from lvtl.data.preprocess import find_cases
from lvtl.errors import ConfigError, LvtlError


@dataclass(frozen=True)
class Finding:
    """One check: ``ok`` or a problem, and one line saying what was found."""

    ok: bool
    what: str

    def line(self) -> str:
        return f"{'ok     ' if self.ok else 'PROBLEM'} {self.what}"


@dataclass(frozen=True)
class Account:
    """The account whose write access is checked: its uid and groups."""

    name: str
    uid: int
    gids: frozenset[int]

    @classmethod
    def named(cls, name: str | None = None) -> Account:
        """``name`` (a user on this machine), or the account running this process."""
        if name is None:
            uid = os.getuid()
            return cls(pwd.getpwuid(uid).pw_name, uid, frozenset(os.getgroups()) | {os.getgid()})
        try:
            pw = pwd.getpwnam(name)
        except KeyError:
            raise LvtlError(f"{name}: no such user on this machine") from None
        gids = {g.gr_gid for g in grp.getgrall() if name in g.gr_mem} | {pw.pw_gid}
        return cls(name, pw.pw_uid, frozenset(gids))

    def can_write(self, path: Path) -> bool:
        """Whether the account may change ``path`` (its mode bits; root may change anything)."""
        if self.uid == 0:
            return True
        st = path.stat()
        if st.st_uid == self.uid:
            return bool(st.st_mode & stat.S_IWUSR)
        if st.st_gid in self.gids:
            return bool(st.st_mode & stat.S_IWGRP)
        return bool(st.st_mode & stat.S_IWOTH)


def check_site(config: str | Path, account: Account | None = None) -> list[Finding]:
    """Every finding about the site configured in ``config`` (see the module docstring)."""
    account = account or Account.named()
    try:
        cfg = load_site_config(config)
    except LvtlError as e:
        return [Finding(False, f"config: {e}")]
    found = [Finding(True, f"config {cfg.source}: site {cfg.name} ({cfg.role})")]
    found += _data(cfg)
    found += _trust(cfg)
    found += _federation(cfg)
    found += _tamper(cfg, account)
    return found


def _data(cfg: SiteConfig) -> list[Finding]:
    out = []
    if cfg.data_root is None:
        out.append(Finding(False, f"{cfg.source}: [data] root is not set (or LVTL_DATA_ROOT)"))
    else:
        try:
            bad: list[tuple[str, str]] = []
            cases = find_cases(cfg.data_root, bad)
            out.append(Finding(True, f"data {cfg.data_root}: {len(cases)} case folder(s)"))
            out += [Finding(False, f"data {cfg.data_root}: {name}: {why}") for name, why in bad]
        except LvtlError as e:
            out.append(Finding(False, f"data: {e}"))
    if cfg.cache_root is None:
        out.append(Finding(False, f"{cfg.source}: [data] cache is not set"))
    else:
        nearest = next(p for p in (cfg.cache_root, *cfg.cache_root.parents) if p.exists())
        ok = os.access(nearest, os.W_OK)
        out.append(Finding(ok, f"cache {cfg.cache_root}: "
                               + ("can be written" if ok else f"{nearest} is not writable")))
    return out


def _trust(cfg: SiteConfig) -> list[Finding]:
    try:
        store = TrustStore.from_site_config(cfg)
    except LvtlError as e:
        return [Finding(False, f"trust: {e}")]
    out = [Finding(True, f"trust {cfg.trusted_keys}: {len(store.keys)} pinned key(s) "
                         f"({', '.join(sorted(store.keys))})")]
    revoked_pinned = sorted(set(store.keys) & store.revoked)
    out.append(Finding(True, f"trust: {len(store.revoked)} revoked key id(s)"
                             + (f", {len(revoked_pinned)} of them still in the trust folder "
                                f"(refused all the same): {', '.join(revoked_pinned)}"
                                if revoked_pinned else "")))
    out.append(Finding(store.min_version is not None,
                       f"trust: minimum model version {store.min_version}"
                       if store.min_version else f"{cfg.source}: [trust] min_version is not set"))
    return out


#: The NVFlare filter class each ``[federation] update_filter`` stands for.
UPDATE_FILTER_CLASSES: dict[UpdateFilter, type[Filter]] = {
    UpdateFilter.PERCENTILE: PercentilePrivacy,
    UpdateFilter.SVT: SVTPrivacy,
    UpdateFilter.EXCLUDE_VARS: ExcludeVars,
}


def _number(test: Callable[[float], bool], what: str) -> tuple[Callable[[object], bool], str]:
    def ok(v: object) -> bool:
        return (isinstance(v, (int, float)) and not isinstance(v, bool)
                and math.isfinite(v) and test(v))
    return ok, what


def _regex(v: object) -> bool:
    if not isinstance(v, str) or not v:
        return False
    try:
        re.compile(v)
    except re.error:
        return False
    return True


_POSITIVE = _number(lambda v: v > 0, "a number above 0")

#: The settings (``[federation] filter_args``) each filter takes from a site: name -> (test,
#: what the value must be). The names are the NVFlare filter's constructor arguments.
FILTER_ARGS: dict[UpdateFilter, dict[str, tuple[Callable[[object], bool], str]]] = {
    UpdateFilter.PERCENTILE: {
        "percentile": _number(lambda v: 0 <= v <= 100, "a number from 0 to 100"),
        "gamma": _POSITIVE,
    },
    UpdateFilter.SVT: {
        "fraction": _number(lambda v: 0 < v <= 1, "a number above 0, at most 1"),
        "epsilon": _POSITIVE,
        "noise_var": _POSITIVE,
        "gamma": _POSITIVE,
        "tau": _number(lambda v: v >= 0, "a number, at least 0"),
        "replace": (lambda v: isinstance(v, bool), "true or false"),
        "epsilon_threshold": _POSITIVE,
        "epsilon_query": _POSITIVE,
        "epsilon_release": _POSITIVE,
    },
    UpdateFilter.EXCLUDE_VARS: {
        "exclude_vars": (_regex, "a non-empty regular expression matching the names of the "
                                 "layers that never leave"),
    },
}
#: Settings without which a filter would filter nothing.
REQUIRED_ARGS: dict[UpdateFilter, tuple[str, ...]] = {
    UpdateFilter.EXCLUDE_VARS: ("exclude_vars",),
}


def build_update_filter(fed: Federation, source: str | Path | None = None) -> Filter | None:
    """The NVFlare filter a site's fed-transfer weight updates leave through, built from its
    ``[federation]`` (``None`` for ``update_filter = "none"``); ``source`` is the config file
    named in errors. Raises :class:`~lvtl.errors.ConfigError` naming the file, the setting and
    what it must be (see the module docstring)."""
    where = f"{source}: [federation]" if source else "[federation]"
    kind = fed.update_filter
    args = dict(fed.filter_args)
    if kind is UpdateFilter.NONE:
        if args:
            raise ConfigError(f"{where} filter_args given without an update_filter")
        return None
    rules = FILTER_ARGS[kind]
    for name, value in args.items():
        if name not in rules:
            close = difflib.get_close_matches(name, list(rules), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{where} filter_args: unknown setting {name!r} of update_filter "
                              f"{kind.value!r}{hint}; allowed: {', '.join(rules)}")
        test, what = rules[name]
        if not test(value):
            raise ConfigError(f"{where} filter_args: {name} = {value!r} must be {what}")
    missing = [name for name in REQUIRED_ARGS.get(kind, ()) if name not in args]
    if missing:
        raise ConfigError(f"{where} filter_args: update_filter {kind.value!r} needs "
                          f"{missing[0]} ({rules[missing[0]][1]})")
    cls = UPDATE_FILTER_CLASSES[kind]
    if kind is UpdateFilter.SVT:
        _svt_budget(args, where)
    try:
        return cls(**args)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where} filter_args: {cls.__name__} refuses "
                          f"{', '.join(f'{k} = {v!r}' for k, v in args.items())}: {e}") from None


def _svt_budget(args: dict[str, object], where: str) -> None:
    """SVTPrivacy splits ``epsilon`` into the threshold and query budgets when it sends the
    first update; a split that does not add up is refused here instead."""
    nums = {k: float(v) for k, v in args.items() if isinstance(v, (int, float))}
    epsilon = nums.get("epsilon", inspect.signature(SVTPrivacy).parameters["epsilon"].default)
    parts = {k: nums[k] for k in ("epsilon_threshold", "epsilon_query") if k in nums}
    total = sum(parts.values())
    if (len(parts) == 2 and not math.isclose(total, epsilon, rel_tol=1e-9)) or (
            len(parts) == 1 and total >= epsilon):
        raise ConfigError(f"{where} filter_args: {' + '.join(parts)} = {total:g} must "
                          f"{'equal' if len(parts) == 2 else 'be below'} epsilon = {epsilon:g} "
                          "(the SVT privacy budget)")


def _federation(cfg: SiteConfig) -> list[Finding]:
    fed = cfg.federation
    out = [Finding(True, "federation: weight sharing "
                         + ("allowed: this site's model weight updates may leave it for the "
                            "fed-transfer arm" if fed.allow_weight_sharing
                            else "off: no model weights leave this site (it sits out the "
                                 "fed-transfer arm)"))]
    settings = ", ".join(f"{k} = {v!r}" for k, v in fed.filter_args)
    try:
        build_update_filter(fed, cfg.source)
    except ConfigError as e:
        out.append(Finding(False, f"federation: {e}"))
        return out
    if fed.update_filter is UpdateFilter.NONE:
        what = "none (weight updates leave as computed)"
    else:
        cls = UPDATE_FILTER_CLASSES[fed.update_filter].__name__
        what = (f"{fed.update_filter.value} (NVFlare {cls}, "
                + (settings if settings else "its default settings") + ")")
    unused = "" if fed.allow_weight_sharing else "; unused while weight sharing is off"
    out.append(Finding(True, f"federation: update filter {what}{unused}"))
    return out


def _tamper(cfg: SiteConfig, account: Account) -> list[Finding]:
    paths = [cfg.source, cfg.source.parent] if cfg.source else []
    if cfg.trusted_keys is not None and cfg.trusted_keys.exists():
        keys = cfg.trusted_keys
        paths += [keys, *sorted(keys.glob(f"*{PUBLIC_SUFFIX}"))] if keys.is_dir() else [keys]
    writable = [p for p in paths if p.exists() and account.can_write(p)]
    if account.uid == 0:
        return [Finding(False, f"account {account.name} is root: it can change the config and "
                               "the trusted keys whatever their permissions; run the NVFlare "
                               "client as its own unprivileged account and check with "
                               "--account NAME")]
    if writable:
        return [Finding(False, f"account {account.name} can change {p}") for p in writable]
    return [Finding(True, f"account {account.name} cannot change the config or the trusted "
                          "keys (by their mode bits)")]
