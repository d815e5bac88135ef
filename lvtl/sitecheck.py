"""Hospital IT's pre-flight check of a site: ``lvtl site check --config site.toml``.

One :class:`Finding` per check, each a line a person can act on: the configuration is valid;
the data root is a readable folder of cases; the cache can be written; the trusted keys parse
and the revocations are well-formed; a minimum model version is set; and neither the
configuration nor the trust folder can be changed by the account the NVFlare client runs as
(a site task that could rewrite its own trust would trust whatever a job told it to).

What the permission check can tell: whether ``account`` (default: the account running the
check) may write the files and folders, from their owner, group and mode bits. What it
cannot: access granted by ACLs, capabilities, or root — root may change any file whatever its
mode, so a client running as root is reported as able to change its trust, and the only fix
is to run the client under its own unprivileged account.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from dataclasses import dataclass
from pathlib import Path

from lvtl.artifact import PUBLIC_SUFFIX, TrustStore
from lvtl.config import SiteConfig, load_site_config
from lvtl.data.preprocess import find_cases
from lvtl.errors import LvtlError


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
