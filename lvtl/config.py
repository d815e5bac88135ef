"""Site configuration: typed, validated, loaded from TOML.

A site's own file (``sites/<site>/site.toml`` in the templates) says what the site is (its name
and role), where its private data is, how it splits its cases, how to preprocess them and which
keys it trusts. Private paths come from this file or from the
environment (``LVTL_DATA_ROOT`` overrides ``[data] root``), never from a job.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from enum import StrEnum
from pathlib import Path

from lvtl.artifact import TrustStore, normalize_key_id, parse_version
from lvtl.data.preprocess import PreprocessConfig
from lvtl.errors import ArtifactError, ConfigError, choose


class SiteRole(StrEnum):
    """What a site is in the study; reported with its results, so the coordinator can tell the
    model owner's home evaluation from a receiving site's transfer."""

    MODEL_OWNER = "model-owner"
    PARTICIPANT = "participant"


class UpdateFilter(StrEnum):
    """The NVFlare privacy filter a site puts on its fed-transfer weight updates (its own
    choice, reported with its results); its settings are ``[federation] filter_args``."""

    NONE = "none"
    PERCENTILE = "percentile"  # NVFlare PercentilePrivacy: only the largest |diffs|, clipped
    SVT = "svt"  # NVFlare SVTPrivacy: sparse vector technique (differential privacy)
    EXCLUDE_VARS = "exclude_vars"  # NVFlare ExcludeVars: named layers never leave


@dataclass(frozen=True)
class Federation:
    """``[federation]``: whether this site's model weight updates may leave it (the
    fed-transfer arm; off unless the site turns it on) and through which privacy filter."""

    allow_weight_sharing: bool = False
    update_filter: UpdateFilter = UpdateFilter.NONE
    filter_args: tuple[tuple[str, object], ...] = ()  # the filter's settings, by name


@dataclass(frozen=True)
class SiteConfig:
    """One site's settings."""

    name: str
    role: SiteRole = SiteRole.PARTICIPANT
    data_root: Path | None = None
    cache_root: Path | None = None
    split_seed: int = 0  # the site's own split of its cases; replaces a job's split seed
    trusted_keys: Path | None = None
    revoked_keys: tuple[str, ...] = ()
    min_artifact_version: str | None = None
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    federation: Federation = field(default_factory=Federation)
    source: Path | None = None


SECTIONS = ("site", "data", "preprocess", "trust", "federation")


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
    unknown = sorted(set(doc) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"{path}: unknown section [{unknown[0]}]; "
                          f"allowed: {', '.join(SECTIONS)}")
    base = path.parent
    site = _section(doc, "site", {"name", "role", "split_seed"}, path)
    data = _section(doc, "data", {"root", "cache"}, path)
    pre_keys = {f.name for f in fields(PreprocessConfig)}
    pre = _section(doc, "preprocess", pre_keys, path)
    trust = _section(doc, "trust", {"keys", "revoked", "min_version"}, path)
    federation = _federation(_section(doc, "federation", {"allow_weight_sharing",
                                                          "update_filter", "filter_args"}, path),
                             path)
    name = site.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{path}: [site] name is required")
    try:
        role = choose(SiteRole, site.get("role", SiteRole.PARTICIPANT), "role")
    except ConfigError as e:
        raise ConfigError(f"{path}: [site] {e}") from None
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
    try:
        revoked = [normalize_key_id(k) for k in revoked]
    except ArtifactError as e:
        raise ConfigError(f"{path}: [trust] revoked: {e}") from None
    min_version = trust.get("min_version")
    if "keys" in trust and min_version is None:
        raise ConfigError(f"{path}: [trust] min_version is required with keys: the oldest "
                          "model version this site fine-tunes, like \"1.0.0\"")
    if min_version is not None:
        try:
            parse_version(min_version)
        except ArtifactError:
            raise ConfigError(f"{path}: [trust] min_version must be a version string like "
                              f"\"1.0.0\", got {min_version!r}") from None
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
        federation=federation,
        source=path,
    )


def _federation(sec: dict, path: Path) -> Federation:
    allow = sec.get("allow_weight_sharing", False)
    if not isinstance(allow, bool):
        raise ConfigError(f"{path}: [federation] allow_weight_sharing must be true or false")
    try:
        kind = choose(UpdateFilter, sec.get("update_filter", UpdateFilter.NONE), "update_filter")
    except ConfigError as e:
        raise ConfigError(f"{path}: [federation] {e}") from None
    args = sec.get("filter_args", {})
    if not isinstance(args, dict) or not all(
            isinstance(v, (int, float, str, bool)) for v in args.values()):
        raise ConfigError(f"{path}: [federation] filter_args must be a table of numbers, text "
                          "or true/false (the filter's settings by name)")
    if args and kind is UpdateFilter.NONE:
        raise ConfigError(f"{path}: [federation] filter_args given without an update_filter")
    return Federation(allow_weight_sharing=allow, update_filter=kind,
                      filter_args=tuple(sorted(args.items())))


def trust_store(keys: Path | None = None, revoked: Iterable[str] = (),
                min_version: str | None = None, config: Path | None = None) -> TrustStore:
    """Pinned keys from ``keys`` (a public key file or a folder of them) or from a site
    config's ``[trust]`` section, plus the given and the config's revocations; ``min_version``
    overrides the config's."""
    if keys is None and config is None:
        raise ConfigError("give --trust PUBKEY_OR_DIR or a site --config with [trust] keys")
    site = load_site_config(config) if config is not None else None
    store = (TrustStore.from_path(keys) if keys is not None
             else TrustStore.from_site_config(site))
    rev = set(revoked) | set(site.revoked_keys if site else ())
    return TrustStore(keys=store.keys, revoked=frozenset(rev),
                      min_version=min_version or (site.min_artifact_version if site else None))
