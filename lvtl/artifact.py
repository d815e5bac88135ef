"""Signed model artifacts: package, sign, verify, and load only what verifies.

An artifact is a directory of exactly these files::

    weights.safetensors   the tensors (safetensors: plain data, loading it runs no code)
    manifest.json         canonical JSON (sorted keys, no whitespace, UTF-8), the signed bytes
    signature.json        {"alg": "Ed25519", "key_id": "<16 hex>", "signature": "<base64>"}

The manifest (schema ``lvtl.artifact/1``) names the model (``name``, semver ``version``),
describes it (``architecture``, ``input``, ``labels``, ``preprocessing``), says where it comes
from (``provenance``, ``metrics``), lists every payload file with its SHA-256 and size
(``files``), and records ``created`` (UTC ISO time) and the signer's ``key_id``. The Ed25519
signature is over the manifest's bytes exactly as stored, so every payload byte is bound to
the signature through its hash. A key id is the first 16 hex digits of the SHA-256 of the raw
32-byte public key.

Trust comes only from the verifying site (:class:`TrustStore`, built from its own config):
pinned public keys (several, for rotation), revoked key ids, an optional minimum version.
Nothing in the artifact or the job can add a key.

The public API has no way to load an unverified artifact: :func:`load_verified` verifies and
only then parses the (re-hashed) weight bytes it verified.

Checkpoint format accepted by :func:`sign` (what ``lvtl train`` writes)::

    torch.save({"state_dict": {name: Tensor},          # required
                "config": {"architecture": {"name": str, "hyperparameters": {...}},
                           "input": {...}, "labels": {...}, "preprocessing": {...}},
                "meta": {"provenance": {...}, "metrics": {...}}}, path)

or a bare ``{name: Tensor}`` state dict. It is read with ``torch.load(weights_only=True)``,
which refuses any pickle that would import or call anything beyond tensors and plain
containers, so a malicious checkpoint cannot run code on the signer's machine.

Future: signers certified by the NVFlare project's root CA
----------------------------------------------------------
A provisioned NVFlare startup kit holds ``rootCA.pem``, the project's root certificate. To
accept a signer whose certificate that CA issued (instead of a pinned key), signature.json
would gain a ``cert`` field (PEM of the signer's X.509 certificate, Ed25519 public key). The
verifier would then (1) load the site's own kit ``rootCA.pem`` (from the site config, never
from the artifact), (2) check ``cert.verify_directly_issued_by(root)`` and the validity
window with ``cryptography.x509``, (3) require an organisation/role extension naming a model
owner, (4) take the public key from the certificate, require that its key id equals
``key_id``, apply the revocation list to it, and (5) verify the signature as today. Until that
is built, a ``cert`` field (or any unknown field) is refused.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lvtl.errors import (
    ArtifactError,
    ConfigError,
    OldVersionError,
    RevokedKeyError,
    UntrustedKeyError,
)
from lvtl.labels import NAMES
from lvtl.model.checkpoint import read_checkpoint

log = logging.getLogger(__name__)

SCHEMA = "lvtl.artifact/1"
WEIGHTS = "weights.safetensors"
MANIFEST = "manifest.json"
SIGNATURE = "signature.json"
#: The files of an artifact folder, as they travel in a task.
ARTIFACT_FILES = (MANIFEST, SIGNATURE, WEIGHTS)
ALG = "Ed25519"
PRIVATE_KEY = "signing_key.pem"
PUBLIC_SUFFIX = ".pub.pem"
CHUNK = 1 << 20  # bytes read at a time when hashing
MAX_MANIFEST = 16 << 20
MAX_SIGNATURE = 64 << 10
_SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
                     r"(?:-((?:0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*)"
                     r"(?:\.(?:0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*))*))?"
                     r"(?:\+[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?$")
_KEY_ID = re.compile(r"[0-9a-f]{16}")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,254}$")
_SIG_FIELDS = {"alg", "key_id", "signature"}
_MANIFEST_FIELDS = {"schema", "name", "version", "architecture", "input", "labels",
                    "preprocessing", "provenance", "metrics", "files", "created", "key_id"}


# --------------------------------------------------------------------------- helpers
def canonical_json(obj: Any) -> bytes:
    """The one byte form of a JSON value: sorted keys, no whitespace, UTF-8, no NaN."""
    try:
        return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                          allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as e:
        raise ArtifactError(f"metadata is not plain JSON: {e}") from None


def key_id(public_key) -> str:
    """First 16 hex digits of the SHA-256 of the raw Ed25519 public key bytes."""
    from cryptography.hazmat.primitives import serialization

    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def normalize_key_id(text: str) -> str:
    """The one canonical form of a key id: 16 lower-case hex digits. Accepts the forms a
    person writes (upper case, surrounding spaces, the public key's file name
    ``<id>.pub.pem``); anything else is refused, so a revocation is never silently ignored."""
    if not isinstance(text, str):
        raise ArtifactError(f"key id {text!r} is not text")
    kid = text.strip().lower().removesuffix(PUBLIC_SUFFIX)
    if not _KEY_ID.fullmatch(kid):
        raise ArtifactError(f"{text!r} is not a key id (16 hex digits, as lvtl artifact keygen "
                            "prints it)")
    return kid


def parse_version(version: str) -> tuple:
    """A semver string as a tuple that orders by semver precedence (build metadata ignored)."""
    m = _SEMVER.match(version) if isinstance(version, str) else None
    if not m:
        raise ArtifactError(f"version {version!r} is not a semantic version (like 1.2.0)")
    pre = m.group(4)
    # A release sorts after all of its pre-releases; numeric identifiers before alphanumeric.
    pre_key = (1,) if pre is None else (0, *(
        (0, int(p), "") if p.isdigit() else (1, 0, p) for p in pre.split(".")))
    return int(m.group(1)), int(m.group(2)), int(m.group(3)), pre_key


def sha256_file(path: str | Path, chunk: int = CHUNK) -> tuple[str, int]:
    """Stream a file (``chunk`` bytes at a time, flat memory); return (hex SHA-256, size)."""
    h = hashlib.sha256()
    buf = bytearray(chunk)
    view = memoryview(buf)
    size = 0
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    try:
        with os.fdopen(fd, "rb", buffering=0) as f:
            while n := f.readinto(buf):
                h.update(view[:n])
                size += n
    finally:
        view.release()
    return h.hexdigest(), size


def _read_small(path: Path, limit: int) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        raise ArtifactError(f"{path}: missing") from None
    except OSError as e:
        raise ArtifactError(f"{path}: cannot be read ({e.strerror})") from None
    with os.fdopen(fd, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ArtifactError(f"{path}: larger than {limit} bytes")
    if not data:
        raise ArtifactError(f"{path}: is empty")
    return data


def _write_new(path: Path, data: bytes, mode: int = 0o644) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), mode)
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


# --------------------------------------------------------------------------- keys
def keygen(out_dir: str | Path, passphrase: str | None = None) -> str:
    """Write a new Ed25519 key pair into ``out_dir``; return its key id.

    ``signing_key.pem`` is the private key (PKCS8, mode 0600, encrypted when a passphrase is
    given); ``<key_id>.pub.pem`` is the public key to hand to the sites. Existing files are
    never overwritten.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    priv_path = out / PRIVATE_KEY
    if priv_path.exists():
        raise ArtifactError(f"{priv_path}: exists; refusing to overwrite a signing key")
    key = Ed25519PrivateKey.generate()
    kid = key_id(key.public_key())
    enc = (serialization.BestAvailableEncryption(passphrase.encode("utf-8")) if passphrase
           else serialization.NoEncryption())
    _write_new(priv_path, key.private_bytes(serialization.Encoding.PEM,
                                            serialization.PrivateFormat.PKCS8, enc), 0o600)
    pub = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    _write_new(out / f"{kid}{PUBLIC_SUFFIX}", pub, 0o644)
    log.info("key %s written to %s", kid, out)
    return kid


