"""Installed releases kept on disk: `TARGET/.airlock/releases/<sequence>-<version>/`.

Each release folder holds what is needed to bring that release back:

- `manifest.json`: the signed manifest bytes as verified;
- `compose/`: the compose files as the bundle carried them;
- `env`: the `.env` the release ran with (mode 0600). The installer writes
  it when it installs the release and again, from the live file, when it
  moves away from it, so the operator's later edits come back on rollback.

A release folder is written under a temporary name and renamed into place,
so a folder with the final name is always complete.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import docker

from installer import compose, dotenv, engine, envmerge
from installer import manifest as manifest_module
from installer.archive import VerifiedBundle
from installer.compose_cli import ComposeCommand, ServiceStatus, wait_healthy
from installer.constants import COMPOSE_DIR, ENV_FILE, STATE_DIR
from installer.errors import InstallError
from installer.journal import (
    ROLLBACK_FILES_RESTORED,
    ROLLBACK_HEALTHY,
    ROLLBACK_STARTED,
    ROLLBACK_UP,
    JournalWriter,
)
from installer.manifest import Manifest
from installer.progress import ProgressReporter
from installer.state import InstallState, Release, save_state, write_atomic

logger = logging.getLogger(__name__)

RELEASES_DIR = "releases"
RELEASE_MANIFEST = "manifest.json"
RELEASE_COMPOSE = "compose"
RELEASE_ENV = "env"
ENV_MODE = 0o600

# Versions name folders, so they must not hold path separators or start with a dot.
_SAFE_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")


def releases_root(target: Path) -> Path:
    return target / STATE_DIR / RELEASES_DIR


def release_dir(target: Path, sequence: int, version: str) -> Path:
    """Return the folder of one release, rejecting a version that is no safe folder name."""
    if not _SAFE_VERSION.fullmatch(version):
        raise InstallError(
            f"release version {version!r} cannot name a folder under {releases_root(target)}",
            hint="versions may hold letters, digits, '.', '_', '+' and '-'",
        )
    return releases_root(target) / f"{sequence}-{version}"


def folder_of(target: Path, release: Release) -> Path:
    return release_dir(target, release.sequence, release.version)


def compose_files(target: Path, names: Sequence[str]) -> list[Path]:
    """Return the compose files, in order, that every compose command of a release gets.

    Every `up`, `down` and health wait builds its file list here, so a file
    added to all of them is added in one place.
    """
    return [target / name for name in names]


def compose_names(manifest: Manifest) -> list[str]:
    """Return the file names the bundle's compose files get in the target."""
    return [path[len(COMPOSE_DIR) :] for path in manifest.compose_files]


def save_release(target: Path, verified: VerifiedBundle, env_text: str) -> Path:
    """Write the release folder of `verified` with `env_text` as its `.env`; return it.

    A folder left by an earlier, interrupted run of the same release is replaced.
    """
    manifest = verified.manifest
    final = release_dir(target, manifest.sequence, manifest.version)
    final.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        _write_file(building / RELEASE_MANIFEST, verified.manifest_bytes)
        for path, name in zip(manifest.compose_files, compose_names(manifest), strict=True):
            _write_file(building / RELEASE_COMPOSE / name, verified.staged(path).read_bytes())
        _write_file(building / RELEASE_ENV, env_text.encode("utf-8"), mode=ENV_MODE)
        os.chmod(building, 0o700)
        if final.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{final.name}.old.", dir=final.parent))
            os.replace(final, retired / final.name)
            os.replace(building, final)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(building, final)
        _fsync_dir(final.parent)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    logger.debug("saved release %s", final)
    return final


def save_env(target: Path, release: Release, env_text: str) -> None:
    """Store `env_text` as the `.env` of an installed release."""
    write_atomic(folder_of(target, release) / RELEASE_ENV, env_text.encode("utf-8"), mode=ENV_MODE)


def load_manifest(target: Path, release: Release) -> Manifest | None:
    """Read the manifest kept for `release`, or None when its folder lacks one."""
    path = folder_of(target, release) / RELEASE_MANIFEST
    try:
        return manifest_module.parse(path.read_bytes())
    except FileNotFoundError:
        return None


