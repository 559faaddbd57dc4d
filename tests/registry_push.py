"""Push synthetic images straight to a registry over HTTP, for tests.

The helpers speak the distribution API with `requests` and nothing else, so
they stage exactly the bytes a test needs: Docker schema-2 or OCI manifests,
multi-platform indexes, and images reachable only by digest. Layers are
gzip-compressed tar files whose uncompressed digests appear in the config's
`rootfs.diff_ids`, as `docker load` checks them.

Typical use:

    registry = require_registry()
    repository = unique_repository()
    image = push_image(registry, repository, [tar_layer({"hello.txt": b"hi"})], tag="1")
    index = push_index(registry, repository, {"linux/amd64": [...], "linux/arm64": [...]})
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin

import pytest
import requests

from installer.constants import (
    DOCKER_CONFIG,
    DOCKER_LAYER_GZIP,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
)

# The registry that scripts/services.sh starts; AIRLOCK_REGISTRY_PORT moves it.
REGISTRY = f"127.0.0.1:{os.environ.get('AIRLOCK_REGISTRY_PORT', '5000')}"

# Each PATCH of a chunked upload carries this many bytes unless the caller passes chunk_size.
DEFAULT_CHUNK_SIZE = 64 * 1024

# Seconds to wait for the local registry on each request.
TIMEOUT = 10


def require_registry(registry: str = REGISTRY) -> str:
    """Return `registry` when its `/v2/` endpoint responds, else skip the test.

    With CI=true in the environment a missing registry fails the test,
    because there the CI script starts one before the tests run.
    """
    url = f"http://{registry}/v2/"
    try:
        response = requests.get(url, timeout=3)
        responding = response.status_code == 200
        reason = f"{url} returned HTTP {response.status_code}"
    except requests.RequestException as err:
        responding = False
        reason = f"{url} is unreachable: {type(err).__name__}"
    if responding:
        return registry

    message = f"registry not available ({reason}); start it with scripts/services.sh start"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


def unique_repository(prefix: str = "airlock-test") -> str:
    """Return a repository path no other test uses, e.g. `airlock-test/3f2c...`."""
    return f"{prefix}/{uuid.uuid4().hex}"


def sha256_digest(data: bytes) -> str:
    """Return the OCI digest string of `data`."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def tar_layer(files: Mapping[str, bytes]) -> bytes:
    """Build an uncompressed layer tar holding `files` (path to content).

    Members get fixed owners, modes and times, so equal input gives equal bytes.
    """
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name in sorted(files):
            info = tarfile.TarInfo(name)
            info.size = len(files[name])
            info.mode = 0o644
            info.mtime = 0
            archive.addfile(info, io.BytesIO(files[name]))
    return buffer.getvalue()


@dataclass(frozen=True)
class Blob:
    """Content pushed as a blob, with the descriptor a manifest uses for it."""

    media_type: str
    data: bytes

    @property
    def digest(self) -> str:
        return sha256_digest(self.data)

    @property
    def size(self) -> int:
        return len(self.data)

    def descriptor(self) -> dict[str, Any]:
        """Return the OCI descriptor of this blob as a JSON object."""
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


@dataclass(frozen=True)
class PushedImage:
    """One image manifest in the registry, with every byte that was pushed for it."""

    registry: str
    repository: str
    tag: str | None
    media_type: str
    manifest: bytes
    config: Blob
    layers: tuple[Blob, ...]
    # Uncompressed layer tars, in the order of `layers`.
    layer_tars: tuple[bytes, ...]
    platform: str

    @property
    def digest(self) -> str:
        return sha256_digest(self.manifest)

    @property
    def by_digest(self) -> str:
        """Reference text pinning this manifest, e.g. `127.0.0.1:5000/x@sha256:...`."""
        return f"{self.registry}/{self.repository}@{self.digest}"

    @property
    def by_tag(self) -> str:
        """Reference text with the tag, e.g. `127.0.0.1:5000/x:1`."""
        if self.tag is None:
            raise ValueError(f"{self.by_digest} was pushed without a tag")
        return f"{self.registry}/{self.repository}:{self.tag}"


@dataclass(frozen=True)
class PushedIndex:
    """An image index (or Docker manifest list) and the images it lists, by platform."""

    registry: str
    repository: str
    tag: str | None
    media_type: str
    manifest: bytes
    images: dict[str, PushedImage] = field(default_factory=dict)

    @property
    def digest(self) -> str:
        return sha256_digest(self.manifest)

    @property
    def by_digest(self) -> str:
        return f"{self.registry}/{self.repository}@{self.digest}"

    @property
    def by_tag(self) -> str:
        if self.tag is None:
            raise ValueError(f"{self.by_digest} was pushed without a tag")
        return f"{self.registry}/{self.repository}:{self.tag}"


