"""Access to the Docker engine: connect, describe it, load and manage images.

Every call goes through the docker SDK (7.x). Its exceptions are wrapped at
this boundary: an engine that stops responding becomes
`DockerUnavailableError`, and a request the engine rejects becomes
`InstallError` with the engine's own message.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Collection, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import docker
import docker.errors
import requests.exceptions

from installer.errors import DockerUnavailableError, InstallError
from installer.progress import NullProgress, ProgressReporter

logger = logging.getLogger(__name__)

# The address the docker CLI and SDK use when DOCKER_HOST is unset on Linux.
DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"

# Prefixes of the lines `docker load` streams back for each image, the first
# for an image saved with a tag and the second for one saved by id
# (moby image/tarexport/load.go).
_LOADED_TAG_PREFIX = "Loaded image: "
_LOADED_ID_PREFIX = "Loaded image ID: "


@dataclass(frozen=True)
class EngineInfo:
    """Facts about the Docker engine that decide whether an install can go ahead."""

    address: str
    server_version: str
    # The API version the SDK negotiated, which may be older than the engine's newest.
    api_version: str
    min_api_version: str
    os: str
    arch: str
    data_root: str
    # None when the data root is not readable from this process, for example
    # because the engine runs on another host.
    free_bytes: int | None

    @property
    def platform(self) -> str:
        """Engine platform in the `os/arch` form image platforms use."""
        return f"{self.os}/{self.arch}"


def engine_address(environ: Mapping[str, str] | None = None) -> str:
    """Return the address the SDK dials: DOCKER_HOST, or the default socket."""
    env = os.environ if environ is None else environ
    return env.get("DOCKER_HOST") or DEFAULT_DOCKER_HOST


def connect(
    environ: Mapping[str, str] | None = None, *, timeout: float = 60
) -> docker.DockerClient:
    """Connect to the engine named by `environ` and check that it responds.

    The SDK negotiates the API version with the engine, because pinning one
    newer than the engine supports (Engine 20.10 stops at 1.41) makes every
    request fail with HTTP 400.
    """
    env = dict(os.environ if environ is None else environ)
    address = engine_address(env)
    logger.debug("connecting to the Docker engine at %s", address)

    try:
        # from_env with no version requests the engine's version, so an
        # engine that is down already fails here.
        client = docker.DockerClient.from_env(environment=env, timeout=timeout)
        client.ping()
    except (docker.errors.DockerException, requests.exceptions.RequestException) as err:
        raise DockerUnavailableError(
            f"Docker engine at {address} does not respond: {_unavailable_reason(address, err)}",
            hint=_unavailable_hint(address, err),
        ) from err

    logger.debug("connected to %s with API version %s", address, client.api.api_version)
    return client


def _unavailable_reason(address: str, err: Exception) -> str:
    # The SDK nests the socket error inside two wrappers, so its text is the
    # only place the cause shows.
    text = str(err)
    socket_path = address.removeprefix("unix://")
    if "FileNotFoundError" in text:
        return f"no socket at {socket_path}"
    if "PermissionError" in text or "Permission denied" in text:
        return f"permission denied on {socket_path}"
    if "Connection refused" in text:
        return "connection refused"
    return text


def _unavailable_hint(address: str, err: Exception) -> str:
    text = str(err)
    if address.startswith("unix://"):
        socket_path = address.removeprefix("unix://")
        if "Permission denied" in text or "PermissionError" in text:
            return (
                f"run as root or as a member of the group that owns {socket_path} "
                "(usually `docker`)"
            )
        return (
            "start the engine (`systemctl start docker`, or `dockerd` where there is no "
            f"systemd), check that {socket_path} exists and that this user may open it, "
            "or set DOCKER_HOST to the engine's address"
        )
    return (
        f"check that the engine at {address} runs and accepts connections, "
        "or unset DOCKER_HOST to use the local socket"
    )


@contextmanager
def engine_errors(action: str) -> Iterator[None]:
    """Wrap SDK exceptions raised while doing `action` in airlock's errors."""
    try:
        yield
    except docker.errors.APIError as err:
        raise InstallError(f"{action} failed: {_api_message(err)}") from err
    except requests.exceptions.RequestException as err:
        raise DockerUnavailableError(
            f"{action} failed because the Docker engine stopped responding: {err}",
            hint="check that dockerd still runs (`systemctl status docker`)",
        ) from err


