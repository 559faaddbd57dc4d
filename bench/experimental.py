"""Candidate speed fixes for modules other engineers own, applied by monkeypatching.

`run.py --experimental` runs airlock's commands through this file, so a
proposed change is measured beside the code in the tree without editing
it:

    python bench/experimental.py airlock-install verify BUNDLE --key KEY.pub
    python bench/experimental.py pytest tests/test_archive.py

Under `pytest` the patches reach only code the tests run in-process, not
the commands they start as subprocesses.

AIRLOCK_BENCH_PATCHES picks patches by name, comma-separated (default:
all of them), so each one's share of a speed-up can be measured alone.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import sys
import tarfile
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _patch_verify_direct_read() -> None:
    """installer/archive.py: read member data from the tar stream itself, 1 MiB at a time.

    tarfile's stream mode (`r|`) reads its source in 10 KiB records, and
    `extractfile()` adds a BufferedReader and a `_FileInFile` on top, so
    every payload byte is copied several times in Python-level loops. After
    `tar.next()` the stream is at the member's first data byte, and the
    next `tar.next()` skips the padding, so reading `info.size` bytes from
    `tar.fileobj` is all `_stream_member` needs.
    """
    from installer import archive
    from installer.errors import DigestMismatchError

    chunk_size: int = archive.CHUNK_SIZE
    shim = types.SimpleNamespace(**vars(tarfile))
    shim.open = functools.partial(tarfile.open, bufsize=chunk_size)
    archive.tarfile = shim  # type: ignore[assignment]
    redo_hint: str = archive._REDO_HINT

    def stream_member(tar: Any, info: Any, expected: Any, dest: Path | None) -> None:
        source = tar.fileobj
        if source.tell() != info.offset_data:
            source.seek(info.offset_data)
        digest = hashlib.sha256()
        remaining = expected.size
        out = None
        if dest is not None:
            target = dest / expected.path
            target.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            out = os.fdopen(fd, "wb")
        try:
            while remaining:
                try:
                    chunk = source.read(min(chunk_size, remaining))
                except (tarfile.ReadError, EOFError, OSError) as err:
                    raise DigestMismatchError(
                        f"bundle ends early inside member {expected.path}", hint=redo_hint
                    ) from err
                if not chunk:
                    raise DigestMismatchError(
                        f"bundle ends early inside member {expected.path}", hint=redo_hint
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
                hint=redo_hint,
            )

    archive._stream_member = stream_member  # type: ignore[assignment]


def _patch_archive_copy_buffer() -> None:
    """bundler/archive.py: let tarfile copy payload files in 1 MiB pieces, not 16 KiB."""
    from bundler import archive

    shim = types.SimpleNamespace(**vars(tarfile))
    shim.open = functools.partial(tarfile.open, copybufsize=archive.COPY_CHUNK)
    archive.tarfile = shim  # type: ignore[assignment]


_BLOB_PATH = re.compile(r"^images/blobs/sha256/([0-9a-f]{64})$")


def _patch_known_blob_digests() -> None:
    """bundler/build.py: take a blob's sha256 from its name instead of reading it again.

    `write_store` renames a layer into `images/blobs/sha256/<hex>` only after
    `download_blob` checked that hex while streaming, and writes manifests
    and configs only after `_write_bytes` checked theirs, so hashing those
    files a second time for the manifest finds nothing new.
    """
    from bundler import build
    from installer.manifest import Member

    original: Callable[..., Member] = build.file_member

    def file_member(root: Path, relative: str, media_type: str) -> Member:
        match = _BLOB_PATH.match(relative)
        if match is None:
            return original(root, relative, media_type)
        return Member(relative, (root / relative).stat().st_size, match.group(1), media_type)

    build.file_member = file_member  # type: ignore[assignment]


PATCHES: dict[str, Callable[[], None]] = {
    "verify-direct-read": _patch_verify_direct_read,
    "archive-copy-buffer": _patch_archive_copy_buffer,
    "known-blob-digests": _patch_known_blob_digests,
}


def apply(names: str | None = None) -> list[str]:
    """Install the named patches (default: AIRLOCK_BENCH_PATCHES, else all) and return their names."""
    if names is None:
        names = os.environ.get("AIRLOCK_BENCH_PATCHES", ",".join(PATCHES))
    chosen = [name.strip() for name in names.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in PATCHES]
    if unknown:
        raise ValueError(f"unknown patch {', '.join(unknown)}; known: {', '.join(PATCHES)}")
    for name in chosen:
        PATCHES[name]()
    return chosen


def main(argv: list[str]) -> int:
    """Apply the patches, then run the command named by `argv[0]` with the rest."""
    if not argv or argv[0] not in ("airlock-install", "airlock-bundle", "pytest"):
        print(
            "usage: experimental.py airlock-install|airlock-bundle|pytest ARGS...", file=sys.stderr
        )
        return 2
    apply()
    if argv[0] == "pytest":
        import pytest

        # The tests import helpers as `tests.…`, from the repository root.
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        return int(pytest.main(argv[1:]))
    if argv[0] == "airlock-install":
        from installer.cli import main as command
    else:
        from bundler.cli import main as command
    command.main(args=argv[1:], prog_name=argv[0])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
