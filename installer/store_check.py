"""Check a staged image store against the signed manifest before `docker load` reads it.

The signature proves who built the bundle, not that its builder wrote a
store `docker load` can use. Engine 20.10 needs a docker-archive
`manifest.json` whose config and layer paths exist (without it, the engine
falls back to a legacy loader and fails on a missing `json` file), so a
store that lacks one is rejected here, before any image is loaded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from installer.constants import IMAGES_DIR
from installer.errors import ManifestError
from installer.manifest import Manifest

DOCKER_ARCHIVE_MANIFEST = f"{IMAGES_DIR}manifest.json"
_REBUILD_HINT = "the bundle's image store does not match its manifest; rebuild the bundle"


def _blob(digest: str) -> str:
    return f"blobs/sha256/{digest.removeprefix('sha256:')}"


def _entries(staging: Path, manifest: Manifest) -> list[dict[str, Any]]:
    if manifest.member(DOCKER_ARCHIVE_MANIFEST) is None:
        raise ManifestError(
            f"{IMAGES_DIR} is not a docker-archive (no {DOCKER_ARCHIVE_MANIFEST})",
            hint=_REBUILD_HINT,
        )
    try:
        data = json.loads((staging / DOCKER_ARCHIVE_MANIFEST).read_bytes())
    except (OSError, ValueError) as err:
        raise ManifestError(
            f"{DOCKER_ARCHIVE_MANIFEST} is not valid JSON: {err}", hint=_REBUILD_HINT
        ) from err
    if not isinstance(data, list) or not all(isinstance(entry, dict) for entry in data):
        raise ManifestError(
            f"{DOCKER_ARCHIVE_MANIFEST} is not a list of images", hint=_REBUILD_HINT
        )
    return data


def check_image_store(staging: Path, manifest: Manifest) -> None:
    """Reject a store whose docker-archive index disagrees with the signed manifest.

    Every config and layer path the index names must be a verified member,
    and every image the manifest lists must appear under its load tag with
    exactly its config and layers, in order.
    """
    if not manifest.images:
        return
    entries = _entries(staging, manifest)
    members = {member.path for member in manifest.members}

    by_tag: dict[str, dict[str, Any]] = {}
    for position, entry in enumerate(entries):
        paths = [entry.get("Config"), *(entry.get("Layers") or [])]
        for path in paths:
            if not isinstance(path, str) or f"{IMAGES_DIR}{path}" not in members:
                raise ManifestError(
                    f"{DOCKER_ARCHIVE_MANIFEST} entry {position} names {path!r}, "
                    "which is not a member of the bundle",
                    hint=_REBUILD_HINT,
                )
        for tag in entry.get("RepoTags") or []:
            by_tag[tag] = entry

    for image in manifest.images:
        found = by_tag.get(image.load_tag)
        if found is None:
            raise ManifestError(
                f"image {image.reference} has no entry tagged {image.load_tag} "
                f"in {DOCKER_ARCHIVE_MANIFEST}",
                hint=_REBUILD_HINT,
            )
        expected_layers = [_blob(layer.digest) for layer in image.layers]
        if (
            found.get("Config") != _blob(image.config.digest)
            or found.get("Layers") != expected_layers
        ):
            raise ManifestError(
                f"image {image.reference}: {DOCKER_ARCHIVE_MANIFEST} lists other config or layers "
                "than the signed manifest",
                hint=_REBUILD_HINT,
            )
