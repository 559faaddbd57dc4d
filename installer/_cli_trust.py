"""`airlock-install trust …` and the trust options `verify`, `install` and `plan` share."""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click

from installer import audit, policy
from installer._cli_common import EXIT_CODES_HELP, report_errors
from installer.signing import TrustedKey
from installer.trust import (
    TRUST_STORE_ENV,
    TrustChange,
    TrustStore,
    load_keys,
    parse_bundle_names,
    resolve_store_path,
)

F = TypeVar("F", bound=Callable[..., Any])

TRUST_STORE_HELP = (
    f"Trust store folder (default: ${TRUST_STORE_ENV}, else /etc/airlock/trust). "
    "Used when neither --key nor --trust is given."
)


@dataclass(frozen=True)
class VerificationChecks:
    """The trust, expiry and audit options of one run, resolved against the environment."""

    trust_store: Path
    threshold: int
    ignore_expiry: bool
    audit_log: Path

    @classmethod
    def resolve(
        cls,
        trust_store: Path | None,
        threshold: int,
        ignore_expiry: bool,
        audit_log: Path | None,
        environ: Mapping[str, str],
    ) -> VerificationChecks:
        return cls(
            trust_store=resolve_store_path(trust_store, environ),
            threshold=threshold,
            ignore_expiry=ignore_expiry,
            audit_log=audit.resolve_log_path(audit_log, environ),
        )

    def trusted(self, keys: tuple[Path, ...], trust: tuple[Path, ...]) -> tuple[TrustedKey, ...]:
        """Return the explicit `--key`/`--trust` keys, else the trust store's."""
        return tuple(
            load_keys(key_files=keys, trust_dirs=trust, store=TrustStore(self.trust_store))
        )

    def host_record(self, environ: Mapping[str, str]) -> Path:
        return policy.resolve_host_record_path(None, environ, self.trust_store)

    def install_fields(
        self, keys: tuple[Path, ...], trust: tuple[Path, ...], *, audited: bool = True
    ) -> dict[str, Any]:
        """Return the `InstallOptions` fields these options set."""
        if audited:
            audit.check_writable(self.audit_log)
        return {
            "trusted": self.trusted(keys, trust),
            "threshold": self.threshold,
            "ignore_expiry": self.ignore_expiry,
            "audit_log": self.audit_log if audited else None,
            "host_record": self.host_record(os.environ),
            "trust_store": self.trust_store,
        }


def verification_options(func: F) -> F:
    """Add --trust-store, --threshold, --ignore-expiry and --audit-log, passed as `checks`."""

    @click.option(
        "--trust-store",
        type=click.Path(path_type=Path, file_okay=False),
        help=TRUST_STORE_HELP,
    )
    @click.option(
        "--threshold",
        type=click.IntRange(min=1),
        default=1,
        show_default=True,
        help="Distinct trusted keys that must have signed the bundle.",
    )
    @click.option(
        "--ignore-expiry",
        is_flag=True,
        help="Accept a bundle past its signed expiry time (recorded in the audit log).",
    )
    @click.option(
        "--audit-log",
        type=click.Path(path_type=Path, dir_okay=False),
        help=f"Audit log file (default: ${audit.AUDIT_LOG_ENV}, else {audit.DEFAULT_AUDIT_LOG}).",
    )
    @functools.wraps(func)
    def wrapper(
        *args: Any,
        trust_store: Path | None,
        threshold: int,
        ignore_expiry: bool,
        audit_log: Path | None,
        **kwargs: Any,
    ) -> Any:
        kwargs["checks"] = VerificationChecks.resolve(
            trust_store, threshold, ignore_expiry, audit_log, os.environ
        )
        return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


# `airlock-install trust …`


def _store(trust_store: Path | None) -> TrustStore:
    return TrustStore(resolve_store_path(trust_store, os.environ))


