"""Registry pulls against the real Distribution registry and a scripted fake one.

Most tests push synthetic images to the registry on 127.0.0.1:5000 (see
registry_push.py) under a unique repository, and resolve them back. Tests
that need a registry to misbehave (wrong bytes, wrong headers, 503, 401)
use a small http.server on 127.0.0.1 that each test starts and stops.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
from registry_push import (
    build_image,
    push_image,
    push_index,
    require_registry,
    sha256_digest,
    tar_layer,
    unique_repository,
)

from bundler.registry import (
    Descriptor,
    RegistryClient,
    RegistryUsageError,
    _is_loopback,
    parse_mirrors,
    parse_platform,
)
from installer.constants import (
    DOCKER_CONFIG,
    DOCKER_LAYER_GZIP,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_CONFIG,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
)
from installer.errors import (
    EXIT_USAGE,
    DigestMismatchError,
    RegistryError,
    UsageError,
)
from installer.reference import parse

# Debug records of the client appear in pytest's report of a failing test.
logging.getLogger("bundler.registry").setLevel(logging.DEBUG)


@pytest.fixture(scope="module")
def registry() -> str:
    return require_registry()


@pytest.fixture
def repository() -> str:
    return unique_repository()


@pytest.fixture
def client() -> Iterator[RegistryClient]:
    with RegistryClient(timeout=10) as registry_client:
        yield registry_client


def layer(name: str, content: bytes) -> bytes:
    return tar_layer({name: content})


# parse_mirrors and parse_platform


def test_parse_mirrors_accepts_host_and_prefix() -> None:
    mirrors = parse_mirrors(["docker.io=127.0.0.1:5000", "ghcr.io=localhost:5000/ghcr/"])

    assert mirrors == {"docker.io": "127.0.0.1:5000", "ghcr.io": "localhost:5000/ghcr"}


def test_parse_mirrors_normalises_legacy_hub() -> None:
    assert parse_mirrors(["index.docker.io=127.0.0.1:5000"]) == {"docker.io": "127.0.0.1:5000"}


def test_parse_mirrors_empty() -> None:
    assert parse_mirrors([]) == {}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("docker.io", "invalid mirror 'docker.io': expected SOURCE=TARGET"),
        ("=127.0.0.1:5000", "invalid mirror '=127.0.0.1:5000': expected SOURCE=TARGET"),
        ("docker.io=", "invalid mirror 'docker.io=': expected SOURCE=TARGET"),
        (
            "docker.io=http://127.0.0.1:5000",
            "invalid mirror 'docker.io=http://127.0.0.1:5000': TARGET must be "
            "HOST[:PORT][/PREFIX], without a scheme or credentials",
        ),
        (
            "docker.io=user:secret@127.0.0.1:5000",
            "invalid mirror 'docker.io=user:secret@127.0.0.1:5000': TARGET must be "
            "HOST[:PORT][/PREFIX], without a scheme or credentials",
        ),
        (
            "docker.io/library=127.0.0.1:5000",
            "invalid mirror 'docker.io/library=127.0.0.1:5000': "
            "SOURCE must be a registry host such as docker.io",
        ),
        (
            "dockerhub=127.0.0.1:5000",
            "invalid mirror 'dockerhub=127.0.0.1:5000': "
            "SOURCE must be a registry host such as docker.io",
        ),
    ],
)
def test_parse_mirrors_rejects_bad_syntax(value: str, message: str) -> None:
    with pytest.raises(RegistryUsageError) as caught:
        parse_mirrors([value])

    assert caught.value.message == message


def test_parse_mirrors_rejects_invalid_target_host() -> None:
    with pytest.raises(RegistryUsageError) as caught:
        parse_mirrors(["docker.io=bad_host:5000"])

    assert caught.value.message.startswith("invalid mirror 'docker.io=bad_host:5000': ")
    assert "registry 'bad_host:5000' is not a valid host name" in caught.value.message


def test_parse_mirrors_rejects_repeated_source() -> None:
    with pytest.raises(RegistryUsageError) as caught:
        parse_mirrors(["docker.io=127.0.0.1:5000", "index.docker.io=127.0.0.1:5001"])

    assert caught.value.message == (
        "invalid mirror 'index.docker.io=127.0.0.1:5001': docker.io is mirrored twice"
    )


def test_mirror_error_is_usage_error() -> None:
    with pytest.raises(RegistryUsageError) as caught:
        parse_mirrors(["nonsense"])

    assert isinstance(caught.value, RegistryError)
    assert isinstance(caught.value, UsageError)
    assert caught.value.exit_code == EXIT_USAGE


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("linux/amd64", "linux/amd64"),
        ("linux/x86_64", "linux/amd64"),
        ("linux/amd64/v1", "linux/amd64"),
        ("linux/arm64", "linux/arm64"),
        ("linux/arm64/v8", "linux/arm64"),
        ("linux/aarch64/8", "linux/arm64"),
        ("linux/arm", "linux/arm/v7"),
        ("linux/armhf", "linux/arm/v7"),
        ("linux/armel", "linux/arm/v6"),
        ("linux/arm/6", "linux/arm/v6"),
        ("linux/i386", "linux/386"),
        ("Linux/AMD64", "linux/amd64"),
    ],
)
def test_parse_platform_normalises(text: str, canonical: str) -> None:
    assert parse_platform(text) == canonical


@pytest.mark.parametrize("text", ["", "linux", "linux/", "/amd64", "linux/arm/v7/extra"])
def test_parse_platform_rejects_malformed(text: str) -> None:
    with pytest.raises(RegistryUsageError, match="expected OS/ARCH"):
        parse_platform(text)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost", True),
        ("localhost:5000", True),
        ("127.0.0.1:5000", True),
        ("127.1.2.3", True),
        ("[::1]:5000", True),
        ("[::1]", True),
        ("registry.example:5000", False),
        ("192.0.2.10:5050", False),
        ("ghcr.io", False),
        ("localhost.example", False),
    ],
)
def test_loopback_hosts_use_plain_http(host: str, loopback: bool) -> None:
    assert _is_loopback(host) is loopback


def test_docker_hub_goes_to_registry_1() -> None:
    endpoint = RegistryClient()._endpoint(parse("postgres:16"))

    assert endpoint.base_url == "https://registry-1.docker.io/v2/library/postgres"
    assert endpoint.source == "docker.io/library/postgres"


def test_mirror_keeps_repository_path() -> None:
    client = RegistryClient(parse_mirrors(["docker.io=127.0.0.1:5000"]))

    endpoint = client._endpoint(parse("postgres:16"))

    assert endpoint.base_url == "http://127.0.0.1:5000/v2/library/postgres"
    assert endpoint.source == "127.0.0.1:5000/library/postgres"


# Resolving from the real registry


@pytest.mark.parametrize(
    ("oci", "manifest_type", "config_type", "layer_type"),
    [
        (False, DOCKER_MANIFEST, DOCKER_CONFIG, DOCKER_LAYER_GZIP),
        (True, OCI_MANIFEST, OCI_CONFIG, OCI_LAYER_GZIP),
    ],
    ids=["schema2", "oci"],
)
def test_resolve_single_image(
    registry: str,
    repository: str,
    client: RegistryClient,
    oci: bool,
    manifest_type: str,
    config_type: str,
    layer_type: str,
) -> None:
    pushed = push_image(
        registry,
        repository,
        [layer("a.txt", b"first"), layer("b.txt", b"second")],
        tag="1.0",
        oci=oci,
    )

    image = client.resolve(parse(pushed.by_tag))

    assert image.reference == parse(pushed.by_tag)
    assert image.source == f"{registry}/{repository}"
    assert image.index_digest is None
    assert image.manifest_digest == pushed.digest
    assert image.manifest_media_type == manifest_type
    assert image.manifest_bytes == pushed.manifest
    assert image.config == Descriptor(config_type, pushed.config.digest, pushed.config.size)
    assert image.config_bytes == pushed.config.data
    assert image.layers == tuple(
        Descriptor(layer_type, blob.digest, blob.size) for blob in pushed.layers
    )
    assert image.platform == "linux/amd64"
    assert image.tag_digest is None


@pytest.mark.parametrize("oci", [False, True], ids=["manifest-list", "oci-index"])
@pytest.mark.parametrize(
    ("requested", "chosen"),
    [("linux/amd64", "linux/amd64"), ("linux/arm64", "linux/arm64")],
)
def test_resolve_index_picks_platform(
    registry: str,
    repository: str,
    client: RegistryClient,
    oci: bool,
    requested: str,
    chosen: str,
) -> None:
    index = push_index(
        registry,
        repository,
        {
            "linux/amd64": [layer("arch", b"amd64")],
            "linux/arm64/v8": [layer("arch", b"arm64")],
        },
        tag="multi",
        oci=oci,
    )
    expected = index.images["linux/arm64/v8" if "arm64" in chosen else "linux/amd64"]

    image = client.resolve(parse(index.by_tag), requested)

    assert image.index_digest == index.digest
    assert image.manifest_digest == expected.digest
    assert image.manifest_bytes == expected.manifest
    assert image.manifest_media_type == (OCI_MANIFEST if oci else DOCKER_MANIFEST)
    assert image.config_bytes == expected.config.data
    assert image.layers[0].digest == expected.layers[0].digest
    assert image.platform == chosen


def test_resolve_index_by_pinned_digest(
    registry: str, repository: str, client: RegistryClient
) -> None:
    index = push_index(
        registry,
        repository,
        {"linux/amd64": [layer("a", b"1")], "linux/arm64": [layer("a", b"2")]},
        oci=True,
    )

    image = client.resolve(parse(index.by_digest), "linux/arm64")

    assert image.index_digest == index.digest
    assert image.manifest_digest == index.images["linux/arm64"].digest


def test_resolve_missing_platform_lists_available(
    registry: str, repository: str, client: RegistryClient
) -> None:
    # Build attestations are listed in the index with the platform unknown/unknown.
    attestation = push_image(
        registry, repository, [layer("provenance", b"{}")], oci=True, platform="unknown/unknown"
    )
    attestation_entry = {
        "mediaType": OCI_MANIFEST,
        "digest": attestation.digest,
        "size": len(attestation.manifest),
        "platform": {"architecture": "unknown", "os": "unknown"},
    }
    index = push_index(
        registry,
        repository,
        {"linux/amd64": [layer("a", b"1")], "linux/arm/v7": [layer("a", b"2")]},
        tag="2",
        oci=True,
        extra_entries=[attestation_entry],
    )

    with pytest.raises(RegistryError) as caught:
        client.resolve(parse(index.by_tag), "linux/s390x")

    assert caught.value.message == (
        f"image {index.by_tag} has no linux/s390x variant: "
        f"index {index.digest} lists linux/amd64, linux/arm/v7"
    )
    assert caught.value.hint is not None
    assert "--platform" in caught.value.hint


def test_resolve_single_image_wrong_architecture(
    registry: str, repository: str, client: RegistryClient
) -> None:
    pushed = push_image(registry, repository, [layer("a", b"1")], tag="1", platform="linux/arm64")

    with pytest.raises(RegistryError) as caught:
        client.resolve(parse(pushed.by_tag), "linux/amd64")

    assert caught.value.message == (
        f"image {pushed.by_tag} is built for linux/arm64 only, not linux/amd64"
    )


def test_resolve_config_without_architecture_warns(
    registry: str,
    repository: str,
    client: RegistryClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    pushed = push_image(
        registry,
        repository,
        [layer("a", b"1")],
        tag="1",
        config_overrides={"architecture": None, "os": None},
    )

    with caplog.at_level(logging.WARNING, logger="bundler.registry"):
        image = client.resolve(parse(pushed.by_tag))

    assert image.platform == "linux/amd64"
    assert "config names no OS or architecture" in caplog.text


def test_resolve_missing_image_names_mirror(registry: str, repository: str) -> None:
    client = RegistryClient(parse_mirrors([f"ghcr.io={registry}/{repository}"]))

    with pytest.raises(RegistryError) as caught:
        client.resolve(parse("ghcr.io/goauthentik/server:2026.2.2"))

    assert caught.value.message == (
        f"image ghcr.io/goauthentik/server:2026.2.2 not found: {registry} has no manifest "
        f"{repository}/goauthentik/server:2026.2.2"
    )
    assert caught.value.hint == (
        f"check the tag, or the --mirror option that sends ghcr.io to {registry}"
    )


def test_resolve_missing_image_without_mirror(
    registry: str, repository: str, client: RegistryClient
) -> None:
    with pytest.raises(RegistryError) as caught:
        client.resolve(parse(f"{registry}/{repository}:nope"))

    assert caught.value.message == (
        f"image {registry}/{repository}:nope not found: {registry} has no manifest "
        f"{repository}:nope"
    )
    assert caught.value.hint == "check the image name and tag"


def test_resolve_through_mirror(registry: str, repository: str) -> None:
    pushed = push_image(registry, f"{repository}/library/postgres", [layer("pg", b"16")], tag="16")
    client = RegistryClient(parse_mirrors([f"docker.io={registry}/{repository}"]))

    image = client.resolve(parse("postgres:16"))

    assert image.reference == parse("docker.io/library/postgres:16")
    assert image.source == f"{registry}/{repository}/library/postgres"
    assert image.manifest_digest == pushed.digest


def test_tag_and_digest_uses_pinned_digest(
    registry: str,
    repository: str,
    client: RegistryClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    tagged = push_image(registry, repository, [layer("v", b"new")], tag="1.4.2")
    pinned = push_image(registry, repository, [layer("v", b"old")])
    ref = parse(f"{registry}/{repository}:1.4.2@{pinned.digest}")

    with caplog.at_level(logging.WARNING, logger="bundler.registry"):
        image = client.resolve(ref)

    assert image.manifest_digest == pinned.digest
    assert image.config_bytes == pinned.config.data
    assert image.tag_digest == tagged.digest
    assert f"tag 1.4.2 now points to {tagged.digest}" in caplog.text


def test_tag_and_digest_agreeing_logs_nothing(
    registry: str,
    repository: str,
    client: RegistryClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    pushed = push_image(registry, repository, [layer("v", b"1")], tag="1")

    with caplog.at_level(logging.WARNING, logger="bundler.registry"):
        image = client.resolve(parse(f"{pushed.by_tag}@{pushed.digest}"))

    assert image.tag_digest == pushed.digest
    assert caplog.text == ""


def test_tag_and_digest_with_missing_tag(
    registry: str,
    repository: str,
    client: RegistryClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    pushed = push_image(registry, repository, [layer("v", b"1")])

    with caplog.at_level(logging.WARNING, logger="bundler.registry"):
        image = client.resolve(parse(f"{registry}/{repository}:gone@{pushed.digest}"))

    assert image.manifest_digest == pushed.digest
    assert image.tag_digest is None
    assert "tag gone not found" in caplog.text


def test_resolve_many_reports_every_failure(
    registry: str, repository: str, client: RegistryClient
) -> None:
    pushed = push_image(registry, repository, [layer("a", b"1")], tag="ok")
    refs = [
        parse(f"{registry}/{repository}:missing-1"),
        parse(pushed.by_tag),
        parse(f"{registry}/{repository}:missing-2"),
    ]

    resolved, errors = client.resolve_many(refs)

    assert [image.manifest_digest for image in resolved] == [pushed.digest]
    assert len(errors) == 2
    assert "missing-1 not found" in errors[0].message
    assert "missing-2 not found" in errors[1].message


# Downloading blobs


def test_download_blob_streams_exact_bytes(
    registry: str, repository: str, client: RegistryClient
) -> None:
    # Random content does not compress, so the layer spans several chunks.
    big = os.urandom(3 * 1024 * 1024)
    pushed = push_image(registry, repository, [layer("big", big)], tag="1", chunked=True)
    image = client.resolve(parse(pushed.by_tag))
    out = io.BytesIO()
    progress: list[int] = []

    client.download_blob(image, image.layers[0], out, progress.append)

    assert out.getvalue() == pushed.layers[0].data
    assert sum(progress) == pushed.layers[0].size
    assert len(progress) > 1


def test_download_missing_blob(registry: str, repository: str, client: RegistryClient) -> None:
    pushed = push_image(registry, repository, [layer("a", b"1")], tag="1")
    image = client.resolve(parse(pushed.by_tag))
    absent = Descriptor(DOCKER_LAYER_GZIP, sha256_digest(b"absent"), 6)

    with pytest.raises(RegistryError) as caught:
        client.download_blob(image, absent, io.BytesIO())

    assert caught.value.message == (
        f"image {pushed.by_tag} is incomplete: {registry} has no "
        f"blob {absent.digest} of image {pushed.by_tag}"
    )


# A scripted registry that misbehaves on purpose.


@dataclass
class FakeResponse:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class FakeRegistry:
    """Scripted registry: queued responses by request path, the last of which repeats."""

    host: str
    routes: dict[str, list[FakeResponse]] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)

    def add(self, path: str, *responses: FakeResponse) -> None:
        self.routes[path] = list(responses)

    def add_image(
        self,
        repository: str,
        tag: str,
        manifest: bytes,
        blobs: list[bytes],
        *,
        media_type: str = DOCKER_MANIFEST,
        digest_header: str | None = None,
    ) -> None:
        headers = {
            "Content-Type": media_type,
            "Docker-Content-Digest": digest_header or sha256_digest(manifest),
        }
        self.add(f"/v2/{repository}/manifests/{tag}", FakeResponse(200, manifest, headers))
        self.add(
            f"/v2/{repository}/manifests/{sha256_digest(manifest)}",
            FakeResponse(200, manifest, headers),
        )
        for blob in blobs:
            self.add(f"/v2/{repository}/blobs/{sha256_digest(blob)}", FakeResponse(200, blob))

    def respond(self, path: str) -> FakeResponse:
        self.requests.append(path)
        queued = self.routes.get(path.split("?")[0])
        if not queued:
            return FakeResponse(404, b'{"errors":[{"code":"NOT_FOUND","message":"not found"}]}')
        return queued.pop(0) if len(queued) > 1 else queued[0]


@pytest.fixture
def fake() -> Iterator[FakeRegistry]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeHandler)
    fake_registry = FakeRegistry(host=f"127.0.0.1:{server.server_address[1]}")
    server.fake = fake_registry  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield fake_registry
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


class _FakeHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self._answer(send_body=True)

    def do_HEAD(self) -> None:
        self._answer(send_body=False)

    def _answer(self, *, send_body: bool) -> None:
        response = self.server.fake.respond(self.path)  # type: ignore[attr-defined]
        self.send_response(response.status)
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        if send_body:
            self.wfile.write(response.body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def fake_image(oci: bool = False) -> tuple[bytes, list[bytes], bytes]:
    """Return manifest bytes, blobs (config first) and the uncompressed layer."""
    tar = layer("a", b"fake")
    manifest, config, layers = build_image([tar], oci=oci)
    return manifest, [config.data, *(blob.data for blob in layers)], tar


def test_download_detects_wrong_blob_bytes(fake: FakeRegistry) -> None:
    manifest, blobs, _ = fake_image()
    fake.add_image("app", "1", manifest, blobs)
    client = RegistryClient(timeout=5)
    image = client.resolve(parse(f"{fake.host}/app:1"))
    descriptor = image.layers[0]
    tampered = bytes([blobs[1][0] ^ 0xFF]) + blobs[1][1:]
    fake.add(f"/v2/app/blobs/{descriptor.digest}", FakeResponse(200, tampered))

    with pytest.raises(DigestMismatchError) as caught:
        client.download_blob(image, descriptor, io.BytesIO())

    assert caught.value.message == (
        f"blob {descriptor.digest} of image {fake.host}/app:1 from {fake.host}/app has digest "
        f"{sha256_digest(tampered)}, expected {descriptor.digest}"
    )


@pytest.mark.parametrize(
    ("change", "amount"), [(b"extra", "over"), (None, "short")], ids=["longer", "shorter"]
)
def test_download_detects_wrong_blob_size(
    fake: FakeRegistry, change: bytes | None, amount: str
) -> None:
    manifest, blobs, _ = fake_image()
    fake.add_image("app", "1", manifest, blobs)
    client = RegistryClient(timeout=5)
    image = client.resolve(parse(f"{fake.host}/app:1"))
    descriptor = image.layers[0]
    served = blobs[1] + change if change else blobs[1][:-3]
    fake.add(f"/v2/app/blobs/{descriptor.digest}", FakeResponse(200, served))
    out = io.BytesIO()

    with pytest.raises(DigestMismatchError) as caught:
        client.download_blob(image, descriptor, out)

    expected_amount = f"over {descriptor.size}" if amount == "over" else f"{descriptor.size - 3}"
    assert caught.value.message == (
        f"blob {descriptor.digest} of image {fake.host}/app:1 from {fake.host}/app is "
        f"{expected_amount} bytes, expected {descriptor.size}"
    )
    assert len(out.getvalue()) <= descriptor.size


def test_resolve_detects_wrong_digest_header(fake: FakeRegistry) -> None:
    manifest, blobs, _ = fake_image()
    forged = sha256_digest(b"something else")
    fake.add_image("app", "1", manifest, blobs, digest_header=forged)

    with pytest.raises(DigestMismatchError) as caught:
        RegistryClient(timeout=5).resolve(parse(f"{fake.host}/app:1"))

    assert caught.value.message == (
        f"manifest app:1 of image {fake.host}/app:1 from {fake.host}: the registry sent bytes "
        f"with digest {sha256_digest(manifest)}, but its Docker-Content-Digest header says "
        f"{forged}"
    )


def test_resolve_detects_manifest_not_matching_pin(fake: FakeRegistry) -> None:
    manifest, blobs, _ = fake_image()
    pinned = sha256_digest(b"the manifest that was reviewed")
    fake.add(
        f"/v2/app/manifests/{pinned}",
        FakeResponse(200, manifest, {"Content-Type": DOCKER_MANIFEST}),
    )

    with pytest.raises(DigestMismatchError) as caught:
        RegistryClient(timeout=5).resolve(parse(f"{fake.host}/app@{pinned}"))

    assert caught.value.message == (
        f"manifest app@{pinned} of image {fake.host}/app@{pinned} from {fake.host} has digest "
        f"{sha256_digest(manifest)}, expected {pinned}"
    )


def test_resolve_detects_wrong_config(fake: FakeRegistry) -> None:
    manifest, blobs, _ = fake_image()
    fake.add_image("app", "1", manifest, blobs)
    config_digest = sha256_digest(blobs[0])
    tampered = blobs[0].replace(b"amd64", b"arm64")
    fake.add(f"/v2/app/blobs/{config_digest}", FakeResponse(200, tampered))

    with pytest.raises(DigestMismatchError) as caught:
        RegistryClient(timeout=5).resolve(parse(f"{fake.host}/app:1"))

    assert caught.value.message == (
        f"config {config_digest} of image {fake.host}/app:1 from {fake.host}/app is "
        f"{len(tampered)} bytes with digest {sha256_digest(tampered)}, expected "
        f"{len(blobs[0])} bytes with digest {config_digest}"
    )


def test_resolve_without_digest_header(fake: FakeRegistry) -> None:
    manifest, blobs, _ = fake_image(oci=True)
    fake.add("/v2/app/manifests/1", FakeResponse(200, manifest, {"Content-Type": OCI_MANIFEST}))
    for blob in blobs:
        fake.add(f"/v2/app/blobs/{sha256_digest(blob)}", FakeResponse(200, blob))

    image = RegistryClient(timeout=5).resolve(parse(f"{fake.host}/app:1"))

    assert image.manifest_digest == sha256_digest(manifest)


def test_resolve_infers_missing_media_types(fake: FakeRegistry) -> None:
    manifest, blobs, _ = fake_image(oci=True)
    child = json.loads(manifest)
    del child["mediaType"]
    child_bytes = json.dumps(child).encode()
    index = json.dumps(
        {
            "schemaVersion": 2,
            "manifests": [
                {
                    "mediaType": OCI_MANIFEST,
                    "digest": sha256_digest(child_bytes),
                    "size": len(child_bytes),
                    "platform": {"os": "linux", "architecture": "amd64"},
                }
            ],
        }
    ).encode()
    # Neither document has a mediaType field, and the Content-Type is generic.
    generic = {"Content-Type": "application/json"}
    fake.add("/v2/app/manifests/1", FakeResponse(200, index, generic))
    fake.add(
        f"/v2/app/manifests/{sha256_digest(child_bytes)}", FakeResponse(200, child_bytes, generic)
    )
    for blob in blobs:
        fake.add(f"/v2/app/blobs/{sha256_digest(blob)}", FakeResponse(200, blob))

    image = RegistryClient(timeout=5).resolve(parse(f"{fake.host}/app:1"))

    assert image.index_digest == sha256_digest(index)
    assert image.manifest_media_type == OCI_MANIFEST
    assert image.manifest_bytes == child_bytes


def test_resolve_rejects_schema1(fake: FakeRegistry) -> None:
    schema1 = json.dumps({"schemaVersion": 1, "name": "app", "tag": "1"}).encode()
    fake.add(
        "/v2/app/manifests/1",
        FakeResponse(
            200,
            schema1,
            {"Content-Type": "application/vnd.docker.distribution.manifest.v1+prettyjws"},
        ),
    )

    with pytest.raises(RegistryError) as caught:
        RegistryClient(timeout=5).resolve(parse(f"{fake.host}/app:1"))

    assert caught.value.message == (
        f"image {fake.host}/app:1: manifest app:1 of image {fake.host}/app:1 is a Docker "
        "schema 1 manifest, which airlock does not support"
    )


def test_resolve_rejects_index_entry_of_wrong_size(fake: FakeRegistry) -> None:
    manifest, blobs, _ = fake_image()
    index = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST_LIST,
            "manifests": [
                {
                    "mediaType": DOCKER_MANIFEST,
                    "digest": sha256_digest(manifest),
                    "size": len(manifest) + 1,
                    "platform": {"os": "linux", "architecture": "amd64"},
                }
            ],
        }
    ).encode()
    fake.add("/v2/app/manifests/1", FakeResponse(200, index, {}))
    fake.add_image("app", "unused", manifest, blobs)

    with pytest.raises(DigestMismatchError, match=f"is {len(manifest)} bytes, the index says"):
        RegistryClient(timeout=5).resolve(parse(f"{fake.host}/app:1"))


def test_resolve_retries_after_503(fake: FakeRegistry) -> None:
    manifest, blobs, _ = fake_image()
    fake.add_image("app", "1", manifest, blobs)
    ok = fake.routes["/v2/app/manifests/1"][0]
    fake.add("/v2/app/manifests/1", FakeResponse(503), ok)

    image = RegistryClient(timeout=5, retries=2).resolve(parse(f"{fake.host}/app:1"))

    assert image.manifest_digest == sha256_digest(manifest)
    assert fake.requests.count("/v2/app/manifests/1") == 2


def test_resolve_gives_up_after_retries(fake: FakeRegistry) -> None:
    fake.add(
        "/v2/app/manifests/1",
        FakeResponse(503, b'{"errors":[{"code":"UNAVAILABLE","message":"maintenance"}]}'),
    )

    with pytest.raises(RegistryError) as caught:
        RegistryClient(timeout=5, retries=1).resolve(parse(f"{fake.host}/app:1"))

    assert caught.value.message == (
        f"registry {fake.host} returned HTTP 503 for manifest app:1 of image "
        f"{fake.host}/app:1 (UNAVAILABLE: maintenance)"
    )
    assert fake.requests.count("/v2/app/manifests/1") == 2


def test_resolve_unauthorized_without_challenge(fake: FakeRegistry) -> None:
    fake.add("/v2/app/manifests/1", FakeResponse(401))

    with pytest.raises(RegistryError) as caught:
        RegistryClient(timeout=5).resolve(parse(f"{fake.host}/app:1"))

    assert caught.value.message.startswith(
        f"registry {fake.host} rejected authentication for http://{fake.host}/v2/app/manifests/1: "
    )
    assert isinstance(caught.value.__cause__, ValueError)


def test_resolve_denied_after_token(fake: FakeRegistry) -> None:
    challenge = (
        f'Bearer realm="http://{fake.host}/token",service="fake",scope="repository:app:pull"'
    )
    fake.add("/v2/app/manifests/1", FakeResponse(403, headers={"Www-Authenticate": challenge}))
    fake.add("/token", FakeResponse(200, b'{"token": "anonymous"}'))

    with pytest.raises(RegistryError) as caught:
        RegistryClient(timeout=5).resolve(parse(f"{fake.host}/app:1"))

    assert caught.value.message == (
        f"registry {fake.host} denied access to manifest app:1 of image {fake.host}/app:1 "
        "(HTTP 403)"
    )
    assert any(path.startswith("/token?") for path in fake.requests)


def test_dead_registry_fails_fast() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # The socket is closed, so nothing listens on the port any more.
    client = RegistryClient(timeout=5, retries=2)
    started = time.monotonic()

    with pytest.raises(RegistryError) as caught:
        client.resolve(parse(f"127.0.0.1:{port}/app:1"))

    elapsed = time.monotonic() - started
    assert elapsed < 5
    assert caught.value.message == (
        f"registry 127.0.0.1:{port} is unreachable at "
        f"http://127.0.0.1:{port}/v2/app/manifests/1 after 3 attempts: "
        "ConnectionRefusedError: [Errno 111] Connection refused"
    )
    assert isinstance(caught.value.__cause__, requests.ConnectionError)


def test_errors_never_show_credentials(
    fake: FakeRegistry,
    tmp_path: os.PathLike[str],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    secret = "s3cr3t-passw0rd"
    encoded = base64.b64encode(f"user:{secret}".encode()).decode()
    docker_config = {"auths": {fake.host: {"auth": encoded}}}
    config_dir = os.path.join(tmp_path, ".docker")
    os.makedirs(config_dir)
    with open(os.path.join(config_dir, "config.json"), "w") as handle:
        json.dump(docker_config, handle)
    monkeypatch.setenv("HOME", str(tmp_path))
    fake.add(
        "/v2/app/manifests/1",
        FakeResponse(401, headers={"Www-Authenticate": f'Bearer realm="http://{fake.host}/t"'}),
    )
    fake.add("/t", FakeResponse(403))

    with caplog.at_level(logging.DEBUG), pytest.raises(RegistryError) as caught:
        RegistryClient(timeout=5).resolve(parse(f"{fake.host}/app:1"))

    assert caught.value.message.startswith(f"registry {fake.host} rejected authentication")
    assert secret not in str(caught.value)
    assert encoded not in str(caught.value)
    assert secret not in caplog.text
    assert encoded not in caplog.text
