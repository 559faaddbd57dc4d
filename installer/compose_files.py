"""Member paths of a compose project's files in a bundle, and their paths in the target.

The bundle carries every file the project loads (compose files given with
`-f`, files reached through `include` and `extends.file`, and `env_file`
files) under `compose/`, with their layout relative to the spec folder, and
the Helm chart under `charts/`. The installer writes `compose/X` to
`TARGET/X` and runs Compose with TARGET as the project directory, so every
relative path resolves as it did next to the spec. Both sides use this
module, so the mapping is defined once.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from installer.archive import VerifiedBundle, check_member_path
from installer.compose import ComposeProject
from installer.constants import CHARTS_DIR, COMPOSE_DIR, ENV_FILE, STATE_DIR
from installer.errors import SpecError, UnsafeMemberError
from installer.manifest import Manifest
from installer.state import write_atomic

logger = logging.getLogger(__name__)

__all__ = [
    "CarriedFile",
    "carried_files",
    "project_members",
    "target_relative_path",
    "write_project_files",
]

# A path component the manifest schema accepts (`member_path` in
# schemas/manifest.schema.json).
_MEMBER_COMPONENT = re.compile(r"[A-Za-z0-9._@+=-]+")
_MAX_MEMBER_PATH = 255


def target_relative_path(member_path: str) -> str:
    """Return where bundle member `member_path` goes, relative to the target folder.

    `compose/X` goes to `X` and `charts/X` to `charts/X`. Raises
    UnsafeMemberError for any other member, for an unsafe path, and for a
    member that would replace the target's `.env` or write into `.airlock/`.
    """
    check_member_path(member_path)
    if member_path.startswith(COMPOSE_DIR):
        relative = member_path[len(COMPOSE_DIR) :]
    elif member_path.startswith(CHARTS_DIR):
        relative = member_path
    else:
        raise UnsafeMemberError(
            f"bundle member {member_path} is not under {COMPOSE_DIR} or {CHARTS_DIR}"
        )
    if not relative:
        raise UnsafeMemberError(f"bundle member {member_path} names a folder, not a file")
    first = PurePosixPath(relative).parts[0]
    if relative == ENV_FILE:
        raise UnsafeMemberError(
            f"bundle member {member_path} would replace the target's {ENV_FILE}",
            hint="the installer writes .env itself; rebuild the bundle without it",
        )
    if first == STATE_DIR:
        raise UnsafeMemberError(f"bundle member {member_path} would write into {STATE_DIR}/")
    return relative


def project_members(manifest: Manifest) -> list[str]:
    """Return the members the installer writes into the target: compose files and charts."""
    return [
        member.path
        for member in manifest.members
        if member.path.startswith(COMPOSE_DIR) or member.path.startswith(CHARTS_DIR)
    ]


def write_project_files(verified: VerifiedBundle, target: Path) -> list[Path]:
    """Write every compose and chart member into `target`; return the `-f` files in order.

    Every destination is checked before the first file is written, so an
    unsafe member changes nothing.
    """
    manifest = verified.manifest
    destinations = [
        (member, target / target_relative_path(member)) for member in project_members(manifest)
    ]
    for member, destination in destinations:
        # An env file may hold credentials, so only its owner may read it.
        mode = 0o644 if destination.suffix in (".yml", ".yaml", ".tgz") else 0o600
        write_atomic(destination, verified.staged(member).read_bytes(), mode=mode)
        logger.debug("wrote %s from %s", destination, member)
    return [target / target_relative_path(path) for path in manifest.compose_files]


@dataclass(frozen=True)
class CarriedFile:
    """A file the bundle carries, and the member path it gets."""

    source: Path
    member: str


def _member_for(relative: PurePosixPath, source: Path) -> str:
    member = f"{COMPOSE_DIR}{relative.as_posix()}"
    if len(member) > _MAX_MEMBER_PATH or not all(
        _MEMBER_COMPONENT.fullmatch(part) for part in relative.parts
    ):
        raise SpecError(
            f"{source}: file name cannot be carried in a bundle as {member}",
            hint="use only letters, digits and . _ @ + = - in names, "
            f"and keep the path under {_MAX_MEMBER_PATH} characters",
        )
    return member


def _relative_to(path: Path, folder: Path) -> PurePosixPath | None:
    try:
        return PurePosixPath(path.resolve().relative_to(folder.resolve()).as_posix())
    except ValueError:
        return None


def carried_files(
    project: ComposeProject, top_level: Sequence[Path], spec_folder: Path
) -> list[CarriedFile]:
    """List every file of `project` the bundle must carry, with its member path.

    `project` must have been loaded with `spec_folder` as its project
    directory. A top-level file outside the spec folder (a downloaded one)
    goes to `compose/` by its name. Every other file keeps its path relative
    to the spec folder. The spec folder's `.env` is never carried, because
    the installer writes the target's own.

    Raises SpecError for a file outside the spec folder, for an `env_file`
    that does not exist (unless it is that `.env` or marked `required:
    false`), and for two files that would share a member path.
    """
    top = {path.resolve() for path in top_level}
    target_env = (spec_folder / ENV_FILE).resolve()
    carried: dict[str, CarriedFile] = {}

    def add(source: Path, relative: PurePosixPath) -> None:
        member = _member_for(relative, source)
        earlier = carried.get(member)
        if earlier is not None and earlier.source.resolve() != source.resolve():
            raise SpecError(
                f"{source} and {earlier.source} would both be carried as {member}",
                hint="rename one of them",
            )
        carried[member] = CarriedFile(source, member)

    for path in project.files:
        if path.resolve() == target_env:
            continue
        relative = _relative_to(path, spec_folder)
        if relative is None and path.resolve() in top:
            relative = PurePosixPath(path.name)
        if relative is None:
            raise SpecError(
                f"{path} is outside the spec folder {spec_folder}",
                hint="move the file next to the spec (or below it) and refer to it from there",
            )
        add(path, relative)

    for use in project.env_files:
        if use.path.resolve() == target_env:
            continue
        if not use.path.is_file():
            if not use.required:
                logger.debug("service %s: optional env_file %s absent", use.service, use.written)
                continue
            raise SpecError(
                f"service {use.service} in {use.compose_file}: env_file {use.written} "
                f"not found ({use.path})",
                hint=f"create it next to the spec, or move its values into {ENV_FILE} "
                "through the spec's env.set",
            )
        relative = _relative_to(use.path, spec_folder)
        if relative is None:
            raise SpecError(
                f"service {use.service} in {use.compose_file}: env_file {use.written} "
                f"is outside the spec folder {spec_folder}",
                hint="move the file next to the spec (or below it) and refer to it from there",
            )
        add(use.path, relative)

    return [carried[member] for member in sorted(carried)]