def _api_message(err: docker.errors.APIError) -> str:
    explanation = err.explanation
    if isinstance(explanation, bytes):
        explanation = explanation.decode("utf-8", "replace")
    return str(explanation or err)


def engine_info(client: docker.DockerClient) -> EngineInfo:
    """Describe the engine: versions, platform, data root and its free space."""
    with engine_errors("reading the engine's version"):
        version: dict[str, Any] = client.version()
    with engine_errors("reading the engine's info"):
        info: dict[str, Any] = client.info()

    address = _client_address(client)
    data_root = str(info.get("DockerRootDir", ""))
    # The data root path is only meaningful here when the engine is local.
    free_bytes = _free_bytes(data_root) if address.startswith("unix://") else None
    return EngineInfo(
        address=address,
        server_version=str(version.get("Version", "")),
        api_version=str(client.api.api_version),
        min_api_version=str(version.get("MinAPIVersion", "")),
        os=str(version.get("Os", info.get("OSType", ""))),
        arch=str(version.get("Arch", "")),
        data_root=data_root,
        free_bytes=free_bytes,
    )


def _client_address(client: docker.DockerClient) -> str:
    base_url = str(client.api.base_url)
    # The SDK rewrites a unix socket address to http+docker://localhost and
    # keeps the socket path only on its transport adapter.
    adapter = getattr(client.api, "_custom_adapter", None)
    socket_path = getattr(adapter, "socket_path", None)
    if base_url.startswith("http+docker://") and socket_path:
        return f"unix://{socket_path}"
    return base_url


def _free_bytes(data_root: str) -> int | None:
    """Return the free bytes of the filesystem holding `data_root`, or None if unreadable.

    `docker load` unpacks the whole archive into `<data root>/tmp` before it
    registers layers, so that filesystem must hold the archive and the layers.
    """
    if not data_root or not os.path.isdir(data_root):
        return None
    try:
        return shutil.disk_usage(data_root).free
    except OSError as err:
        logger.debug("cannot read free space of %s: %s", data_root, err)
        return None


def load_images(
    client: docker.DockerClient,
    chunks: Iterable[bytes],
    *,
    expected_ids: Collection[str],
    progress: ProgressReporter | None = None,
    total: int | None = None,
) -> list[str]:
    """Stream a docker-archive tar into `docker load` and check that every expected image arrived.

    `chunks` is consumed lazily, so the archive is never held in memory
    (the SDK would read a `bytes` body whole). An exception raised by
    `chunks`, such as a digest mismatch found while hashing the stream,
    propagates unchanged and the engine discards the partial upload.
    `expected_ids` are image ids (`sha256:<config digest>`); each must be
    present after the load. Returns the ids the engine reported as loaded.

    Raises InstallError with the engine's message when the load fails, and
    when an expected image is missing afterwards.
    """
    if isinstance(chunks, bytes | bytearray | memoryview):
        raise TypeError("load_images needs an iterable of byte chunks, not one bytes object")
    reporter = progress if progress is not None else NullProgress()

    reporter.start("Loading images", total, "B")
    try:
        with engine_errors("docker load"):
            messages = client.api.load_image(_counted(chunks, reporter), quiet=False)
            loaded_names = _read_load_messages(messages)
    finally:
        reporter.finish()

    loaded_ids: list[str] = []
    for name in loaded_names:
        loaded_id = image_id(client, name)
        if loaded_id is None:
            raise InstallError(f"docker load reported {name} as loaded, but it is not present")
        if loaded_id not in loaded_ids:
            loaded_ids.append(loaded_id)
        logger.info("loaded image %s (%s)", name, loaded_id)

    missing = [expected for expected in expected_ids if not _has_image_id(client, expected)]
    if missing:
        raise InstallError(
            f"docker load finished but {len(missing)} expected image(s) are missing: "
            + ", ".join(missing),
            hint="the archive does not contain the images its manifest lists; rebuild the bundle",
        )
    return loaded_ids


def _counted(chunks: Iterable[bytes], reporter: ProgressReporter) -> Iterator[bytes]:
    for chunk in chunks:
        if chunk:
            reporter.advance(len(chunk))
            yield chunk


