"""Which images a release needs, and getting them into the Docker engine."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from installer import compose, engine, reference
from installer._tarstream import iter_tar, tar_size
from installer.archive import VerifiedBundle
from installer.constants import ENV_FILE, IMAGES_DIR
from installer.errors import InstallError, InterpolationError
from installer.progress import ProgressReporter

logger = logging.getLogger(__name__)


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


def load_images(client: object, verified: VerifiedBundle, progress: ProgressReporter) -> list[str]:
    """Load the bundle's images unless every one is already present under its tag."""
    manifest = verified.manifest
    absent = [
        image
        for image in manifest.images
        if engine.image_id(client, image.load_tag) != image.image_id  # type: ignore[arg-type]
    ]
    if not absent:
        logger.info("all %d images already present; nothing to load", len(manifest.images))
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
    return [image.load_tag for image in absent]
