"""Release policy: the signer, expiry, name, sequence and replay checks on a verified bundle.

A bundle that passed the archive checks is signed and intact; it may still
be old. Three records stop an old bundle from coming back:

- the manifest's `expires` time, checked against the clock;
- the target's state (`TARGET/.airlock/state.json`): its bundle name, the
  highest sequence installed there and the current release's digest;
- the host record (default `/etc/airlock/installed.json`, next to the
  trust store): the highest sequence installed per bundle name on this host,
  so a replayed older bundle is caught in a fresh target folder too.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from installer import audit
from installer.archive import BundleFacts, VerifiedBundle, facts_of, verify_file
from installer.errors import AirlockError, BundleRejectedError, DowngradeError, InstallError
from installer.progress import ProgressReporter
from installer.signing import TrustedKey, check_signer_scope
from installer.state import InstallState, write_atomic
from installer.trust import (
    DEFAULT_TRUST_STORE,
    TRUST_UPDATE_PATH,
    TrustStore,
    TrustUpdate,
    TrustUpdateError,
    parse_trust_update,
)

logger = logging.getLogger(__name__)

HOST_RECORD_ENV = "AIRLOCK_HOST_RECORD"
HOST_RECORD_FILE = "installed.json"
DEFAULT_HOST_RECORD = DEFAULT_TRUST_STORE.parent / HOST_RECORD_FILE
HOST_RECORD_VERSION = 1
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


class ExpiredBundleError(BundleRejectedError):
    """The bundle's signed `expires` time has passed."""


def _format_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime(_TIME_FORMAT)


def _parse_time(text: str) -> datetime:
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    if parsed.tzinfo is None:
        # RFC 3339 requires an offset; the schema's format check enforces
        # it, and a bare time is read as UTC rather than local time.
        parsed = parsed.replace(tzinfo=UTC)
    return parsed


def check_expiry(
    verified: VerifiedBundle, *, now: datetime | None = None, ignore_expiry: bool = False
) -> None:
    """Reject a bundle whose `expires` time has passed, unless `ignore_expiry` is set."""
    manifest = verified.manifest
    if manifest.expires is None:
        return
    now = now or datetime.now(UTC)
    try:
        expires = _parse_time(manifest.expires)
    except ValueError as err:
        raise ExpiredBundleError(
            f"bundle {manifest.name} {manifest.version} has an unreadable expiry time "
            f"{manifest.expires!r}",
            hint="ask the publisher for a rebuilt bundle",
        ) from err
    if expires > now:
        return
    if ignore_expiry:
        logger.warning(
            "bundle %s %s expired at %s; using it because --ignore-expiry was given",
            manifest.name,
            manifest.version,
            _format_time(expires),
        )
        return
    raise ExpiredBundleError(
        f"bundle {manifest.name} {manifest.version} expired at {_format_time(expires)}; "
        f"it is now {_format_time(now)}",
        hint=(
            "ask the publisher for a current bundle; check this host's clock; "
            "or pass --ignore-expiry to use it anyway"
        ),
    )


def check_signers(verified: VerifiedBundle, *, threshold: int = 1) -> None:
    """Require `threshold` distinct trusted keys allowed to sign this bundle's name."""
    check_signer_scope(verified.signers, verified.manifest.name, threshold=threshold)


# The host record.


@dataclass(frozen=True)
class HostEntry:
    """The highest release of one bundle name installed on this host."""

    sequence: int
    version: str
    manifest_digest: str
    installed_at: str
    target: str


@dataclass
class HostRecord:
    """Contents of the host record file; `bundles` maps a bundle name to its entry."""

    path: Path
    bundles: dict[str, HostEntry] = field(default_factory=dict)

    def highest(self, name: str) -> HostEntry | None:
        return self.bundles.get(name)


def resolve_host_record_path(
    option: Path | None, environ: Mapping[str, str], trust_store: Path | None = None
) -> Path:
    """Return the host record file: the option, else $AIRLOCK_HOST_RECORD, else next to the store."""
    if option is not None:
        return option
    from_env = environ.get(HOST_RECORD_ENV)
    if from_env:
        return Path(from_env)
    if trust_store is not None:
        return trust_store.parent / HOST_RECORD_FILE
    return DEFAULT_HOST_RECORD


