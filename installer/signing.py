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
COPY_AGAIN_HINT = "the bundle was altered or damaged in transit; copy it again from the source"
_ADD_KEY_HINT = (
    "if you trust the publisher, add their public key with "
    "airlock-install trust add KEYFILE, or pass --key PUBFILE"
)


@dataclass(frozen=True)
class TrustedKey:
    """A public key the installer checks signatures with, and what it may sign.

    `bundles` lists the bundle names the key may sign; empty means any.
    A key with `revoked_at` set was removed from the trust store at that
    time: its signatures never count, and a bundle signed only by it is
    rejected with a message that names the revocation.
    """

    key_id: str
    name: str
    public_key: Ed25519PublicKey
    source: Path | None = None
    bundles: tuple[str, ...] = ()
    revoked_at: str | None = None

    def may_sign(self, bundle_name: str) -> bool:
        """Return True when this key's signature counts for `bundle_name`."""
        return self.revoked_at is None and (not self.bundles or bundle_name in self.bundles)

    def describe(self) -> str:
        """Return `name (key id)` for messages."""
        return f"{self.name} ({self.key_id})"


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
        raise UsageError(f"{path} contains a {type(public_key).__name__}, not an Ed25519 key")
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
            hint=(
                "add the publisher's .pub file with airlock-install trust add KEYFILE, "
                "or pass --key PUBFILE or --trust DIR"
            ),
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
    signature that claims a known key id but does not verify is fatal,
    because it means the manifest or the signature was altered. Valid
    signatures by revoked keys do not count. Raises `SignatureError` when
    fewer than `threshold` distinct trusted keys signed.
    """
    known_by_id = {key.key_id: key for key in trusted}
    signers: list[TrustedKey] = []
    revoked: list[TrustedKey] = []
    for signer_id, signature in sorted(signatures.items()):
        key = known_by_id.get(signer_id)
        if key is None:
            logger.debug("ignoring signature by unknown key id %s", signer_id)
            continue
        try:
            key.public_key.verify(signature, manifest_bytes)
        except InvalidSignature as err:
            raise SignatureError(
                f"signature airlock/signatures/{signer_id}.sig does not match the manifest",
                hint=COPY_AGAIN_HINT,
            ) from err
        if key.revoked_at is not None:
            logger.debug("ignoring signature by revoked key %s", key.describe())
            revoked.append(key)
            continue
        logger.debug("valid signature by key %s", key.describe())
        signers.append(key)

    if len(signers) < threshold:
        raise _too_few_signers(signatures, signers, revoked, threshold)
    return signers


def check_signer_scope(
    signers: Iterable[TrustedKey], bundle_name: str, *, threshold: int = 1
) -> list[TrustedKey]:
    """Return the signers allowed to sign `bundle_name`, or raise below `threshold`.

    A key restricted to other bundle names does not count for this bundle.
    """
    signers = list(signers)
    allowed = [key for key in signers if key.may_sign(bundle_name)]
    if len(allowed) >= threshold:
        return allowed
    excluded = [key for key in signers if not key.may_sign(bundle_name)]
    if not allowed and excluded:
        key = excluded[0]
        raise SignatureError(
            f"bundle {bundle_name} is signed by key {key.describe()}, which may sign only "
            f"bundles {', '.join(key.bundles)}",
            hint=(
                f"if that key may sign {bundle_name}, add it again with "
                f"airlock-install trust add KEYFILE --bundles {','.join((*key.bundles, bundle_name))}"
            ),
        )
    raise SignatureError(
        f"bundle {bundle_name} has {_signatures(len(allowed))} by keys trusted for it, "
        f"{threshold} required",
        hint="ask the publisher to sign the bundle with more trusted keys, or lower --threshold",
    )


def _signatures(count: int) -> str:
    return "1 valid signature" if count == 1 else f"{count} valid signatures"


def _too_few_signers(
    signatures: Mapping[str, bytes],
    signers: list[TrustedKey],
    revoked: list[TrustedKey],
    threshold: int,
) -> SignatureError:
    if not signatures:
        return SignatureError(
            "bundle is not signed",
            hint="rebuild it with airlock-bundle build --key KEYFILE",
        )
    if not signers and revoked:
        key = revoked[0]
        return SignatureError(
            f"bundle is signed by key {key.describe()}, which was revoked at {key.revoked_at}",
            hint="a revoked key no longer counts; ask the publisher for a bundle signed with a current key",
        )
    if not signers:
        found = ", ".join(sorted(signatures))
        return SignatureError(
            f"bundle is signed by key id {found}, not in the trusted keys", hint=_ADD_KEY_HINT
        )
    return SignatureError(
        f"bundle has {_signatures(len(signers))} by trusted keys, {threshold} required",
        hint="ask the publisher to sign the bundle with more trusted keys, or lower --threshold",
    )