def load_signing_key(path: str | Path, passphrase: str | None = None):
    """Read an Ed25519 private key (PKCS8 PEM); the passphrase if it is encrypted."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ArtifactError(f"{path}: cannot read the signing key ({e.strerror})") from None
    pw = passphrase.encode("utf-8") if passphrase else None
    try:
        key = serialization.load_pem_private_key(data, password=pw)
    except TypeError:
        raise ArtifactError(f"{path}: the key is encrypted; give its passphrase" if pw is None
                            else f"{path}: the key is not encrypted; give no passphrase") from None
    except ValueError:
        raise ArtifactError(f"{path}: not a private key, or a wrong passphrase") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ArtifactError(f"{path}: not an Ed25519 key")
    return key


def load_public_key(path: str | Path):
    """Read an Ed25519 public key (PEM, SubjectPublicKeyInfo)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    path = Path(path)
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except OSError as e:
        raise ArtifactError(f"{path}: cannot read the public key ({e.strerror})") from None
    except ValueError:
        raise ArtifactError(f"{path}: not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ArtifactError(f"{path}: not an Ed25519 public key")
    return key


@dataclass(frozen=True)
class TrustStore:
    """What a site trusts: pinned public keys by id, revoked ids, a minimum version."""

    keys: Mapping[str, Any]
    revoked: frozenset[str] = frozenset()
    min_version: str | None = None

    def __post_init__(self):
        object.__setattr__(self, "revoked", frozenset(normalize_key_id(k) for k in self.revoked))
        if self.min_version is not None:
            parse_version(self.min_version)

    @classmethod
    def from_path(cls, path: str | Path, revoked: Iterable[str] = (),
                  min_version: str | None = None) -> TrustStore:
        """Pin one public key file, or every ``*.pub.pem`` in a folder (ids from the keys)."""
        path = Path(path)
        if path.is_dir():
            files = sorted(path.glob(f"*{PUBLIC_SUFFIX}"))
        elif path.is_file():
            files = [path]
        else:
            raise ArtifactError(f"{path}: no such trusted key file or folder")
        keys = {}
        for f in files:
            k = load_public_key(f)
            keys[key_id(k)] = k
        if not keys:
            raise ArtifactError(f"{path}: no trusted public keys (*{PUBLIC_SUFFIX})")
        return cls(keys=keys, revoked=frozenset(revoked), min_version=min_version)

    @classmethod
    def from_site_config(cls, cfg) -> TrustStore:
        """The trust of a site: its ``[trust]`` section (keys, revoked, min_version)."""
        if cfg.trusted_keys is None:
            raise ArtifactError(f"{cfg.source}: [trust] keys is not set; the site trusts no key")
        return cls.from_path(cfg.trusted_keys, revoked=cfg.revoked_keys,
                             min_version=cfg.min_artifact_version)


@dataclass(frozen=True)
class VerifiedArtifact:
    """An artifact whose signature, key, files and version all checked out."""

    path: Path
    manifest: dict = field(repr=False)
    key_id: str

    @property
    def name(self) -> str:
        return self.manifest["name"]

    @property
    def version(self) -> str:
        return self.manifest["version"]

    def summary(self) -> str:
        files = self.manifest["files"]
        size = sum(f["size"] for f in files.values())
        return (f"{self.path}: valid, {self.name} {self.version}, signed by key {self.key_id}, "
                f"{len(files)} file(s), {size} bytes")


# --------------------------------------------------------------------------- sign


def _plain_tensors(sd: dict) -> dict:
    seen: set[int] = set()
    out = {}
    for k, v in sd.items():
        t = v.detach().to("cpu").contiguous()
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen:  # safetensors refuses tensors that share memory
            t = t.clone()
        seen.add(t.untyped_storage().data_ptr())
        out[k] = t
    return out


def _code_version() -> str:
    try:
        from importlib.metadata import version

        return f"lvtl {version('lvtl')}"
    except Exception:  # pragma: no cover - not installed
        return "lvtl unknown"


def sign(checkpoint: str | Path, key_path: str | Path, out_dir: str | Path, *, name: str,
         version: str, passphrase: str | None = None,
         metadata: Mapping[str, Any] | None = None) -> VerifiedArtifact:
    """Package and sign a checkpoint as an artifact directory ``out_dir`` (written atomically).

    ``metadata`` overrides manifest sections (``architecture``, ``input``, ``labels``,
    ``preprocessing``, ``provenance``, ``metrics``) taken from the checkpoint's ``config`` and
    ``meta``. Returns the new artifact, as its own verification sees it.
    """
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from safetensors.torch import save_file

    checkpoint, out = Path(checkpoint), Path(out_dir)
    if not isinstance(name, str) or not _SAFE_NAME.match(name):
        raise ArtifactError(f"artifact name {name!r}: use letters, digits, '.', '_' and '-'")
    parse_version(version)
    if out.exists() or out.is_symlink():
        raise ArtifactError(f"{out}: exists; choose a new artifact folder")
    key = load_signing_key(key_path, passphrase)
    kid = key_id(key.public_key())
    sd, config, meta = read_checkpoint(checkpoint)
    sections: dict[str, Any] = {
        "architecture": config.get("architecture", {"name": "unknown", "hyperparameters": {}}),
        "input": config.get("input", {}),
        "labels": config.get("labels", NAMES),
        "preprocessing": config.get("preprocessing", {}),
        "provenance": meta.get("provenance", {}),
        "metrics": meta.get("metrics", {}),
    }
    for k, v in (metadata or {}).items():
        if k not in sections:
            raise ArtifactError(f"unknown metadata section {k!r}; allowed: "
                                + ", ".join(sorted(sections)))
        sections[k] = v
    sections["provenance"] = {"code_version": _code_version(), **sections["provenance"]}
    sections = json.loads(canonical_json(sections))  # plain JSON (tuples -> lists), or refuse

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        save_file(_plain_tensors(sd), str(tmp / WEIGHTS), metadata={"format": "pt"})
        digest, size = sha256_file(tmp / WEIGHTS)
        manifest = {
            "schema": SCHEMA, "name": name, "version": version, **sections,
            "files": {WEIGHTS: {"sha256": digest, "size": size}},
            "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "key_id": kid,
        }
        body = canonical_json(manifest)
        sig = key.sign(body)
        pub: Ed25519PublicKey = key.public_key()
        pub.verify(sig, body)
        sig_doc = {"alg": ALG, "key_id": kid, "signature": base64.b64encode(sig).decode()}
        _write_new(tmp / MANIFEST, body)
        _write_new(tmp / SIGNATURE, canonical_json(sig_doc))
        os.chmod(tmp, 0o755)
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("signed %s %s with key %s -> %s", name, version, kid, out)
    return VerifiedArtifact(path=out, manifest=manifest, key_id=kid)


# --------------------------------------------------------------------------- verify
def _json_object(path: Path, raw: bytes) -> dict:
    """Parse ``raw`` as a JSON object, or refuse naming ``path``."""
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ArtifactError(f"{path}: not valid JSON") from None
    if not isinstance(obj, dict):
        raise ArtifactError(f"{path}: must be a JSON object")
    return obj


def _check_signature_doc(path: Path, raw: bytes) -> tuple[str, bytes]:
    doc = _json_object(path, raw)
    if "cert" in doc:
        raise ArtifactError(f"{path}: certificate signers are not supported yet; "
                            "sign with a pinned key")
    if set(doc) != _SIG_FIELDS:
        raise ArtifactError(f"{path}: fields must be exactly {', '.join(sorted(_SIG_FIELDS))}")
    if canonical_json(doc) != raw:
        raise ArtifactError(f"{path}: not in canonical form (changed after signing?)")
    if doc["alg"] != ALG:
        raise ArtifactError(f"{path}: algorithm {doc['alg']!r} is not supported; only {ALG}")
    kid, b64 = doc["key_id"], doc["signature"]
    if not isinstance(kid, str) or not re.fullmatch(r"[0-9a-f]{16}", kid):
        raise ArtifactError(f"{path}: key_id must be 16 lowercase hex digits")
    try:
        sig = base64.b64decode(b64, validate=True) if isinstance(b64, str) else b""
    except (binascii.Error, ValueError):
        sig = b""
    if len(sig) != 64 or base64.b64encode(sig).decode() != b64:
        raise ArtifactError(f"{path}: signature is not a canonical base64 Ed25519 signature")
    return kid, sig


def _check_name(name: Any) -> str:
    if not isinstance(name, str) or not name:
        raise ArtifactError(f"manifest file name {name!r} is not a non-empty string")
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        raise ArtifactError(f"manifest file name {name!r} is an absolute path")
    parts = re.split(r"[/\\]", name)
    if ".." in parts:
        raise ArtifactError(f"manifest file name {name!r} escapes the artifact (path traversal)")
    if len(parts) > 1 or not _SAFE_NAME.match(name):
        raise ArtifactError(f"manifest file name {name!r} is not a plain file name")
    if name in (MANIFEST, SIGNATURE):
        raise ArtifactError(f"manifest lists {name!r} as a payload file")
    return name


def _check_manifest(path: Path, raw: bytes, kid: str) -> dict:
    m = _json_object(path, raw)
    if canonical_json(m) != raw:
        raise ArtifactError(f"{path}: not in canonical JSON form")
    if m.get("schema") != SCHEMA:
        raise ArtifactError(f"{path}: schema {m.get('schema')!r} is not {SCHEMA!r}")
    missing = sorted(_MANIFEST_FIELDS - set(m))
    if missing:
        raise ArtifactError(f"{path}: missing field {missing[0]!r}")
    if m["key_id"] != kid:
        raise ArtifactError(f"{path}: manifest key_id {m['key_id']!r} differs from the "
                            f"signature's {kid!r}")
    parse_version(m["version"])
    files = m["files"]
    if not isinstance(files, dict) or WEIGHTS not in files:
        raise ArtifactError(f"{path}: 'files' must list {WEIGHTS}")
    for name, entry in files.items():
        _check_name(name)
        if (not isinstance(entry, dict) or set(entry) != {"sha256", "size"}
                or not isinstance(entry["sha256"], str)
                or not re.fullmatch(r"[0-9a-f]{64}", entry["sha256"])
                or not isinstance(entry["size"], int) or isinstance(entry["size"], bool)
                or entry["size"] <= 0):
            raise ArtifactError(f"{path}: bad entry for {name!r} (need sha256 and size > 0)")
    return m


def _check_payload(root: Path, name: str, entry: dict) -> None:
    p = root / name
    try:
        st = os.lstat(p)
    except FileNotFoundError:
        raise ArtifactError(f"{p}: missing (listed in the signed manifest)") from None
    if stat.S_ISLNK(st.st_mode):
        raise ArtifactError(f"{p}: is a symlink; artifacts hold regular files only")
    if not stat.S_ISREG(st.st_mode):
        raise ArtifactError(f"{p}: not a regular file")
    want = entry["size"]
    if st.st_size == 0:
        raise ArtifactError(f"{p}: is empty (signed size {want} bytes)")
    if st.st_size < want:
        raise ArtifactError(f"{p}: truncated ({st.st_size} of {want} bytes)")
    if st.st_size > want:
        raise ArtifactError(f"{p}: size {st.st_size} bytes differs from the signed {want}")
    digest, size = sha256_file(p)
    if size != want:
        raise ArtifactError(f"{p}: size {size} bytes differs from the signed {want}")
    if digest != entry["sha256"]:
        raise ArtifactError(f"{p}: SHA-256 differs from the signed manifest (changed bytes)")


def verify(artifact_dir: str | Path, trust: TrustStore) -> VerifiedArtifact:
    """Check an artifact against a site's trust; raise ArtifactError with the reason if bad.

    Checks, in order: the folder holds only regular files; signature.json is canonical and
    names a trusted, unrevoked key; the Ed25519 signature over manifest.json's bytes; the
    manifest's form and file names (no traversal); exactly the listed files are present; each
    has its signed size and SHA-256 (streamed); the version is at least the site's minimum.
    """
    from cryptography.exceptions import InvalidSignature

    if not isinstance(trust, TrustStore):
        raise ArtifactError("verify needs the site's TrustStore")
    root = Path(artifact_dir)
    if root.is_symlink() or not root.is_dir():
        raise ArtifactError(f"{root}: not an artifact folder")
    for entry in os.scandir(root):
        if entry.is_symlink():
            raise ArtifactError(f"{root / entry.name}: is a symlink; artifacts hold regular "
                                "files only")
        if not entry.is_file(follow_symlinks=False):
            raise ArtifactError(f"{root / entry.name}: unexpected non-file in the artifact")
    kid, sig = _check_signature_doc(root / SIGNATURE, _read_small(root / SIGNATURE,
                                                                  MAX_SIGNATURE))
    if kid in trust.revoked:
        raise RevokedKeyError(f"{root}: signed by key {kid}, which this site has revoked")
    pub = trust.keys.get(kid)
    if pub is None:
        raise UntrustedKeyError(f"{root}: signed by key {kid}, which this site does not "
                                "trust")
    raw = _read_small(root / MANIFEST, MAX_MANIFEST)
    try:
        pub.verify(sig, raw)
    except InvalidSignature:
        raise ArtifactError(f"{root}: signature does not match the manifest (tampered "
                            "manifest or signature)") from None
    manifest = _check_manifest(root / MANIFEST, raw, kid)
    present = {e.name for e in os.scandir(root)} - {MANIFEST, SIGNATURE}
    listed = set(manifest["files"])
    if present - listed:
        raise ArtifactError(f"{root}: unexpected file {sorted(present - listed)[0]!r} "
                            "(not in the signed manifest)")
    if listed - present:
        raise ArtifactError(f"{root}: missing file {sorted(listed - present)[0]!r} "
                            "(listed in the signed manifest)")
    for name in sorted(listed):
        _check_payload(root, name, manifest["files"][name])
    if trust.min_version is not None and (parse_version(manifest["version"])
                                          < parse_version(trust.min_version)):
        raise OldVersionError(f"{root}: version {manifest['version']} is below this site's "
                            f"minimum {trust.min_version}")
    return VerifiedArtifact(path=root, manifest=manifest, key_id=kid)


def load_verified(artifact_dir: str | Path, trust: TrustStore) -> tuple[dict, dict]:
    """Verify an artifact, then load its tensors; return ``(state_dict, manifest)``.

    The weight bytes that are parsed are read once more and re-hashed against the signed
    manifest, so a file swapped after verification is refused too.
    """
    from safetensors.torch import load as st_load

    art = verify(artifact_dir, trust)
    entry = art.manifest["files"][WEIGHTS]
    p = art.path / WEIGHTS
    fd = os.open(p, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(fd, "rb") as f:
        data = f.read(entry["size"] + 1)
    if len(data) != entry["size"] or hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise ArtifactError(f"{p}: changed after verification")
    try:
        state_dict = st_load(data)
    except Exception as e:  # safetensors raises its own SafetensorError
        raise ArtifactError(f"{p}: signed but not valid safetensors ({e})") from None
    return state_dict, art.manifest


def load_model_source(path: str | Path, trust: TrustStore | None = None) -> tuple[dict, dict]:
    """The Site-1 model as ``(state_dict, config)``: a signed artifact folder, verified
    against ``trust`` (a :class:`lvtl.artifact.TrustStore`; required), or, for the model
    owner's own use, a checkpoint written by ``lvtl train``."""
    path = Path(path)
    if path.is_dir() and (path / MANIFEST).exists():
        if trust is None:
            raise ConfigError(f"{path}: a signed artifact needs trusted keys to be verified")
        state, manifest = load_verified(path, trust)
        return state, {"architecture": manifest["architecture"]}
    state, config, _ = read_checkpoint(path)
    if "architecture" not in config:
        raise ConfigError(f"{path}: the checkpoint does not say its architecture")
    return state, config