def load_host_record(path: Path) -> HostRecord:
    """Read the host record; a missing file is an empty record."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return HostRecord(path)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InstallError(
            f"host record {path} is unreadable: {err}",
            hint="restore it from a backup; it guards against replayed older bundles",
        ) from err
    try:
        if data.get("version") != HOST_RECORD_VERSION:
            raise ValueError(f"version {data.get('version')!r}, expected {HOST_RECORD_VERSION}")
        bundles = {
            str(name): HostEntry(
                sequence=int(entry["sequence"]),
                version=str(entry["version"]),
                manifest_digest=str(entry["manifest_digest"]),
                installed_at=str(entry["installed_at"]),
                target=str(entry["target"]),
            )
            for name, entry in data["bundles"].items()
        }
    except (AttributeError, KeyError, TypeError, ValueError) as err:
        raise InstallError(
            f"host record {path} is invalid: {err}",
            hint="restore it from a backup; it guards against replayed older bundles",
        ) from err
    return HostRecord(path, bundles)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def record_installed(
    path: Path, facts: BundleFacts, target: Path, *, now: datetime | None = None
) -> None:
    """Raise the host record's sequence for this bundle name when `facts` is newer.

    A rollback to an older release (with `--allow-downgrade`) leaves the
    highest sequence where it is, so the older release is the exception the
    operator chose, not the new floor.
    """
    if facts.name is None or facts.sequence is None or facts.manifest_digest is None:
        raise ValueError(
            "record_installed needs the name, sequence and digest of a verified bundle"
        )
    with _locked(path):
        record = load_host_record(path)
        current = record.highest(facts.name)
        if current is not None and current.sequence >= facts.sequence:
            return
        record.bundles[facts.name] = HostEntry(
            sequence=facts.sequence,
            version=facts.version or "",
            manifest_digest=facts.manifest_digest,
            installed_at=_format_time(now or datetime.now(UTC)),
            target=str(target),
        )
        data: dict[str, Any] = {
            "version": HOST_RECORD_VERSION,
            "bundles": {name: vars(entry) for name, entry in sorted(record.bundles.items())},
        }
        write_atomic(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode("utf-8"))
    logger.debug("host record %s: %s at sequence %d", path, facts.name, facts.sequence)


def facts_of_verified(verified: VerifiedBundle) -> BundleFacts:
    """Return the audit facts of a bundle that passed verification."""
    manifest = verified.manifest
    return BundleFacts(
        manifest_digest=verified.manifest_digest,
        signers=verified.signer_ids,
        name=manifest.name,
        version=manifest.version,
        sequence=manifest.sequence,
    )


def _check_host_record(record: HostRecord, verified: VerifiedBundle, allow: bool) -> None:
    manifest = verified.manifest
    entry = record.highest(manifest.name)
    if entry is None or manifest.sequence >= entry.sequence:
        return
    if allow:
        logger.warning(
            "bundle %s sequence %d is older than sequence %d installed on this host; "
            "installing because --allow-downgrade was given",
            manifest.name,
            manifest.sequence,
            entry.sequence,
        )
        return
    raise DowngradeError(
        f"bundle sequence {manifest.sequence} ({manifest.version}) < {entry.sequence} "
        f"({entry.version}) installed on this host in {entry.target}; downgrade not allowed",
        hint=(
            f"this is an older bundle, perhaps a stale copy; use a newer one, or pass "
            f"--allow-downgrade to install it on purpose (recorded in {record.path})"
        ),
    )


# Trust updates carried in a bundle.


def check_trust_update(
    verified: VerifiedBundle, trust_store: Path | None, *, threshold: int = 1
) -> TrustUpdate | None:
    """Return the bundle's checked trust update, or None when it carries none.

    Raises `TrustUpdateError` when the update is invalid, when no trust
    store is in use, or when fewer than `threshold` of the bundle's signers
    are keys of that store allowed to sign its name. Its subclasses reject
    an update that adds a key the store revoked, or that adds, changes or
    revokes a key beyond the bundle names its signers may sign. It changes
    nothing on the host.
    """
    if verified.manifest.member(TRUST_UPDATE_PATH) is None:
        return None
    if verified.staging_dir is None:
        raise ValueError("a trust update is read from a staged bundle")
    update = parse_trust_update(verified.staged(TRUST_UPDATE_PATH).read_bytes())
    if trust_store is None:
        raise TrustUpdateError(
            "bundle carries a trust update, but this run uses no trust store",
            hint="install it with the trust store (no --key or --trust) so the update can be applied",
        )
    TrustStore(trust_store).authorize_update(
        update, verified.signer_ids, bundle_name=verified.manifest.name, threshold=threshold
    )
    return update


def _apply_trust_update(
    options: InstallRecordOptions, facts: BundleFacts, environ: Mapping[str, str] | None
) -> None:
    update, store_path = facts.trust_update, options.trust_store
    if update is None or store_path is None:
        return
    if facts.name is None:
        raise ValueError("a trust update is applied only after check_release read the bundle name")
    error: BaseException | None = None
    changes = []
    try:
        changes = TrustStore(store_path).apply_update(
            update, facts.signers, bundle_name=facts.name, threshold=options.threshold
        )
    except (OSError, AirlockError) as err:
        logger.error("could not apply the bundle's trust update to %s: %s", store_path, err)
        error = err
    if options.audit_log is None:
        return
    flags = {
        "trust_store": str(store_path),
        "changes": [
            {"action": c.action, "key_id": c.entry.key_id, "name": c.entry.name} for c in changes
        ],
    }
    record = audit.facts_record(
        "trust-update", facts, error=error, flags=flags, bundle_file=options.bundle
    )
    try:
        audit.append(options.audit_log, record, environ=environ)
    except AirlockError as err:
        logger.error("this trust update is not in the audit log: %s", err)


# The seam install() calls.


def check_release(
    state: InstallState | None,
    verified: VerifiedBundle,
    allow: bool,
    *,
    threshold: int = 1,
    ignore_expiry: bool = False,
    host_record: Path | None = None,
    trust_store: Path | None = None,
    facts: BundleFacts | None = None,
    now: datetime | None = None,
) -> bool:
    """Reject a bundle that may not replace what is installed; return True when it is installed.

    1. At least `threshold` trusted keys allowed to sign this name signed it.
    2. It has not expired (`ignore_expiry` overrides).
    3. It is not older than the highest release of its name installed on
       this host, as the host record file `host_record` stores it.
    4. A trust update it carries is valid, signed by `threshold` keys of
       the trust store `trust_store` allowed to sign this name, and adds
       or revokes only keys within the bundle names those keys may sign.
    5. The target contains the same bundle name, no higher sequence, and no
       other bundle under this sequence.

    `allow` (`--allow-downgrade`) lets 3 and 5 pass for an older release.
    When `facts` is given it is filled in with the bundle's name, version,
    sequence, digest, signers and trust update, for what the install
    records and applies when it succeeds.
    """
    if facts is not None:
        known = facts_of_verified(verified)
        for item in fields(BundleFacts):
            setattr(facts, item.name, getattr(known, item.name))
    check_signers(verified, threshold=threshold)
    check_expiry(verified, now=now, ignore_expiry=ignore_expiry)
    if host_record is not None:
        _check_host_record(load_host_record(host_record), verified, allow)
    update = check_trust_update(verified, trust_store, threshold=threshold)
    if facts is not None:
        facts.trust_update = update

    manifest = verified.manifest
    if state is None:
        return False
    if state.name != manifest.name:
        raise DowngradeError(
            f"target holds bundle {state.name}, this bundle is {manifest.name}",
            hint="install it into its own target folder",
        )
    current = state.current
    if manifest.sequence < state.highest_sequence and not allow:
        raise DowngradeError(
            f"bundle sequence {manifest.sequence} ({manifest.version}) < installed "
            f"{state.highest_sequence}; downgrade not allowed",
            hint="use a newer bundle, or pass --allow-downgrade to roll back on purpose",
        )
    if (
        manifest.sequence == current.sequence
        and verified.manifest_digest != current.manifest_digest
    ):
        if not allow:
            raise DowngradeError(
                f"bundle sequence {manifest.sequence} is installed with manifest "
                f"{current.manifest_digest}, this bundle has {verified.manifest_digest}",
                hint="two different bundles share a sequence number; ask the publisher which is genuine",
            )
    return verified.manifest_digest == current.manifest_digest


# Recording an install.


class InstallRecordOptions(Protocol):
    """The `InstallOptions` fields `release_checks` and `record_install` read."""

    @property
    def bundle(self) -> Path: ...
    @property
    def allow_downgrade(self) -> bool: ...
    @property
    def ignore_expiry(self) -> bool: ...
    @property
    def threshold(self) -> int: ...
    @property
    def audit_log(self) -> Path | None: ...
    @property
    def host_record(self) -> Path | None: ...
    @property
    def trust_store(self) -> Path | None: ...
    @property
    def audit_facts(self) -> BundleFacts: ...


def release_checks(options: InstallRecordOptions) -> dict[str, Any]:
    """Return the `check_release` keyword arguments an install's options set."""
    return {
        "threshold": options.threshold,
        "ignore_expiry": options.ignore_expiry,
        "host_record": options.host_record,
        "trust_store": options.trust_store,
        "facts": options.audit_facts,
    }


