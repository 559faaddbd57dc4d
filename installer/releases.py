"""Installed releases kept on disk: `TARGET/.airlock/releases/<sequence>-<version>/`.

Each release folder contains what is needed to bring that release back:

- `manifest.json`: the signed manifest bytes as verified;
- `compose/`: every file of the compose project at its path relative to
  the target: the `-f` files, the files they reach through `include`,
  `extends` and `env_file`, and the override files the installer wrote
  under `.airlock/` for `up`;
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
from pathlib import Path, PurePosixPath

import docker

from installer import compose, dotenv, engine, envmerge
from installer import manifest as manifest_module
from installer.archive import VerifiedBundle
from installer.compose_cli import ComposeCommand, ServiceStatus, wait_healthy
from installer.compose_files import target_relative_path
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

# Versions name folders, so they must not contain path separators or start with a dot.
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
    """Return the target paths of a release's `-f` files, in order.

    `names` is Release.compose_files, which includes the override files
    under `.airlock/` that `up` got, so `rollback` starts a release with
    the same files its install did.
    """
    return [target / name for name in names]


def compose_names(manifest: Manifest) -> list[str]:
    """Return the `-f` files of the bundle as paths relative to the target."""
    return [target_relative_path(path) for path in manifest.compose_files]


def _file_mode(relative: str) -> int:
    # Env files may hold credentials, so only compose files and charts are world-readable.
    return 0o644 if PurePosixPath(relative).suffix in (".yml", ".yaml", ".tgz") else ENV_MODE


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
        for member in manifest.members:
            if not member.path.startswith(COMPOSE_DIR):
                continue
            relative = target_relative_path(member.path)
            data = verified.staged(member.path).read_bytes()
            _write_file(building / RELEASE_COMPOSE / relative, data, mode=_file_mode(relative))
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


def save_overrides(target: Path, manifest: Manifest, paths: Sequence[Path]) -> list[str]:
    """Keep copies of override files written under the target for `up`; return their paths.

    The returned paths are relative to the target, as Release.compose_files records them.
    """
    folder = release_dir(target, manifest.sequence, manifest.version)
    relatives = []
    for path in paths:
        relative = str(path.relative_to(target))
        write_atomic(folder / RELEASE_COMPOSE / relative, path.read_bytes())
        relatives.append(relative)
    return relatives


def files_of(target: Path, sequence: int, version: str) -> list[str]:
    """List the project files a saved release puts into the target, relative to it."""
    root = release_dir(target, sequence, version) / RELEASE_COMPOSE
    if not root.is_dir():
        return []
    return sorted(str(path.relative_to(root)) for path in root.rglob("*") if path.is_file())


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


def all_release_files(target: Path) -> list[str]:
    """List the project files of every saved release, relative to the target."""
    root = releases_root(target)
    found: set[str] = set()
    if root.is_dir():
        for folder in root.iterdir():
            name, _, version = folder.name.partition("-")
            if folder.is_dir() and not folder.name.startswith(".") and name.isdigit():
                found.update(files_of(target, int(name), version))
    return sorted(found)


def saved_files(target: Path, release: Release) -> tuple[list[Path], Path]:
    """Return the saved `-f` files and `.env` of `release`, checking that they exist."""
    folder = folder_of(target, release)
    compose_paths = [folder / RELEASE_COMPOSE / name for name in release.compose_files]
    env = folder / RELEASE_ENV
    missing = [str(path) for path in [*compose_paths, env] if not path.is_file()]
    if missing:
        raise InstallError(
            f"release {release.version} (sequence {release.sequence}) cannot be restored: "
            f"{', '.join(missing)} not found",
            hint="reinstall that release from its bundle with --allow-downgrade",
        )
    return compose_paths, env


def restore_files(target: Path, release: Release) -> None:
    """Put every project file and the `.env` of `release` back into the target.

    Project files of other saved releases that `release` does not have
    are removed afterwards, so the target holds one release's files.
    """
    leaving = all_release_files(target)
    _, env = saved_files(target, release)
    root = folder_of(target, release) / RELEASE_COMPOSE
    restored = files_of(target, release.sequence, release.version)
    for relative in restored:
        write_atomic(target / relative, (root / relative).read_bytes(), mode=_file_mode(relative))
    write_atomic(target / ENV_FILE, env.read_bytes(), mode=ENV_MODE)
    remove_stale(target, leaving, restored)


def remove_stale(target: Path, old: Sequence[str], new: Sequence[str]) -> None:
    """Delete project files of the release being left that the new one does not have."""
    for relative in sorted(set(old) - set(new)):
        if relative == ENV_FILE:
            continue
        (target / relative).unlink(missing_ok=True)
        logger.debug("removed %s, which the release now running does not use", relative)


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
    writer: JournalWriter,
    environ: Mapping[str, str],
    timeout: float,
    progress: ProgressReporter | None = None,
) -> list[ServiceStatus]:
    """Restore the files of `release`, start it and wait until it is healthy.

    Its images must still be in the engine, which holds because install and
    rollback remove no images.
    Raises InstallError, or HealthCheckError when the release does not
    become healthy within `timeout` seconds.
    """
    writer.reach(ROLLBACK_STARTED)
    restore_files(target, release)
    writer.reach(ROLLBACK_FILES_RESTORED)

    files, project_name, service_images, _ = running_project(target, release, environ)
    retag_images(client, target, release)
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


def retag_images(client: docker.DockerClient, target: Path, release: Release) -> None:
    """Point each image tag of `release` back at the image its manifest records.

    A later release may have loaded another image under the same tag (a
    moved `latest`, say). The image itself stays in the engine, untagged,
    so tagging it again makes compose start what the release ran with.
    """
    manifest = load_manifest(target, release)
    if manifest is None:
        return
    for image in manifest.images:
        if engine.image_id(client, image.load_tag) == image.image_id:
            continue
        if engine.image_id(client, image.image_id) != image.image_id:
            raise InstallError(
                f"release {release.version} cannot start: image {image.image_id} "
                f"({image.load_tag}) is no longer in the Docker engine",
                hint="install that release's bundle again with --allow-downgrade",
            )
        engine.tag_image(client, image.image_id, image.load_tag)
        logger.info(
            "tagged %s as %s again for release %s", image.image_id, image.load_tag, release.version
        )


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
