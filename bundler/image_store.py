"""Write the bundle's one image store: an OCI image layout that is also a docker-archive.

Every blob (image manifest, config, layer) is stored once under
`images/blobs/sha256/`, however many images share it. `images/index.json`
and `images/oci-layout` make the folder an OCI image layout
(image-spec v1.1, image-layout.md); `images/manifest.json` lists each image's
config, layers and tag the way `docker load` expects (Docker Engine 20.10
cannot load an OCI layout alone, and accepts gzip layers from the list).

The manifest each image was pulled with is stored byte for byte, so its
registry digest stays valid. For a Docker schema-2 image the store also
holds the same image as an OCI manifest, and `index.json` names that one,
because skopeo (containers/image 5.x) skips index entries of Docker
media types when it looks up a reference in an OCI layout.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bundler.registry import RegistryClient, ResolvedImage
from installer.constants import (
    DOCKER_CONFIG,
    DOCKER_LAYER_GZIP,
    DOCKER_MANIFEST,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER_GZIP,
    OCI_LAYER_TAR,
    OCI_LAYER_ZSTD,
    OCI_LAYOUT_FILE,
    OCI_LAYOUT_VERSION,
    OCI_MANIFEST,
    OCI_REF_NAME_ANNOTATION,
)
from installer.errors import AirlockError, RegistryError
from installer.manifest import (
    DEFAULT_MIN_DOCKER_VERSION,
    ZSTD_MIN_DOCKER_VERSION,
    canonical_json,
    engine_version,
)
from installer.progress import NullProgress, ProgressReporter

logger = logging.getLogger(__name__)

STORE_DIR = "images"
BLOBS_DIR = "blobs/sha256"
DOCKER_ARCHIVE_MANIFEST = "manifest.json"
OCI_INDEX_FILE = "index.json"

# Layer encodings Docker Engine 20.10 can load; zstd arrived in Engine 23.
LOADABLE_LAYER_TYPES = frozenset({DOCKER_LAYER_GZIP, OCI_LAYER_GZIP, OCI_LAYER_TAR})
ZSTD_LAYER_TYPES = frozenset({OCI_LAYER_ZSTD})


@dataclass(frozen=True)
class StoredImage:
    """An image written to the store under the tag `docker load` gives it."""

    image: ResolvedImage
    load_tag: str


@dataclass(frozen=True)
class StoreSummary:
    """Byte counts that show what deduplication saved."""

    layer_bytes: int
    layer_bytes_stored: int


def blob_path(digest: str) -> str:
    """Return a blob's path inside the store, e.g. `blobs/sha256/<hex>`."""
    algorithm, _, hexdigest = digest.partition(":")
    if algorithm != "sha256" or len(hexdigest) != 64:
        raise RegistryError(f"unsupported digest {digest}; only sha256 is supported")
    return f"{BLOBS_DIR}/{hexdigest}"


def check_loadable(
    image: ResolvedImage, min_docker_version: str = DEFAULT_MIN_DOCKER_VERSION
) -> None:
    """Reject layers that `docker load` on the oldest target engine cannot read.

    gzip and uncompressed layers load on every supported engine; zstd
    layers need Engine 23.0 or newer. Any other layer type (foreign or
    non-distributable layers, encrypted layers) is rejected.
    """
    zstd_ok = engine_version(min_docker_version) >= engine_version(ZSTD_MIN_DOCKER_VERSION)
    for layer in image.layers:
        if layer.media_type in LOADABLE_LAYER_TYPES:
            continue
        if layer.media_type in ZSTD_LAYER_TYPES:
            if zstd_ok:
                continue
            raise RegistryError(
                f"image {image.reference} has zstd layer {layer.digest}, which docker load "
                f"before Engine {ZSTD_MIN_DOCKER_VERSION} cannot read "
                f"(the bundle targets Engine {min_docker_version})",
                hint=f"use an image with gzip layers, or pass --min-docker-version "
                f"{ZSTD_MIN_DOCKER_VERSION} if every target engine is that new",
            )
        raise RegistryError(
            f"image {image.reference} has layer {layer.digest} of type {layer.media_type}, "
            "which docker load cannot read",
            hint="use an image with gzip layers, or pick a tag built that way",
        )


_OCI_EQUIVALENT = {DOCKER_CONFIG: OCI_CONFIG, DOCKER_LAYER_GZIP: OCI_LAYER_GZIP}


def oci_manifest(image: ResolvedImage) -> bytes | None:
    """Return an OCI image manifest for a Docker schema-2 image, or None for an OCI one.

    It names the same config and layer blobs with their OCI media types
    (image-spec media-types.md lists them as compatible), in canonical JSON,
    so the same image always gives the same bytes.
    """
    if image.manifest_media_type != DOCKER_MANIFEST:
        return None

    def descriptor(media_type: str, digest: str, size: int) -> dict[str, object]:
        return {
            "mediaType": _OCI_EQUIVALENT.get(media_type, media_type),
            "digest": digest,
            "size": size,
        }

    return canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor(image.config.media_type, image.config.digest, image.config.size),
            "layers": [descriptor(x.media_type, x.digest, x.size) for x in image.layers],
        }
    )


