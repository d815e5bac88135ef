"""Signed model artifacts: round trip (API and CLI) and every attack refused, failing closed."""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lvtl.artifact import (
    MANIFEST,
    SIGNATURE,
    WEIGHTS,
    TrustStore,
    canonical_json,
    keygen,
    load_signing_key,
    load_verified,
    parse_version,
    sign,
    verify,
)
from lvtl.errors import ArtifactError

LVTL = [str(Path(sys.executable).parent / "lvtl")]
if not Path(LVTL[0]).exists():  # pragma: no cover - an environment without the script
    LVTL = [sys.executable, "-m", "lvtl.cli"]


def run(*args, env=None):
    return subprocess.run(LVTL + [str(a) for a in args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300)


def _checkpoint(path: Path, seed: int = 0) -> Path:
    g = torch.Generator().manual_seed(seed)
    sd = {"conv.weight": torch.randn(4, 2, 3, 3, 3, generator=g), "conv.bias": torch.zeros(4),
          "head.weight": torch.randn(3, 4, generator=g)}
    torch.save({"state_dict": sd,
                "config": {"architecture": {"name": "tiny", "hyperparameters": {"width": 4}},
                           "input": {"spacing_mm": [1.0, 1.0, 1.0], "crop": [64, 64, 64],
                                     "phases": 20, "intensity": {"clip": [-200, 800]}},
                           "preprocessing": {"repair_radius": 5}},
                "meta": {"provenance": {"site": "site-1", "n_cases": 61, "labels": "dense",
                                        "epochs": 3, "seed": seed},
                         "metrics": {"dice_lvm": 0.81}}}, path)
    return path


@pytest.fixture()
def keys(tmp_path):
    """Two trusted keys (rotation) in a trust folder, and one stranger."""
    owner, old, stranger, trusted = (tmp_path / n for n in ("owner", "old", "stranger", "trust"))
    ids = {n: keygen(d) for n, d in (("owner", owner), ("old", old), ("stranger", stranger))}
    trusted.mkdir()
    for n in ("owner", "old"):
        d = owner if n == "owner" else old
        (trusted / f"{ids[n]}.pub.pem").write_bytes((d / f"{ids[n]}.pub.pem").read_bytes())
    return {"ids": ids, "owner": owner / "signing_key.pem", "old": old / "signing_key.pem",
            "stranger": stranger / "signing_key.pem", "trust": trusted}


@pytest.fixture()
def art(tmp_path, keys):
    ckpt = _checkpoint(tmp_path / "model.pt")
    sign(ckpt, keys["owner"], tmp_path / "art", name="lv4d", version="1.2.0")
    return tmp_path / "art"


def _trust(keys, **kw) -> TrustStore:
    return TrustStore.from_path(keys["trust"], **kw)


def _refused(path, keys, match, **kw):
    with pytest.raises(ArtifactError, match=match):
        verify(path, _trust(keys, **kw))
    with pytest.raises(ArtifactError, match=match):
        load_verified(path, _trust(keys, **kw))


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset % len(data)] ^= 0x01
    path.write_bytes(bytes(data))


# --------------------------------------------------------------------------- round trip
def test_round_trip_api(art, keys, tmp_path):
    sd, manifest = load_verified(art, _trust(keys))
    original = torch.load(tmp_path / "model.pt", weights_only=True)["state_dict"]
    assert set(sd) == set(original)
    for k in sd:
        assert torch.equal(sd[k], original[k])
    assert manifest["schema"] == "lvtl.artifact/1"
    assert manifest["name"] == "lv4d" and manifest["version"] == "1.2.0"
    assert manifest["key_id"] == keys["ids"]["owner"]
    assert manifest["architecture"]["hyperparameters"] == {"width": 4}
    assert manifest["input"]["phases"] == 20 and manifest["labels"]["2"] == "lv_myocardium"
    assert manifest["provenance"]["n_cases"] == 61 and "code_version" in manifest["provenance"]
    assert manifest["metrics"] == {"dice_lvm": 0.81}
    assert manifest["created"].endswith("Z")
    assert sorted(p.name for p in art.iterdir()) == sorted([MANIFEST, SIGNATURE, WEIGHTS])
    raw = (art / MANIFEST).read_bytes()
    assert raw == canonical_json(json.loads(raw))  # stored exactly as signed
    sig = json.loads((art / SIGNATURE).read_bytes())
    assert sig["alg"] == "Ed25519" and sig["key_id"] == keys["ids"]["owner"]
    assert len(base64.b64decode(sig["signature"])) == 64
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".art.")]  # no temp left


