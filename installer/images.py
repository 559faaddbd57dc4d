"""Which images a release needs, and getting them into the Docker engine."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from installer import compose, engine, reference
from installer._tarstream import iter_tar, tar_size
from installer.archive import VerifiedBundle
from installer.constants import ENV_FILE, IMAGES_DIR, STATE_DIR
from installer.errors import EnvironmentNotReadyError, InstallError, InterpolationError
from installer.manifest import Manifest, engine_version
from installer.progress import ProgressReporter
from installer.state import write_atomic

logger = logging.getLogger(__name__)

# Compose file, inside TARGET/.airlock/, that points digest-pinned services at
# the tag their image loads under.
IMAGE_OVERRIDE_FILE = "images.override.yml"


def service_images(
    verified: VerifiedBundle, env_values: Mapping[str, str], environ: Mapping[str, str]
) -> dict[str, str]:
    """Map each active service to the local tag its image loads under.

    Uses the same precedence as compose (shell over `.env`), so the images
    checked here are the ones `up` will ask for.
    """
    manifest = verified.manifest
    files = [verified.staged(path) for path in manifest.compose_files]
    project_env = compose.project_environment(env_values, environ)
    try:
        project = compose.load_project(files, project_env, profiles=manifest.profiles)
    except InterpolationError as err:
        raise InterpolationError(
            err.message, hint=f"set the missing values in the target's {ENV_FILE} and install again"
        ) from err

    by_reference = {str(reference.parse(image.reference)): image for image in manifest.images}
    images: dict[str, str] = {}
    for service in project.active_services():
        if service.image is None:
            raise InstallError(f"service {service.name} has no image")
        wanted = str(reference.parse(service.image))
        record = by_reference.get(wanted)
        if record is None:
            raise InstallError(
                f"service {service.name} uses image {service.image}, which the bundle does not carry",
                hint=f"check the image variables in the target's {ENV_FILE}",
            )
        images[service.name] = record.load_tag
    return images


def check_engine_version(client: object, manifest: Manifest) -> str:
    """Fail when the Docker engine is older than the bundle's minimum; return its version."""
    version = str(client.version().get("Version", ""))  # type: ignore[attr-defined]
    try:
        found = engine_version(version)
    except ValueError as err:
        raise EnvironmentNotReadyError(
            f"Docker Engine reports version {version!r}, which airlock cannot compare with "
            f"the bundle's minimum {manifest.min_docker_version}"
        ) from err
    if found < engine_version(manifest.min_docker_version):
        zstd = any(
            layer.media_type.endswith("+zstd")
            for image in manifest.images
            for layer in image.layers
        )
        reason = " for zstd layers" if zstd else ""
        raise EnvironmentNotReadyError(
            f"bundle needs Docker Engine {manifest.min_docker_version} or newer{reason}; "
            f"found {version}",
            hint="upgrade the Docker engine, or ask for a bundle built for this engine",
        )
    return version


def check_platforms(client: object, manifest: Manifest) -> None:
    """Fail when a loaded image's platform differs from the one the manifest records."""
    wrong = []
    for image in manifest.images:
        found = engine.image_platform(client, image.load_tag)  # type: ignore[arg-type]
        if _normalise_platform(found) != _normalise_platform(image.platform):
            wrong.append(f"{image.load_tag} is {found}, the manifest records {image.platform}")
    if wrong:
        raise InstallError(
            "images do not have the platform the bundle records: " + "; ".join(wrong),
            hint="another image already uses this tag; remove it with docker rmi and install again",
        )


# Spellings containerd treats as the same platform (containerd platforms/database.go).
_ARCHITECTURE_ALIASES = {"x86_64": "amd64", "x86-64": "amd64", "aarch64": "arm64"}


def _normalise_platform(platform: str) -> str:
    os_name, _, rest = platform.lower().partition("/")
    architecture, _, variant = rest.partition("/")
    architecture = _ARCHITECTURE_ALIASES.get(architecture, architecture)
    # arm64 has one variant in practice, and registries and engines list it or not.
    if architecture == "arm64" and variant in ("v8", ""):
        return f"{os_name}/arm64"
    return f"{os_name}/{architecture}/{variant}" if variant else f"{os_name}/{architecture}"


def override_services(manifest: Manifest, service_images: Mapping[str, str]) -> dict[str, str]:
    """Return the services whose compose image is digest-pinned, mapped to their load tag.

    Docker's classic image store drops registry digests on `docker load`,
    so neither `name@sha256:...` nor `name:tag@sha256:...` resolves locally
    afterwards, and compose would pull. Such services run the load tag instead.
    """
    by_tag = {image.load_tag: image for image in manifest.images}
    pinned = {}
    for service, tag in sorted(service_images.items()):
        record = by_tag.get(tag)
        if record is not None and reference.parse(record.reference).digest is not None:
            pinned[service] = tag
    return pinned


def write_image_override(
    target: Path, manifest: Manifest, service_images: Mapping[str, str]
) -> list[Path]:
    """Write TARGET/.airlock/images.override.yml for digest-pinned services.

    Returns the file in a list, to append to compose's `-f` files, or an
    empty list (removing an override an earlier release left) when no
    service pins a digest. The loaded image has the config digest the
    signed manifest records, so the tag names exactly the pinned image.
    """
    path = target / STATE_DIR / IMAGE_OVERRIDE_FILE
    pinned = override_services(manifest, service_images)
    if not pinned:
        path.unlink(missing_ok=True)
        return []
    document: dict[str, Any] = {
        "services": {service: {"image": tag} for service, tag in pinned.items()}
    }
    header = (
        "# Written by airlock-install: these services pin an image digest, which\n"
        "# docker load does not keep, so they run the tag the image was loaded under.\n"
    )
    text = header + yaml.safe_dump(document, sort_keys=True, default_flow_style=False)
    write_atomic(path, text.encode("utf-8"))
    logger.info("compose override %s points %s at loaded tags", path, ", ".join(pinned))
    return [path]


def load_images(client: object, verified: VerifiedBundle, progress: ProgressReporter) -> list[str]:
    """Load the bundle's images unless every one is already present under its tag.

    The engine's version is compared with the bundle's minimum first, and
    every image's platform is checked afterwards.
    """
    manifest = verified.manifest
    check_engine_version(client, manifest)
    absent = [
        image
        for image in manifest.images
        if engine.image_id(client, image.load_tag) != image.image_id  # type: ignore[arg-type]
    ]
    if not absent:
        logger.info("all %d images already present; nothing to load", len(manifest.images))
        check_platforms(client, manifest)
        return []

    store = verified.staged(IMAGES_DIR.rstrip("/"))
    names = [
        member.path[len(IMAGES_DIR) :]
        for member in manifest.members
        if member.path.startswith(IMAGES_DIR)
    ]
    total = tar_size(store, names)
    logger.info("loading %d images (%d bytes) into Docker", len(manifest.images), total)
    engine.load_images(
        client,  # type: ignore[arg-type]
        iter_tar(store, names),
        expected_ids=[image.image_id for image in manifest.images],
        progress=progress,
        total=total,
    )
    check_platforms(client, manifest)
    return [image.load_tag for image in absent]
