"""Install a verified bundle into a target folder and bring its services up.

Nothing outside a staging folder changes until the bundle's signature and
every member digest have been checked, the `.env` the release needs can be
written, and every image compose will use is known to be in the bundle.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import string
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from installer import compose, dotenv, engine, reference
from installer._tarstream import iter_tar, tar_size
from installer.archive import VerifiedBundle, open_bundle, read_bundle
from installer.compose_cli import ServiceStatus, detect, wait_healthy
from installer.constants import COMPOSE_DIR, ENV_FILE, IMAGES_DIR, STATE_DIR
from installer.errors import DowngradeError, InstallError, InterpolationError
from installer.manifest import Manifest
from installer.progress import NullProgress, ProgressReporter
from installer.signing import TrustedKey
from installer.state import InstallState, Release, load_state, save_state, write_atomic

logger = logging.getLogger(__name__)

SECRET_ALPHABET = string.ascii_letters + string.digits
PROJECT_NAME_KEY = "COMPOSE_PROJECT_NAME"
DEFAULT_HEALTH_TIMEOUT = 300.0


@dataclass(frozen=True)
class InstallOptions:
    """What `airlock-install install` takes from its command line."""

    bundle: Path
    target: Path
    trusted: tuple[TrustedKey, ...]
    health_timeout: float = DEFAULT_HEALTH_TIMEOUT
    allow_downgrade: bool = False
    dry_run: bool = False


@dataclass
class EnvChange:
    """What an install does to `.env`, by key only: values may be secrets."""

    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    generated: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    normalised: bool = False


@dataclass
class InstallResult:
    """What an install did, for the CLI to report."""

    manifest: Manifest
    signers: list[str]
    env: EnvChange
    images_loaded: list[str]
    services: list[ServiceStatus]
    unchanged: bool
    dry_run: bool = False


def generate_secret(length: int) -> str:
    """Return a random value of letters and digits, safe unquoted in `.env` and URLs."""
    return "".join(secrets.choice(SECRET_ALPHABET) for _ in range(length))


def merge_env(existing_text: str, manifest: Manifest) -> tuple[str, EnvChange]:
    """Merge the bundle's `.env` values into the target's file.

    Values the operator set and secrets generated earlier are kept; keys
    the bundle sets are updated; secrets absent from the file are generated.
    """
    document = dotenv.DotenvFile.from_text(existing_text)
    present = set(document.keys())
    change = EnvChange()

    for key, value in sorted(manifest.env_set.items()):
        if key not in present:
            document.set(key, value)
            change.added.append(key)
        elif document.values().get(key) != value:
            document.set(key, value)
            change.changed.append(key)
    for secret in manifest.env_generate:
        if secret.name in present:
            change.kept.append(secret.name)
            continue
        document.set(secret.name, generate_secret(secret.length))
        change.generated.append(secret.name)
    if PROJECT_NAME_KEY not in present:
        document.set(PROJECT_NAME_KEY, manifest.project_name)
        change.added.append(PROJECT_NAME_KEY)

    text = document.to_text()
    change.normalised = document.normalised
    return text, change


def _staging_dir(target: Path) -> Path:
    (target / STATE_DIR).mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="staging-", dir=target / STATE_DIR))


def _service_images(
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


def _load_images(client: object, verified: VerifiedBundle, progress: ProgressReporter) -> list[str]:
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


def _check_downgrade(state: InstallState | None, verified: VerifiedBundle, allow: bool) -> bool:
    """Refuse an older release; return True when this exact release is installed."""
    manifest = verified.manifest
    if state is None:
        return False
    if state.name != manifest.name:
        raise DowngradeError(
            f"target holds bundle {state.name}, this bundle is {manifest.name}",
            hint="install it into its own target folder",
        )
    current = state.current
    if manifest.sequence < state.highest_sequence and not allow:
        raise DowngradeError(
            f"bundle sequence {manifest.sequence} ({manifest.version}) < installed "
            f"{state.highest_sequence}; downgrade not allowed",
            hint="use a newer bundle, or pass --allow-downgrade to roll back on purpose",
        )
    if (
        manifest.sequence == current.sequence
        and verified.manifest_digest != current.manifest_digest
    ):
        if not allow:
            raise DowngradeError(
                f"bundle sequence {manifest.sequence} is installed with manifest "
                f"{current.manifest_digest}, this bundle has {verified.manifest_digest}",
                hint="two different bundles share a sequence number; ask the publisher which is genuine",
            )
    return verified.manifest_digest == current.manifest_digest


def install(
    options: InstallOptions,
    *,
    environ: Mapping[str, str] | None = None,
    progress: ProgressReporter | None = None,
) -> InstallResult:
    """Verify the bundle, then install it into the target and wait for health.

    1. Verify signature and every member into a staging folder.
    2. Refuse another bundle name, an older sequence or a forged replay.
    3. Merge `.env` in memory and resolve every service's image with it.
    4. Check that the Docker engine and Compose answer.
    5. Load the images the engine lacks and check each service's image is present.
    6. Write the compose files and `.env`, run `up -d`, wait for health.
    7. Record the release in the target's state.
    """
    environ = os.environ if environ is None else environ
    progress = progress or NullProgress()
    target = options.target.resolve()
    target_existed = target.exists()
    state_dir_existed = (target / STATE_DIR).exists()
    staging = _staging_dir(target)
    try:
        # 1. Verify.
        with open_bundle(options.bundle) as stream:
            verified = read_bundle(
                stream,
                options.trusted,
                stage_to=staging,
                progress=progress,
                total_bytes=options.bundle.stat().st_size,
            )
        manifest = verified.manifest

        # 2. Replay and downgrade.
        state = load_state(target)
        same_release = _check_downgrade(state, verified, options.allow_downgrade)

        # 3. .env and images, in memory.
        env_path = target / ENV_FILE
        existing_text = env_path.read_text(encoding="utf-8") if env_path.exists() else ""
        env_text, env_change = merge_env(existing_text, manifest)
        env_values = dotenv.parse(env_text)
        service_images = _service_images(verified, env_values, environ)
        if options.dry_run:
            return InstallResult(
                manifest, [k.name for k in verified.signers], env_change, [], [], same_release, True
            )

        # 4. Environment.
        client = engine.connect(environ)
        compose_command = detect(environ)

        # 5. Images.
        loaded = _load_images(client, verified, progress)
        missing = engine.missing_images(client, sorted(set(service_images.values())))
        if missing:
            lacking = sorted(name for name, tag in service_images.items() if tag in missing)
            raise InstallError(
                f"image for service {', '.join(lacking)} not present after loading: {', '.join(missing)}",
                hint="the bundle's image store does not match its manifest; rebuild the bundle",
            )

        # 6. Files, then compose.
        for path in manifest.compose_files:
            relative = path[len(COMPOSE_DIR) :]
            write_atomic(target / relative, verified.staged(path).read_bytes())
        if env_text != existing_text:
            write_atomic(env_path, env_text.encode("utf-8"), mode=0o600)
        else:
            os.chmod(env_path, 0o600)
        compose_files = [target / path[len(COMPOSE_DIR) :] for path in manifest.compose_files]
        project_name = env_values.get(PROJECT_NAME_KEY, manifest.project_name)
        compose_command.up(target, compose_files, project_name)
        services = wait_healthy(
            client, project_name, sorted(service_images), timeout=options.health_timeout
        )

        # 7. State.
        release = Release(
            version=manifest.version,
            sequence=manifest.sequence,
            manifest_digest=verified.manifest_digest,
            installed_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            project_name=project_name,
            compose_files=[path.name for path in compose_files],
            signers=[key.key_id for key in verified.signers],
        )
        if same_release and state is not None:
            release = state.current
        history = [] if state is None else [*state.history]
        if state is not None and not same_release:
            history.append(state.current)
        highest = max(manifest.sequence, state.highest_sequence if state else 0)
        releases_dir = target / STATE_DIR / "releases" / f"{manifest.sequence}-{manifest.version}"
        write_atomic(releases_dir / "manifest.json", verified.manifest_bytes)
        save_state(target, InstallState(manifest.name, release, history, highest))

        return InstallResult(
            manifest=manifest,
            signers=[key.name for key in verified.signers],
            env=env_change,
            images_loaded=loaded,
            services=services,
            unchanged=same_release and not loaded and env_text == existing_text,
        )
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if not state_dir_existed and not (target / STATE_DIR / "state.json").exists():
            shutil.rmtree(target / STATE_DIR, ignore_errors=True)
        if not target_existed and not any(target.iterdir()):
            target.rmdir()