def test_bare_state_dict_and_rotated_key(tmp_path, keys):
    torch.save({"w": torch.arange(6.0)}, tmp_path / "bare.pt")
    sign(tmp_path / "bare.pt", keys["old"], tmp_path / "a", name="m", version="0.1.0",
         metadata={"metrics": {"dice": 0.5}})
    sd, m = load_verified(tmp_path / "a", _trust(keys))
    assert torch.equal(sd["w"], torch.arange(6.0)) and m["metrics"] == {"dice": 0.5}
    assert verify(tmp_path / "a", _trust(keys)).key_id == keys["ids"]["old"]


def test_sign_refuses_existing_output_and_bad_version(art, keys, tmp_path):
    with pytest.raises(ArtifactError, match="exists"):
        sign(tmp_path / "model.pt", keys["owner"], art, name="lv4d", version="1.2.0")
    with pytest.raises(ArtifactError, match="semantic version"):
        sign(tmp_path / "model.pt", keys["owner"], tmp_path / "b", name="lv4d", version="v1")
    assert not (tmp_path / "b").exists()


def test_semver_ordering():
    order = ["0.9.9", "1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-beta", "1.0.0-rc.1", "1.0.0",
             "1.0.1", "1.10.0", "2.0.0"]
    assert sorted(order, key=parse_version) == order


# --------------------------------------------------------------------------- keys
def test_private_key_mode_0600_and_public_apart(tmp_path):
    kid = keygen(tmp_path / "k")
    priv = tmp_path / "k" / "signing_key.pem"
    assert stat.S_IMODE(os.stat(priv).st_mode) == 0o600
    assert b"PRIVATE KEY" in priv.read_bytes()
    pub = tmp_path / "k" / f"{kid}.pub.pem"
    assert b"PUBLIC KEY" in pub.read_bytes() and b"PRIVATE" not in pub.read_bytes()
    with pytest.raises(ArtifactError, match="refusing to overwrite"):
        keygen(tmp_path / "k")


def test_encrypted_key_needs_passphrase(tmp_path):
    keygen(tmp_path / "k", passphrase="correct horse")
    key = tmp_path / "k" / "signing_key.pem"
    assert b"ENCRYPTED" in key.read_bytes()
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    with pytest.raises(ArtifactError, match="encrypted; give its passphrase"):
        load_signing_key(key)
    with pytest.raises(ArtifactError, match="wrong passphrase"):
        load_signing_key(key, "wrong")
    _checkpoint(tmp_path / "m.pt")
    with pytest.raises(ArtifactError, match="passphrase"):
        sign(tmp_path / "m.pt", key, tmp_path / "a", name="m", version="1.0.0")
    assert not (tmp_path / "a").exists()
    sign(tmp_path / "m.pt", key, tmp_path / "a", name="m", version="1.0.0",
         passphrase="correct horse")
    assert (tmp_path / "a" / WEIGHTS).is_file()


# --------------------------------------------------------------------------- attacks
@pytest.mark.parametrize("name,reason", [
    (WEIGHTS, "SHA-256 differs"),
    (MANIFEST, "signature does not match"),
    (SIGNATURE, None),  # JSON, form, key id or signature: refused, whatever the reason
])
def test_every_single_flipped_byte_is_refused(art, keys, name, reason):
    path, trust = art / name, _trust(keys)
    original = path.read_bytes()
    for offset in range(len(original)):
        _flip(path, offset)
        with pytest.raises(ArtifactError, match=reason):
            verify(art, trust)
        with pytest.raises(ArtifactError, match=reason):
            load_verified(art, trust)
        path.write_bytes(original)
    verify(art, trust)  # restored: valid again


def test_flipped_signature_bytes_reason(art, keys):
    doc = json.loads((art / SIGNATURE).read_bytes())
    sig = bytearray(base64.b64decode(doc["signature"]))
    sig[10] ^= 0x80
    doc["signature"] = base64.b64encode(bytes(sig)).decode()
    (art / SIGNATURE).write_bytes(canonical_json(doc))
    _refused(art, keys, "signature does not match")


def test_added_file(art, keys):
    (art / "extra.bin").write_bytes(b"x")
    _refused(art, keys, "unexpected file 'extra.bin'")


