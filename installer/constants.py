"""Names and media types both sides agree on, each with its source."""

from __future__ import annotations

# Bundle layout (airlock's own format, version 1).
FORMAT_VERSION = 1
MANIFEST_PATH = "airlock/manifest.json"
SIGNATURES_DIR = "airlock/signatures/"
# One raw 64-byte Ed25519 signature per key, named by key id, so that
# `openssl pkeyutl -verify -rawin -sigfile` reads it as it is.
SIGNATURE_SUFFIX = ".sig"
COMPOSE_DIR = "compose/"
IMAGES_DIR = "images/"
CHARTS_DIR = "charts/"
# The manifest is read into memory before anything else, so it gets a bound.
MAX_MANIFEST_BYTES = 16 * 1024 * 1024
MAX_SIGNATURE_BYTES = 64

# Fixed tar metadata that makes builds reproducible.
TAR_MODE_FILE = 0o644
TAR_MTIME_DEFAULT = 0

# OCI Image Format Specification v1.1, media-types.md.
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_LAYOUT_FILE = "oci-layout"
OCI_LAYOUT_VERSION = "1.0.0"
# OCI image-layout.md: annotation naming an index entry's reference.
OCI_REF_NAME_ANNOTATION = "org.opencontainers.image.ref.name"

# Docker Image Manifest V2, Schema 2 (distribution/distribution docs/spec/manifest-v2-2.md).
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_FOREIGN_LAYER = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"

INDEX_MEDIA_TYPES = (OCI_INDEX, DOCKER_MANIFEST_LIST)
IMAGE_MANIFEST_MEDIA_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
# Distribution 2.8 converts a schema-2 image to schema 1 unless every type
# the client accepts is listed, and answers an OCI index with 404 without it.
MANIFEST_ACCEPT = ", ".join((OCI_INDEX, OCI_MANIFEST, DOCKER_MANIFEST_LIST, DOCKER_MANIFEST))

# Docker's default registry as image references imply it (distribution/reference).
DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"

# Compose labels set on containers (compose-spec, docker/compose api/labels.go).
COMPOSE_PROJECT_LABEL = "com.docker.compose.project"
COMPOSE_SERVICE_LABEL = "com.docker.compose.service"

# Installer files inside the target folder.
STATE_DIR = ".airlock"
STATE_FILE = "state.json"
ENV_FILE = ".env"
