"""Run one command as a child process and record its wall time and peak memory."""

from __future__ import annotations

import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

# GNU time measures the command as its own child, so the peak RSS is the
# command's alone. wait4(2) on a child forked from this Python process would
# report this process's size whenever the command stays smaller.
GNU_TIME = "/usr/bin/time"


@dataclass(frozen=True)
class Measurement:
    """Wall time and peak resident memory of one command (and the children it waited for)."""

    command: str
    seconds: float
    # Maximum resident set size as GNU time reports it (%M, from wait4's
    # ru_maxrss), converted from KiB to bytes.
    peak_rss_bytes: int
    # Bytes the step processed, for the MB/s figure; None when not meaningful.
    payload_bytes: int | None

    @property
    def mb_per_second(self) -> float | None:
        """Return the throughput in MB/s (10^6 bytes per second)."""
        if not self.payload_bytes or self.seconds <= 0:
            return None
        return self.payload_bytes / self.seconds / 1e6

    def as_json(self) -> dict[str, Any]:
        """Return the fields and the throughput as a JSON object."""
        data = asdict(self)
        data["mb_per_second"] = self.mb_per_second
        return data


class CommandFailedError(RuntimeError):
    """A measured command exited with a non-zero status."""


def run_measured(
    argv: Sequence[str],
    *,
    payload_bytes: int | None = None,
    env: Mapping[str, str] | None = None,
    label: str | None = None,
) -> Measurement:
    """Run `argv` under GNU time to completion and return its wall time and peak RSS.

    Standard output is discarded and standard error kept for the error
    message; raises CommandFailedError on a non-zero exit.
    """
    command_text = label or " ".join(argv)
    with tempfile.NamedTemporaryFile("r", prefix="bench-time-", suffix=".txt") as report:
        started = time.perf_counter()
        result = subprocess.run(
            [GNU_TIME, "--format", "%M", "--output", report.name, *argv],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=None if env is None else dict(env),
            check=False,
        )
        seconds = time.perf_counter() - started
        lines = report.read().split()

    if result.returncode != 0:
        raise CommandFailedError(
            f"{command_text} exited with status {result.returncode}: "
            f"{result.stderr.decode(errors='replace').strip()[-2000:]}"
        )
    # With --format %M the report is one number: the peak RSS in KiB.
    return Measurement(command_text, seconds, int(lines[-1]) * 1024, payload_bytes)
