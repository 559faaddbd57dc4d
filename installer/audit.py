"""The audit log: one JSON line per verify, install, rollback and trust change.

The file is only ever appended to: it is opened with `O_APPEND` (created
with mode 0600, never truncated or rewritten), and each record is one
`write()` of one line, so concurrent runs do not interleave within a line.
A record contains names, versions, digests, key ids, flags and the error's
class and message. It never holds `.env` values, because airlock's error
messages name keys and files, never their values.

Default location `/var/log/airlock/audit.log`; `--audit-log FILE` or
$AIRLOCK_AUDIT_LOG override it.
"""

from __future__ import annotations

import json
import logging
import os
import pwd
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from installer.archive import BundleFacts, VerifiedBundle, facts_of
from installer.errors import AirlockError, BundleRejectedError, EnvironmentNotReadyError

logger = logging.getLogger(__name__)

DEFAULT_AUDIT_LOG = Path("/var/log/airlock/audit.log")
AUDIT_LOG_ENV = "AIRLOCK_AUDIT_LOG"
RESULT_OK = "ok"
RESULT_REJECTED = "rejected"
RESULT_FAILED = "failed"


@dataclass(frozen=True)
class AuditRecord:
    """One line of the audit log."""

    action: str
    result: str
    bundle: str | None = None
    version: str | None = None
    sequence: int | None = None
    manifest_digest: str | None = None
    signers: tuple[str, ...] = ()
    error_class: str | None = None
    error_message: str | None = None
    flags: Mapping[str, Any] = field(default_factory=dict)
    target: str | None = None
    bundle_file: str | None = None
    key_id: str | None = None
    key_name: str | None = None

    def to_json(self, *, time: datetime, operator: str, sudo_user: str | None) -> dict[str, Any]:
        data: dict[str, Any] = {
            "time": time.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "action": self.action,
            "result": self.result,
            "bundle": self.bundle,
            "version": self.version,
            "sequence": self.sequence,
            "manifest_digest": self.manifest_digest,
            "signers": list(self.signers),
            "error": None
            if self.error_class is None
            else {"class": self.error_class, "message": self.error_message},
            "flags": dict(self.flags),
            "operator": operator,
            "host": socket.gethostname(),
            "pid": os.getpid(),
        }
        if sudo_user:
            data["sudo_user"] = sudo_user
        for key in ("target", "bundle_file", "key_id", "key_name"):
            value = getattr(self, key)
            if value is not None:
                data[key] = value
        return data


def resolve_log_path(option: Path | None, environ: Mapping[str, str]) -> Path:
    """Return the audit log file: `--audit-log`, else $AIRLOCK_AUDIT_LOG, else the default."""
    if option is not None:
        return option
    from_env = environ.get(AUDIT_LOG_ENV)
    return Path(from_env) if from_env else DEFAULT_AUDIT_LOG


def _operator() -> str:
    uid = os.getuid()
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _open(path: Path) -> int:
    try:
        path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
        return os.open(
            path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600
        )
    except OSError as err:
        raise EnvironmentNotReadyError(
            f"cannot open audit log {path}: {err.strerror}",
            hint="run as root, or pass --audit-log FILE (or set AIRLOCK_AUDIT_LOG) to a writable file",
        ) from err


def check_writable(path: Path) -> None:
    """Fail early, before any work, when the audit log cannot be appended to."""
    os.close(_open(path))


def append(
    path: Path,
    record: AuditRecord,
    *,
    environ: Mapping[str, str] | None = None,
    now: datetime | None = None,
) -> None:
    """Append one record to the audit log at `path` and flush it to disk."""
    environ = os.environ if environ is None else environ
    data = record.to_json(
        time=now or datetime.now(UTC), operator=_operator(), sudo_user=environ.get("SUDO_USER")
    )
    line = (json.dumps(data, sort_keys=True, ensure_ascii=True) + "\n").encode("ascii")
    fd = _open(path)
    try:
        written = os.write(fd, line)
        if written != len(line):
            raise OSError(f"short write: {written} of {len(line)} bytes")
        os.fsync(fd)
    except OSError as err:
        raise EnvironmentNotReadyError(
            f"cannot append to audit log {path}: {err.strerror or err}",
            hint="free disk space, or pass --audit-log FILE to a writable file",
        ) from err
    finally:
        os.close(fd)
    logger.debug("audit: %s %s recorded in %s", record.action, record.result, path)


def result_of(error: BaseException | None) -> str:
    """Return ok, rejected (the bundle failed a check) or failed (anything else)."""
    if error is None:
        return RESULT_OK
    if isinstance(error, BundleRejectedError):
        return RESULT_REJECTED
    return RESULT_FAILED


def bundle_record(
    action: str,
    *,
    verified: VerifiedBundle | None = None,
    error: BaseException | None = None,
    flags: Mapping[str, Any] | None = None,
    target: Path | None = None,
    bundle_file: Path | None = None,
) -> AuditRecord:
    """Build the record of a verify from its outcome.

    The bundle fields come from `verified` when the bundle passed, else
    from what the reader learnt before it rejected the bundle.
    """
    facts = BundleFacts()
    if verified is not None:
        manifest = verified.manifest
        facts = BundleFacts(
            verified.manifest_digest,
            verified.signer_ids,
            manifest.name,
            manifest.version,
            manifest.sequence,
        )
    elif error is not None:
        facts = facts_of(error) or facts
    return facts_record(
        action, facts, error=error, flags=flags, target=target, bundle_file=bundle_file
    )


def facts_record(
    action: str,
    facts: BundleFacts,
    *,
    error: BaseException | None = None,
    flags: Mapping[str, Any] | None = None,
    target: Path | None = None,
    bundle_file: Path | None = None,
) -> AuditRecord:
    """Build the record of a verify, install or rollback from what is known of the bundle."""
    error_class = error_message = None
    if error is not None:
        error_class = type(error).__name__
        error_message = error.message if isinstance(error, AirlockError) else str(error)
    return AuditRecord(
        action=action,
        result=result_of(error),
        bundle=facts.name,
        version=facts.version,
        sequence=facts.sequence,
        manifest_digest=facts.manifest_digest,
        signers=tuple(facts.signers),
        error_class=error_class,
        error_message=error_message,
        flags=dict(flags or {}),
        target=None if target is None else str(target),
        bundle_file=None if bundle_file is None else str(bundle_file.absolute()),
    )
