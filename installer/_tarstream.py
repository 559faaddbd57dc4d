"""Stream a folder's files as an uncompressed tar, in constant memory.

`docker load` reads the docker-archive from this generator, so a 30 GB image
store never has to exist as one tar file on disk or as bytes in memory.
"""

from __future__ import annotations

import os
import tarfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from installer.errors import InstallError

# A py-spy profile of bench/load_store.py loading a 1 GiB image (Engine 20.10,
# vfs) spent about a fifth of the time sending this stream and 1 % in this
# generator, the rest waiting for the engine, so larger chunks would save little.
CHUNK_SIZE = 1024 * 1024

_CHANGED_HINT = "another process changed the staged images; run the install again"


def iter_tar(root: Path, names: Sequence[str]) -> Iterator[bytes]:
    """Yield a tar archive of `root/name` for each name, as chunks of at most CHUNK_SIZE bytes.

    Each file's header announces the size the file has when it is opened,
    and exactly that many bytes follow. Raises InstallError when the file
    is shorter or longer by the time it is read, because the stream would
    no longer match its header or the bytes that were verified.
    """
    for name in names:
        path = root / name
        with path.open("rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            yield _header(name, size)
            remaining = size
            while remaining:
                chunk = handle.read(min(CHUNK_SIZE, remaining))
                if not chunk:
                    raise InstallError(
                        f"staged file {path} shrank to {size - remaining} bytes while it was "
                        f"sent to docker load; it had {size}",
                        hint=_CHANGED_HINT,
                    )
                remaining -= len(chunk)
                yield chunk
            if handle.read(1):
                raise InstallError(
                    f"staged file {path} grew past {size} bytes while it was sent to docker load",
                    hint=_CHANGED_HINT,
                )
        padding = -size % tarfile.BLOCKSIZE
        if padding:
            yield b"\0" * padding
    # Two zero blocks end a tar archive (POSIX ustar).
    yield b"\0" * (2 * tarfile.BLOCKSIZE)


def tar_size(root: Path, names: Sequence[str]) -> int:
    """Return the number of bytes `iter_tar` yields, for progress totals."""
    total = 2 * tarfile.BLOCKSIZE
    for name in names:
        size = (root / name).stat().st_size
        total += len(_header(name, size)) + size + (-size % tarfile.BLOCKSIZE)
    return total


def _header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    return info.tobuf(format=tarfile.PAX_FORMAT)
