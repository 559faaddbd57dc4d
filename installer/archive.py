"""Read a bundle archive sequentially, checking everything before it is used.

The reader never trusts what a tar header says about itself. A member is
accepted only when it is a regular file at the path the signed manifest
lists next, with the size the manifest records; its bytes are hashed as they
stream past and written, if at all, only inside a staging folder. Every read
is bounded before it starts: by the manifest limit, by the 64 bytes of a
signature, by the size the signed manifest records for a payload member, or
by the pax header and trailing padding limits below.

The archive must be plain POSIX tar as `airlock-bundle` writes it: regular
files, pax extended headers carrying only `path`, `size` and `mtime`,
two zero blocks at the end, and only zero bytes after them. GNU long-name,
sparse and global pax headers, and any data after the end-of-archive marker, are
rejected: no airlock bundle has them, and another tool could read them
differently from this reader.

Padding is checked too: the zeros that fill each member's data
up to the next 512-byte header, and the two zero blocks that end the
archive. The writer then pads the archive to a whole 10240-byte tar
record. A copy that lost part of that record padding, and nothing before
it, is accepted, because every header, member byte and both end blocks are
still there and checked.
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
from typing import TYPE_CHECKING, BinaryIO

from installer import manifest as manifest_module
from installer.constants import (
    MANIFEST_PATH,
    MAX_MANIFEST_BYTES,
    MAX_SIGNATURE_BYTES,
    SIGNATURE_SUFFIX,
    SIGNATURES_DIR,
)
from installer.errors import (
    BundleRejectedError,
    DigestMismatchError,
    UnsafeMemberError,
    UsageError,
)
from installer.manifest import Manifest, Member
from installer.progress import NullProgress, ProgressReporter
from installer.signing import TrustedKey, check_signer_scope, verify_signatures

if TYPE_CHECKING:
    from installer.trust import TrustUpdate

logger = logging.getLogger(__name__)

CHUNK_SIZE = 1024 * 1024
# One signature per signing key; a real bundle carries a handful.
MAX_SIGNATURES = 64
# A pax header for a 4096-byte path is under 4.2 KiB.
MAX_PAX_HEADER_BYTES = 64 * 1024
# Tar writers pad the archive to a whole record after the end-of-archive
# marker: 10240 bytes by default for Python's tarfile and GNU tar, more with
# a larger blocking factor. Zero bytes up to this count are accepted.
MAX_TRAILING_ZERO_BYTES = 1024 * 1024
# The pax records Python's tarfile writes for a regular file (a long or
# non-ASCII name, a size of 8 GiB or more, an out-of-range mtime).
ALLOWED_PAX_RECORDS = frozenset({"path", "size", "mtime"})
# The ustar name field is 100 bytes long.
USTAR_NAME_BYTES = 100
_SIGNATURE_NAME = re.compile(r"^[0-9a-f]{64}$")
_REDO_HINT = "the copy is damaged or was altered; copy the bundle again from the source"
_REBUILD_HINT = "airlock-bundle never writes this; rebuild the bundle and copy it again"
_UNSAFE_HINT = (
    "airlock-bundle writes only regular files at relative paths, so this archive was "
    "altered; do not unpack it, and get a fresh copy from the publisher"
)


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

    @property
    def signer_ids(self) -> list[str]:
        return [key.key_id for key in self.signers]

    def staged(self, member_path: str) -> Path:
        """Return the staged copy of a verified member."""
        if self.staging_dir is None:
            raise ValueError("bundle was verified without staging")
        return self.staging_dir / member_path


@dataclass
class BundleFacts:
    """Facts known about a bundle, for the records written after a verify or install.

    The reader fills them in as it goes, so a rejection carries what was
    known before it: the manifest digest once the manifest is read, the
    signers once the signatures verified, the name, version and sequence
    once the manifest parsed. `policy.check_release` adds the trust update
    the bundle carries, which the install applies when it succeeds.
    """

    manifest_digest: str | None = None
    signers: list[str] = field(default_factory=list)
    name: str | None = None
    version: str | None = None
    sequence: int | None = None
    trust_update: TrustUpdate | None = None


_FACTS_ATTRIBUTE = "bundle_facts"
_IN_PAX_ATTRIBUTE = "_airlock_in_pax_header"


def facts_of(error: BaseException) -> BundleFacts | None:
    """Return the facts `read_bundle` attached to a rejection, if any."""
    facts = getattr(error, _FACTS_ATTRIBUTE, None)
    return facts if isinstance(facts, BundleFacts) else None


def shown(name: str) -> str:
    """Return a tar member name safe to print: control and undecodable characters escaped."""
    if name.isprintable():
        return name
    return repr(name)[1:-1]


def _ustar_name(path: str) -> str:
    """Return the ustar name field Python's tarfile writes next to a pax `path` record."""
    return path.encode("ascii", "replace")[:USTAR_NAME_BYTES].decode("ascii")


