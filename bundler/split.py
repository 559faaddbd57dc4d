"""Split a bundle into numbered parts for removable media, and join them again.

`split_bundle` writes `NAME.001`, `NAME.002`, ... beside the bundle and a
parts index `NAME.parts.json` that lists each part's size and sha256, signed
by every key given (see `installer.parts` for the format). The installer
reads the parts in order as one stream when given `NAME.001`.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from bundler.keys import load_private_key, sign
from installer.errors import DigestMismatchError, UsageError
from installer.manifest import canonical_json
from installer.parts import (
    PART_NAME,
    PARTS_INDEX_SUFFIX,
    PartRecord,
    index_path_for,
    index_signed_json,
    load_index,
)

logger = logging.getLogger(__name__)

CHUNK_SIZE = 1024 * 1024
# FAT32 stores a file's size in 32 bits: at most 4 GiB - 1 bytes.
FAT32_MAX_FILE_SIZE = 4 * 1024**3 - 1
_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
_SIZE = re.compile(r"^\s*([0-9]+)\s*([KMGT]?)(?:i?B)?\s*$", re.IGNORECASE)
# Parts of a tar stream smaller than this would be absurd on any medium.
MIN_PART_SIZE = 1024


@dataclass(frozen=True)
class SplitResult:
    """The parts and the index a split wrote."""

    parts: tuple[Path, ...]
    index: Path
    part_size: int
    signed_by: tuple[str, ...]


def parse_size(text: str) -> int:
    """Parse a part size such as `4G`, `700M`, `300K` or `1048576` into bytes.

    Units are binary (K = 1024). `4G` means 4 GiB - 1 bytes, the largest
    file FAT32 can store, because 4G parts are asked for to fit FAT32.
    Every other size is taken as given.
    """
    match = _SIZE.match(text)
    if match is None:
        raise UsageError(
            f"part size {text!r} is invalid",
            hint="give a number of bytes, or one with K, M, G or T",
        )
    size = int(match.group(1)) * _UNITS[match.group(2).upper()]
    if size == FAT32_MAX_FILE_SIZE + 1:
        size = FAT32_MAX_FILE_SIZE
    if size < MIN_PART_SIZE:
        raise UsageError(f"part size {text!r} is below the minimum of {MIN_PART_SIZE} bytes")
    return size


def part_names(bundle_name: str, count: int) -> list[str]:
    """Return the part file names: `NAME.001` ... with at least three digits."""
    width = max(3, len(str(count)))
    return [f"{bundle_name}.{number:0{width}d}" for number in range(1, count + 1)]


def split_bundle(
    bundle: Path,
    part_size: int,
    *,
    key_paths: Sequence[Path] = (),
    remove_source: bool = False,
) -> SplitResult:
    """Split `bundle` into parts of at most `part_size` bytes beside it.

    Writes each part and the index through a `.partial` name and renames
    it when complete, so an interrupted split leaves no part that looks
    finished. Refuses to overwrite existing parts or an index.
    """
    keys = [load_private_key(path) for path in key_paths]
    try:
        total = bundle.stat().st_size
    except OSError as err:
        raise UsageError(f"cannot read bundle {bundle}: {err.strerror}") from err
    count = max(1, -(-total // part_size))
    names = part_names(bundle.name, count)
    index_path = bundle.with_name(bundle.name + PARTS_INDEX_SUFFIX)
    for path in [index_path, *(bundle.with_name(name) for name in names)]:
        if path.exists():
            raise UsageError(f"{path} already exists", hint="remove the old parts first")

    whole = hashlib.sha256()
    records: list[PartRecord] = []
    written: list[Path] = []
    try:
        with bundle.open("rb") as source:
            for name in names:
                target = bundle.with_name(name)
                records.append(_copy_part(source, target, part_size, whole))
                written.append(target)
        signed = index_signed_json(bundle.name, total, whole.hexdigest(), part_size, records)
        signed_bytes = canonical_json(signed)
        signatures = dict(sign(key, signed_bytes) for key in keys)
        document = {
            "signed": signed,
            "signatures": {
                key_id: base64.b64encode(signature).decode("ascii")
                for key_id, signature in sorted(signatures.items())
            },
        }
        _write_new(index_path, canonical_json(document) + b"\n")
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise

    if remove_source:
        bundle.unlink()
    logger.info("split %s into %d parts of at most %d bytes", bundle, count, part_size)
    return SplitResult(tuple(written), index_path, part_size, tuple(sorted(signatures)))


def _copy_part(source: BinaryIO, target: Path, limit: int, whole: hashlib._Hash) -> PartRecord:
    digest = hashlib.sha256()
    size = 0
    partial = target.with_name(target.name + ".partial")
    with partial.open("xb") as out:
        while size < limit:
            chunk = source.read(min(CHUNK_SIZE, limit - size))
            if not chunk:
                break
            digest.update(chunk)
            whole.update(chunk)
            out.write(chunk)
            size += len(chunk)
        out.flush()
        os.fsync(out.fileno())
    partial.rename(target)
    return PartRecord(target.name, size, digest.hexdigest())


def _write_new(path: Path, data: bytes) -> None:
    partial = path.with_name(path.name + ".partial")
    with partial.open("xb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    partial.rename(path)


def join_parts(parts: Sequence[Path], output: Path | None = None) -> Path:
    """Concatenate `parts` into one bundle file, checking them against the index.

    With the parts index beside the first part, every listed part must be
    given in order, and each part's sha256 and the whole bundle's sha256
    must match the index. Without an index the parts are joined as given.
    Returns the path written; nothing is left there when a check fails.
    """
    if not parts:
        raise UsageError("join needs at least one part")
    first = parts[0]
    match = PART_NAME.match(first.name)
    index_path = index_path_for(first)
    index = load_index(index_path) if index_path is not None and index_path.is_file() else None
    if output is None:
        if match is None:
            raise UsageError(f"{first} is not named NAME.001; pass --output")
        output = first.with_name(match.group("bundle"))
    if output.exists():
        raise UsageError(f"{output} already exists", hint="remove it or pass another --output")

    if index is not None:
        given = [part.name for part in parts]
        listed = [record.name for record in index.parts]
        if given != listed:
            raise UsageError(
                f"the parts index of {index.bundle} lists {', '.join(listed)}; "
                f"got {', '.join(given)}",
                hint="pass every part, in order",
            )

    whole = hashlib.sha256()
    partial = output.with_name(output.name + ".partial")
    try:
        with partial.open("xb") as out:
            for number, part in enumerate(parts):
                digest = hashlib.sha256()
                try:
                    handle = part.open("rb")
                except OSError as err:
                    raise UsageError(f"cannot read part {part}: {err.strerror}") from err
                with handle:
                    while chunk := handle.read(CHUNK_SIZE):
                        digest.update(chunk)
                        whole.update(chunk)
                        out.write(chunk)
                if index is not None and digest.hexdigest() != index.parts[number].sha256:
                    raise DigestMismatchError(
                        f"part {part.name} has sha256 {digest.hexdigest()}, "
                        f"the parts index records {index.parts[number].sha256}",
                        hint="copy that part again from the source medium",
                    )
            out.flush()
            os.fsync(out.fileno())
        if index is not None and whole.hexdigest() != index.sha256:
            raise DigestMismatchError(
                f"joined bundle has sha256 {whole.hexdigest()}, the parts index records "
                f"{index.sha256}",
                hint="copy the parts again from the source medium",
            )
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    partial.rename(output)
    logger.info("joined %d parts into %s", len(parts), output)
    return output