def _audit_change(audit_log: Path | None, change: TrustChange, action: str) -> None:
    entry = change.entry
    flags: dict[str, Any] = {"bundles": list(entry.bundles), "change": change.action}
    if change.previous is not None and change.previous.revoked_at is not None:
        flags["previously_revoked_at"] = change.previous.revoked_at
    record = audit.AuditRecord(
        action=action,
        result=audit.RESULT_OK,
        flags=flags,
        key_id=entry.key_id,
        key_name=entry.name,
    )
    audit.append(audit.resolve_log_path(audit_log, os.environ), record)


trust_store_option = click.option(
    "--trust-store", type=click.Path(path_type=Path, file_okay=False), help=TRUST_STORE_HELP
)
audit_log_option = click.option(
    "--audit-log",
    type=click.Path(path_type=Path, dir_okay=False),
    help=f"Audit log file (default: ${audit.AUDIT_LOG_ENV}, else {audit.DEFAULT_AUDIT_LOG}).",
)


@click.group(epilog=EXIT_CODES_HELP)
def trust() -> None:
    """Manage the public keys this host accepts bundles from."""


@trust.command("add", epilog=EXIT_CODES_HELP)
@click.argument("key_file", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--name", help="Name for the key in messages (default: the file name without .pub).")
@click.option(
    "--bundles",
    metavar="NAME,...",
    help="Bundle names this key may sign, comma-separated (default: any).",
)
@trust_store_option
@audit_log_option
@report_errors
def trust_add(
    key_file: Path,
    name: str | None,
    bundles: str | None,
    trust_store: Path | None,
    audit_log: Path | None,
) -> None:
    """Trust the Ed25519 public key in KEY_FILE (PEM, as airlock-bundle keygen writes)."""
    store = _store(trust_store)
    audit.check_writable(audit.resolve_log_path(audit_log, os.environ))
    change = store.add(key_file, name=name, bundles=parse_bundle_names(bundles))
    entry = change.entry
    scope = ", ".join(entry.bundles) if entry.bundles else "any bundle"
    if change.action == "unchanged":
        click.echo(f"key {entry.name} ({entry.key_id}) is already trusted for {scope}")
        return
    _audit_change(audit_log, change, "trust-add")
    click.echo(f"{change.action} key {entry.name} ({entry.key_id}) for {scope} in {store.folder}")


@trust.command("list", epilog=EXIT_CODES_HELP)
@trust_store_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@report_errors
def trust_list(trust_store: Path | None, as_json: bool) -> None:
    """List the trusted keys, then the revoked ones."""
    store = _store(trust_store)
    entries = store.entries()
    if as_json:
        data = [
            {**entry.to_json(), "status": "revoked" if entry.revoked_at else "trusted"}
            for entry in entries
        ]
        click.echo(json.dumps(data, indent=2, sort_keys=True))
        return
    if not entries:
        click.echo(f"no keys in {store.folder}")
        return
    for entry in entries:
        scope = ",".join(entry.bundles) if entry.bundles else "any"
        status = f"revoked {entry.revoked_at}" if entry.revoked_at else f"added {entry.added_at}"
        click.echo(f"{entry.key_id}  {entry.name}  bundles: {scope}  {status}")


@trust.command("remove", epilog=EXIT_CODES_HELP)
@click.argument("key")
@trust_store_option
@audit_log_option
@report_errors
def trust_remove(key: str, trust_store: Path | None, audit_log: Path | None) -> None:
    """Revoke KEY (a key id, 8 or more leading hex digits of one, or a name).

    Bundles signed only by a revoked key are rejected from then on.
    """
    store = _store(trust_store)
    audit.check_writable(audit.resolve_log_path(audit_log, os.environ))
    change = store.remove(key)
    _audit_change(audit_log, change, "trust-remove")
    entry = change.entry
    click.echo(f"revoked key {entry.name} ({entry.key_id}) at {entry.revoked_at}")
