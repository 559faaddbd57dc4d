"""Ed25519 signature checks over the canonical manifest.

A signature is the raw 64-byte Ed25519 signature of the exact manifest
bytes, stored as `airlock/signatures/<key id>.sig`. That is the form
`openssl pkeyutl -verify -rawin -sigfile` reads, so an operator can check it
by hand. A key id is the hex sha256 of the 32 raw public key bytes.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from installer.errors import SignatureError, UsageError

logger = logging.getLogger(__name__)

PUBLIC_KEY_SUFFIX = ".pub"


@dataclass(frozen=True)
class TrustedKey:
    """A public key the installer accepts signatures from."""

    key_id: str
    name: str
    public_key: Ed25519PublicKey
    source: Path | None = None


def key_id(public_key: Ed25519PublicKey) -> str:
    """Return the key id: hex sha256 of the raw 32-byte public key."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def load_public_key(path: Path) -> TrustedKey:
    """Load an Ed25519 public key from a PEM (SubjectPublicKeyInfo) file."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise UsageError(f"cannot read public key {path}: {err.strerror}") from err
    try:
        public_key = serialization.load_pem_public_key(data)
    except ValueError as err:
        raise UsageError(
            f"{path} is not a PEM public key",
            hint="pass the .pub file that airlock-bundle keygen wrote",
        ) from err
    if not isinstance(public_key, Ed25519PublicKey):
        raise UsageError(f"{path} holds a {type(public_key).__name__}, not an Ed25519 key")
    return TrustedKey(key_id(public_key), path.stem, public_key, path)


def load_trusted_keys(
    key_files: Iterable[Path] = (), trust_dirs: Iterable[Path] = ()
) -> list[TrustedKey]:
    """Collect trusted keys from single key files and from folders of `*.pub` files."""
    keys: dict[str, TrustedKey] = {}
    for path in key_files:
        trusted = load_public_key(path)
        keys.setdefault(trusted.key_id, trusted)
    for folder in trust_dirs:
        if not folder.is_dir():
            raise UsageError(f"trust folder {folder} does not exist")
        for path in sorted(folder.glob(f"*{PUBLIC_KEY_SUFFIX}")):
            trusted = load_public_key(path)
            keys.setdefault(trusted.key_id, trusted)
    if not keys:
        raise UsageError(
            "no trusted public key given",
            hint="pass --key PUBFILE or --trust DIR holding the publisher's .pub file",
        )
    return list(keys.values())


def verify_signatures(
    manifest_bytes: bytes,
    signatures: Mapping[str, bytes],
    trusted: Iterable[TrustedKey],
    *,
    threshold: int = 1,
) -> list[TrustedKey]:
    """Check the manifest's signatures and return the trusted keys that signed it.

    Signatures from keys not in `trusted` are ignored, so a bundle can carry
    an old and a new key's signature while a key is being rotated. A
    signature that claims a trusted key id but does not verify is fatal,
    because it means the manifest or the signature was altered.
    """
    trusted_by_id = {key.key_id: key for key in trusted}
    signers: list[TrustedKey] = []
    for signer_id, signature in sorted(signatures.items()):
        key = trusted_by_id.get(signer_id)
        if key is None:
            logger.debug("ignoring signature by untrusted key id %s", signer_id)
            continue
        try:
            key.public_key.verify(signature, manifest_bytes)
        except InvalidSignature as err:
            raise SignatureError(
                f"signature airlock/signatures/{signer_id}.sig does not match the manifest",
                hint="the bundle was altered or damaged in transit; copy it again from the source",
            ) from err
        logger.debug("valid signature by key %s (%s)", key.name, signer_id)
        signers.append(key)

    if len(signers) < threshold:
        if not signatures:
            raise SignatureError(
                "bundle is not signed",
                hint="rebuild it with airlock-bundle build --key KEYFILE",
            )
        found = ", ".join(sorted(signatures))
        raise SignatureError(
            f"bundle is signed by key id {found}, not in the trusted keys"
            if threshold == 1
            else f"bundle has {len(signers)} trusted signatures, {threshold} required",
            hint="ask the publisher for the matching .pub file and pass it with --key or --trust",
        )
    return signers
