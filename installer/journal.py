"""The journal of an install or rollback in progress: `TARGET/.airlock/journal.json`.

Each step that changes the target first records the phase it reached,
atomically, so a run killed at any point leaves a journal that names what
was done. The next run reads it, reports the interrupted operation, and
finishes it or rolls it back. A run that ends, well or badly but handled,
removes the journal.

Test hook: when the environment variable `AIRLOCK_TEST_KILL_AT` names a
phase, the process sends itself SIGKILL right after recording that phase.
Tests use it to stage a crash at each phase boundary; nothing else reads it.
"""

from __future__ import annotations

import json
import logging
import os
import signal
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from installer.constants import STATE_DIR
from installer.errors import InstallError
from installer.state import write_atomic

logger = logging.getLogger(__name__)

JOURNAL_FILE = "journal.json"
KILL_AT_VARIABLE = "AIRLOCK_TEST_KILL_AT"

# Phases of an install, in order. Before PREVIOUS_SAVED the target's live
# files and containers are untouched, although images may be loaded and
# release folders written. From COMPOSE_WRITTEN on the target has the new
# compose files, and from FILES_WRITTEN on its `.env` too.
LOCKED = "locked"
VERIFIED = "verified"
PREFLIGHT_PASSED = "preflight-passed"
IMAGES_LOADED = "images-loaded"
RELEASE_SAVED = "release-saved"
PREVIOUS_SAVED = "previous-saved"
COMPOSE_WRITTEN = "compose-written"
FILES_WRITTEN = "files-written"
STARTED = "started"
HEALTHY = "healthy"
STATE_SAVED = "state-saved"
INSTALL_PHASES = (
    LOCKED,
    VERIFIED,
    PREFLIGHT_PASSED,
    IMAGES_LOADED,
    RELEASE_SAVED,
    PREVIOUS_SAVED,
    COMPOSE_WRITTEN,
    FILES_WRITTEN,
    STARTED,
    HEALTHY,
    STATE_SAVED,
)
# Phases of a rollback, in order.
ROLLBACK_STARTED = "rollback-started"
ROLLBACK_FILES_RESTORED = "rollback-files-restored"
ROLLBACK_UP = "rollback-up"
ROLLBACK_HEALTHY = "rollback-healthy"
ROLLBACK_PHASES = (ROLLBACK_STARTED, ROLLBACK_FILES_RESTORED, ROLLBACK_UP, ROLLBACK_HEALTHY)
ALL_PHASES = INSTALL_PHASES + ROLLBACK_PHASES


@dataclass
class Journal:
    """Contents of `journal.json`: which operation runs, between which releases, and how far it got."""

    operation: str
    phase: str
    pid: int
    started_at: str
    # The release being installed or restored: version, sequence, manifest digest.
    to_version: str
    to_sequence: int
    to_digest: str
    # The release that was current before, or None for a first install.
    from_version: str | None = None
    from_sequence: int | None = None
    bundle: str | None = None
    # The `-f` files of the release the operation brings in, relative to the target.
    compose_files: list[str] = field(default_factory=list)
    phases: list[str] = field(default_factory=list)

    def target_changed(self) -> bool:
        """Return whether the target's compose files or `.env` may already be the new release's."""
        if self.operation != "install":
            return True
        # `phases` also holds those of an interrupted run this one resumed.
        first_change = INSTALL_PHASES.index(PREVIOUS_SAVED)
        return any(
            INSTALL_PHASES.index(phase) >= first_change
            for phase in self.phases
            if phase in INSTALL_PHASES
        )

    def describe(self) -> str:
        """Say in one line which operation was interrupted and where."""
        origin = (
            f"from {self.from_version} (sequence {self.from_sequence}) "
            if self.from_version is not None
            else ""
        )
        return (
            f"an earlier {self.operation} {origin}to {self.to_version} (sequence "
            f"{self.to_sequence}), process {self.pid} started {self.started_at}, "
            f"stopped after phase {self.phase}"
        )


def journal_path(target: Path) -> Path:
    return target / STATE_DIR / JOURNAL_FILE


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def load_journal(target: Path) -> Journal | None:
    """Read the journal of an interrupted operation, or None when there is none."""
    path = journal_path(target)
    try:
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        journal = Journal(**data)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError) as err:
        raise InstallError(
            f"install journal {path} is unreadable: {err}",
            hint="check `airlock-install status`; move the file away once the target is as it should be",
        ) from err
    if journal.phase not in ALL_PHASES:
        raise InstallError(f"install journal {path} names an unknown phase {journal.phase!r}")
    return journal


class JournalWriter:
    """Records phases of one operation and runs the kill test hook."""

    def __init__(self, target: Path, journal: Journal, environ: Mapping[str, str]) -> None:
        self.target = target
        self.journal = journal
        self._kill_at = environ.get(KILL_AT_VARIABLE, "")

    def reach(self, phase: str) -> None:
        """Record that `phase` is done, atomically, then apply the kill hook."""
        self.journal.phase = phase
        self.journal.phases.append(phase)
        data = json.dumps(asdict(self.journal), indent=2, sort_keys=True).encode() + b"\n"
        write_atomic(journal_path(self.target), data)
        logger.debug("phase %s reached", phase)
        kill_if_requested(phase, self._kill_at)

    def finish(self) -> None:
        """Remove the journal: the operation ended and the target is consistent."""
        journal_path(self.target).unlink(missing_ok=True)


def kill_if_requested(phase: str, kill_at: str) -> None:
    """Send this process SIGKILL when `kill_at` names `phase` (the test hook above)."""
    if kill_at and kill_at == phase:
        logger.warning("%s=%s: killing this process", KILL_AT_VARIABLE, phase)
        os.kill(os.getpid(), signal.SIGKILL)
