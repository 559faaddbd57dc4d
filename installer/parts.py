"""Read a bundle split into numbered parts as one stream, and check the parts.

`airlock-bundle build --split SIZE` and `airlock-bundle split` write
`NAME.001`, `NAME.002`, ... and a parts index `NAME.parts.json` beside them.
The index lists every part's file name, size and sha256, and carries one
Ed25519 signature per signing key over its canonical `signed` object:

    {"signed": {"format_version": 1, "bundle": NAME, "size": ..., "sha256": ...,
                "part_size": ..., "parts": [{"name": ..., "size": ..., "sha256": ...}]},
     "signatures": {KEY_ID: BASE64_SIGNATURE}}

The bundle's own manifest signature still covers every byte of content.
The index adds two things: a damaged copy is traced to the part that
differs, and `verify --parts-only` checks a medium without reading the
bundle as a tar.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import logging
import re
import tarfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, cast

from cryptography.exceptions import InvalidSignature

from installer.errors import (
    BundleRejectedError,
    DigestMismatchError,
    ManifestError,
    SignatureError,
    UsageError,
)
from installer.manifest import canonical_json
from installer.signing import TrustedKey

logger = logging.getLogger(__name__)

PARTS_FORMAT_VERSION = 1
PARTS_INDEX_SUFFIX = ".parts.json"
# A part's name is the bundle's file name, a dot and a number of at least three digits.
PART_NAME = re.compile(r"^(?P<bundle>.+)\.(?P<number>[0-9]{3,})$")
# The index lists a few hundred parts at most; anything larger is not an index.
MAX_INDEX_BYTES = 4 * 1024 * 1024
CHUNK_SIZE = 1024 * 1024
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_COPY_AGAIN = "copy the parts named here again from the source medium"


@dataclass(frozen=True)
class PartRecord:
    """One part as the index lists it."""

    name: str
    size: int
    sha256: str


@dataclass(frozen=True)
class PartsIndex:
    """The parts index of one split bundle."""

    bundle: str
    size: int
    sha256: str
    part_size: int
    parts: tuple[PartRecord, ...]
    signed_bytes: bytes
    signatures: dict[str, bytes]

    def signed_json(self) -> dict[str, Any]:
        return index_signed_json(self.bundle, self.size, self.sha256, self.part_size, self.parts)


@dataclass(frozen=True)
class PartsReport:
    """The result of `check_parts`: the index, its trusted signers and the number of parts checked."""

    index: PartsIndex
    folder: Path
    signers: list[TrustedKey]
    checked: int


def index_signed_json(
    bundle: str, size: int, sha256: str, part_size: int, parts: Sequence[PartRecord]
) -> dict[str, Any]:
    """Return the `signed` object of a parts index, the part the signatures cover."""
    return {
        "format_version": PARTS_FORMAT_VERSION,
        "bundle": bundle,
        "size": size,
        "sha256": sha256,
        "part_size": part_size,
        "parts": [{"name": p.name, "size": p.size, "sha256": p.sha256} for p in parts],
    }


def index_path_for(part: Path) -> Path | None:
    """Return the parts index path for a part file name like `x.airlock.001`, else None."""
    match = PART_NAME.match(part.name)
    if match is None:
        return None
    return part.with_name(match.group("bundle") + PARTS_INDEX_SUFFIX)


def is_split(path: Path) -> bool:
    """Tell whether `path` names a part of a split bundle with its index beside it."""
    index = index_path_for(path)
    return index is not None and index.is_file()


def load_index(path: Path) -> PartsIndex:
    """Read and check the structure of a parts index; errors name the file and field."""
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_INDEX_BYTES + 1)
    except OSError as err:
        raise UsageError(f"cannot read parts index {path}: {err.strerror}") from err
    if len(raw) > MAX_INDEX_BYTES:
        raise ManifestError(f"parts index {path} is larger than {MAX_INDEX_BYTES} bytes")
    try:
        data = json.loads(raw.decode("utf-8"))
        signed = data["signed"]
        parts = tuple(
            PartRecord(str(item["name"]), int(item["size"]), str(item["sha256"]))
            for item in signed["parts"]
        )
        signatures = {
            str(key): base64.b64decode(value, validate=True)
            for key, value in data.get("signatures", {}).items()
        }
        index = PartsIndex(
            bundle=str(signed["bundle"]),
            size=int(signed["size"]),
            sha256=str(signed["sha256"]),
            part_size=int(signed["part_size"]),
            parts=parts,
            signed_bytes=canonical_json(signed),
            signatures=signatures,
        )
        version = signed["format_version"]
    except (UnicodeDecodeError, ValueError, KeyError, TypeError, binascii.Error) as err:
        raise ManifestError(
            f"parts index {path} is not a valid airlock parts index: {err}",
            hint="copy the .parts.json file again, or join the parts with airlock-bundle join",
        ) from err

    if version != PARTS_FORMAT_VERSION:
        raise ManifestError(f"parts index {path} has format version {version}, expected 1")
    if not parts:
        raise ManifestError(f"parts index {path} lists no parts")
    for record in parts:
        # Part names must be plain file names in the index's own folder.
        if "/" in record.name or record.name in (".", "..") or PART_NAME.match(record.name) is None:
            raise ManifestError(f"parts index {path} lists an invalid part name {record.name!r}")
        if not _HEX64.match(record.sha256) or record.size < 0:
            raise ManifestError(f"parts index {path} has an invalid entry for {record.name}")
    if sum(record.size for record in parts) != index.size:
        raise ManifestError(f"parts index {path}: the part sizes do not add up to {index.size}")
    if index.signed_bytes != canonical_json(index.signed_json()):
        raise ManifestError(f"parts index {path} has fields airlock does not know")
    return index


def verify_index_signatures(index: PartsIndex, trusted: Iterable[TrustedKey]) -> list[TrustedKey]:
    """Return the trusted keys that signed the index; raise SignatureError when none did."""
    by_id = {key.key_id: key for key in trusted}
    signers = []
    for signer_id, signature in sorted(index.signatures.items()):
        key = by_id.get(signer_id)
        if key is None:
            continue
        try:
            key.public_key.verify(signature, index.signed_bytes)
        except InvalidSignature as err:
            raise SignatureError(
                f"the signature by key id {signer_id} does not match parts index of {index.bundle}",
                hint="the .parts.json file was altered or damaged; copy it again",
            ) from err
        signers.append(key)
    if not signers:
        if not index.signatures:
            raise SignatureError(
                f"parts index of {index.bundle} is not signed",
                hint="run verify without --parts-only, which checks the bundle's own signature",
            )
        raise SignatureError(
            f"parts index of {index.bundle} is signed by key id "
            f"{', '.join(sorted(index.signatures))}, not in the trusted keys",
            hint="pass the publisher's .pub file with --key or --trust",
        )
    return signers


def _size_problems(folder: Path, index: PartsIndex) -> list[str]:
    problems = []
    for record in index.parts:
        path = folder / record.name
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            problems.append(f"{record.name}: missing")
            continue
        if size != record.size:
            problems.append(f"{record.name}: size {size} ≠ {record.size}")
    return problems


def _raise_problems(index: PartsIndex, problems: list[str]) -> None:
    if problems:
        raise DigestMismatchError(
            f"{len(problems)} of {len(index.parts)} parts of {index.bundle} are damaged: "
            + "; ".join(problems),
            hint=_COPY_AGAIN,
        )


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK_SIZE):
            digest.update(chunk)
    return digest.hexdigest()


def check_parts(first_part: Path, trusted: Iterable[TrustedKey]) -> PartsReport:
    """Check a split bundle's parts against its signed index, without reading it as a tar.

    1. The parts index sits beside `first_part` and lists it first.
    2. A trusted key signed the index.
    3. Every listed part exists with the listed size; all problems are
       reported together.
    4. Every part's sha256 matches; all mismatches are reported together.

    Files beside the parts that the index does not list are ignored.
    """
    index_path = index_path_for(first_part)
    if index_path is None or not index_path.is_file():
        raise UsageError(
            f"{first_part} is not the first part of a split bundle (no parts index beside it)",
            hint="pass NAME.001 of a bundle written with --split, next to NAME.parts.json",
        )
    index = load_index(index_path)
    if index.parts[0].name != first_part.name:
        raise UsageError(
            f"{first_part.name} is not the first part of {index.bundle}; pass {index.parts[0].name}"
        )
    signers = verify_index_signatures(index, trusted)

    folder = first_part.parent
    _raise_problems(index, _size_problems(folder, index))
    problems = []
    for record in index.parts:
        found = _file_sha256(folder / record.name)
        if found != record.sha256:
            problems.append(f"{record.name}: sha256 {found} ≠ {record.sha256}")
    _raise_problems(index, problems)
    logger.info("all %d parts of %s match their signed index", len(index.parts), index.bundle)
    return PartsReport(index, folder, signers, len(index.parts))


class PartsReader(io.RawIOBase):
    """A read-only stream over a split bundle's parts, in index order.

    Opening checks that every part exists with its listed size, and names
    all missing or short parts at once. Each part's sha256 is checked when
    its last byte has been read, and a mismatch names the part. When the
    reader is left through a `BundleRejectedError`, it hashes the parts not
    yet read, so the error names the damaged part rather than the member.
    """

    def __init__(self, first_part: Path) -> None:
        super().__init__()
        index_path = index_path_for(first_part)
        if index_path is None:
            raise UsageError(f"{first_part} is not a part of a split bundle")
        self.index = load_index(index_path)
        if self.index.parts[0].name != first_part.name:
            raise UsageError(
                f"{first_part.name} is not the first part of {self.index.bundle}; "
                f"pass {self.index.parts[0].name}"
            )
        self.folder = first_part.parent
        _raise_problems(self.index, _size_problems(self.folder, self.index))
        self._number = -1
        self._handle: BinaryIO | None = None
        self._digest = hashlib.sha256()
        self._remaining = 0
        self._open_next()

    @property
    def size(self) -> int:
        """Total bytes of the bundle, all parts together."""
        return self.index.size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        while self._handle is not None:
            if self._remaining == 0:
                self._finish_part()
                self._open_next()
                continue
            count = self._handle.readinto(view[: min(len(view), self._remaining)])  # type: ignore[attr-defined]
            if not count:
                record = self.index.parts[self._number]
                raise DigestMismatchError(
                    f"part {record.name} ends early: expected {record.size} bytes",
                    hint=_COPY_AGAIN,
                )
            self._digest.update(view[:count])
            self._remaining -= count
            return int(count)
        return 0

    def _open_next(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        self._number += 1
        if self._number >= len(self.index.parts):
            return
        record = self.index.parts[self._number]
        try:
            self._handle = (self.folder / record.name).open("rb")
        except OSError as err:
            raise DigestMismatchError(
                f"cannot read part {record.name}: {err.strerror}", hint=_COPY_AGAIN
            ) from err
        self._digest = hashlib.sha256()
        self._remaining = record.size
        logger.debug("reading part %s (%d bytes)", record.name, record.size)

    def _finish_part(self) -> None:
        record = self.index.parts[self._number]
        found = self._digest.hexdigest()
        if found != record.sha256:
            raise DigestMismatchError(
                f"part {record.name} has sha256 {found}, the parts index records {record.sha256}",
                hint=_COPY_AGAIN,
            )

    def _damaged_unread_parts(self) -> list[str]:
        """Hash the rest of the current part and every later part; list the mismatches."""
        problems = []
        try:
            while self._handle is not None:
                chunk = self._handle.read(min(CHUNK_SIZE, self._remaining))
                if chunk and self._remaining:
                    self._digest.update(chunk)
                    self._remaining -= len(chunk)
                    continue
                record = self.index.parts[self._number]
                found = self._digest.hexdigest()
                if found != record.sha256:
                    problems.append(f"{record.name}: sha256 {found} ≠ {record.sha256}")
                self._open_next()
        except (OSError, DigestMismatchError) as err:
            problems.append(str(err))
        return problems

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            if isinstance(error, BundleRejectedError) and self._handle is not None:
                problems = self._damaged_unread_parts()
                if problems:
                    raise DigestMismatchError(
                        f"damaged parts of {self.index.bundle}: {'; '.join(problems)} "
                        f"(reading the bundle failed with: {error.message})",
                        hint=_COPY_AGAIN,
                    ) from error
            elif (
                error is None and self._handle is not None and self._unread() <= tarfile.RECORDSIZE
            ):
                # A tar reader may stop at the end-of-archive marker, before
                # the record padding. Hashing that short tail checks the last
                # part too. A reader that stopped earlier, as inspect does, is
                # not made to read the rest of the bundle.
                _raise_problems(self.index, self._damaged_unread_parts())
        finally:
            self.close()

    def _unread(self) -> int:
        later = sum(record.size for record in self.index.parts[self._number + 1 :])
        return self._remaining + later

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        super().close()


def open_parts(first_part: Path) -> BinaryIO:
    """Open a split bundle by its first part as one buffered binary stream.

    The result is a PartsReader; use it in a `with` block so that a
    rejected bundle names its damaged part.
    """
    return cast(BinaryIO, PartsReader(first_part))


def bundle_size(path: Path) -> int:
    """Return a bundle's size in bytes: the file's, or all parts' for a split bundle."""
    index = index_path_for(path)
    if index is not None and index.is_file():
        return load_index(index).size
    return path.stat().st_size