def record_install(
    options: InstallRecordOptions,
    target: Path,
    *,
    error: BaseException | None = None,
    environ: Mapping[str, str] | None = None,
) -> None:
    """Record a finished install: the host record and trust update on success, the audit log always.

    Called after the target changed (or failed to), so a failure to write
    any of them is logged as an error and not raised: raising would tell
    the operator the install failed when it did not.
    """
    facts = options.audit_facts
    if error is not None and (rejected := facts_of(error)) is not None:
        facts = rejected
    if error is None and options.host_record is not None:
        try:
            record_installed(options.host_record, facts, target)
        except (OSError, AirlockError) as err:
            logger.error("could not update host record %s: %s", options.host_record, err)
    if error is None:
        _apply_trust_update(options, facts, environ)
    if options.audit_log is None:
        return
    flags = {
        "allow_downgrade": options.allow_downgrade,
        "ignore_expiry": options.ignore_expiry,
        "threshold": options.threshold,
    }
    record = audit.facts_record(
        "install", facts, error=error, flags=flags, target=target, bundle_file=options.bundle
    )
    try:
        audit.append(options.audit_log, record, environ=environ)
    except AirlockError as err:
        logger.error("this install is not in the audit log: %s", err)


# `airlock-install verify`.


@dataclass(frozen=True)
class VerifyOptions:
    """The options of `airlock-install verify`."""

    bundle: Path
    trusted: tuple[TrustedKey, ...]
    threshold: int = 1
    ignore_expiry: bool = False
    audit_log: Path | None = None


