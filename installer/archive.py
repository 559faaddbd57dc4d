"""Read a bundle archive sequentially, checking everything before it is used.

The reader never trusts what a tar header says about itself. A member is
accepted only when it is a regular file at the path the signed manifest
lists next, with the size the manifest records; its bytes are hashed as they
stream past and written, if at all, only inside a staging folder.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from installer import manifest as manifest_module
from installer.constants import (
    MANIFEST_PATH,
    MAX_MANIFEST_BYTES,
    MAX_SIGNATURE_BYTES,
    SIGNATURE_SUFFIX,
    SIGNATURES_DIR,
)
from installer.errors import DigestMismatchError, UnsafeMemberError, UsageError
from installer.manifest import Manifest, Member
from installer.progress import NullProgress, ProgressReporter
from installer.signing import TrustedKey, verify_signatures

logger = logging.getLogger(__name__)

CHUNK_SIZE = 1024 * 1024
_SIGNATURE_NAME = re.compile(r"^[0-9a-f]{64}$")
_REDO_HINT = "the copy is damaged or was altered; copy the bundle again from the source"


@dataclass
class VerifiedBundle:
    """A bundle whose signature and every member digest have been checked."""

    manifest: Manifest
    manifest_bytes: bytes
    signers: list[TrustedKey]
    staging_dir: Path | None = None
    signature_ids: list[str] = field(default_factory=list)

    @property
    def manifest_digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.manifest_bytes).hexdigest()

    def staged(self, member_path: str) -> Path:
        """Return the staged copy of a verified member."""
        if self.staging_dir is None:
            raise ValueError("bundle was verified without staging")
        return self.staging_dir / member_path


class _CountingReader:
    """A file wrapper that reports bytes read to a progress reporter."""

    def __init__(self, raw: BinaryIO, progress: ProgressReporter) -> None:
        self._raw = raw
        self._progress = progress

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        if data:
            self._progress.advance(len(data))
        return data


def check_member_path(name: str) -> None:
    """Reject names that are absolute, climb with `..`, or are otherwise ambiguous."""
    if not name or "\x00" in name or "\\" in name:
        raise UnsafeMemberError(f"bundle member {name!r} has an unsafe name")
    path = PurePosixPath(name)
    if path.is_absolute():
        raise UnsafeMemberError(f"bundle member {name} has an absolute path")
    parts = name.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise UnsafeMemberError(f"bundle member {name} has an empty, '.' or '..' path component")


def _check_regular(info: tarfile.TarInfo) -> None:
    check_member_path(info.name)
    if info.islnk() or info.issym():
        raise UnsafeMemberError(f"bundle member {info.name} is a link to {info.linkname}")
    if info.isdev() or info.isfifo():
        raise UnsafeMemberError(f"bundle member {info.name} is a device or FIFO")
    if not info.isfile():
        raise UnsafeMemberError(f"bundle member {info.name} is not a regular file")


def _read_small(tar: tarfile.TarFile, info: tarfile.TarInfo, limit: int) -> bytes:
    if info.size > limit:
        raise UnsafeMemberError(
            f"bundle member {info.name} is {info.size} bytes, more than the {limit} allowed"
        )
    handle = tar.extractfile(info)
    assert handle is not None  # a regular file always has data
    data = handle.read(info.size)
    if len(data) != info.size:
        raise DigestMismatchError(f"bundle ends early inside member {info.name}", hint=_REDO_HINT)
    return data


def _next(tar: tarfile.TarFile, after: str) -> tarfile.TarInfo | None:
    try:
        return tar.next()
    except (tarfile.ReadError, EOFError) as err:
        raise DigestMismatchError(
            f"bundle is truncated or corrupt after member {after}: {err}", hint=_REDO_HINT
        ) from err


def _stream_member(
    tar: tarfile.TarFile, info: tarfile.TarInfo, expected: Member, dest: Path | None
) -> None:
    """Hash one payload member, writing it below `dest` when given."""
    handle = tar.extractfile(info)
    assert handle is not None
    digest = hashlib.sha256()
    remaining = expected.size
    out = None
    if dest is not None:
        target = dest / expected.path
        target.parent.mkdir(parents=True, exist_ok=True)
        # O_EXCL: a member can never overwrite a file written earlier.
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        out = os.fdopen(fd, "wb")
    try:
        while remaining:
            try:
                chunk = handle.read(min(CHUNK_SIZE, remaining))
            except (tarfile.ReadError, EOFError, OSError) as err:
                raise DigestMismatchError(
                    f"bundle ends early inside member {expected.path}", hint=_REDO_HINT
                ) from err
            if not chunk:
                raise DigestMismatchError(
                    f"bundle ends early inside member {expected.path}", hint=_REDO_HINT
                )
            digest.update(chunk)
            remaining -= len(chunk)
            if out is not None:
                out.write(chunk)
    finally:
        if out is not None:
            out.close()

    found = digest.hexdigest()
    if found != expected.sha256:
        raise DigestMismatchError(
            f"member {expected.path} has sha256 {found}, the manifest records {expected.sha256}",
            hint=_REDO_HINT,
        )
    logger.debug("member %s verified (%d bytes)", expected.path, expected.size)


def read_bundle(
    stream: BinaryIO,
    trusted: Iterable[TrustedKey],
    *,
    stage_to: Path | None = None,
    progress: ProgressReporter | None = None,
    total_bytes: int | None = None,
    threshold: int = 1,
) -> VerifiedBundle:
    """Verify a bundle read from `stream`, staging its payload when asked.

    The checks, in order; each one fails closed:

    1. The first member is the manifest, a regular file of bounded size.
    2. Signature members follow, each `<key id>.sig` of 64 bytes.
    3. Before any payload byte is read, at least `threshold` trusted keys
       must have signed the manifest bytes.
    4. The manifest is valid JSON and matches the manifest schema.
    5. Every later member is a regular file at the path the manifest lists
       next, with the recorded size, and its sha256 matches as it streams.
    6. No member is missing at the end and nothing follows the last one.
    """
    progress = progress or NullProgress()
    progress.start("verifying bundle", total_bytes)
    tar = tarfile.open(fileobj=_CountingReader(stream, progress), mode="r|")  # type: ignore[call-overload]
    try:
        # 1. The manifest.
        info = _next(tar, "the start of the archive")
        if info is None or info.name != MANIFEST_PATH:
            found = "nothing" if info is None else info.name
            raise UnsafeMemberError(
                f"bundle does not start with {MANIFEST_PATH} (found {found})",
                hint="this is not an airlock bundle, or it was repacked by another tool",
            )
        _check_regular(info)
        manifest_bytes = _read_small(tar, info, MAX_MANIFEST_BYTES)

        # 2. The signatures.
        signatures: dict[str, bytes] = {}
        info = _next(tar, MANIFEST_PATH)
        last = MANIFEST_PATH
        while info is not None and info.name.startswith(SIGNATURES_DIR):
            _check_regular(info)
            stem = info.name[len(SIGNATURES_DIR) :]
            if not stem.endswith(SIGNATURE_SUFFIX) or not _SIGNATURE_NAME.match(
                stem[: -len(SIGNATURE_SUFFIX)]
            ):
                raise UnsafeMemberError(f"bundle member {info.name} is not a signature file")
            signer = stem[: -len(SIGNATURE_SUFFIX)]
            if signer in signatures:
                raise UnsafeMemberError(f"bundle member {info.name} appears twice")
            signatures[signer] = _read_small(tar, info, MAX_SIGNATURE_BYTES)
            last = info.name
            info = _next(tar, last)

        # 3. Trust, before any payload byte.
        signers = verify_signatures(manifest_bytes, signatures, trusted, threshold=threshold)

        # 4. Structure.
        manifest = manifest_module.parse(manifest_bytes)

        # 5. Every payload member, in the manifest's order.
        if stage_to is not None:
            stage_to.mkdir(parents=True, exist_ok=True)
        for expected in manifest.members:
            if info is None:
                raise DigestMismatchError(
                    f"bundle ends before member {expected.path}", hint=_REDO_HINT
                )
            _check_regular(info)
            if info.name != expected.path:
                if manifest.member(info.name) is None:
                    raise UnsafeMemberError(
                        f"bundle member {info.name} is not listed in the manifest",
                        hint=_REDO_HINT,
                    )
                raise UnsafeMemberError(
                    f"bundle member {info.name} is out of order: expected {expected.path}",
                    hint=_REDO_HINT,
                )
            if info.size != expected.size:
                raise DigestMismatchError(
                    f"member {info.name} is {info.size} bytes, the manifest records {expected.size}",
                    hint=_REDO_HINT,
                )
            _stream_member(tar, info, expected, stage_to)
            last = info.name
            info = _next(tar, last)

        # 6. Nothing extra.
        if info is not None:
            _check_regular(info)
            raise UnsafeMemberError(
                f"bundle member {info.name} is not listed in the manifest", hint=_REDO_HINT
            )
    finally:
        tar.close()
        progress.finish()

    logger.info(
        "bundle %s %s verified: %d members, signed by %s",
        manifest.name,
        manifest.version,
        len(manifest.members),
        ", ".join(key.name for key in signers),
    )
    return VerifiedBundle(manifest, manifest_bytes, signers, stage_to, sorted(signatures))


def open_bundle(path: Path) -> BinaryIO:
    """Open a bundle file, or the first part of a split bundle, as one stream."""
    from installer import parts  # a split bundle reads its parts in order

    if parts.is_split(path):
        return parts.open_parts(path)
    try:
        return path.open("rb")
    except OSError as err:
        raise UsageError(f"cannot open bundle {path}: {err.strerror}") from err


def verify_file(
    path: Path,
    trusted: Iterable[TrustedKey],
    *,
    progress: ProgressReporter | None = None,
    threshold: int = 1,
) -> VerifiedBundle:
    """Verify a bundle file end to end without writing anything."""
    with open_bundle(path) as stream:
        return read_bundle(
            stream,
            trusted,
            progress=progress,
            total_bytes=path.stat().st_size,
            threshold=threshold,
        )