class _StrictTarInfo(tarfile.TarInfo):
    """A TarInfo that rejects header kinds airlock bundles never contain.

    It overrides tarfile's header parsing hooks (`fromtarfile`,
    `_proc_member`, `_apply_pax_info`) so that a bad header is rejected
    before tarfile reads the data it announces.
    NOTE: these are private CPython methods, checked against 3.11; the
    attack tests in tests/test_attacks.py fail if a release changes them.
    """

    @classmethod
    def fromtarfile(cls, tar: tarfile.TarFile) -> tarfile.TarInfo:  # type: ignore[override]
        assert tar.fileobj is not None
        offset = tar.fileobj.tell()
        block = tar.fileobj.read(tarfile.BLOCKSIZE)
        if block == tarfile.NUL * tarfile.BLOCKSIZE:
            # The end-of-archive marker; tarfile ends the member list.
            raise tarfile.EOFHeaderError("end of file header")  # type: ignore[attr-defined]
        if not block:
            raise DigestMismatchError(
                "bundle is empty"
                if offset == 0
                else "bundle ends without the tar end-of-archive marker",
                hint=_REDO_HINT,
            )
        if len(block) < tarfile.BLOCKSIZE:
            raise DigestMismatchError(
                f"bundle ends inside the tar header at byte {offset}", hint=_REDO_HINT
            )
        try:
            info = cls.frombuf(block, tar.encoding, tar.errors)  # type: ignore[attr-defined]
        except tarfile.HeaderError as err:
            raise DigestMismatchError(
                f"bundle has a damaged tar header at byte {offset} ({err})", hint=_REDO_HINT
            ) from err
        info.offset = offset
        return info._proc_member(tar)  # type: ignore[no-any-return]

    def _proc_member(self, tar: tarfile.TarFile) -> tarfile.TarInfo:
        name = shown(self.name)
        if self.type in (tarfile.XHDTYPE, tarfile.SOLARIS_XHDTYPE):
            if self.size > MAX_PAX_HEADER_BYTES:
                raise UnsafeMemberError(
                    f"bundle has a pax header of {self.size} bytes at byte {self.offset}, "
                    f"more than the {MAX_PAX_HEADER_BYTES} allowed",
                    hint=_REBUILD_HINT,
                )
            # tarfile reads the header after a pax header recursively, so a
            # chain of pax headers would exhaust the stack.
            if getattr(tar, _IN_PAX_ATTRIBUTE, False):
                raise UnsafeMemberError(
                    f"bundle has two pax headers in a row at byte {self.offset}",
                    hint=_REBUILD_HINT,
                )
            setattr(tar, _IN_PAX_ATTRIBUTE, True)
            try:
                return super()._proc_member(tar)  # type: ignore[misc,no-any-return]
            finally:
                setattr(tar, _IN_PAX_ATTRIBUTE, False)
        elif self.type == tarfile.XGLTYPE:
            raise UnsafeMemberError(
                f"bundle has a global pax header at byte {self.offset}", hint=_REBUILD_HINT
            )
        elif self.type in (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK):
            raise UnsafeMemberError(
                f"bundle has a GNU long-name header at byte {self.offset}", hint=_REBUILD_HINT
            )
        elif self.type == tarfile.GNUTYPE_SPARSE:
            raise UnsafeMemberError(
                f"bundle member {name} is a GNU sparse file", hint=_REBUILD_HINT
            )
        return super()._proc_member(tar)  # type: ignore[misc,no-any-return]

    def _apply_pax_info(self, pax_headers: dict[str, str], encoding: str, errors: str) -> None:
        # TODO: no checksum or digest covers a pax header's data, so a flipped
        # byte in its padding or in an `mtime` record passes. airlock-bundle
        # writes one only for a path over 100 bytes or a member of 8 GiB or more.
        name = shown(self.name)
        if any(key.startswith("GNU.sparse.") for key in pax_headers):
            raise UnsafeMemberError(
                f"bundle member {name} is a GNU sparse file", hint=_REBUILD_HINT
            )
        unexpected = sorted(set(pax_headers) - ALLOWED_PAX_RECORDS)
        if unexpected:
            raise UnsafeMemberError(
                f"bundle member {name} has pax header records "
                f"{', '.join(shown(key) for key in unexpected)}, which airlock bundles never use",
                hint=_REBUILD_HINT,
            )
        path = pax_headers.get("path")
        if path is not None and path != self.name and _ustar_name(path) != self.name:
            raise UnsafeMemberError(
                f"pax header renames bundle member {name} to {shown(path)}", hint=_REBUILD_HINT
            )
        size = pax_headers.get("size")
        if size is not None and not (size.isascii() and size.isdigit()):
            raise UnsafeMemberError(
                f"bundle member {name} has an invalid pax size {shown(size)!r}", hint=_REBUILD_HINT
            )
        super()._apply_pax_info(pax_headers, encoding, errors)  # type: ignore[misc]


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
    if not name or "\x00" in name or "\\" in name or not name.isprintable():
        raise UnsafeMemberError(
            f"bundle member {shown(name)!r} has an unsafe name", hint=_UNSAFE_HINT
        )
    path = PurePosixPath(name)
    if path.is_absolute():
        raise UnsafeMemberError(f"bundle member {name} has an absolute path", hint=_UNSAFE_HINT)
    parts = name.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise UnsafeMemberError(
            f"bundle member {name} has an empty, '.' or '..' path component", hint=_UNSAFE_HINT
        )


