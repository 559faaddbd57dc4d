"""Progress reporting for long steps such as `docker load` and health waits.

Library code receives a `ProgressReporter` and only calls it, so it never
writes to a stream itself. `make_reporter` picks the reporter that fits the
output: a redrawn single-line bar on a terminal, or plain INFO log lines
everywhere else (CI logs, journald, a file), never both.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import Protocol, TextIO

logger = logging.getLogger(__name__)

# The logging reporter writes a line each time another tenth of the total is
# done, or after this many seconds without a line, so long steps show signs of
# life without flooding a log file.
LOG_STEPS_PER_TOTAL = 10
LOG_INTERVAL_SECONDS = 5.0
# The terminal bar is redrawn at most this often, because redrawing on every
# chunk would cost more than the copy it reports on.
REDRAW_INTERVAL_SECONDS = 0.1
BAR_WIDTH = 30

Clock = Callable[[], float]


class ProgressReporter(Protocol):
    """Callbacks that a long-running step calls to report how far it got."""

    def start(self, description: str, total: int | None, unit: str = "B") -> None:
        """Begin a step of `total` units, or of unknown size when `total` is None."""

    def advance(self, n: int) -> None:
        """Record that `n` more units are done."""

    def finish(self) -> None:
        """End the current step, or do nothing when no step is running."""


class NullProgress:
    """Reporter that discards every call."""

    def start(self, description: str, total: int | None, unit: str = "B") -> None:
        pass

    def advance(self, n: int) -> None:
        pass

    def finish(self) -> None:
        pass


def make_reporter(
    stream: TextIO | None = None, *, clock: Clock = time.monotonic
) -> ProgressReporter:
    """Create a bar reporter when `stream` is a terminal, a logging reporter otherwise.

    `stream` defaults to `sys.stderr` as it is at call time, so a stream that
    replaced it after import (a test's capture, a CLI runner) is honoured.
    """
    if stream is None:
        stream = sys.stderr
    if _is_terminal(stream):
        return TerminalProgress(stream, clock=clock)
    return LoggingProgress(clock=clock)


def format_amount(amount: float, unit: str) -> str:
    """Format `amount` of `unit` for people: binary prefixes for bytes, plain counts otherwise."""
    if unit != "B":
        return f"{amount:,.0f} {unit}"
    if abs(amount) < 1024:
        return f"{amount:.0f} B"
    value = amount / 1024
    for prefix in ("Ki", "Mi", "Gi"):
        if abs(value) < 1024:
            return f"{value:.1f} {prefix}B"
        value /= 1024
    return f"{value:.1f} TiB"


class _Step:
    """Counters of the step a reporter is currently showing."""

    def __init__(self, description: str, total: int | None, unit: str, started: float) -> None:
        self.description = description
        self.total = total
        self.unit = unit
        self.started = started
        self.done = 0

    def fraction(self) -> float | None:
        if not self.total:
            return None
        return min(self.done / self.total, 1.0)

    def rate(self, now: float) -> float:
        elapsed = now - self.started
        return self.done / elapsed if elapsed > 0 else 0.0


class LoggingProgress:
    """Reporter that logs plain INFO lines: at start, about every 10 % or 5 s, and at finish."""

    def __init__(self, *, log: logging.Logger = logger, clock: Clock = time.monotonic) -> None:
        self._log = log
        self._clock = clock
        self._step: _Step | None = None
        self._last_time = 0.0
        self._last_tenth = 0

    def start(self, description: str, total: int | None, unit: str = "B") -> None:
        now = self._clock()
        self._step = _Step(description, total, unit, now)
        self._last_time = now
        self._last_tenth = 0
        if total is None:
            self._log.info("%s: started", description)
        else:
            self._log.info("%s: started, %s to do", description, format_amount(total, unit))

    def advance(self, n: int) -> None:
        step = self._step
        if step is None:
            return
        step.done += n
        now = self._clock()
        # Integer arithmetic, so that ten equal chunks give exactly ten lines.
        tenth = step.done * LOG_STEPS_PER_TOTAL // step.total if step.total else 0
        due_by_share = tenth > self._last_tenth
        due_by_time = now - self._last_time >= LOG_INTERVAL_SECONDS
        if not (due_by_share or due_by_time):
            return

        self._last_time = now
        self._last_tenth = tenth
        self._log.info("%s: %s", step.description, _describe(step, now))

    def finish(self) -> None:
        step = self._step
        if step is None:
            return
        now = self._clock()
        self._log.info(
            "%s: finished, %s in %.1f s",
            step.description,
            format_amount(step.done, step.unit),
            now - step.started,
        )
        self._step = None


class TerminalProgress:
    """Reporter that redraws one line on a terminal: bar, amount done, rate and percent."""

    def __init__(self, stream: TextIO, *, clock: Clock = time.monotonic) -> None:
        self._stream = stream
        self._clock = clock
        self._step: _Step | None = None
        self._last_draw = 0.0
        self._last_width = 0

    def start(self, description: str, total: int | None, unit: str = "B") -> None:
        if self._step is not None:
            self.finish()
        now = self._clock()
        self._step = _Step(description, total, unit, now)
        self._draw(now)

    def advance(self, n: int) -> None:
        step = self._step
        if step is None:
            return
        step.done += n
        now = self._clock()
        if now - self._last_draw >= REDRAW_INTERVAL_SECONDS:
            self._draw(now)

    def finish(self) -> None:
        if self._step is None:
            return
        self._draw(self._clock())
        self._stream.write("\n")
        self._stream.flush()
        self._step = None
        self._last_width = 0

    def _draw(self, now: float) -> None:
        step = self._step
        if step is None:
            return
        line = f"{step.description} {_bar(step.fraction())} {_describe(step, now)}"
        # Pad with blanks so a shorter line fully covers the previous one.
        padding = " " * max(self._last_width - len(line), 0)
        self._stream.write(f"\r{line}{padding}")
        self._stream.flush()
        self._last_width = len(line)
        self._last_draw = now


def _bar(fraction: float | None) -> str:
    if fraction is None:
        return "[" + "?" * BAR_WIDTH + "]"
    filled = round(fraction * BAR_WIDTH)
    return "[" + "#" * filled + "-" * (BAR_WIDTH - filled) + "]"


def _describe(step: _Step, now: float) -> str:
    """Format the amount done, the total, the rate and the percentage of `step`.

    Only byte counts get a rate, because services or files per second are of
    no use to the reader.
    """
    if step.total is None:
        parts = [format_amount(step.done, step.unit)]
    elif step.unit == "B":
        parts = [f"{format_amount(step.done, 'B')} of {format_amount(step.total, 'B')}"]
    else:
        parts = [f"{step.done:,} of {format_amount(step.total, step.unit)}"]
    if step.unit == "B":
        parts.append(f"{format_amount(step.rate(now), step.unit)}/s")
    fraction = step.fraction()
    if fraction is not None:
        parts.append(f"{fraction * 100:.0f}%")
    return ", ".join(parts)


def _is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    if isatty is None:
        return False
    try:
        return bool(isatty())
    except ValueError:
        # A closed stream raises ValueError, and there is no terminal to draw on.
        return False
