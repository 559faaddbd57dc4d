"""Digest-pinned images (`name@sha256:...`, `name:tag@sha256:...`) after `docker load`.

Docker's classic image store does not keep registry digests on load, so compose
cannot find such an image by the reference it names and would pull it. The
test pushes two runnable busybox images to a registry it starts on its own
127.0.0.1 port, bundles a compose file that pins both by digest, stops that
registry, and installs: any pull would fail, so a healthy install shows that
compose used the loaded images through the installer's override file.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import docker
import docker.errors
import pytest
import yaml

from installer.constants import STATE_DIR
from installer.images import IMAGE_OVERRIDE_FILE, override_services, write_image_override
from installer.manifest import Descriptor, ImageRecord
from tests.bundle_factory import make_manifest
from tests.format_helpers import (
    BUSYBOX,
    ThrowawayRegistry,
    make_keys,
    run_cli,
    runnable_layer,
    write_spec,
)
from tests.registry_push import PushedImage, push_image

pytestmark = pytest.mark.skipif(not BUSYBOX.exists(), reason="needs /bin/busybox (busybox-static)")

SLEEP = {"Cmd": ["/bin/busybox", "sleep", "3600"]}


@pytest.fixture
def throwaway_registry(tmp_path: Path) -> Iterator[ThrowawayRegistry]:
    folder = tmp_path / "registry"
    folder.mkdir()
    server = ThrowawayRegistry(folder)
    yield server
    server.stop()


@pytest.fixture
def loaded(docker_client: docker.DockerClient) -> Iterator[list[str]]:
    """Image tags the install loads; removed after the test."""
    tags: list[str] = []
    yield tags
    for tag in tags:
        try:
            docker_client.images.remove(tag, force=True)
        except docker.errors.ImageNotFound:
            pass


def _push(registry: str, repository: str, marker: str, tag: str | None) -> PushedImage:
    return push_image(
        registry, repository, [runnable_layer(marker)], tag=tag, config_overrides={"config": SLEEP}
    )


def test_pinned_services_start_without_registry(
    throwaway_registry: ThrowawayRegistry,
    tmp_path: Path,
    compose_project_name: str,
    docker_client: docker.DockerClient,
    loaded: list[str],
) -> None:
    registry = throwaway_registry.address
    app = _push(registry, "demo/app", "app", tag=None)
    worker = _push(registry, "demo/worker", "worker", tag="1.4.2")
    app_ref = f"{registry}/demo/app@{app.digest}"
    worker_ref = f"{registry}/demo/worker:1.4.2@{worker.digest}"
    app_tag = f"{registry}/demo/app:sha256-{app.digest.removeprefix('sha256:')}"
    worker_tag = f"{registry}/demo/worker:sha256-{worker.digest.removeprefix('sha256:')}"
    loaded.extend([app_tag, worker_tag])

    keys = make_keys(tmp_path / "keys")
    spec = write_spec(
        tmp_path / "spec",
        {"app": app_ref, "worker": worker_ref},
        service_extra={"restart": "unless-stopped"},
    )
    bundle = tmp_path / "pinned.airlock"
    built = run_cli(
        "airlock-bundle",
        "build",
        str(spec),
        "--key",
        str(keys.private_path),
        "--output",
        str(bundle),
    )
    assert built.returncode == 0, built.stderr

    # No registry from here on: a pull of either image would fail the install.
    throwaway_registry.stop()
    target = tmp_path / "target"
    target.mkdir()
    (target / ".env").write_text(f"COMPOSE_PROJECT_NAME={compose_project_name}\n")

    result = run_cli(
        "airlock-install",
        "install",
        str(bundle),
        "--target",
        str(target),
        "--key",
        str(keys.public_path),
        "--timeout",
        "120",
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "app: running" in result.stdout
    assert "worker: running" in result.stdout
    override = yaml.safe_load((target / STATE_DIR / IMAGE_OVERRIDE_FILE).read_text())
    assert override == {"services": {"app": {"image": app_tag}, "worker": {"image": worker_tag}}}
    containers = docker_client.containers.list(
        filters={"label": f"com.docker.compose.project={compose_project_name}"}
    )
    by_service = {c.labels["com.docker.compose.service"]: c for c in containers}
    assert by_service["app"].image.id == app.config.digest
    assert by_service["worker"].image.id == worker.config.digest
    # The tag of a tag+digest reference is metadata only: loading never moved it.
    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get(f"{registry}/demo/worker:1.4.2")


def test_override_names_only_digest_pinned_services(tmp_path: Path) -> None:
    digest = "sha256:" + "c" * 64
    config = Descriptor("application/vnd.oci.image.config.v1+json", "sha256:" + "d" * 64, 10)

    def record(written: str, tag: str) -> ImageRecord:
        return ImageRecord(
            reference=written,
            source="127.0.0.1:5000/x",
            index_digest=None,
            manifest_digest=digest,
            manifest_media_type="application/vnd.oci.image.manifest.v1+json",
            config=config,
            platform="linux/amd64",
            layers=(),
            load_tag=tag,
        )

    pinned_tag = "127.0.0.1:5000/x:sha256-" + "c" * 64
    manifest = make_manifest(
        [],
        images=(
            record(f"127.0.0.1:5000/x@{digest}", pinned_tag),
            record("y:1", "docker.io/library/y:1"),
        ),
    )
    services = {"pinned": pinned_tag, "tagged": "docker.io/library/y:1"}

    assert override_services(manifest, services) == {"pinned": pinned_tag}
    written = write_image_override(tmp_path, manifest, services)
    assert written == [tmp_path / STATE_DIR / IMAGE_OVERRIDE_FILE]

    # A later release without pinned images removes the file and adds no -f.
    tagged_only = make_manifest([], images=(record("y:1", "docker.io/library/y:1"),))
    assert write_image_override(tmp_path, tagged_only, {"tagged": "docker.io/library/y:1"}) == []
    assert not (tmp_path / STATE_DIR / IMAGE_OVERRIDE_FILE).exists()
