"""Platform selection from multi-arch indexes, on this amd64 host.

`tests/registry_push.py` pushes an index with an amd64 and an arm64 image.
The arm64 bundle is loaded into the real engine, which keeps the image's
platform; running it would need emulation, so no container is started.
"""

from __future__ import annotations

import json
import tarfile
from collections.abc import Iterator
from pathlib import Path

import docker
import docker.errors
import pytest

from bundler.build import BuildOptions, build
from installer import engine
from installer._tarstream import iter_tar
from installer.errors import RegistryError
from installer.manifest import Manifest, parse
from tests.format_helpers import make_keys, run_cli, write_spec
from tests.registry_push import PushedIndex, push_index, tar_layer, unique_repository


@pytest.fixture(scope="module")
def multiarch(registry: str) -> PushedIndex:
    return push_index(
        registry,
        unique_repository(),
        {
            "linux/amd64": [tar_layer({"arch.txt": b"amd64"})],
            "linux/arm64": [tar_layer({"arch.txt": b"arm64"})],
        },
        tag="1",
        oci=True,
    )


def _manifest(bundle: Path) -> Manifest:
    with tarfile.open(bundle) as archive:
        handle = archive.extractfile("airlock/manifest.json")
        assert handle is not None
        return parse(handle.read())


def _build(
    folder: Path, image: str, platform: str | None = None, spec_platform: str | None = None
) -> Path:
    extra = {"platform": spec_platform} if spec_platform else None
    spec = write_spec(folder / "spec", {"app": image}, extra=extra)
    key = make_keys(folder / "keys")
    output = folder / "bundle.airlock"
    build(BuildOptions(spec, (key.private_path,), output, platform=platform), environ={})
    return output


@pytest.fixture
def removed_after(docker_client: docker.DockerClient) -> Iterator[list[str]]:
    tags: list[str] = []
    yield tags
    for tag in tags:
        try:
            docker_client.images.remove(tag, force=True)
        except docker.errors.ImageNotFound:
            pass


def test_arm64_bundle_from_multiarch_index(
    multiarch: PushedIndex,
    tmp_path: Path,
    docker_client: docker.DockerClient,
    removed_after: list[str],
) -> None:
    arm64 = multiarch.images["linux/arm64"]

    bundle = _build(tmp_path, multiarch.by_tag, platform="linux/arm64")

    manifest = _manifest(bundle)
    record = manifest.images[0]
    assert manifest.platform == "linux/arm64"
    assert record.platform == "linux/arm64"
    assert record.index_digest == multiarch.digest
    assert record.manifest_digest == arm64.digest
    assert record.config.digest == arm64.config.digest
    with tarfile.open(bundle) as archive:
        index = json.load(archive.extractfile("images/index.json"))  # type: ignore[arg-type]
        config_name = f"images/blobs/sha256/{arm64.config.digest.removeprefix('sha256:')}"
        config = json.load(archive.extractfile(config_name))  # type: ignore[arg-type]
        names = archive.getnames()
        archive.extractall(tmp_path / "x", filter="data")
    assert index["manifests"][0]["platform"] == {"os": "linux", "architecture": "arm64"}
    assert config["architecture"] == "arm64"
    amd64 = multiarch.images["linux/amd64"]
    assert f"images/blobs/sha256/{amd64.layers[0].digest.removeprefix('sha256:')}" not in names

    # The real engine loads the arm64 image and reports its platform.
    removed_after.append(record.load_tag)
    store = tmp_path / "x" / "images"
    files = sorted(str(p.relative_to(store)) for p in store.rglob("*") if p.is_file())
    engine.load_images(docker_client, iter_tar(store, files), expected_ids=[record.image_id])
    assert engine.image_platform(docker_client, record.load_tag) == "linux/arm64"


def test_default_platform_is_linux_amd64(multiarch: PushedIndex, tmp_path: Path) -> None:
    bundle = _build(tmp_path, multiarch.by_tag)

    record = _manifest(bundle).images[0]
    assert record.platform == "linux/amd64"
    assert record.manifest_digest == multiarch.images["linux/amd64"].digest


def test_spec_platform_used_without_option(multiarch: PushedIndex, tmp_path: Path) -> None:
    bundle = _build(tmp_path, multiarch.by_tag, spec_platform="linux/arm64")

    assert _manifest(bundle).images[0].manifest_digest == multiarch.images["linux/arm64"].digest


def test_platform_option_overrides_spec(multiarch: PushedIndex, tmp_path: Path) -> None:
    bundle = _build(tmp_path, multiarch.by_tag, platform="linux/amd64", spec_platform="linux/arm64")

    assert _manifest(bundle).images[0].platform == "linux/amd64"


def test_missing_platform_lists_available_ones(multiarch: PushedIndex, tmp_path: Path) -> None:
    with pytest.raises(RegistryError) as raised:
        _build(tmp_path, multiarch.by_tag, platform="linux/s390x")

    line = raised.value.message.splitlines()[1].strip()
    assert line == (
        f"image {multiarch.by_tag} has no linux/s390x variant: index {multiarch.digest} "
        "lists linux/amd64, linux/arm64; choose one of those with --platform, "
        "or use an image built for this platform"
    )
    assert not (tmp_path / "bundle.airlock").exists()


def test_platform_option_through_cli(multiarch: PushedIndex, tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "spec", {"app": multiarch.by_tag})
    key = make_keys(tmp_path / "keys")
    output = tmp_path / "arm.airlock"

    result = run_cli(
        "airlock-bundle",
        "build",
        str(spec),
        "--key",
        str(key.private_path),
        "--output",
        str(output),
        "--platform",
        "linux/arm64",
    )

    assert result.returncode == 0, result.stderr
    inspected = run_cli("airlock-install", "inspect", str(output))
    assert f"  {multiarch.by_tag} linux/arm64 " in inspected.stdout