def _check_regular(info: tarfile.TarInfo) -> None:
    check_member_path(info.name)
    if info.islnk() or info.issym():
        raise UnsafeMemberError(
            f"bundle member {info.name} is a link to {shown(info.linkname)}", hint=_UNSAFE_HINT
        )
    if info.isdev() or info.isfifo():
        raise UnsafeMemberError(f"bundle member {info.name} is a device or FIFO", hint=_UNSAFE_HINT)
    # CONTTYPE and unknown types also pass isfile(); only ustar's two
    # regular-file types are plain files.
    if info.type not in (tarfile.REGTYPE, tarfile.AREGTYPE) or info.sparse is not None:
        raise UnsafeMemberError(
            f"bundle member {info.name} is not a regular file", hint=_UNSAFE_HINT
        )


def _read_small(tar: tarfile.TarFile, info: tarfile.TarInfo, limit: int) -> bytes:
    if info.size > limit:
        raise UnsafeMemberError(
            f"bundle member {info.name} is {info.size} bytes, more than the {limit} allowed",
            hint=_REBUILD_HINT,
        )
    handle = tar.extractfile(info)
    assert handle is not None  # a regular file always has data
    try:
        data = handle.read(info.size)
    except (tarfile.ReadError, EOFError, OSError) as err:
        raise DigestMismatchError(
            f"bundle ends early inside member {info.name}", hint=_REDO_HINT
        ) from err
    if len(data) != info.size:
        raise DigestMismatchError(f"bundle ends early inside member {info.name}", hint=_REDO_HINT)
    _check_padding(tar, info)
    return data