def test_added_hidden_file_and_folder(art, keys):
    (art / ".hidden").write_bytes(b"x")
    _refused(art, keys, "unexpected file '.hidden'")
    (art / ".hidden").unlink()
    (art / "sub").mkdir()
    _refused(art, keys, "non-file")


@pytest.mark.parametrize("name", [WEIGHTS, MANIFEST, SIGNATURE])
def test_removed_file(art, keys, name):
    (art / name).unlink()
    _refused(art, keys, "missing")


def test_symlinked_weights(art, keys, tmp_path):
    real = tmp_path / "elsewhere.safetensors"
    (art / WEIGHTS).rename(real)
    (art / WEIGHTS).symlink_to(real)
    _refused(art, keys, "symlink")


def test_untrusted_key(tmp_path, keys):
    _checkpoint(tmp_path / "m.pt")
    sign(tmp_path / "m.pt", keys["stranger"], tmp_path / "a", name="m", version="1.0.0")
    _refused(tmp_path / "a", keys, f"key {keys['ids']['stranger']}, which this site does not "
                                   "trust")


def test_swapped_key_id_in_signature(art, keys):
    """A stranger's signature labelled with a trusted key id still fails."""
    doc = json.loads((art / SIGNATURE).read_bytes())
    doc["key_id"] = keys["ids"]["old"]
    (art / SIGNATURE).write_bytes(canonical_json(doc))
    _refused(art, keys, "signature does not match")


def test_revoked_key(art, keys):
    _refused(art, keys, "revoked", revoked={keys["ids"]["owner"]})
    verify(art, _trust(keys, revoked={keys["ids"]["old"]}))  # others stay valid


@pytest.mark.parametrize("keep", [0, 1, 100, -1])
def test_truncated_and_empty_weights(art, keys, keep):
    data = (art / WEIGHTS).read_bytes()
    (art / WEIGHTS).write_bytes(data[:keep] if keep >= 0 else data[:keep])
    _refused(art, keys, "is empty" if keep == 0 else "truncated")


def test_grown_weights(art, keys):
    with open(art / WEIGHTS, "ab") as f:
        f.write(b"\0")
    _refused(art, keys, "differs from the signed")


def test_empty_manifest_and_signature(art, keys):
    (art / MANIFEST).write_bytes(b"")
    _refused(art, keys, "manifest.json: is empty")
    (art / SIGNATURE).write_bytes(b"")
    _refused(art, keys, "signature.json: is empty")


def test_version_below_minimum(art, keys):
    _refused(art, keys, "version 1.2.0 is below this site's minimum 1.3.0", min_version="1.3.0")
    _refused(art, keys, "below", min_version="2.0.0")
    verify(art, _trust(keys, min_version="1.2.0"))
    verify(art, _trust(keys, min_version="1.2.0-rc.1"))


