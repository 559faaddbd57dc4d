"""The tar stream that feeds `docker load`: format, size, bounded chunks, files that change."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from installer._tarstream import CHUNK_SIZE, iter_tar, tar_size
from installer.errors import InstallError

FILES = {
    "manifest.json": b'[{"Config": "blobs/sha256/c"}]',
    "blobs/sha256/c": b"x" * 511,
    "blobs/sha256/empty": b"",
    "blobs/sha256/big": bytes(range(256)) * (3 * CHUNK_SIZE // 256) + b"tail",
}


@pytest.fixture
def store(tmp_path: Path) -> Path:
    for name, data in FILES.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return tmp_path


def test_stream_is_tar_with_every_file(store: Path) -> None:
    stream = b"".join(iter_tar(store, list(FILES)))

    with tarfile.open(fileobj=io.BytesIO(stream), mode="r:") as archive:
        members = archive.getmembers()
        contents = {m.name: archive.extractfile(m).read() for m in members}  # type: ignore[union-attr]
    assert [m.name for m in members] == list(FILES)
    assert contents == FILES
    assert all(m.isfile() and m.mode == 0o644 for m in members)


def test_stream_length_equals_tar_size(store: Path) -> None:
    stream = b"".join(iter_tar(store, list(FILES)))

    assert len(stream) == tar_size(store, list(FILES))
    assert len(stream) % tarfile.BLOCKSIZE == 0
    assert stream.endswith(b"\0" * (2 * tarfile.BLOCKSIZE))


def test_chunks_never_exceed_chunk_size(store: Path) -> None:
    sizes = [len(chunk) for chunk in iter_tar(store, ["blobs/sha256/big"])]

    assert max(sizes) == CHUNK_SIZE
    assert sum(sizes) == tar_size(store, ["blobs/sha256/big"])


def test_long_name_gets_pax_header(store: Path) -> None:
    name = "blobs/" + "d" * 150
    (store / name).write_bytes(b"data")

    stream = b"".join(iter_tar(store, [name]))

    assert len(stream) == tar_size(store, [name])
    with tarfile.open(fileobj=io.BytesIO(stream), mode="r:") as archive:
        assert archive.getnames() == [name]


def test_file_that_shrinks_raises(store: Path) -> None:
    path = store / "blobs/sha256/big"
    stream = iter_tar(store, ["blobs/sha256/big"])
    next(stream)  # the header, announcing the full size
    next(stream)  # the first chunk
    with path.open("r+b") as handle:
        handle.truncate(CHUNK_SIZE + 10)

    with pytest.raises(InstallError) as caught:
        list(stream)

    size = len(FILES["blobs/sha256/big"])
    assert caught.value.message == (
        f"staged file {path} shrank to {CHUNK_SIZE + 10} bytes while it was sent to "
        f"docker load; it had {size}"
    )
    assert caught.value.hint == "another process changed the staged images; run the install again"


def test_file_that_grows_raises(store: Path) -> None:
    path = store / "blobs/sha256/c"
    stream = iter_tar(store, ["blobs/sha256/c"])
    next(stream)  # the header, announcing 511 bytes
    with path.open("ab") as handle:
        handle.write(b"more")

    with pytest.raises(InstallError) as caught:
        list(stream)

    assert caught.value.message == (
        f"staged file {path} grew past 511 bytes while it was sent to docker load"
    )


def test_missing_file_raises_os_error(store: Path) -> None:
    with pytest.raises(FileNotFoundError):
        list(iter_tar(store, ["blobs/sha256/absent"]))