def push_blob(
    registry: str,
    repository: str,
    data: bytes,
    *,
    chunked: bool = False,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> str:
    """Upload `data` as a blob and return its digest.

    Monolithic: POST to open an upload session, then one PUT with the body.
    Chunked: POST, one PATCH per chunk with its Content-Range, then an empty
    PUT that names the digest (OCI distribution-spec, "Pushing a blob in chunks").
    """
    digest = sha256_digest(data)
    base = f"http://{registry}"
    response = requests.post(f"{base}/v2/{repository}/blobs/uploads/", timeout=TIMEOUT)
    _expect(response, 202, f"open upload for {repository}")
    location = urljoin(base, response.headers["Location"])

    if chunked:
        for start in range(0, len(data), chunk_size):
            chunk = data[start : start + chunk_size]
            response = requests.patch(
                location,
                data=chunk,
                headers={
                    "Content-Type": "application/octet-stream",
                    "Content-Range": f"{start}-{start + len(chunk) - 1}",
                },
                timeout=TIMEOUT,
            )
            _expect(response, 202, f"upload chunk at {start} of {digest}")
            location = urljoin(base, response.headers["Location"])
        body = b""
    else:
        body = data

    separator = "&" if "?" in location else "?"
    response = requests.put(
        f"{location}{separator}digest={digest}",
        data=body,
        headers={"Content-Type": "application/octet-stream"},
        timeout=TIMEOUT,
    )
    _expect(response, 201, f"finish upload of {digest}")
    return digest


def push_manifest(
    registry: str, repository: str, reference: str, body: bytes, media_type: str
) -> str:
    """PUT `body` as the manifest `reference` (tag or digest) and return its digest."""
    response = requests.put(
        f"http://{registry}/v2/{repository}/manifests/{reference}",
        data=body,
        headers={"Content-Type": media_type},
        timeout=TIMEOUT,
    )
    _expect(response, 201, f"push manifest {repository}:{reference}")
    return sha256_digest(body)


def build_image(
    layer_tars: Sequence[bytes],
    *,
    oci: bool = False,
    platform: str = "linux/amd64",
    config_overrides: Mapping[str, Any] | None = None,
) -> tuple[bytes, Blob, tuple[Blob, ...]]:
    """Build manifest bytes, config and gzip layers for an image, without pushing.

    `config_overrides` replaces top-level config keys, e.g. to drop
    `architecture` or to claim another one than `platform`.
    """
    layer_type, config_type, manifest_type = (
        (OCI_LAYER_GZIP, OCI_CONFIG, OCI_MANIFEST)
        if oci
        else (DOCKER_LAYER_GZIP, DOCKER_CONFIG, DOCKER_MANIFEST)
    )
    layers = tuple(Blob(layer_type, gzip.compress(tar, mtime=0)) for tar in layer_tars)

    os_name, architecture, *variant = platform.split("/")
    config_json: dict[str, Any] = {
        "architecture": architecture,
        "os": os_name,
        "created": "1970-01-01T00:00:00Z",
        "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": [sha256_digest(tar) for tar in layer_tars]},
        "history": [{"created_by": f"airlock test layer {i}"} for i in range(len(layer_tars))],
    }
    if variant:
        config_json["variant"] = variant[0]
    config_json.update(config_overrides or {})
    config = Blob(config_type, _json_bytes(config_json))

    manifest_json: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": manifest_type,
        "config": config.descriptor(),
        "layers": [layer.descriptor() for layer in layers],
    }
    return _json_bytes(manifest_json), config, layers


def push_image(
    registry: str,
    repository: str,
    layer_tars: Sequence[bytes],
    *,
    tag: str | None = None,
    oci: bool = False,
    platform: str = "linux/amd64",
    chunked: bool = False,
    config_overrides: Mapping[str, Any] | None = None,
) -> PushedImage:
    """Push one image (config, gzip layers, manifest) and return what was pushed.

    Without `tag` the manifest is pushed by digest only.
    """
    manifest, config, layers = build_image(
        layer_tars, oci=oci, platform=platform, config_overrides=config_overrides
    )
    for blob in (config, *layers):
        push_blob(registry, repository, blob.data, chunked=chunked)

    media_type = OCI_MANIFEST if oci else DOCKER_MANIFEST
    push_manifest(registry, repository, tag or sha256_digest(manifest), manifest, media_type)
    return PushedImage(
        registry=registry,
        repository=repository,
        tag=tag,
        media_type=media_type,
        manifest=manifest,
        config=config,
        layers=layers,
        layer_tars=tuple(layer_tars),
        platform=platform,
    )


def push_index(
    registry: str,
    repository: str,
    platforms: Mapping[str, Sequence[bytes]],
    *,
    tag: str | None = None,
    oci: bool = False,
    chunked: bool = False,
    extra_entries: Sequence[Mapping[str, Any]] = (),
) -> PushedIndex:
    """Push one image per platform (`os/arch[/variant]` to layer tars) and an index.

    The child manifests are pushed by digest only, as `docker buildx` does.
    `extra_entries` are appended to the index's `manifests` list as given,
    e.g. an attestation entry with platform `unknown/unknown`.
    """
    images: dict[str, PushedImage] = {}
    entries: list[dict[str, Any]] = []
    for platform, layer_tars in platforms.items():
        image = push_image(
            registry, repository, layer_tars, oci=oci, platform=platform, chunked=chunked
        )
        images[platform] = image

        os_name, architecture, *variant = platform.split("/")
        platform_json = {"architecture": architecture, "os": os_name}
        if variant:
            platform_json["variant"] = variant[0]
        entries.append(
            {
                "mediaType": image.media_type,
                "digest": image.digest,
                "size": len(image.manifest),
                "platform": platform_json,
            }
        )
    entries.extend(dict(entry) for entry in extra_entries)

    media_type = OCI_INDEX if oci else DOCKER_MANIFEST_LIST
    manifest = _json_bytes({"schemaVersion": 2, "mediaType": media_type, "manifests": entries})
    push_manifest(registry, repository, tag or sha256_digest(manifest), manifest, media_type)
    return PushedIndex(
        registry=registry,
        repository=repository,
        tag=tag,
        media_type=media_type,
        manifest=manifest,
        images=images,
    )


def _json_bytes(value: Mapping[str, Any]) -> bytes:
    # Indented like `docker push` output, so that a client that re-serialises
    # the JSON gets other bytes and another digest, and a test notices.
    return json.dumps(value, indent=3).encode()


def _expect(response: requests.Response, status: int, action: str) -> None:
    if response.status_code != status:
        raise AssertionError(
            f"{action}: expected HTTP {status}, got {response.status_code}: {response.text[:500]}"
        )
