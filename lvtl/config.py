"""Site configuration: typed, validated, loaded from TOML.

A site's own file (``sites/<site>/site.toml`` in the templates) says where its private data is,
how to preprocess it and which keys it trusts. Private paths come from this file or from the
environment (``LVTL_DATA_ROOT`` overrides ``[data] root``), never from a job.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path

import tomllib

from lvtl.errors import ConfigError
from lvtl.preprocess import PreprocessConfig

ROLES = ("model-owner", "participant")


@dataclass(frozen=True)
class SiteConfig:
    """One site's settings."""

    name: str
    role: str = "participant"
    data_root: Path | None = None
    cache_root: Path | None = None
    split_seed: int = 0
    trusted_keys: Path | None = None
    revoked_keys: tuple[str, ...] = ()
    min_artifact_version: str | None = None
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    source: Path | None = None


def parse_ints(text: str, name: str, n: int | None = None) -> tuple[int, ...]:
    """Comma-separated positive integers of option ``--name`` (``n`` of them if given)."""
    try:
        vals = tuple(int(v) for v in text.replace("x", ",").split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"--{name}: expected comma-separated integers, got {text!r}") from None
    if not vals or (n is not None and len(vals) != n) or min(vals) < 1:
        raise ConfigError(f"--{name}: expected {n or 'some'} positive integers, got {text!r}")
    return vals


def _section(doc: dict, name: str, allowed: set[str], path: Path) -> dict:
    sec = doc.get(name, {})
    if not isinstance(sec, dict):
        raise ConfigError(f"{path}: [{name}] must be a table")
    unknown = sorted(set(sec) - allowed)
    if unknown:
        raise ConfigError(f"{path}: unknown key {unknown[0]!r} in [{name}]; "
                          f"allowed: {', '.join(sorted(allowed))}")
    return sec


def _path(value, base: Path, where: str) -> Path | None:
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        raise ConfigError(f"{where} must be a path string, got {value!r}")
    p = Path(os.path.expandvars(os.path.expanduser(value)))
    return p if p.is_absolute() else (base / p)


def load_site_config(path: str | Path) -> SiteConfig:
    """Read and validate a site TOML file; relative paths are relative to the file."""
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML ({e})") from None
    unknown = sorted(set(doc) - {"site", "data", "preprocess", "trust"})
    if unknown:
        raise ConfigError(f"{path}: unknown section [{unknown[0]}]; "
                          "allowed: site, data, preprocess, trust")
    base = path.parent
    site = _section(doc, "site", {"name", "role", "split_seed"}, path)
    data = _section(doc, "data", {"root", "cache"}, path)
    pre_keys = {f.name for f in fields(PreprocessConfig)}
    pre = _section(doc, "preprocess", pre_keys, path)
    trust = _section(doc, "trust", {"keys", "revoked", "min_version"}, path)
    name = site.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{path}: [site] name is required")
    role = site.get("role", "participant")
    if role not in ROLES:
        raise ConfigError(f"{path}: unknown role {role!r}; choose one of: {', '.join(ROLES)}")
    root = _path(os.environ.get("LVTL_DATA_ROOT") or data.get("root"), base, "[data] root")
    try:
        pre_cfg = PreprocessConfig(**pre)
    except TypeError as e:
        raise ConfigError(f"{path}: [preprocess] {e}") from None
    except ConfigError as e:
        raise ConfigError(f"{path}: [preprocess] {e}") from None
    seed = site.get("split_seed", 0)
    if not isinstance(seed, int):
        raise ConfigError(f"{path}: [site] split_seed must be an integer")
    revoked = trust.get("revoked", [])
    if not isinstance(revoked, list) or not all(isinstance(k, str) for k in revoked):
        raise ConfigError(f"{path}: [trust] revoked must be a list of key id strings")
    min_version = trust.get("min_version")
    if min_version is not None and not isinstance(min_version, str):
        raise ConfigError(f"{path}: [trust] min_version must be a version string like \"1.0.0\"")
    return SiteConfig(
        name=name,
        role=role,
        data_root=root,
        cache_root=_path(data.get("cache"), base, "[data] cache"),
        split_seed=seed,
        trusted_keys=_path(trust.get("keys"), base, "[trust] keys"),
        revoked_keys=tuple(revoked),
        min_artifact_version=min_version,
        preprocess=pre_cfg,
        source=path,
    )
