"""Bundle format v1 on real images: the image store, deduplication, reproducibility, the manifest.

Images are pushed to the local registry under unique repositories, or are
the authentik stand-ins. The image store is loaded by the real `docker load`,
read by the real `skopeo` and imported by the real `ctr`.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import subprocess
import tarfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import docker.errors
import pytest

from bundler import build as build_module
from bundler.build import BuildOptions, build, load_tag
from bundler.image_store import STORE_DIR
from installer import engine, images, reference
from installer._tarstream import iter_tar
from installer.constants import DOCKER_MANIFEST, OCI_CONFIG, OCI_LAYER_ZSTD, OCI_MANIFEST
from installer.errors import AirlockError, EnvironmentNotReadyError, ManifestError, RegistryError
from installer.manifest import Manifest, canonical_json, parse
from tests.bundle_factory import make_manifest
from tests.format_helpers import (
    ThrowawayRegistry,
    flip_byte,
    make_keys,
    member_offset,
    run_cli,
    tar_names,
    write_spec,
)
from tests.registry_push import (
    PushedImage,
    push_blob,
    push_image,
    push_manifest,
    sha256_digest,
    tar_layer,
    unique_repository,
)

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "authentik"
MIRRORS = ["--mirror", "docker.io=127.0.0.1:5000", "--mirror", "ghcr.io=127.0.0.1:5000"]
# containerd's own socket, and the one of the containerd that dockerd starts itself.
CONTAINERD_SOCKETS = (
    Path("/run/containerd/containerd.sock"),
    Path("/run/docker/containerd/containerd.sock"),
)
CTR_NAMESPACE = "airlock-test"

BASE_LAYER = tar_layer({"base/os-release": b"NAME=airlock-test-base\n" * 200})


@pytest.fixture(scope="module")
def shared_images(registry: str) -> tuple[PushedImage, PushedImage]:
    """Two images in new repositories that share their first layer."""
    first = push_image(
        registry,
        unique_repository(),
        [BASE_LAYER, tar_layer({"app/first.txt": b"first"})],
        tag="1",
    )
    second = push_image(
        registry,
        unique_repository(),
        [BASE_LAYER, tar_layer({"app/second.txt": b"second"})],
        tag="1",
        oci=True,
    )
    return first, second


@pytest.fixture(scope="module")
def shared_bundle(
    shared_images: tuple[PushedImage, PushedImage], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    folder = tmp_path_factory.mktemp("shared")
    first, second = shared_images
    spec = write_spec(folder / "spec", {"first": first.by_tag, "second": second.by_tag})
    key = make_keys(folder / "keys")
    output = folder / "shared.airlock"
    build(BuildOptions(spec, (key.private_path,), output), environ={})
    return output


@pytest.fixture(scope="module")
def authentik_bundle(standins: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("authentik")
    key = make_keys(folder / "keys")
    output = folder / "authentik.airlock"
    result = run_cli(
        "airlock-bundle",
        "build",
        str(EXAMPLE / "bundle.yaml"),
        "--key",
        str(key.private_path),
        "--output",
        str(output),
        *MIRRORS,
    )
    assert result.returncode == 0, result.stderr
    return output


def _extract_store(bundle: Path, dest: Path) -> Path:
    with tarfile.open(bundle) as archive:
        members = [m for m in archive.getmembers() if m.name.startswith(f"{STORE_DIR}/")]
        archive.extractall(dest, members=members, filter="data")
    return dest / STORE_DIR


def _read_manifest(bundle: Path) -> Manifest:
    with tarfile.open(bundle) as archive:
        handle = archive.extractfile("airlock/manifest.json")
        assert handle is not None
        return parse(handle.read())


def _error_line(stderr: str) -> str:
    """Return the one `error:` line the CLI prints, skipping progress and log lines."""
    return next(line for line in stderr.splitlines() if line.startswith("error: "))


@pytest.fixture
def loaded_tags(docker_client: docker.DockerClient) -> Iterator[list[str]]:
    """Tags a test loads into the engine; removed afterwards."""
    tags: list[str] = []
    yield tags
    for tag in tags:
        try:
            docker_client.images.remove(tag, force=True)
        except docker.errors.ImageNotFound:
            pass


def test_docker_load_streamed_store(
    shared_bundle: Path,
    tmp_path: Path,
    docker_client: docker.DockerClient,
    loaded_tags: list[str],
) -> None:
    manifest = _read_manifest(shared_bundle)
    loaded_tags.extend(image.load_tag for image in manifest.images)
    store = _extract_store(shared_bundle, tmp_path)
    names = sorted(str(path.relative_to(store)) for path in store.rglob("*") if path.is_file())

    loaded = engine.load_images(
        docker_client,
        iter_tar(store, names),
        expected_ids=[image.image_id for image in manifest.images],
    )

    assert sorted(loaded) == sorted(image.image_id for image in manifest.images)
    for image in manifest.images:
        assert engine.image_id(docker_client, image.load_tag) == image.config.digest
        assert engine.image_platform(docker_client, image.load_tag) == "linux/amd64"


def test_docker_cli_loads_tar_pipe(
    shared_bundle: Path, tmp_path: Path, docker_client: docker.DockerClient, loaded_tags: list[str]
) -> None:
    manifest = _read_manifest(shared_bundle)
    loaded_tags.extend(image.load_tag for image in manifest.images)
    store = _extract_store(shared_bundle, tmp_path)

    result = subprocess.run(
        f"tar -C {store} -c . | docker load",
        shell=True,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    for image in manifest.images:
        assert f"Loaded image: {image.load_tag}" in result.stdout


def test_skopeo_reads_store_as_oci_layout(shared_bundle: Path, tmp_path: Path) -> None:
    manifest = _read_manifest(shared_bundle)
    store = _extract_store(shared_bundle, tmp_path / "bundle")

    for number, image in enumerate(manifest.images):
        archive = tmp_path / f"image-{number}.tar"
        result = subprocess.run(
            [
                "skopeo",
                "copy",
                f"oci:{store}:{image.load_tag}",
                f"docker-archive:{archive}:{image.load_tag}",
            ],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        with tarfile.open(archive) as copied:
            docker_manifest = json.load(copied.extractfile("manifest.json"))  # type: ignore[arg-type]
        assert docker_manifest[0]["RepoTags"] == [image.load_tag]
        assert len(docker_manifest[0]["Layers"]) == len(image.layers)


@pytest.mark.skipif(
    shutil.which("ctr") is None, reason="ctr (containerd's client) is not installed"
)
def test_ctr_imports_store(shared_bundle: Path, tmp_path: Path) -> None:
    socket = next((path for path in CONTAINERD_SOCKETS if path.is_socket()), None)
    if socket is None:
        pytest.skip(f"no containerd socket at {' or '.join(map(str, CONTAINERD_SOCKETS))}")
    manifest = _read_manifest(shared_bundle)
    store = _extract_store(shared_bundle, tmp_path)
    archive = tmp_path / "store.tar"
    subprocess.run(["tar", "-C", str(store), "-cf", str(archive), "."], check=True, timeout=120)
    ctr = ["ctr", "--address", str(socket), "--namespace", CTR_NAMESPACE]
    wanted = [reference.parse(image.load_tag) for image in manifest.images]

    try:
        result = subprocess.run(
            [*ctr, "images", "import", "--all-platforms", str(archive)],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        listed = subprocess.run(
            [*ctr, "images", "list", "--quiet"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout.split()
        for ref in wanted:
            assert str(ref) in listed
    finally:
        for ref in wanted:
            subprocess.run([*ctr, "images", "remove", str(ref)], capture_output=True, check=False)
        subprocess.run([*ctr, "content", "prune", "references"], capture_output=True, check=False)
        subprocess.run(
            ["ctr", "--address", str(socket), "namespaces", "remove", CTR_NAMESPACE],
            capture_output=True,
            check=False,
        )


def test_shared_layer_stored_once(
    shared_bundle: Path, shared_images: tuple[PushedImage, PushedImage]
) -> None:
    first, second = shared_images
    base_digest = first.layers[0].digest
    assert second.layers[0].digest == base_digest

    names = tar_names(shared_bundle)
    blob = f"images/blobs/sha256/{base_digest.removeprefix('sha256:')}"
    assert names.count(blob) == 1
    assert len(names) == len(set(names))

    manifest = _read_manifest(shared_bundle)
    all_layers = [layer for image in manifest.images for layer in image.layers]
    assert manifest.layer_bytes == sum(layer.size for layer in all_layers)
    unique = {layer.digest: layer.size for layer in all_layers}
    assert manifest.layer_bytes_stored == sum(unique.values())
    assert manifest.layer_bytes - manifest.layer_bytes_stored == first.layers[0].size


def test_authentik_server_and_outposts_share_layers(authentik_bundle: Path) -> None:
    """The server and the four outposts share their base layers; each is stored once.

    The stand-ins' shared layer is small (busybox), so the numbers here are
    about 1 MiB stored for about 6 MiB of layers; docs/bundle-format.md
    records them.
    """
    manifest = _read_manifest(authentik_bundle)
    goauthentik = [i for i in manifest.images if "goauthentik/" in i.reference]
    assert len(goauthentik) == 5

    shared = set.intersection(*({layer.digest for layer in i.layers} for i in goauthentik))
    assert shared
    names = tar_names(authentik_bundle)
    for digest in shared:
        assert names.count(f"images/blobs/sha256/{digest.removeprefix('sha256:')}") == 1
    assert len(names) == len(set(names))

    stored_blobs = [n for n in names if n.startswith("images/blobs/sha256/")]
    layer_digests = {layer.digest for image in manifest.images for layer in image.layers}
    with tarfile.open(authentik_bundle) as archive:
        index = json.load(archive.extractfile("images/index.json"))  # type: ignore[arg-type]
    # Docker schema-2 images also get an OCI manifest, which index.json names.
    expected_blobs = (
        layer_digests
        | {image.config.digest for image in manifest.images}
        | {image.manifest_digest for image in manifest.images}
        | {entry["digest"] for entry in index["manifests"]}
    )
    assert len(stored_blobs) == len(expected_blobs)
    assert manifest.layer_bytes_stored < manifest.layer_bytes / 4


def test_rebuild_is_byte_identical(
    shared_images: tuple[PushedImage, PushedImage], tmp_path: Path
) -> None:
    first, second = shared_images
    key = make_keys(tmp_path / "keys")
    digests = []
    for number in (1, 2):
        folder = tmp_path / f"build-{number}-{uuid.uuid4().hex[:6]}"
        spec = write_spec(folder / "spec", {"first": first.by_tag, "second": second.by_tag})
        output = folder / "out" / "demo.airlock"
        result = run_cli(
            "airlock-bundle",
            "build",
            str(spec),
            "--key",
            str(key.private_path),
            "--output",
            str(output),
        )
        assert result.returncode == 0, result.stderr
        digests.append(hashlib.sha256(output.read_bytes()).hexdigest())
        # A second later, so any wall-clock time that leaked in would differ.
        time.sleep(1.1)

    assert digests[0] == digests[1]


def test_source_date_epoch_sets_created_and_member_times(
    shared_images: tuple[PushedImage, PushedImage], tmp_path: Path
) -> None:
    first, _ = shared_images
    key = make_keys(tmp_path / "keys")
    spec = write_spec(tmp_path / "spec", {"first": first.by_tag})
    output = tmp_path / "dated.airlock"

    result = run_cli(
        "airlock-bundle",
        "build",
        str(spec),
        "--key",
        str(key.private_path),
        "--output",
        str(output),
        env={"SOURCE_DATE_EPOCH": "1767225600"},
    )

    assert result.returncode == 0, result.stderr
    assert _read_manifest(output).created == "2026-01-01T00:00:00Z"
    with tarfile.open(output) as archive:
        members = archive.getmembers()
    assert {member.mtime for member in members} == {1767225600}
    assert {(member.uid, member.gid, member.uname, member.gname) for member in members} == {
        (0, 0, "", "")
    }


def test_invalid_source_date_epoch_is_rejected(
    shared_images: tuple[PushedImage, PushedImage], tmp_path: Path
) -> None:
    first, _ = shared_images
    key = make_keys(tmp_path / "keys")
    spec = write_spec(tmp_path / "spec", {"first": first.by_tag})

    result = run_cli(
        "airlock-bundle",
        "build",
        str(spec),
        "--key",
        str(key.private_path),
        "--output",
        str(tmp_path / "x.airlock"),
        env={"SOURCE_DATE_EPOCH": "yesterday"},
    )

    assert result.returncode == 1
    assert (
        _error_line(result.stderr)
        == "error: SOURCE_DATE_EPOCH='yesterday' is not an integer number of seconds"
    )


def test_manifest_records_format_fields(
    shared_bundle: Path, shared_images: tuple[PushedImage, PushedImage]
) -> None:
    first, second = shared_images
    with tarfile.open(shared_bundle) as archive:
        names = archive.getnames()
        data = json.load(archive.extractfile("airlock/manifest.json"))  # type: ignore[arg-type]

    assert data["format_version"] == 1
    assert data["min_docker_version"] == "20.10"
    assert data["builder"].startswith("airlock-bundle ")
    assert data["spec"]["name"] == "demo"
    assert names[0] == "airlock/manifest.json"
    assert names[2] == "airlock/SHA256SUMS"
    assert [m["path"] for m in data["members"]] == names[2:]
    by_reference = {image["reference"]: image for image in data["images"]}
    record = by_reference[second.by_tag]
    assert record["source"] == f"{second.registry}/{second.repository}"
    assert record["manifest_digest"] == second.digest
    assert record["manifest_media_type"] == OCI_MANIFEST
    assert record["config"]["digest"] == second.config.digest
    assert record["platform"] == "linux/amd64"
    assert [layer["media_type"] for layer in record["layers"]] == [
        layer.media_type for layer in second.layers
    ]
    assert [layer["size"] for layer in record["layers"]] == [layer.size for layer in second.layers]
    assert by_reference[first.by_tag]["manifest_media_type"] == DOCKER_MANIFEST


def test_manifest_schema_violation_names_json_path() -> None:
    data = make_manifest([]).to_json()
    data["images"] = [
        {
            "reference": "a:1",
            "source": "127.0.0.1:5000/a",
            "manifest_digest": "sha256:" + "0" * 64,
            "manifest_media_type": DOCKER_MANIFEST,
            "config": {"media_type": OCI_CONFIG, "digest": "sha256:" + "1" * 64, "size": 1},
            "platform": "linux/amd64",
            "layers": [{"media_type": OCI_LAYER_ZSTD, "digest": "md5:abc", "size": 3}],
            "load_tag": "a:1",
            "services": [],
        }
    ]

    with pytest.raises(ManifestError) as raised:
        parse(canonical_json(data))

    assert raised.value.message.startswith("manifest is invalid at $.images[0].layers[0].digest: ")


def test_manifest_without_min_docker_version_is_rejected() -> None:
    data = make_manifest([]).to_json()
    del data["min_docker_version"]

    with pytest.raises(ManifestError) as raised:
        parse(canonical_json(data))

    assert raised.value.message == (
        "manifest is invalid at $: 'min_docker_version' is a required property"
    )


def _push_zstd_image(registry: str) -> tuple[str, str]:
    """Push an image whose only layer claims zstd compression; return (reference, layer digest)."""
    repository = unique_repository()
    # The bundler reads only the media type; the bytes need not be zstd.
    layer = gzip.compress(tar_layer({"zstd.txt": b"z"}), mtime=0)
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": ["sha256:" + "2" * 64]},
        }
    ).encode()
    push_blob(registry, repository, layer)
    push_blob(registry, repository, config)
    body = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": OCI_CONFIG,
                "digest": sha256_digest(config),
                "size": len(config),
            },
            "layers": [
                {"mediaType": OCI_LAYER_ZSTD, "digest": sha256_digest(layer), "size": len(layer)}
            ],
        }
    ).encode()
    push_manifest(registry, repository, "1", body, OCI_MANIFEST)
    return f"{registry}/{repository}:1", sha256_digest(layer)


def test_zstd_layer_rejected_for_engine_20_10(registry: str, tmp_path: Path) -> None:
    image, layer = _push_zstd_image(registry)
    key = make_keys(tmp_path / "keys")
    spec = write_spec(tmp_path / "spec", {"app": image})
    output = tmp_path / "zstd.airlock"

    result = run_cli(
        "airlock-bundle",
        "build",
        str(spec),
        "--key",
        str(key.private_path),
        "--output",
        str(output),
    )

    assert result.returncode == 1
    assert _error_line(result.stderr) == (
        f"error: image {image} has zstd layer {layer}, which docker load before Engine 23.0 "
        "cannot read (the bundle targets Engine 20.10)"
    )
    assert not output.exists()


def test_zstd_bundle_refused_by_engine_20_10(
    registry: str, tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    image, _ = _push_zstd_image(registry)
    key = make_keys(tmp_path / "keys")
    spec = write_spec(tmp_path / "spec", {"app": image})
    output = tmp_path / "zstd.airlock"

    result = build(
        BuildOptions(spec, (key.private_path,), output, min_docker_version="23.0"), environ={}
    )

    assert result.manifest.min_docker_version == "23.0"
    assert result.manifest.images[0].layers[0].media_type == OCI_LAYER_ZSTD
    engine_version = docker_client.version()["Version"]
    if not engine_version.startswith("20.10"):
        pytest.skip(f"this check needs Docker Engine 20.10, found {engine_version}")
    with pytest.raises(EnvironmentNotReadyError) as raised:
        images.check_engine_version(docker_client, result.manifest)
    assert raised.value.message == (
        f"bundle needs Docker Engine 23.0 or newer for zstd layers; found {engine_version}"
    )

    # The same refusal through the installer, before any image reaches the engine.
    target = tmp_path / "target"
    target.mkdir()
    (target / ".env").write_text(f"COMPOSE_PROJECT_NAME=airlock-test-{uuid.uuid4().hex[:8]}\n")
    installed = run_cli(
        "airlock-install",
        "install",
        str(output),
        "--target",
        str(target),
        "--key",
        str(key.public_path),
    )
    assert installed.returncode == 4, installed.stdout + installed.stderr
    assert _error_line(installed.stderr) == (
        f"error: bundle needs Docker Engine 23.0 or newer for zstd layers; found {engine_version}"
    )
    assert engine.image_id(docker_client, result.manifest.images[0].image_id) is None


def test_min_docker_version_option_rejects_bad_value(
    shared_images: tuple[PushedImage, PushedImage], tmp_path: Path
) -> None:
    first, _ = shared_images
    key = make_keys(tmp_path / "keys")
    spec = write_spec(tmp_path / "spec", {"first": first.by_tag})

    result = run_cli(
        "airlock-bundle",
        "build",
        str(spec),
        "--key",
        str(key.private_path),
        "--output",
        str(tmp_path / "x.airlock"),
        "--min-docker-version",
        "twenty",
    )

    assert result.returncode == 1
    assert _error_line(result.stderr) == "error: minimum Docker version 'twenty' is invalid"


def test_unresolvable_images_reported_together(registry: str, tmp_path: Path) -> None:
    missing_tag = f"{registry}/{unique_repository()}:1"
    missing_repo = f"{registry}/{unique_repository()}:2"
    key = make_keys(tmp_path / "keys")
    spec = write_spec(tmp_path / "spec", {"one": missing_tag, "two": missing_repo})

    with pytest.raises(RegistryError) as raised:
        build(BuildOptions(spec, (key.private_path,), tmp_path / "x.airlock"), environ={})

    lines = raised.value.message.splitlines()
    assert lines[0] == "2 of 2 images could not be resolved:"
    assert any(missing_tag in line for line in lines[1:])
    assert any(missing_repo in line for line in lines[1:])
    assert not (tmp_path / "x.airlock").exists()


def test_load_tag_for_each_reference_form() -> None:
    digest = "sha256:" + "ab" * 32
    cases = {
        "127.0.0.1:5000/demo/app:1.4": "127.0.0.1:5000/demo/app:1.4",
        "redis": "docker.io/library/redis:latest",
        f"redis@{digest}": f"docker.io/library/redis:sha256-{'ab' * 32}",
        f"registry.example:5000/demo/app:1.4.2@{digest}": (
            f"registry.example:5000/demo/app:sha256-{'ab' * 32}"
        ),
    }
    for written, expected in cases.items():
        assert load_tag(reference.parse(written)) == expected


def test_inspect_json_shows_what_an_operator_checks(authentik_bundle: Path) -> None:
    result = run_cli("airlock-install", "inspect", str(authentik_bundle), "--json")

    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["name"] == "authentik"
    assert data["version"] == "2026.2.2"
    assert data["sequence"] == 1
    assert len(data["signed_by"]) == 1
    assert len(data["signed_by"][0]) == 64
    assert data["min_docker_version"] == "20.10"
    assert data["env_set"]["AUTHENTIK_TAG"] == "2026.2.2"
    assert data["chart"] is None
    assert data["file_bytes"] == authentik_bundle.stat().st_size
    assert data["parts"] is None
    assert 0 < data["layer_bytes_stored"] < data["layer_bytes"]
    server = next(
        i for i in data["images"] if i["reference"].startswith("ghcr.io/goauthentik/server")
    )
    assert server["platform"] == "linux/amd64"
    assert server["size"] > 0
    assert server["services"] == ["server", "worker"]


def test_inspect_text_shows_sizes_and_signers(authentik_bundle: Path) -> None:
    result = run_cli("airlock-bundle", "inspect", str(authentik_bundle))

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(
        "authentik 2026.2.2 (sequence 1), built 1970-01-01T00:00:00Z by airlock-bundle "
    )
    assert lines[1] == "platform: linux/amd64, needs Docker Engine 20.10 or newer"
    assert lines[2].startswith("signed by key ids (not verified here; run verify): ")
    assert "  .env sets AUTHENTIK_TAG=2026.2.2" in lines
    assert lines[-1].startswith("size: ")
    assert "saved by storing shared layers once" in lines[-1]


def test_unreadable_build_output_removed(
    shared_images: tuple[PushedImage, PushedImage],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A disk that corrupts the write is simulated by flipping a byte after writing."""
    first, _ = shared_images
    key = make_keys(tmp_path / "keys")
    spec = write_spec(tmp_path / "spec", {"first": first.by_tag})
    output = tmp_path / "bad.airlock"
    real_write = build_module.write_archive

    def corrupting_write(path: Path, *args: object, **kwargs: object) -> None:
        real_write(path, *args, **kwargs)  # type: ignore[arg-type]
        flip_byte(path, member_offset(path, "compose/compose.yml"))

    monkeypatch.setattr(build_module, "write_archive", corrupting_write)

    with pytest.raises(AirlockError) as raised:
        build(BuildOptions(spec, (key.private_path,), output), environ={})

    assert raised.value.message.startswith(
        f"the bundle just written to {output} does not verify: member compose/compose.yml "
        "has sha256 "
    )
    assert not output.exists()


