"""Tests for installer.engine against the real Docker engine.

Images are built from the host's static busybox, named `airlock-test/...`
with a random suffix, and removed at teardown.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import docker.errors
import pytest

from installer.engine import (
    DEFAULT_DOCKER_HOST,
    connect,
    engine_address,
    engine_info,
    image_id,
    image_platform,
    load_images,
    missing_images,
    remove_images,
    split_tag,
    tag_image,
)
from installer.errors import DockerUnavailableError, InstallError
from installer.progress import LoggingProgress

BUSYBOX = Path("/bin/busybox")
CHUNK_SIZE = 64 * 1024


# TODO: move docker_client and the busybox image builder to tests/conftest.py
# once it exists, because test_compose_cli.py carries a copy of both.
@pytest.fixture(scope="module")
def docker_client() -> Iterator[docker.DockerClient]:
    """Connect to the local engine, skipping without one except in CI, where that fails."""
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as err:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI needs a running Docker engine: {err}")
        pytest.skip(f"no Docker engine: {err}")
    yield client
    client.close()


def busybox_rootfs() -> bytes:
    """Build a rootfs tar with static busybox, one link per applet, and /etc/passwd."""
    if not BUSYBOX.is_file():
        pytest.skip("needs /bin/busybox from the busybox-static package")
    listing = subprocess.run([str(BUSYBOX), "--list"], capture_output=True, text=True, check=True)
    applets = listing.stdout.split()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for directory in ("bin", "etc", "tmp"):
            info = tarfile.TarInfo(directory)
            info.type = tarfile.DIRTYPE
            info.mode = 0o1777 if directory == "tmp" else 0o755
            tar.addfile(info)
        tar.add(str(BUSYBOX), arcname="bin/busybox")
        for applet in applets:
            if applet == "busybox":
                continue
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type = tarfile.SYMTYPE
            link.linkname = "busybox"
            tar.addfile(link)
        passwd = b"root:x:0:0:root:/root:/bin/sh\n"
        info = tarfile.TarInfo("etc/passwd")
        info.size = len(passwd)
        info.mode = 0o644
        tar.addfile(info, io.BytesIO(passwd))
    return buffer.getvalue()


def import_busybox(client: docker.DockerClient, repository: str, tag: str = "1") -> str:
    """Import the busybox rootfs as `repository:tag` and return its image id."""
    client.api.import_image_from_data(
        busybox_rootfs(),
        repository=repository,
        tag=tag,
        changes=['CMD ["sh"]', "ENV PATH=/bin"],
    )
    return str(client.api.inspect_image(f"{repository}:{tag}")["Id"])


def remove_if_present(client: docker.DockerClient, reference: str) -> None:
    try:
        client.api.remove_image(reference, force=True)
    except docker.errors.NotFound:
        pass


@pytest.fixture()
def test_image(docker_client: docker.DockerClient) -> Iterator[tuple[str, str]]:
    """Import a uniquely named busybox image and yield its reference and id."""
    repository = f"airlock-test/engine-{uuid.uuid4().hex[:12]}"
    identifier = import_busybox(docker_client, repository)
    yield f"{repository}:1", identifier
    remove_if_present(docker_client, identifier)


@pytest.fixture()
def saved_archive(
    docker_client: docker.DockerClient, test_image: tuple[str, str], tmp_path: Path
) -> tuple[Path, str, str]:
    """Save the test image as a docker-archive and remove it from the engine."""
    reference, identifier = test_image
    archive = tmp_path / "image.tar"
    with archive.open("wb") as file:
        for chunk in docker_client.images.get(reference).save(named=True):
            file.write(chunk)
    docker_client.api.remove_image(identifier, force=True)
    return archive, reference, identifier


def read_chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as file:
        while chunk := file.read(CHUNK_SIZE):
            yield chunk


def test_connect_to_missing_socket_fails_fast() -> None:
    started = time.monotonic()

    with pytest.raises(DockerUnavailableError) as caught:
        connect({"DOCKER_HOST": "unix:///nonexistent.sock"})

    assert time.monotonic() - started < 5
    message = str(caught.value)
    assert message.startswith(
        "Docker engine at unix:///nonexistent.sock does not respond: "
        "no socket at /nonexistent.sock; "
    )
    assert "systemctl start docker" in message
    assert "this user may open it" in message


def test_connect_to_closed_port_names_address() -> None:
    with pytest.raises(DockerUnavailableError) as caught:
        connect({"DOCKER_HOST": "tcp://127.0.0.1:1"}, timeout=5)

    assert str(caught.value).startswith(
        "Docker engine at tcp://127.0.0.1:1 does not respond: connection refused; "
    )


def test_engine_address_defaults_to_socket() -> None:
    assert engine_address({}) == DEFAULT_DOCKER_HOST
    assert engine_address({"DOCKER_HOST": "tcp://127.0.0.1:2375"}) == "tcp://127.0.0.1:2375"


@pytest.mark.docker
def test_engine_info_describes_local_engine(docker_client: docker.DockerClient) -> None:
    client = connect()
    try:
        info = engine_info(client)
    finally:
        client.close()

    version = docker_client.version()
    assert info.address == DEFAULT_DOCKER_HOST
    assert info.server_version == version["Version"]
    assert info.api_version == docker_client.api.api_version
    assert info.platform == f"{version['Os']}/{version['Arch']}"
    assert info.data_root == docker_client.info()["DockerRootDir"]
    if os.path.isdir(info.data_root):
        assert info.free_bytes is not None
        assert info.free_bytes > 0


@pytest.mark.docker
def test_load_images_streams_saved_archive(
    docker_client: docker.DockerClient,
    saved_archive: tuple[Path, str, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    archive, reference, identifier = saved_archive
    assert image_id(docker_client, identifier) is None

    progress = LoggingProgress()
    with caplog.at_level("INFO"):
        loaded = load_images(
            docker_client,
            read_chunks(archive),
            expected_ids=[identifier],
            progress=progress,
            total=archive.stat().st_size,
        )

    assert loaded == [identifier]
    assert image_id(docker_client, reference) == identifier
    messages = [record.getMessage() for record in caplog.records]
    assert messages[0].startswith("Loading images: started, ")
    assert any(message.startswith("Loading images: finished, ") for message in messages)
    assert f"loaded image {reference} ({identifier})" in messages


@pytest.mark.docker
def test_load_images_rejects_missing_expected_id(
    docker_client: docker.DockerClient, saved_archive: tuple[Path, str, str]
) -> None:
    archive, _, identifier = saved_archive
    wrong_id = "sha256:" + "0" * 64

    with pytest.raises(InstallError) as caught:
        load_images(docker_client, read_chunks(archive), expected_ids=[identifier, wrong_id])

    assert caught.value.message == (
        f"docker load finished but 1 expected image(s) are missing: {wrong_id}"
    )


@pytest.mark.docker
def test_load_images_rejects_short_id_prefix(
    docker_client: docker.DockerClient, saved_archive: tuple[Path, str, str]
) -> None:
    archive, _, identifier = saved_archive
    # The engine resolves a short prefix to the full id, but the check must not.
    short_id = identifier[: len("sha256:") + 12]

    with pytest.raises(InstallError) as caught:
        load_images(docker_client, read_chunks(archive), expected_ids=[short_id])

    assert short_id in caught.value.message


@pytest.mark.docker
def test_load_images_reports_engine_error(docker_client: docker.DockerClient) -> None:
    def not_a_tar() -> Iterator[bytes]:
        yield b"this is not a tar archive" * 1000

    with pytest.raises(InstallError) as caught:
        load_images(docker_client, not_a_tar(), expected_ids=[])

    assert caught.value.message == (
        "docker load failed: Error processing tar file(exit status 1): "
        "archive/tar: invalid tar header"
    )


@pytest.mark.docker
def test_load_images_propagates_stream_error(
    docker_client: docker.DockerClient, saved_archive: tuple[Path, str, str]
) -> None:
    archive, _, identifier = saved_archive

    class TamperedError(Exception):
        pass

    def truncated() -> Iterator[bytes]:
        data = archive.read_bytes()
        yield data[: len(data) // 2]
        raise TamperedError("images/blobs/sha256/abc: digest mismatch")

    with pytest.raises(TamperedError):
        load_images(docker_client, truncated(), expected_ids=[identifier])

    assert image_id(docker_client, identifier) is None


def test_load_images_rejects_whole_bytes() -> None:
    with pytest.raises(TypeError):
        load_images(None, b"tar bytes", expected_ids=[])  # type: ignore[arg-type]


@pytest.mark.docker
def test_image_queries_on_present_and_absent(
    docker_client: docker.DockerClient, test_image: tuple[str, str]
) -> None:
    reference, identifier = test_image
    absent = f"airlock-test/absent-{uuid.uuid4().hex[:12]}:1"

    assert image_id(docker_client, reference) == identifier
    assert image_id(docker_client, absent) is None
    assert missing_images(docker_client, [reference, absent, absent]) == [absent]
    # `docker import` stamps the image with the engine's own platform.
    assert image_platform(docker_client, reference) == f"linux/{docker_client.version()['Arch']}"


@pytest.mark.docker
def test_image_platform_of_absent_image_fails(docker_client: docker.DockerClient) -> None:
    absent = f"airlock-test/absent-{uuid.uuid4().hex[:12]}:1"

    with pytest.raises(InstallError) as caught:
        image_platform(docker_client, absent)

    assert caught.value.message == f"image {absent} not found in the Docker engine"


@pytest.mark.docker
def test_tag_image_moves_existing_tag(
    docker_client: docker.DockerClient, test_image: tuple[str, str]
) -> None:
    _, identifier = test_image
    other_repository = f"airlock-test/engine-other-{uuid.uuid4().hex[:12]}"
    other_id = import_busybox(docker_client, other_repository)
    # Both imports hold the same files, so change one to get a second id.
    container = docker_client.containers.create(f"{other_repository}:1", command=["true"])
    try:
        changed_id = str(container.commit(repository=other_repository, tag="2").id)
    finally:
        container.remove()
    target = f"airlock-test/tagged-{uuid.uuid4().hex[:12]}:stable"

    try:
        tag_image(docker_client, identifier, target)
        assert image_id(docker_client, target) == identifier

        tag_image(docker_client, changed_id, target)
        assert image_id(docker_client, target) == changed_id
    finally:
        remove_if_present(docker_client, target)
        remove_if_present(docker_client, changed_id)
        remove_if_present(docker_client, other_id)


def test_split_tag_handles_registry_port() -> None:
    assert split_tag("127.0.0.1:5000/app/server:2.1") == ("127.0.0.1:5000/app/server", "2.1")
    assert split_tag("127.0.0.1:5000/app/server") == ("127.0.0.1:5000/app/server", "latest")
    assert split_tag("postgres") == ("postgres", "latest")


def test_split_tag_rejects_digest() -> None:
    with pytest.raises(InstallError):
        split_tag("postgres@sha256:" + "0" * 64)


@pytest.mark.docker
def test_remove_images_keeps_image_in_use(
    docker_client: docker.DockerClient, test_image: tuple[str, str]
) -> None:
    reference, identifier = test_image
    container = docker_client.containers.create(reference, command=["true"])
    try:
        assert remove_images(docker_client, [identifier]) == []
        assert image_id(docker_client, reference) == identifier
    finally:
        container.remove()


@pytest.mark.docker
def test_remove_images_removes_every_tag(
    docker_client: docker.DockerClient, test_image: tuple[str, str]
) -> None:
    reference, identifier = test_image
    second_tag = f"airlock-test/engine-second-{uuid.uuid4().hex[:12]}:1"
    tag_image(docker_client, identifier, second_tag)
    absent_id = "sha256:" + "1" * 64

    removed = remove_images(docker_client, [identifier, absent_id])

    assert removed == [identifier]
    assert image_id(docker_client, reference) is None
    assert image_id(docker_client, second_tag) is None


def test_busybox_rootfs_has_shell() -> None:
    # Guards the fixture itself, because without /bin/sh no compose test can start.
    with tempfile.TemporaryDirectory() as directory:
        with tarfile.open(fileobj=io.BytesIO(busybox_rootfs())) as tar:
            names = tar.getnames()
            tar.extractall(directory, filter="tar")
        assert "bin/sh" in names
        assert shutil.which("sh", path=os.path.join(directory, "bin")) is not None
