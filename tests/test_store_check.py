"""A signed bundle whose image store cannot be loaded is rejected before docker load."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from bundle_factory import make_manifest

from installer.errors import ManifestError
from installer.manifest import Descriptor, ImageRecord, Member
from installer.store_check import check_image_store

CONFIG = b'{"rootfs": {"type": "layers", "diff_ids": []}}'
LAYER = b"layer-bytes"


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _stage(tmp_path: Path, archive_index: object | None) -> tuple[Path, list[Member]]:
    files = {
        f"images/blobs/sha256/{_digest(CONFIG)[7:]}": CONFIG,
        f"images/blobs/sha256/{_digest(LAYER)[7:]}": LAYER,
    }
    if archive_index is not None:
        files["images/manifest.json"] = json.dumps(archive_index).encode()
    members = []
    for path, data in sorted(files.items()):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_bytes(data)
        members.append(
            Member(path, len(data), hashlib.sha256(data).hexdigest(), "application/octet-stream")
        )
    return tmp_path, members


def _image() -> ImageRecord:
    return ImageRecord(
        reference="registry.example:5000/demo/app:1.0",
        source="registry.example:5000/demo/app",
        index_digest=None,
        manifest_digest=_digest(b"m"),
        manifest_media_type="application/vnd.oci.image.manifest.v1+json",
        config=Descriptor("application/vnd.oci.image.config.v1+json", _digest(CONFIG), len(CONFIG)),
        platform="linux/amd64",
        layers=(
            Descriptor("application/vnd.oci.image.layer.v1.tar+gzip", _digest(LAYER), len(LAYER)),
        ),
        load_tag="registry.example:5000/demo/app:1.0",
    )


def _good_index() -> list[dict[str, object]]:
    return [
        {
            "Config": f"blobs/sha256/{_digest(CONFIG)[7:]}",
            "RepoTags": ["registry.example:5000/demo/app:1.0"],
            "Layers": [f"blobs/sha256/{_digest(LAYER)[7:]}"],
        }
    ]


def test_store_matching_manifest_passes(tmp_path: Path) -> None:
    staging, members = _stage(tmp_path, _good_index())
    check_image_store(staging, make_manifest(members, images=(_image(),)))


def test_oci_only_store_is_not_docker_archive(tmp_path: Path) -> None:
    staging, members = _stage(tmp_path, None)
    with pytest.raises(ManifestError) as caught:
        check_image_store(staging, make_manifest(members, images=(_image(),)))
    assert caught.value.message == "images/ is not a docker-archive (no images/manifest.json)"


def test_store_naming_missing_layer_is_rejected(tmp_path: Path) -> None:
    index = _good_index()
    index[0]["Layers"] = ["blobs/sha256/" + "0" * 64]
    staging, members = _stage(tmp_path, index)
    with pytest.raises(ManifestError) as caught:
        check_image_store(staging, make_manifest(members, images=(_image(),)))
    assert caught.value.message == (
        f"images/manifest.json entry 0 names 'blobs/sha256/{'0' * 64}', which is not a member of the bundle"
    )


def test_store_without_image_tag_is_rejected(tmp_path: Path) -> None:
    index = _good_index()
    index[0]["RepoTags"] = ["other:1"]
    staging, members = _stage(tmp_path, index)
    with pytest.raises(ManifestError) as caught:
        check_image_store(staging, make_manifest(members, images=(_image(),)))
    assert caught.value.message == (
        "image registry.example:5000/demo/app:1.0 has no entry tagged "
        "registry.example:5000/demo/app:1.0 in images/manifest.json"
    )


def test_each_image_is_checked_against_its_own_entry(tmp_path: Path) -> None:
    """With two images, the second entry must not stand in for the first."""
    other_config = b'{"rootfs": {"type": "layers", "diff_ids": [], "other": true}}'
    index = _good_index()
    index.append(
        {
            "Config": f"blobs/sha256/{_digest(other_config)[7:]}",
            "RepoTags": ["registry.example:5000/demo/other:1.0"],
            "Layers": [],
        }
    )
    staging, members = _stage(tmp_path, index)
    extra = tmp_path / "images/blobs/sha256" / _digest(other_config)[7:]
    extra.write_bytes(other_config)
    members.append(
        Member(
            f"images/blobs/sha256/{_digest(other_config)[7:]}",
            len(other_config),
            _digest(other_config)[7:],
            "application/octet-stream",
        )
    )
    other = ImageRecord(
        reference="registry.example:5000/demo/other:1.0",
        source="registry.example:5000/demo/other",
        index_digest=None,
        manifest_digest=_digest(b"n"),
        manifest_media_type="application/vnd.oci.image.manifest.v1+json",
        config=Descriptor(
            "application/vnd.oci.image.config.v1+json", _digest(other_config), len(other_config)
        ),
        platform="linux/amd64",
        layers=(),
        load_tag="registry.example:5000/demo/other:1.0",
    )
    check_image_store(staging, make_manifest(members, images=(_image(), other)))
