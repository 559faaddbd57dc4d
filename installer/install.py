"""Install a verified bundle into a target folder and bring its services up.

Nothing outside a staging folder changes until the bundle's signature and
every member digest have been checked, the `.env` the release needs can be
written, and every image compose will use is known to be in the bundle.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from installer import dotenv, engine, envmerge, images, policy
from installer.archive import open_bundle, read_bundle
from installer.compose_cli import ServiceStatus, detect, wait_healthy
from installer.constants import COMPOSE_DIR, ENV_FILE, STATE_DIR
from installer.errors import InstallError
from installer.manifest import Manifest
from installer.progress import NullProgress, ProgressReporter
from installer.signing import TrustedKey
from installer.state import InstallState, Release, load_state, save_state, write_atomic

logger = logging.getLogger(__name__)

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
class InstallResult:
    """What an install did, for the CLI to report."""

    manifest: Manifest
    signers: list[str]
    env: envmerge.EnvChange
    images_loaded: list[str]
    services: list[ServiceStatus]
    unchanged: bool
    dry_run: bool = False


def _staging_dir(target: Path) -> Path:
    (target / STATE_DIR).mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="staging-", dir=target / STATE_DIR))


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
        same_release = policy.check_release(state, verified, options.allow_downgrade)

        # 3. .env and images, in memory.
        env_path = target / ENV_FILE
        existing_text = env_path.read_text(encoding="utf-8") if env_path.exists() else ""
        env_text, env_change = envmerge.merge_env(existing_text, manifest)
        env_values = dotenv.parse(env_text)
        service_images = images.service_images(verified, env_values, environ)
        if options.dry_run:
            return InstallResult(
                manifest, [k.name for k in verified.signers], env_change, [], [], same_release, True
            )

        # 4. Environment.
        client = engine.connect(environ)
        compose_command = detect(environ)

        # 5. Images.
        loaded = images.load_images(client, verified, progress)
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
        project_name = env_values.get(envmerge.PROJECT_NAME_KEY, manifest.project_name)
        override = images.write_image_override(target, manifest, service_images)
        compose_command.up(target, compose_files + override, project_name)
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
