"""Write the bundle tar: manifest first, then signatures, then the payload.

Every header is fixed (mode 0644, uid/gid 0, no user or group names, one
mtime for all) and members are in a fixed order, so the same inputs give a
byte-identical archive.

The first payload member, `airlock/SHA256SUMS`, lists every other payload
member in `sha256sum` format. The manifest records its sha256 like any
member's, so an operator with coreutils and openssl can check a bundle:
signature, then the checksum list against the manifest, then
`sha256sum -c`.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from installer.constants import MANIFEST_PATH, SIGNATURE_SUFFIX, SIGNATURES_DIR, TAR_MODE_FILE
from installer.manifest import Member

COPY_CHUNK = 1024 * 1024
CHECKSUMS_PATH = "airlock/SHA256SUMS"
CHECKSUMS_MEDIA_TYPE = "text/plain; charset=utf-8"


def file_member(root: Path, relative: str, media_type: str) -> Member:
    """Hash one staged payload file into a manifest member."""
    digest = hashlib.sha256()
    size = 0
    with (root / relative).open("rb") as handle:
        while chunk := handle.read(COPY_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return Member(relative, size, digest.hexdigest(), media_type)


def checksums_member(root: Path, payload: Sequence[Member]) -> Member:
    """Write `root/airlock/SHA256SUMS` for `payload` and return its member.

    The lines are `<sha256>  <path>`, the text mode `sha256sum -c` reads,
    in the payload's order. Member paths never contain spaces or newlines
    (the manifest schema forbids them), so no line needs escaping.
    """
    text = "".join(f"{member.sha256}  {member.path}\n" for member in payload)
    path = root / CHECKSUMS_PATH
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return file_member(root, CHECKSUMS_PATH, CHECKSUMS_MEDIA_TYPE)


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
        # copybufsize: 1 MiB copies instead of tarfile's 16 KiB (typeshed lacks the argument).
        with tarfile.open(  # type: ignore[call-overload]
            fileobj=raw, mode="w", format=tarfile.PAX_FORMAT, copybufsize=COPY_CHUNK
        ) as tar:
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
