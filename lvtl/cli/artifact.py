"""``lvtl artifact keygen|sign|verify``: the signed model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from lvtl.cli.app import app

artifact_app = typer.Typer(
    help="Signed model artifacts: make a signing key, sign a checkpoint, verify an artifact.",
    no_args_is_help=True,
)
app.add_typer(artifact_app, name="artifact")


def _passphrase(var: str | None) -> str | None:
    import os

    from lvtl.errors import ConfigError

    if var is None:
        return None
    value = os.environ.get(var)
    if not value:
        raise ConfigError(f"environment variable {var} (the key's passphrase) is not set")
    return value


@artifact_app.command("keygen")
def artifact_keygen(
    out: Annotated[Path, typer.Option(help="Folder for signing_key.pem (private, 0600) and "
                                           "<key_id>.pub.pem (public, for the sites).")],
    passphrase_env: Annotated[str | None, typer.Option(help="Name of an environment variable "
                                                            "holding a passphrase to encrypt "
                                                            "the private key.")] = None,
) -> None:
    """Make a new Ed25519 signing key pair; print its key id."""
    from lvtl.artifact import PUBLIC_SUFFIX, keygen

    kid = keygen(out, passphrase=_passphrase(passphrase_env))
    typer.echo(f"key {kid}: private {out / 'signing_key.pem'}, "
               f"public {out / (kid + PUBLIC_SUFFIX)}")


@artifact_app.command("sign")
def artifact_sign(
    model: Annotated[Path, typer.Argument(help="Checkpoint written by torch.save: "
                                               "{'state_dict', 'config', 'meta'} or a bare "
                                               "state dict.")],
    key: Annotated[Path, typer.Option(help="Private signing key (signing_key.pem).")],
    out: Annotated[Path, typer.Option(help="Artifact folder to create (must not exist).")],
    name: Annotated[str, typer.Option(help="Model name.")],
    version: Annotated[str, typer.Option(help="Semantic version, like 1.0.0.")],
    passphrase_env: Annotated[str | None, typer.Option(help="Environment variable holding "
                                                            "the key's passphrase.")] = None,
    metadata: Annotated[Path | None, typer.Option(help="JSON file of manifest sections "
                                                       "(architecture, input, labels, "
                                                       "preprocessing, provenance, metrics) "
                                                       "that override the checkpoint's.")] = None,
) -> None:
    """Package a checkpoint as a signed artifact (safetensors weights + signed manifest)."""
    from lvtl.artifact import sign
    from lvtl.errors import ConfigError

    extra = None
    if metadata is not None:
        try:
            extra = json.loads(metadata.read_text())
        except ValueError as e:
            raise ConfigError(f"{metadata}: not valid JSON ({e})") from None
        if not isinstance(extra, dict):
            raise ConfigError(f"{metadata}: must hold a JSON object")
    art = sign(model, key, out, name=name, version=version,
               passphrase=_passphrase(passphrase_env), metadata=extra)
    typer.echo(f"signed {art.name} {art.version} with key {art.key_id} -> {art.path}")


@artifact_app.command("verify")
def artifact_verify(
    artifact: Annotated[Path, typer.Argument(help="Artifact folder.")],
    trust: Annotated[Path | None, typer.Option(help="Trusted public key file, or a folder of "
                                                    "*.pub.pem keys.")] = None,
    revoked: Annotated[list[str] | None, typer.Option(help="A revoked key id (repeatable).")]
    = None,
    min_version: Annotated[str | None, typer.Option(help="Lowest version to accept.")] = None,
    config: Annotated[Path | None, typer.Option(help="Site TOML config whose [trust] section "
                                                     "gives keys, revoked and "
                                                     "min_version.")] = None,
) -> None:
    """Verify an artifact against pinned keys; exit 0 with a summary, or 7 with the reason."""
    from lvtl.artifact import verify
    from lvtl.config import trust_store

    typer.echo(verify(artifact, trust_store(trust, revoked or (), min_version, config)).summary())