def saved_files(target: Path, release: Release) -> tuple[list[Path], Path]:
    """Return the saved compose files and `.env` of `release`, checking that they exist."""
    folder = folder_of(target, release)
    compose = [folder / RELEASE_COMPOSE / name for name in release.compose_files]
    env = folder / RELEASE_ENV
    missing = [str(path) for path in [*compose, env] if not path.is_file()]
    if missing:
        raise InstallError(
            f"release {release.version} (sequence {release.sequence}) cannot be restored: "
            f"{', '.join(missing)} not found",
            hint="reinstall that release from its bundle with --allow-downgrade",
        )
    return compose, env


def restore_files(target: Path, release: Release, replaced: Sequence[str] = ()) -> None:
    """Put the compose files and `.env` of `release` back into the target.

    Compose files named in `replaced` (the release being left) that `release`
    does not use are removed afterwards, so the target holds one release's files.
    """
    compose, env = saved_files(target, release)
    for source, name in zip(compose, release.compose_files, strict=True):
        write_atomic(target / name, source.read_bytes())
    write_atomic(target / ENV_FILE, env.read_bytes(), mode=ENV_MODE)
    remove_stale_compose(target, replaced, release.compose_files)


def remove_stale_compose(target: Path, old: Sequence[str], new: Sequence[str]) -> None:
    """Delete compose files of the release being left that the new one does not use."""
    for name in sorted(set(old) - set(new)):
        (target / name).unlink(missing_ok=True)
        logger.debug("removed %s, which release no longer uses", name)


def running_project(
    target: Path, release: Release, environ: Mapping[str, str]
) -> tuple[list[Path], str, dict[str, str], compose.ComposeProject]:
    """Load `release` as the target's files describe it now.

    Returns its compose files, its project name, the image of each active
    service and the loaded project.
    """
    files = compose_files(target, release.compose_files)
    values = dotenv.parse((target / ENV_FILE).read_text(encoding="utf-8"))
    manifest = load_manifest(target, release)
    profiles = manifest.profiles if manifest is not None else ()
    project = compose.load_project(
        files, compose.project_environment(values, environ), profiles=profiles
    )
    service_images: dict[str, str] = {}
    for service in project.active_services():
        if service.image is None:
            raise InstallError(f"service {service.name} of release {release.version} has no image")
        service_images[service.name] = service.image
    project_name = values.get(envmerge.PROJECT_NAME_KEY, release.project_name)
    return files, project_name, service_images, project


def bring_back(
    target: Path,
    release: Release,
    *,
    client: docker.DockerClient,
    command: ComposeCommand,
    leaving: Sequence[str],
    writer: JournalWriter,
    environ: Mapping[str, str],
    timeout: float,
    progress: ProgressReporter | None = None,
) -> list[ServiceStatus]:
    """Restore the files of `release`, start it and wait until it is healthy.

    Its images must still be in the engine: the installer never removes
    them. `leaving` names the compose files of the release being replaced.
    Raises InstallError, or HealthCheckError when the release does not
    become healthy within `timeout` seconds.
    """
    writer.reach(ROLLBACK_STARTED)
    restore_files(target, release, replaced=leaving)
    writer.reach(ROLLBACK_FILES_RESTORED)

    files, project_name, service_images, _ = running_project(target, release, environ)
    missing = engine.missing_images(client, sorted(set(service_images.values())))
    if missing:
        raise InstallError(
            f"release {release.version} cannot start: image {', '.join(missing)} "
            "is no longer in the Docker engine",
            hint="install that release's bundle again with --allow-downgrade",
        )
    command.up(target, files, project_name)
    writer.reach(ROLLBACK_UP)
    services = wait_healthy(
        client, project_name, sorted(service_images), timeout=timeout, progress=progress
    )
    writer.reach(ROLLBACK_HEALTHY)
    return services


def record_current(target: Path, state: InstallState, release: Release) -> InstallState:
    """Save a state whose current release is `release`, every other one in the history."""
    others = [
        item
        for item in [state.current, *state.history]
        if item.manifest_digest != release.manifest_digest
    ]
    new_state = InstallState(
        state.name, release, sorted(others, key=lambda item: item.sequence), state.highest_sequence
    )
    save_state(target, new_state)
    return new_state


def _write_file(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        os.fchmod(handle.fileno(), mode)
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    directory = os.open(path, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