def _check_padding(tar: tarfile.TarFile, info: tarfile.TarInfo) -> None:
    """Read the zeros between the end of a member's data and the next header.

    tarfile skips these bytes without reading them, so a damaged byte there
    would pass unnoticed. Call after exactly `info.size` data bytes have
    been read, so that tarfile's seek to the next header is then a no-op.
    """
    handle = tar.fileobj
    assert handle is not None
    length = -info.size % tarfile.BLOCKSIZE
    if not length:
        return
    start = info.offset_data + info.size
    try:
        padding = handle.read(length)
    except (tarfile.ReadError, EOFError, OSError) as err:
        raise DigestMismatchError(
            f"bundle ends early inside the padding after member {info.name}", hint=_REDO_HINT
        ) from err
    if len(padding) != length:
        raise DigestMismatchError(
            f"bundle ends early inside the padding after member {info.name}", hint=_REDO_HINT
        )
    damaged = len(padding) - len(padding.lstrip(b"\0"))
    if damaged != length:
        raise DigestMismatchError(
            f"member {info.name} is followed by a non-zero tar padding byte at byte "
            f"{start + damaged}",
            hint=_REDO_HINT,
        )


def _next(tar: tarfile.TarFile, after: str) -> tarfile.TarInfo | None:
    try:
        return tar.next()
    except (tarfile.ReadError, EOFError) as err:
        raise DigestMismatchError(
            f"bundle is truncated or corrupt after member {after}: {err}", hint=_REDO_HINT
        ) from err


def _check_trailing(tar: tarfile.TarFile, after: str) -> None:
    """Check the second zero block of the end-of-archive marker and the zeros after it.

    tarfile stops at the first zero block and would never look further, so
    data hidden after it (a second archive, say) would pass unnoticed.
    """
    assert tar.fileobj is not None
    start = tar.fileobj.tell()
    seen = 0
    while chunk := tar.fileobj.read(min(CHUNK_SIZE, MAX_TRAILING_ZERO_BYTES + 1 - seen)):
        stripped = chunk.lstrip(b"\0")
        if stripped:
            offset = start + seen + len(chunk) - len(stripped)
            raise UnsafeMemberError(
                f"bundle has data after the tar end-of-archive marker at byte {offset}, "
                f"after member {after}",
                hint=_REDO_HINT,
            )
        seen += len(chunk)
        if seen > MAX_TRAILING_ZERO_BYTES:
            raise UnsafeMemberError(
                f"bundle has more than {MAX_TRAILING_ZERO_BYTES} bytes of padding after the "
                f"tar end-of-archive marker",
                hint=_REDO_HINT,
            )
    # tarfile has read the first zero block of the marker; POSIX ends an
    # archive with two, and airlock-bundle always writes both.
    if seen < tarfile.BLOCKSIZE:
        raise DigestMismatchError(
            f"bundle ends inside the tar end-of-archive marker, after member {after}",
            hint=_REDO_HINT,
        )


