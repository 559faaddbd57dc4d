"""Write the bundle tar: manifest first, then signatures, then the payload.

Every header is fixed (mode 0644, uid/gid 0, no user or group names, one
mtime for all) and members are in a fixed order, so the same inputs give a
byte-identical archive.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from collections.abc import Iterable, Mapping
from pathlib import Path

from installer.constants import MANIFEST_PATH, SIGNATURE_SUFFIX, SIGNATURES_DIR, TAR_MODE_FILE
from installer.manifest import Member

COPY_CHUNK = 1024 * 1024


def file_member(root: Path, relative: str, media_type: str) -> Member:
    """Hash one staged payload file into a manifest member."""
    digest = hashlib.sha256()
    size = 0
    with (root / relative).open("rb") as handle:
        while chunk := handle.read(COPY_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return Member(relative, size, digest.hexdigest(), media_type)


def _header(name: str, size: int, mtime: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = TAR_MODE_FILE
    info.mtime = mtime
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info


def write_archive(
    output: Path,
    manifest_bytes: bytes,
    signatures: Mapping[str, bytes],
    payload_root: Path,
    members: Iterable[Member],
    *,
    mtime: int,
) -> None:
    """Write the archive to `output` through a temporary file, then rename it."""
    partial = output.with_name(output.name + ".partial")
    with partial.open("wb") as raw:
        with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
            tar.addfile(
                _header(MANIFEST_PATH, len(manifest_bytes), mtime), io.BytesIO(manifest_bytes)
            )
            for signer, signature in sorted(signatures.items()):
                name = f"{SIGNATURES_DIR}{signer}{SIGNATURE_SUFFIX}"
                tar.addfile(_header(name, len(signature), mtime), io.BytesIO(signature))
            for member in members:
                with (payload_root / member.path).open("rb") as handle:
                    tar.addfile(_header(member.path, member.size, mtime), handle)
        raw.flush()
        os.fsync(raw.fileno())
    partial.replace(output)
