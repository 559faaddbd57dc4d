"""One install at a time per target: an exclusive `flock` on `TARGET/.airlock/lock`.

The kernel releases the lock when the holder exits, however it exits, so a
killed install never leaves a stale lock behind. The file keeps the holder's
PID so that a second install can name it.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import time
from pathlib import Path
from types import TracebackType

from installer.constants import STATE_DIR
from installer.errors import InstallError

logger = logging.getLogger(__name__)

LOCK_FILE = "lock"


class TargetBusyError(InstallError):
    """Another airlock-install process holds the target's lock."""


class TargetLock:
    """An exclusive lock on one target folder, held from `acquire` until `release`."""

    def __init__(self, target: Path) -> None:
        self.target = target
        self.path = target / STATE_DIR / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock without waiting; raise TargetBusyError naming the holder's PID."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = _wait_for_pid(fd)
            os.close(fd)
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise InstallError(f"locking {self.path} failed: {err.strerror}") from err
            who = f"process {holder}" if holder else "another process"
            raise TargetBusyError(
                f"another airlock-install ({who}) is working on {self.target}",
                hint=f"wait for it to finish, or check `ps -p {holder}`"
                if holder
                else "wait for it to finish",
            ) from err
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        os.fsync(fd)
        self._fd = fd
        logger.debug("locked %s", self.path)

    def release(self, *, remove: bool = False) -> None:
        """Drop the lock; `remove` also deletes the file, for a target left empty."""
        if self._fd is None:
            return
        if remove:
            self.path.unlink(missing_ok=True)
        else:
            # An idle lock file is empty, so a run that changed nothing else,
            # such as a rejected bundle, leaves the target byte for byte as it was.
            os.ftruncate(self._fd, 0)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> TargetLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _wait_for_pid(fd: int, timeout: float = 1.0) -> int | None:
    """Read the holder's PID, waiting briefly for a holder that has just taken the lock.

    The holder writes its PID right after `flock` succeeds, so a run that
    loses the race can find the file still empty for a moment.
    """
    deadline = time.monotonic() + timeout
    while (pid := _read_pid(fd)) is None and time.monotonic() < deadline:
        time.sleep(0.02)
    return pid
