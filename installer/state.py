"""The installer's record of what is installed in a target folder."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import jsonschema

import schemas
from installer.constants import STATE_DIR, STATE_FILE
from installer.errors import InstallError


@dataclass(frozen=True)
class Release:
    """One installed release of a bundle."""

    version: str
    sequence: int
    manifest_digest: str
    installed_at: str
    project_name: str
    compose_files: list[str]
    signers: list[str]


@dataclass
class InstallState:
    """Contents of `TARGET/.airlock/state.json`."""

    name: str
    current: Release
    history: list[Release] = field(default_factory=list)
    highest_sequence: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "state_version": 1,
            "name": self.name,
            "current": asdict(self.current),
            "highest_sequence": self.highest_sequence,
            "history": [asdict(release) for release in self.history],
        }


def state_path(target: Path) -> Path:
    return target / STATE_DIR / STATE_FILE


def load_state(target: Path) -> InstallState | None:
    """Read the state of `target`, or None when nothing was installed there."""
    path = state_path(target)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError) as err:
        raise InstallError(
            f"installer state {path} is unreadable: {err}",
            hint="restore it from a backup, or move it away to treat the target as new",
        ) from err
    try:
        jsonschema.validate(data, schemas.load(schemas.INSTALLER_STATE))
    except jsonschema.ValidationError as err:
        raise InstallError(
            f"installer state {path} is invalid at {err.json_path}: {err.message}"
        ) from err
    return InstallState(
        name=data["name"],
        current=Release(**data["current"]),
        history=[Release(**item) for item in data["history"]],
        highest_sequence=data.get("highest_sequence", data["current"]["sequence"]),
    )


def write_atomic(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Replace `path` with `data` so a crash leaves the old or the new file, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def save_state(target: Path, state: InstallState) -> None:
    data = json.dumps(state.to_json(), indent=2, sort_keys=True).encode() + b"\n"
    write_atomic(state_path(target), data)