def _stream_member(
    tar: tarfile.TarFile, info: tarfile.TarInfo, expected: Member, dest: Path | None
) -> None:
    """Hash one payload member, writing it below `dest` when given.

    Reads the member's bytes straight from the archive stream rather than
    through `extractfile`, whose per-read bookkeeping costs more than the
    sha256 itself (measured by bench/run.py). That is safe because exactly
    `expected.size` bytes are read before `_check_padding` reads the rest
    of the last block.
    """
    handle = tar.fileobj
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
    _check_padding(tar, info)
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
    2. Signature members follow, each `<key id>.sig` of exactly 64 bytes.
    3. Before any payload byte is read, at least `threshold` trusted,
       unrevoked keys must have signed the manifest bytes.
    4. The manifest is valid JSON and matches the manifest schema, and the
       signers that count are those allowed to sign this bundle's name.
    5. Every later member is a regular file at the path the manifest lists
       next, seen once, with the recorded size, and its sha256 matches as
       it streams.
    6. No member is missing at the end, and only zero padding follows the
       end-of-archive marker.

    A `BundleRejectedError` carries what was learnt before it (see `facts_of`).
    """
    progress = progress or NullProgress()
    progress.start("verifying bundle", total_bytes)
    facts = BundleFacts()
    try:
        return _read_checked(stream, trusted, facts, stage_to, progress, threshold)
    except BundleRejectedError as err:
        setattr(err, _FACTS_ATTRIBUTE, facts)
        raise
    finally:
        progress.finish()


def _read_checked(
    stream: BinaryIO,
    trusted: Iterable[TrustedKey],
    facts: BundleFacts,
    stage_to: Path | None,
    progress: ProgressReporter,
    threshold: int,
) -> VerifiedBundle:
    # A 1 MiB stream buffer instead of tarfile's 10 KiB record-sized default.
    tar = tarfile.open(  # type: ignore[call-overload]
        fileobj=_CountingReader(stream, progress),
        mode="r|",
        tarinfo=_StrictTarInfo,
        bufsize=CHUNK_SIZE,
    )
    try:
        # 1. The manifest.
        info = _next(tar, "the start of the archive")
        if info is None or info.name != MANIFEST_PATH:
            found = "nothing" if info is None else shown(info.name)
            raise UnsafeMemberError(
                f"bundle does not start with {MANIFEST_PATH} (found {found})",
                hint="this is not an airlock bundle, or it was repacked by another tool",
            )
        _check_regular(info)
        manifest_bytes = _read_small(tar, info, MAX_MANIFEST_BYTES)
        facts.manifest_digest = "sha256:" + hashlib.sha256(manifest_bytes).hexdigest()
        seen = {MANIFEST_PATH}

        # 2. The signatures.
        signatures: dict[str, bytes] = {}
        info = _next(tar, MANIFEST_PATH)
        last = MANIFEST_PATH
        while info is not None and info.name.startswith(SIGNATURES_DIR):
            _check_regular(info)
            _check_unique(info, seen)
            stem = info.name[len(SIGNATURES_DIR) :]
            if not stem.endswith(SIGNATURE_SUFFIX) or not _SIGNATURE_NAME.match(
                stem[: -len(SIGNATURE_SUFFIX)]
            ):
                raise UnsafeMemberError(
                    f"bundle member {info.name} is not a signature file", hint=_REBUILD_HINT
                )
            if len(signatures) == MAX_SIGNATURES:
                raise UnsafeMemberError(
                    f"bundle has more than {MAX_SIGNATURES} signatures", hint=_REBUILD_HINT
                )
            if info.size != MAX_SIGNATURE_BYTES:
                raise UnsafeMemberError(
                    f"signature {info.name} is {info.size} bytes, an Ed25519 signature is "
                    f"{MAX_SIGNATURE_BYTES}",
                    hint=_REDO_HINT,
                )
            signatures[stem[: -len(SIGNATURE_SUFFIX)]] = _read_small(tar, info, MAX_SIGNATURE_BYTES)
            last = info.name
            info = _next(tar, last)

        # 3. Trust, before any payload byte.
        signers = verify_signatures(manifest_bytes, signatures, trusted, threshold=threshold)
        facts.signers = [key.key_id for key in signers]

        # 4. Structure, then which signers count for this bundle name.
        manifest = manifest_module.parse(manifest_bytes)
        facts.name, facts.version, facts.sequence = (
            manifest.name,
            manifest.version,
            manifest.sequence,
        )
        signers = check_signer_scope(signers, manifest.name, threshold=threshold)
        facts.signers = [key.key_id for key in signers]

        # 5. Every payload member, in the manifest's order.
        if stage_to is not None:
            stage_to.mkdir(parents=True, exist_ok=True)
        for expected in manifest.members:
            if info is None:
                raise DigestMismatchError(
                    f"bundle ends before member {expected.path}", hint=_REDO_HINT
                )
            _check_regular(info)
            _check_unique(info, seen)
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
            _check_unique(info, seen)
            raise UnsafeMemberError(
                f"bundle member {info.name} is not listed in the manifest", hint=_REDO_HINT
            )
        _check_trailing(tar, last)
    finally:
        tar.close()

    logger.info(
        "bundle %s %s verified: %d members, signed by %s",
        manifest.name,
        manifest.version,
        len(manifest.members),
        ", ".join(key.name for key in signers),
    )
    return VerifiedBundle(manifest, manifest_bytes, signers, stage_to, sorted(signatures))


def _check_unique(info: tarfile.TarInfo, seen: set[str]) -> None:
    if info.name in seen:
        raise UnsafeMemberError(
            f"bundle member {info.name} appears twice",
            hint="a second copy could replace the checked one when unpacked; " + _REBUILD_HINT,
        )
    seen.add(info.name)


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
