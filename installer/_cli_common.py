"""Pieces both command-line programs share: logging setup and error reporting."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import click

from installer.errors import EXIT_FAILURE, AirlockError

F = TypeVar("F", bound=Callable[..., Any])

EXIT_CODES_HELP = """\b
Exit codes:
  0  success
  1  failure
  2  usage error
  3  bundle rejected (signature, digest, schema, unsafe member, downgrade)
  4  environment not ready (Docker engine, Compose, registry, disk space)"""


def configure_logging(verbose: int, quiet: bool) -> None:
    """Send log records to stderr: INFO by default, DEBUG with -v, WARNING with -q."""
    level = logging.INFO
    if quiet:
        level = logging.WARNING
    elif verbose:
        level = logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter("%(levelname)s %(message)s" if verbose else "%(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # The docker SDK and urllib3 log every HTTP request at DEBUG.
    for noisy in ("urllib3", "docker"):
        logging.getLogger(noisy).setLevel(max(level, logging.INFO))


def report_errors(func: F) -> F:
    """Turn an `AirlockError` into one line on stderr and its exit code."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except AirlockError as err:
            ctx = click.get_current_context(silent=True)
            verbose = bool(ctx and ctx.find_root().params.get("verbose"))
            if verbose:
                logging.getLogger(__name__).exception("failed")
            click.echo(f"error: {err.message}", err=True)
            if err.hint:
                click.echo(f"hint: {err.hint}", err=True)
            sys.exit(err.exit_code)
        except OSError as err:
            # A file or device failed outside any check airlock makes itself:
            # name the path, keep the traceback for -v.
            logging.getLogger(__name__).debug("failed", exc_info=True)
            where = f" {err.filename}" if err.filename else ""
            click.echo(f"error:{where}: {err.strerror or err}", err=True)
            sys.exit(EXIT_FAILURE)
        except KeyboardInterrupt:
            click.echo("error: interrupted", err=True)
            sys.exit(EXIT_FAILURE)

    return wrapper  # type: ignore[return-value]