class _Creates:
    """Unpickling this object would call ``open(path, "w")``: creating a file."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_malicious_pickle_checkpoint_never_runs(tmp_path, keys):
    marker = tmp_path / "pwned"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "meta": {"x": _Creates(marker)}},
               tmp_path / "evil.pt")
    assert not marker.exists()
    with pytest.raises(ArtifactError, match="refused: not a plain tensor checkpoint"):
        sign(tmp_path / "evil.pt", keys["owner"], tmp_path / "a", name="m", version="1.0.0")
    assert not marker.exists()
    assert not (tmp_path / "a").exists()
    # and the same payload as the whole file
    torch.save(_Creates(marker), tmp_path / "evil2.pt")
    with pytest.raises(ArtifactError, match="refused"):
        sign(tmp_path / "evil2.pt", keys["owner"], tmp_path / "a", name="m", version="1.0.0")
    assert not marker.exists()


def test_pickle_in_place_of_weights_is_refused(art, keys, tmp_path):
    """A pickle dropped in as weights fails the hash; it is never parsed, let alone unpickled."""
    marker = tmp_path / "pwned"
    torch.save(_Creates(marker), art / WEIGHTS)
    _refused(art, keys, None)
    assert not marker.exists()


def _resign(art: Path, key_path: Path, mutate) -> None:
    """Rewrite the manifest with ``mutate`` and sign it again with a (trusted) key."""
    from lvtl.artifact import key_id

    key = load_signing_key(key_path)
    m = json.loads((art / MANIFEST).read_bytes())
    mutate(m)
    m["key_id"] = key_id(key.public_key())
    body = canonical_json(m)
    (art / MANIFEST).write_bytes(body)
    (art / SIGNATURE).write_bytes(canonical_json({
        "alg": "Ed25519", "key_id": m["key_id"],
        "signature": base64.b64encode(key.sign(body)).decode()}))


@pytest.mark.parametrize("name,reason", [
    ("../weights.safetensors", "path traversal"),
    ("../../etc/passwd", "path traversal"),
    ("sub/../../x", "path traversal"),
    ("/etc/passwd", "absolute path"),
    ("C:evil", "absolute path"),
    ("sub/file.bin", "not a plain file name"),
    (".hidden", "not a plain file name"),
    ("manifest.json", "lists 'manifest.json'"),
])
def test_unsafe_file_names_in_signed_manifest(art, keys, name, reason):
    entry = json.loads((art / MANIFEST).read_bytes())["files"][WEIGHTS]
    _resign(art, keys["owner"], lambda m: m["files"].__setitem__(name, dict(entry)))
    _refused(art, keys, reason)


def test_resigned_manifest_still_binds_files(art, keys):
    """The re-signing helper itself is sound: a valid re-signature of an unchanged manifest
    verifies, so the refusals above come from the name check."""
    _resign(art, keys["owner"], lambda m: None)
    verify(art, _trust(keys))


@pytest.mark.parametrize("mutate,reason", [
    (lambda m: m.__setitem__("schema", "other/1"), "schema"),
    (lambda m: m.pop("files"), "missing field 'files'"),
    (lambda m: m["files"][WEIGHTS].__setitem__("sha256", "0" * 64), "SHA-256 differs"),
    (lambda m: m["files"][WEIGHTS].__setitem__("size", 10), "differs from the signed 10"),
    (lambda m: m["files"][WEIGHTS].__setitem__("size", 0), "size > 0"),
    (lambda m: m.__setitem__("version", "1.x"), "semantic version"),
])
def test_bad_signed_manifest_fields(art, keys, mutate, reason):
    _resign(art, keys["owner"], mutate)
    _refused(art, keys, reason)


def test_manifest_key_id_must_match_signature(art, keys):
    from lvtl.artifact import key_id

    key = load_signing_key(keys["owner"])
    m = json.loads((art / MANIFEST).read_bytes())
    m["key_id"] = keys["ids"]["old"]
    body = canonical_json(m)
    (art / MANIFEST).write_bytes(body)
    (art / SIGNATURE).write_bytes(canonical_json({
        "alg": "Ed25519", "key_id": key_id(key.public_key()),
        "signature": base64.b64encode(key.sign(body)).decode()}))
    _refused(art, keys, "differs from the signature's")


def test_certificate_field_not_yet_accepted(art, keys):
    doc = json.loads((art / SIGNATURE).read_bytes())
    doc["cert"] = "-----BEGIN CERTIFICATE-----"
    (art / SIGNATURE).write_bytes(canonical_json(doc))
    _refused(art, keys, "certificate signers are not supported")


def test_trust_store_needs_keys(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArtifactError, match="no trusted public keys"):
        TrustStore.from_path(tmp_path / "empty")


def test_trust_from_site_config(art, keys, tmp_path):
    from lvtl.config import load_site_config

    cfg = tmp_path / "site.toml"
    cfg.write_text(f'[site]\nname = "site-2"\n[trust]\nkeys = "{keys["trust"]}"\n'
                   f'revoked = ["{keys["ids"]["owner"]}"]\nmin_version = "1.0.0"\n')
    store = TrustStore.from_site_config(load_site_config(cfg))
    assert store.min_version == "1.0.0" and keys["ids"]["owner"] in store.revoked
    with pytest.raises(ArtifactError, match="revoked"):
        verify(art, store)


# --------------------------------------------------------------------------- CLI
def test_cli_round_trip(tmp_path):
    ckpt = _checkpoint(tmp_path / "model.pt")
    r = run("artifact", "keygen", "--out", tmp_path / "keys", "--passphrase-env", "LVTL_PW",
            env={"LVTL_PW": "s3cret"})
    assert r.returncode == 0, r.stderr
    kid = r.stdout.split()[1].rstrip(":")
    assert (tmp_path / "keys" / f"{kid}.pub.pem").is_file()
    r = run("artifact", "sign", ckpt, "--key", tmp_path / "keys" / "signing_key.pem",
            "--out", tmp_path / "art", "--name", "lv4d", "--version", "1.0.0")
    assert r.returncode == 7 and "passphrase" in r.stderr and "Traceback" not in r.stderr
    r = run("artifact", "sign", ckpt, "--key", tmp_path / "keys" / "signing_key.pem",
            "--out", tmp_path / "art", "--name", "lv4d", "--version", "1.0.0",
            "--passphrase-env", "LVTL_PW", env={"LVTL_PW": "s3cret"})
    assert r.returncode == 0, r.stderr
    r = run("artifact", "verify", tmp_path / "art", "--trust", tmp_path / "keys")
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.strip().splitlines()) == 1
    assert "valid" in r.stdout and "lv4d 1.0.0" in r.stdout and kid in r.stdout
    r = run("artifact", "verify", tmp_path / "art", "--trust",
            tmp_path / "keys" / f"{kid}.pub.pem", "--min-version", "2.0.0")
    assert r.returncode == 7 and "below this site's minimum 2.0.0" in r.stderr
    r = run("artifact", "verify", tmp_path / "art", "--trust", tmp_path / "keys",
            "--revoked", "0" * 16, "--revoked", kid)
    assert r.returncode == 7 and "revoked" in r.stderr
    _flip(tmp_path / "art" / WEIGHTS, 500)
    r = run("artifact", "verify", tmp_path / "art", "--trust", tmp_path / "keys")
    assert r.returncode == 7
    assert r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1
    assert "SHA-256 differs" in r.stderr


@pytest.mark.parametrize("cmd", ["keygen", "sign", "verify"])
def test_cli_help(cmd):
    r = run("artifact", cmd, "--help")
    assert r.returncode == 0 and f"Usage: lvtl artifact {cmd}" in r.stdout


def test_site_config_trust_fields_are_validated(tmp_path):
    from lvtl.config import load_site_config
    from lvtl.errors import ConfigError

    cfg = tmp_path / "site.toml"
    cfg.write_text('[site]\nname = "s"\n[trust]\nkeys = "k"\nrevoked = "abc"\n')
    with pytest.raises(ConfigError, match="revoked must be a list"):
        load_site_config(cfg)
    cfg.write_text('[site]\nname = "s"\n[trust]\nkeys = "k"\nmin_version = 1\n')
    with pytest.raises(ConfigError, match="min_version must be a version string"):
        load_site_config(cfg)
    cfg.write_text('[site]\nname = "s"\n[trust]\nkeys = "k"\n')
    with pytest.raises(ConfigError, match="min_version is required"):
        load_site_config(cfg)
    cfg.write_text('[site]\nname = "s"\n[trust]\nkeys = "k"\nmin_version = "1.0.0"\n'
                   'revoked = ["owner-2024"]\n')
    with pytest.raises(ConfigError, match="'owner-2024' is not a key id"):
        load_site_config(cfg)


@pytest.mark.parametrize("spelling", [str.upper, lambda k: f" {k}  ", lambda k: f"{k}.pub.pem",
                                      lambda k: f"{k.upper()}.pub.pem\n"])
def test_a_revoked_key_is_refused_in_every_spelling(art, keys, tmp_path, spelling):
    """An attacker-friendly typo must not turn a revocation off: the site refuses the model."""
    from lvtl.config import load_site_config

    cfg = tmp_path / "site.toml"
    kid = keys["ids"]["owner"]
    cfg.write_text(f'[site]\nname = "site-2"\n[trust]\nkeys = "{keys["trust"]}"\n'
                   f'revoked = [{json.dumps(spelling(kid))}]\nmin_version = "1.0.0"\n')
    store = TrustStore.from_site_config(load_site_config(cfg))
    assert store.revoked == {kid}
    with pytest.raises(ArtifactError, match="revoked"):
        verify(art, store)
    with pytest.raises(ArtifactError, match="revoked"):  # also given straight to the store
        verify(art, TrustStore(keys=store.keys, revoked=frozenset({spelling(kid)})))


def test_cli_verify_with_site_config(art, keys, tmp_path):
    cfg = tmp_path / "site.toml"
    cfg.write_text(f'[site]\nname = "site-2"\n[trust]\nkeys = "{keys["trust"]}"\n'
                   'min_version = "1.0.0"\n')
    r = run("artifact", "verify", art, "--config", cfg)
    assert r.returncode == 0 and "valid" in r.stdout, r.stderr
    cfg.write_text(cfg.read_text() + f'revoked = ["{keys["ids"]["owner"]}"]\n')
    r = run("artifact", "verify", art, "--config", cfg)
    assert r.returncode == 7 and "revoked" in r.stderr
    r = run("artifact", "verify", art)
    assert r.returncode == 2 and "--trust" in r.stderr