def _read_load_messages(messages: Iterable[dict[str, Any]]) -> list[str]:
    """Collect the image names and ids `docker load` reports, failing on any error message.

    Engine errors such as "no space left on device" arrive inside the JSON
    stream after HTTP 200, so each message is checked.
    """
    loaded: list[str] = []
    for message in messages:
        error = message.get("error") or (message.get("errorDetail") or {}).get("message")
        if error:
            hint = None
            if "no space left on device" in str(error):
                hint = "free space in the Docker data root; `docker load` unpacks the archive there"
            raise InstallError(f"docker load failed: {error}", hint=hint)

        stream = str(message.get("stream", "")).strip()
        for prefix in (_LOADED_ID_PREFIX, _LOADED_TAG_PREFIX):
            if stream.startswith(prefix):
                loaded.append(stream.removeprefix(prefix).strip())
                break
    return loaded


def _has_image_id(client: docker.DockerClient, expected_id: str) -> bool:
    # Compare whole ids, because the engine also resolves a short id prefix.
    return image_id(client, expected_id) == expected_id


def image_id(client: docker.DockerClient, reference: str) -> str | None:
    """Return the id (`sha256:...`) of the local image `reference`, or None when absent."""
    with engine_errors(f"inspecting image {reference}"):
        try:
            attrs = client.api.inspect_image(reference)
        except docker.errors.NotFound:
            return None
    return str(attrs["Id"])


def missing_images(client: docker.DockerClient, references: Iterable[str]) -> list[str]:
    """Return the references, without repeats and in order, that name no local image."""
    missing: list[str] = []
    for reference in references:
        if reference not in missing and image_id(client, reference) is None:
            missing.append(reference)
    return missing


def tag_image(client: docker.DockerClient, image_id: str, reference: str) -> None:
    """Point the tag `reference` at the local image `image_id`, moving it if it exists."""
    repository, tag = split_tag(reference)
    with engine_errors(f"tagging {image_id} as {reference}"):
        tagged = client.api.tag(image_id, repository, tag, force=True)
    if not tagged:
        raise InstallError(f"tagging {image_id} as {reference} failed")
    logger.debug("tagged %s as %s", image_id, reference)


def split_tag(reference: str) -> tuple[str, str]:
    """Split `reference` into repository and tag, with `latest` as the default tag.

    Raises InstallError for a digest reference, which cannot be a tag.
    """
    if "@" in reference:
        raise InstallError(f"invalid tag {reference}: a digest reference cannot be a tag")
    # A colon before the last slash belongs to a registry port, not a tag.
    name, colon, tag = reference.rpartition(":")
    if not colon or "/" in tag:
        return reference, "latest"
    return name, tag


def remove_images(client: docker.DockerClient, ids: Iterable[str]) -> list[str]:
    """Remove the images `ids` and every tag on them, skipping images a container uses.

    Meant for cleaning up what a failed install loaded, so callers pass only
    ids that were absent before the load. An image that is gone already is
    skipped silently. An image that a container (running or stopped) or a
    child image still uses is kept and logged as a warning. Returns the ids
    removed.
    """
    with engine_errors("listing containers"):
        containers = client.api.containers(all=True)
    in_use = {str(container.get("ImageID", "")) for container in containers}

    removed: list[str] = []
    for identifier in ids:
        if identifier in in_use:
            logger.warning("keeping image %s because a container uses it", identifier)
            continue
        with engine_errors(f"removing image {identifier}"):
            try:
                # force removes every tag at once. The in-use check above keeps
                # force from untagging an image under a container.
                client.api.remove_image(identifier, force=True)
            except docker.errors.NotFound:
                logger.debug("image %s is already gone", identifier)
                continue
            except docker.errors.APIError as err:
                # 409 Conflict: a container created since the check, or a child image, uses it.
                if err.status_code != 409:
                    raise
                logger.warning("keeping image %s: %s", identifier, _api_message(err))
                continue
        logger.info("removed image %s", identifier)
        removed.append(identifier)
    return removed


def image_platform(client: docker.DockerClient, reference: str) -> str:
    """Return the platform of local image `reference` as `os/arch[/variant]`.

    Raises InstallError when the image is not present.
    """
    with engine_errors(f"inspecting image {reference}"):
        try:
            attrs = client.api.inspect_image(reference)
        except docker.errors.NotFound as err:
            raise InstallError(f"image {reference} not found in the Docker engine") from err

    platform = f"{attrs.get('Os', '')}/{attrs.get('Architecture', '')}"
    variant = attrs.get("Variant")
    if variant:
        platform += f"/{variant}"
    return platform
