"""Signing keys on the connected side: create a pair, load one, sign a manifest."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from installer.errors import UsageError
from installer.signing import key_id


@dataclass(frozen=True)
class KeyPair:
    """Paths of a key pair that `generate_key_pair` wrote, and the key id."""

    private_path: Path
    public_path: Path
    key_id: str


def generate_key_pair(out_dir: Path, name: str = "signing") -> KeyPair:
    """Write `out_dir/name.key` (PKCS#8 PEM, mode 0600) and `out_dir/name.pub`.

    Refuses to overwrite an existing key, because losing a signing key
    strands every enclave that trusts it.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    private_path = out_dir / f"{name}.key"
    public_path = out_dir / f"{name}.pub"
    for path in (private_path, public_path):
        if path.exists():
            raise UsageError(
                f"{path} already exists", hint="choose another --name or --out, or remove it first"
            )

    private_key = Ed25519PrivateKey.generate()
    private_pem = private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )

    # O_EXCL with mode 0600 at creation, so the key is never readable by others.
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(private_pem)
    public_path.write_bytes(public_pem)
    return KeyPair(private_path, public_path, key_id(private_key.public_key()))


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """Load an unencrypted PKCS#8 PEM Ed25519 private key."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise UsageError(f"cannot read signing key {path}: {err.strerror}") from err
    try:
        private_key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as err:
        raise UsageError(
            f"{path} is not an unencrypted PEM private key",
            hint="create one with airlock-bundle keygen",
        ) from err
    if not isinstance(private_key, Ed25519PrivateKey):
        raise UsageError(f"{path} contains a {type(private_key).__name__}, not an Ed25519 key")
    return private_key


def sign(private_key: Ed25519PrivateKey, manifest_bytes: bytes) -> tuple[str, bytes]:
    """Return (key id, raw 64-byte signature) over the manifest bytes."""
    return key_id(private_key.public_key()), private_key.sign(manifest_bytes)