def verify_bundle(
    options: VerifyOptions,
    *,
    progress: ProgressReporter | None = None,
    now: datetime | None = None,
    environ: Mapping[str, str] | None = None,
) -> VerifiedBundle:
    """Verify a bundle file, check its signers and expiry, and record the outcome.

    Writes nothing but one audit log line (when `audit_log` is set): a
    rejected, failed or accepted verify is recorded alike.
    """
    flags = {"threshold": options.threshold, "ignore_expiry": options.ignore_expiry}
    if options.audit_log is not None:
        audit.check_writable(options.audit_log)
    verified: VerifiedBundle | None = None
    try:
        verified = verify_file(
            options.bundle, options.trusted, progress=progress, threshold=options.threshold
        )
        check_expiry(verified, now=now, ignore_expiry=options.ignore_expiry)
    except Exception as err:
        if options.audit_log is not None:
            record = audit.bundle_record(
                "verify", verified=verified, error=err, flags=flags, bundle_file=options.bundle
            )
            audit.append(options.audit_log, record, environ=environ)
        raise
    if options.audit_log is not None:
        record = audit.bundle_record(
            "verify", verified=verified, flags=flags, bundle_file=options.bundle
        )
        audit.append(options.audit_log, record, environ=environ)
    return verified


def signer_names(keys: Iterable[TrustedKey]) -> str:
    """Return `name (first 16 hex digits of key id)` for each key, comma-separated."""
    return ", ".join(f"{key.name} ({key.key_id[:16]})" for key in keys)
