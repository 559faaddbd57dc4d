"""Tests for the progress reporters: log lines off a terminal, a redrawn bar on one."""

from __future__ import annotations

import io
import logging
import os
import select
from collections.abc import Iterator

import pytest

from installer.progress import (
    LoggingProgress,
    NullProgress,
    TerminalProgress,
    format_amount,
    make_reporter,
)


class FakeClock:
    """Clock that moves only when a test sets `now`."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture()
def pty_pair() -> Iterator[tuple[io.TextIOWrapper, int]]:
    """Open a pseudo-terminal and yield its writable end as a text stream, and the reading fd."""
    primary, secondary = os.openpty()
    stream = open(secondary, "w", encoding="utf-8", closefd=True)  # noqa: SIM115
    try:
        yield stream, primary
    finally:
        stream.close()
        os.close(primary)


def read_available(fd: int) -> str:
    chunks = []
    while select.select([fd], [], [], 0.2)[0]:
        data = os.read(fd, 65536)
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks).decode("utf-8")


def test_format_amount_uses_binary_prefixes() -> None:
    assert format_amount(0, "B") == "0 B"
    assert format_amount(1023, "B") == "1023 B"
    assert format_amount(1536, "B") == "1.5 KiB"
    assert format_amount(5 * 1024**3, "B") == "5.0 GiB"
    assert format_amount(3 * 1024**5, "B") == "3072.0 TiB"
    assert format_amount(3, "services") == "3 services"


def test_non_tty_reporter_logs_plain_lines(caplog: pytest.LogCaptureFixture) -> None:
    stream = io.StringIO()
    clock = FakeClock()
    reporter = make_reporter(stream, clock=clock)
    assert isinstance(reporter, LoggingProgress)

    with caplog.at_level(logging.INFO, logger="installer.progress"):
        reporter.start("Loading images", 1000 * 1024)
        for _ in range(100):
            clock.now += 0.01
            reporter.advance(10 * 1024)
        reporter.finish()

    assert stream.getvalue() == ""
    messages = [record.getMessage() for record in caplog.records]
    assert messages[0] == "Loading images: started, 1000.0 KiB to do"
    assert messages[-1] == "Loading images: finished, 1000.0 KiB in 1.0 s"
    # One line per 10 % between start and finish, and no line more.
    progress_lines = messages[1:-1]
    assert len(progress_lines) == 10
    assert progress_lines[0] == "Loading images: 100.0 KiB of 1000.0 KiB, 1000.0 KiB/s, 10%"
    assert progress_lines[-1].endswith(", 100%")
    assert all("\r" not in message for message in messages)


def test_logging_reporter_without_total_logs_by_time(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    reporter = LoggingProgress(clock=clock)

    with caplog.at_level(logging.INFO, logger="installer.progress"):
        reporter.start("Loading images", None)
        for _ in range(12):
            clock.now += 1.0
            reporter.advance(1024)
        reporter.finish()

    messages = [record.getMessage() for record in caplog.records]
    assert messages == [
        "Loading images: started",
        "Loading images: 5.0 KiB, 1.0 KiB/s",
        "Loading images: 10.0 KiB, 1.0 KiB/s",
        "Loading images: finished, 12.0 KiB in 12.0 s",
    ]


def test_logging_reporter_counts_other_units(
    caplog: pytest.LogCaptureFixture,
) -> None:
    reporter = LoggingProgress(clock=FakeClock())

    with caplog.at_level(logging.INFO, logger="installer.progress"):
        reporter.start("Waiting for services", 4, unit="services")
        reporter.advance(1)
        reporter.finish()

    messages = [record.getMessage() for record in caplog.records]
    assert messages[1] == "Waiting for services: 1 of 4 services, 25%"


def test_pty_reporter_draws_one_line_bar(
    pty_pair: tuple[io.TextIOWrapper, int], caplog: pytest.LogCaptureFixture
) -> None:
    stream, primary = pty_pair
    clock = FakeClock()
    reporter = make_reporter(stream, clock=clock)
    assert isinstance(reporter, TerminalProgress)

    with caplog.at_level(logging.DEBUG, logger="installer.progress"):
        reporter.start("Loading images", 2048)
        clock.now += 1.0
        reporter.advance(1024)
        clock.now += 1.0
        reporter.advance(1024)
        reporter.finish()

    output = read_available(primary)
    # The terminal driver turns the final "\n" into "\r\n".
    assert output.endswith("\r\n")
    frames = output.rstrip("\r\n").split("\r")[1:]
    assert len(frames) == 4
    assert frames[0].startswith("Loading images [" + "-" * 30 + "] 0 B of 2.0 KiB")
    assert frames[1].rstrip() == (
        "Loading images [" + "#" * 15 + "-" * 15 + "] 1.0 KiB of 2.0 KiB, 1.0 KiB/s, 50%"
    )
    assert frames[-1].rstrip() == (
        "Loading images [" + "#" * 30 + "] 2.0 KiB of 2.0 KiB, 1.0 KiB/s, 100%"
    )
    assert "\n" not in output.rstrip("\r\n")
    # Never both: the bar replaces the log lines.
    assert caplog.records == []


def test_terminal_reporter_limits_redraws() -> None:
    stream = io.StringIO()
    clock = FakeClock()
    reporter = TerminalProgress(stream, clock=clock)

    reporter.start("Copying", None)
    for _ in range(1000):
        clock.now += 0.001
        reporter.advance(1)
    reporter.finish()

    # One frame at start, one per 0.1 s of the 1 s copy, one at finish.
    frames = stream.getvalue().split("\r")[1:]
    assert 10 <= len(frames) <= 13
    assert frames[-1].startswith("Copying [" + "?" * 30 + "] 1000 B, 1000 B/s")


def test_terminal_reporter_pads_shorter_line() -> None:
    stream = io.StringIO()
    clock = FakeClock()
    reporter = TerminalProgress(stream, clock=clock)

    reporter.start("Copying", None)
    clock.now += 1.0
    reporter.advance(1000)
    clock.now += 99.0
    reporter.advance(0)

    frames = stream.getvalue().split("\r")[1:]
    assert frames[-2] == "Copying [" + "?" * 30 + "] 1000 B, 1000 B/s"
    # The rate shrank by two characters, so two blanks cover the old ones.
    assert frames[-1] == "Copying [" + "?" * 30 + "] 1000 B, 10 B/s  "


def test_null_progress_accepts_every_call() -> None:
    reporter = NullProgress()
    reporter.start("Anything", 10)
    reporter.advance(5)
    reporter.finish()
    reporter.finish()