def _write_bytes(path: Path, data: bytes, digest: str) -> None:
    found = "sha256:" + hashlib.sha256(data).hexdigest()
    if found != digest:
        raise RegistryError(f"blob {digest} has digest {found} after download")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def write_store(
    root: Path,
    images: Sequence[StoredImage],
    client: RegistryClient,
    *,
    progress: ProgressReporter | None = None,
    min_docker_version: str = DEFAULT_MIN_DOCKER_VERSION,
) -> StoreSummary:
    """Write the image store below `root/images`, downloading each layer once.

    Raises RegistryError before any download when a layer cannot load on
    Docker Engine `min_docker_version`.
    """
    progress = progress or NullProgress()
    store = root / STORE_DIR
    (store / BLOBS_DIR).mkdir(parents=True, exist_ok=True)

    layer_bytes = 0
    layer_bytes_stored = 0
    pending: dict[str, tuple[StoredImage, int]] = {}
    for stored in images:
        check_loadable(stored.image, min_docker_version)
    for stored in images:
        image = stored.image
        _write_bytes(
            store / blob_path(image.manifest_digest), image.manifest_bytes, image.manifest_digest
        )
        _write_bytes(
            store / blob_path(image.config.digest), image.config_bytes, image.config.digest
        )
        converted = oci_manifest(image)
        if converted is not None:
            digest = "sha256:" + hashlib.sha256(converted).hexdigest()
            _write_bytes(store / blob_path(digest), converted, digest)
        for layer in image.layers:
            layer_bytes += layer.size
            if layer.digest not in pending:
                pending[layer.digest] = (stored, layer.size)

    total = sum(size for _, size in pending.values())
    progress.start(f"downloading {len(pending)} layers", total)
    # Every layer is tried, so one run reports every layer that cannot be pulled.
    failures: list[str] = []
    try:
        for digest, (stored, size) in sorted(pending.items()):
            target = store / blob_path(digest)
            descriptor = next(layer for layer in stored.image.layers if layer.digest == digest)
            partial = target.with_suffix(".partial")
            try:
                with partial.open("wb") as out:
                    client.download_blob(stored.image, descriptor, out, progress=progress.advance)
            except AirlockError as err:
                partial.unlink(missing_ok=True)
                logger.debug("layer %s of %s failed: %s", digest, stored.image.reference, err)
                failures.append(str(err))
                continue
            partial.rename(target)
            layer_bytes_stored += size
            logger.debug("layer %s stored (%d bytes)", digest, size)
    finally:
        progress.finish()
    if failures:
        raise RegistryError(
            f"{len(failures)} of {len(pending)} layers could not be downloaded:\n  "
            + "\n  ".join(failures)
        )

    _write_indexes(store, images)
    _check_complete(store, images)
    logger.info(
        "image store: %d images, %d layer bytes, %d stored after deduplication",
        len(images),
        layer_bytes,
        layer_bytes_stored,
    )
    return StoreSummary(layer_bytes, layer_bytes_stored)


def _check_complete(store: Path, images: Sequence[StoredImage]) -> None:
    """Fail when a blob an index names is missing from the store."""
    for stored in images:
        image = stored.image
        converted = oci_manifest(image)
        if converted is not None:
            extra = ["sha256:" + hashlib.sha256(converted).hexdigest()]
        else:
            extra = []
        for digest in (
            *extra,
            image.manifest_digest,
            image.config.digest,
            *(layer.digest for layer in image.layers),
        ):
            if not (store / blob_path(digest)).is_file():
                raise RegistryError(
                    f"image store lacks blob {digest} of image {image.reference}",
                    hint="this is a bug in airlock-bundle; report it with the command you ran",
                )


def _write_indexes(store: Path, images: Sequence[StoredImage]) -> None:
    """Write `oci-layout`, `index.json` and the docker-archive `manifest.json`."""
    index_entries = []
    archive_entries = []
    seen: set[str] = set()
    for stored in images:
        image = stored.image
        # Two references to one digest (`a@sha256:x`, `a:1@sha256:x`) share a load tag.
        if stored.load_tag in seen:
            continue
        seen.add(stored.load_tag)
        os_name, _, rest = image.platform.partition("/")
        architecture, _, variant = rest.partition("/")
        platform = {"os": os_name, "architecture": architecture}
        if variant:
            platform["variant"] = variant
        manifest_bytes = oci_manifest(image) or image.manifest_bytes
        index_entries.append(
            {
                "mediaType": OCI_MANIFEST,
                "digest": "sha256:" + hashlib.sha256(manifest_bytes).hexdigest(),
                "size": len(manifest_bytes),
                "platform": platform,
                "annotations": {
                    # containerd's `ctr import` names images from this key.
                    "io.containerd.image.name": stored.load_tag,
                    OCI_REF_NAME_ANNOTATION: stored.load_tag,
                },
            }
        )
        archive_entries.append(
            {
                "Config": blob_path(image.config.digest),
                "RepoTags": [stored.load_tag],
                "Layers": [blob_path(layer.digest) for layer in image.layers],
            }
        )

    (store / OCI_LAYOUT_FILE).write_bytes(
        canonical_json({"imageLayoutVersion": OCI_LAYOUT_VERSION})
    )
    (store / OCI_INDEX_FILE).write_bytes(
        canonical_json({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": index_entries})
    )
    (store / DOCKER_ARCHIVE_MANIFEST).write_bytes(canonical_json(archive_entries))
