"""Compose files given as http(s) URLs pinned by sha256 in the bundle spec.

Each test serves the files from an HTTP server on 127.0.0.1 that it starts
and stops itself; nothing leaves the machine.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from bundler.build import BuildOptions, build
from bundler.spec import load_spec
from installer.errors import SpecError
from tests.format_helpers import make_keys
from tests.registry_push import PushedImage, push_image, tar_layer, unique_repository


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """An HTTP server on 127.0.0.1 serving a folder: (base URL, folder)."""
    folder = tmp_path / "www"
    folder.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", folder
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def image(registry: str) -> PushedImage:
    return push_image(registry, unique_repository(), [tar_layer({"a.txt": b"a"})], tag="1")


def _spec(folder: Path, files: list[object]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    spec = {
        "name": "remote",
        "version": "1.0.0",
        "sequence": 1,
        "compose": {"files": files, "project_name": "remote"},
    }
    path = folder / "bundle.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _compose_text(image: PushedImage) -> bytes:
    return yaml.safe_dump({"services": {"app": {"image": image.by_tag}}}).encode()


def test_compose_url_with_matching_sha256_is_bundled(
    served: tuple[str, Path], image: PushedImage, tmp_path: Path
) -> None:
    base, www = served
    text = _compose_text(image)
    (www / "docker-compose.yml").write_bytes(text)
    local_override = tmp_path / "spec" / "override.yml"
    local_override.parent.mkdir(parents=True)
    local_override.write_text("services:\n  app:\n    restart: always\n")
    spec = _spec(
        tmp_path / "spec",
        [
            {"url": f"{base}/docker-compose.yml", "sha256": hashlib.sha256(text).hexdigest()},
            "override.yml",
        ],
    )
    key = make_keys(tmp_path / "keys")
    output = tmp_path / "remote.airlock"

    result = build(BuildOptions(spec, (key.private_path,), output), environ={})

    assert result.manifest.compose_files == ("compose/docker-compose.yml", "compose/override.yml")
    assert result.manifest.images[0].reference == image.by_tag
    assert result.manifest.spec["compose"]["files"][0]["url"] == f"{base}/docker-compose.yml"
    with tarfile.open(output) as archive:
        bundled = archive.extractfile("compose/docker-compose.yml")
        assert bundled is not None
        assert bundled.read() == text


def test_compose_url_name_option_renames_file(
    served: tuple[str, Path], image: PushedImage, tmp_path: Path
) -> None:
    base, www = served
    text = _compose_text(image)
    (www / "download").write_bytes(text)
    spec = _spec(
        tmp_path / "spec",
        [
            {
                "url": f"{base}/download",
                "sha256": hashlib.sha256(text).hexdigest(),
                "name": "compose.yml",
            }
        ],
    )

    loaded = load_spec(spec, download_dir=tmp_path / "downloads")

    assert [path.name for path in loaded.compose_files] == ["compose.yml"]
    assert loaded.compose_files[0].read_bytes() == text


def test_compose_url_digest_mismatch(
    served: tuple[str, Path], image: PushedImage, tmp_path: Path
) -> None:
    base, www = served
    text = _compose_text(image)
    (www / "compose.yml").write_bytes(text)
    pinned = "0" * 64
    spec = _spec(tmp_path / "spec", [{"url": f"{base}/compose.yml", "sha256": pinned}])
    key = make_keys(tmp_path / "keys")
    output = tmp_path / "remote.airlock"

    with pytest.raises(SpecError) as raised:
        build(BuildOptions(spec, (key.private_path,), output), environ={})

    assert raised.value.message == (
        f"compose file {base}/compose.yml has sha256 {hashlib.sha256(text).hexdigest()}, "
        f"the spec pins {pinned}"
    )
    assert not output.exists()
    assert list(tmp_path.glob("airlock-build-*")) == []


def test_compose_url_not_found_is_reported(served: tuple[str, Path], tmp_path: Path) -> None:
    base, _ = served
    spec = _spec(tmp_path / "spec", [{"url": f"{base}/missing.yml", "sha256": "1" * 64}])

    with pytest.raises(SpecError) as raised:
        load_spec(spec, download_dir=tmp_path / "downloads")

    assert raised.value.message == (
        f"download of compose file {base}/missing.yml failed: HTTP 404 File not found"
    )
    assert list((tmp_path / "downloads").iterdir()) == []


def test_compose_url_without_sha256_is_invalid(tmp_path: Path) -> None:
    spec = _spec(tmp_path / "spec", [{"url": "http://127.0.0.1:9/compose.yml"}])

    with pytest.raises(SpecError) as raised:
        load_spec(spec, download_dir=tmp_path / "downloads")

    assert raised.value.message.startswith(f"bundle spec {spec} is invalid at $.compose.files[0]: ")


def test_compose_url_with_other_scheme_is_invalid(tmp_path: Path) -> None:
    spec = _spec(tmp_path / "spec", [{"url": "file:///etc/passwd", "sha256": "1" * 64}])

    with pytest.raises(SpecError) as raised:
        load_spec(spec, download_dir=tmp_path / "downloads")

    assert raised.value.message.startswith(f"bundle spec {spec} is invalid at $.compose.files[0]: ")
