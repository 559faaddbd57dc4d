"""Stream a folder's files as an uncompressed tar, in constant memory.

`docker load` reads the docker-archive from this generator, so a 30 GB image
store never has to exist as one tar file on disk or as bytes in memory.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator, Sequence
from pathlib import Path

CHUNK_SIZE = 1024 * 1024


def iter_tar(root: Path, names: Sequence[str]) -> Iterator[bytes]:
    """Yield a tar archive of `root/name` for each name, as chunks of bytes."""
    for name in names:
        path = root / name
        size = path.stat().st_size
        info = tarfile.TarInfo(name)
        info.size = size
        info.mode = 0o644
        yield info.tobuf(format=tarfile.PAX_FORMAT)
        with path.open("rb") as handle:
            while chunk := handle.read(CHUNK_SIZE):
                yield chunk
        padding = -size % tarfile.BLOCKSIZE
        if padding:
            yield b"\0" * padding
    # Two zero blocks end a tar archive (POSIX ustar).
    yield b"\0" * (2 * tarfile.BLOCKSIZE)


def tar_size(root: Path, names: Sequence[str]) -> int:
    """Return the number of bytes `iter_tar` yields, for progress totals."""
    total = 2 * tarfile.BLOCKSIZE
    for name in names:
        info = tarfile.TarInfo(name)
        size = (root / name).stat().st_size
        info.size = size
        total += len(info.tobuf(format=tarfile.PAX_FORMAT)) + size + (-size % tarfile.BLOCKSIZE)
    return total