def test_missing_layers_reported_together(tmp_path: Path) -> None:
    """Layer files deleted from a throwaway registry's storage make their downloads fail."""
    (tmp_path / "registry").mkdir()
    server = ThrowawayRegistry(tmp_path / "registry")
    try:
        first = push_image(server.address, "demo/one", [tar_layer({"one.txt": b"1"})], tag="1")
        second = push_image(server.address, "demo/two", [tar_layer({"two.txt": b"2"})], tag="1")
        blobs = tmp_path / "registry" / "data" / "docker" / "registry" / "v2" / "blobs" / "sha256"
        for image in (first, second):
            hexdigest = image.layers[0].digest.removeprefix("sha256:")
            (blobs / hexdigest[:2] / hexdigest / "data").unlink()
        key = make_keys(tmp_path / "keys")
        spec = write_spec(tmp_path / "spec", {"one": first.by_tag, "two": second.by_tag})
        output = tmp_path / "x.airlock"

        with pytest.raises(RegistryError) as raised:
            build(BuildOptions(spec, (key.private_path,), output), environ={})
    finally:
        server.stop()

    lines = raised.value.message.splitlines()
    assert lines[0] == "2 of 2 layers could not be downloaded:"
    assert any(first.layers[0].digest in line for line in lines[1:])
    assert any(second.layers[0].digest in line for line in lines[1:])
    assert not output.exists()
    assert list(tmp_path.glob("airlock-build-*")) == []
