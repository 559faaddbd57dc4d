"""`airlock-install`: verify a bundle and install it inside the enclave."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import click

from installer import __version__, engine
from installer._cli_common import EXIT_CODES_HELP, configure_logging, report_errors
from installer._cli_trust import VerificationChecks, trust, verification_options
from installer.compose_cli import service_status
from installer.errors import NotInstalledError, UsageError
from installer.inspect import describe_bundle, format_description
from installer.install import (
    DEFAULT_HEALTH_TIMEOUT,
    InstallOptions,
    InstallResult,
    Interrupts,
    RollbackOptions,
    install,
    plan_install,
)
from installer.install import rollback as rollback_release
from installer.inventory import take_inventory
from installer.journal import load_journal
from installer.plan import format_plan
from installer.policy import VerifyOptions, signer_names, verify_bundle
from installer.preflight import doctor as run_doctor
from installer.preflight import parse_size, raise_for_errors
from installer.progress import format_amount, make_reporter
from installer.pull_policy import PullPolicyMode
from installer.state import load_state

KEY_HELP = "Trusted public key (PEM) of the bundle's publisher. Repeatable."
TRUST_HELP = "Folder of trusted public keys (*.pub). Repeatable."


@click.group(epilog=EXIT_CODES_HELP)
@click.version_option(__version__, prog_name="airlock-install")
@click.option("-v", "--verbose", count=True, help="Log each step and show tracebacks.")
@click.option("-q", "--quiet", is_flag=True, help="Log warnings and errors only.")
def main(verbose: int, quiet: bool) -> None:
    """Verify an airlock bundle and install its Compose application."""
    configure_logging(verbose, quiet)


main.add_command(trust)


key_option = click.option(
    "--key", "keys", type=click.Path(path_type=Path), multiple=True, help=KEY_HELP
)
trust_option = click.option(
    "--trust", type=click.Path(path_type=Path), multiple=True, help=TRUST_HELP
)
bundle_argument = click.argument("bundle", type=click.Path(path_type=Path, dir_okay=False))


@main.command(epilog=EXIT_CODES_HELP)
@bundle_argument
@key_option
@trust_option
@click.option(
    "--parts-only",
    is_flag=True,
    help="For a split bundle: check only each part's size and sha256 against the signed parts index.",
)
@verification_options
@report_errors
def verify(
    bundle: Path,
    keys: tuple[Path, ...],
    trust: tuple[Path, ...],
    parts_only: bool,
    checks: VerificationChecks,
) -> None:
    """Check BUNDLE's signature and every member's digest, changing nothing.

    Without --key or --trust, the keys in the trust store count. Each run
    appends one line to the audit log.
    """
    if parts_only:
        from installer.parts import check_parts

        report = check_parts(bundle, checks.trusted(keys, trust))
        signers = ", ".join(f"{key.name} ({key.key_id[:16]})" for key in report.signers)
        click.echo(
            f"OK {report.index.bundle}: {report.checked} parts verified, signed by {signers}"
        )
        return
    options = VerifyOptions(
        bundle=bundle,
        trusted=checks.trusted(keys, trust),
        threshold=checks.threshold,
        ignore_expiry=checks.ignore_expiry,
        audit_log=checks.audit_log,
    )
    verified = verify_bundle(options, progress=make_reporter())
    manifest = verified.manifest
    signers = signer_names(verified.signers)
    click.echo(
        f"OK {manifest.name} {manifest.version} (sequence {manifest.sequence}): "
        f"{len(manifest.members)} members verified, signed by {signers}"
    )


@main.command(epilog=EXIT_CODES_HELP)
@bundle_argument
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@report_errors
def inspect(bundle: Path, as_json: bool) -> None:
    """Show what BUNDLE holds, without verifying or extracting it."""
    description = describe_bundle(bundle)
    if as_json:
        click.echo(json.dumps(description, indent=2, sort_keys=True))
    else:
        click.echo(format_description(description))


def _print_install(result: InstallResult) -> None:
    if result.recovered:
        click.echo(f"note: {result.recovered}")
    if result.dry_run:
        assert result.plan is not None
        click.echo(format_plan(result.plan))
        click.echo("dry run: nothing changed")
        raise_for_errors(result.plan.findings)
        return
    manifest = result.manifest
    if result.unchanged:
        click.echo(f"{manifest.name} {manifest.version} is already installed; nothing changed")
    else:
        click.echo(f"installed {manifest.name} {manifest.version} (sequence {manifest.sequence})")
    click.echo(f"  signed by: {', '.join(result.signers)}")
    env = result.env
    for label, keys in (
        ("added", env.added),
        ("changed", env.changed),
        ("removed", env.removed),
        ("generated", env.generated),
        ("kept", env.kept),
    ):
        if keys:
            click.echo(f"  .env {label}: {', '.join(keys)}")
    if env.normalised:
        click.echo("  .env rewritten with LF line endings and no byte-order mark")
    if result.images_loaded:
        click.echo(f"  images loaded: {', '.join(result.images_loaded)}")
    plan = result.plan
    if plan is not None and plan.services_removed:
        click.echo(f"  services removed: {', '.join(plan.services_removed)}")
    for status in result.services:
        health = f", {status.health}" if status.health else ""
        click.echo(f"  {status.service}: {status.state}{health}")


target_option = click.option(
    "--target",
    required=True,
    type=click.Path(path_type=Path, file_okay=False),
    help="Folder the application lives in.",
)
timeout_option = click.option(
    "--timeout",
    type=float,
    default=DEFAULT_HEALTH_TIMEOUT,
    show_default=True,
    help="Seconds to wait for services to become healthy.",
)
reserve_option = click.option(
    "--reserve-space",
    default="1G",
    show_default=True,
    help="Free space to keep in the target and the Docker data root beyond what the "
    "install writes (bytes, or with a suffix K, M, G, T).",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
allow_downgrade_option = click.option(
    "--allow-downgrade", is_flag=True, help="Install a bundle older than the one installed."
)


@main.command("install", epilog=EXIT_CODES_HELP)
@bundle_argument
@target_option
@key_option
@trust_option
@timeout_option
@allow_downgrade_option
@reserve_option
@click.option("--dry-run", is_flag=True, help="Verify, check and print the plan; change nothing.")
@click.option(
    "--pull-policy",
    type=click.Choice([mode.value for mode in PullPolicyMode]),
    default=PullPolicyMode.OVERRIDE.value,
    show_default=True,
    help="For services whose pull_policy or build: would make Compose contact a registry: "
    "run them with pull_policy: never (override), or stop before starting anything (stop).",
)
@verification_options
@report_errors
def install_command(
    bundle: Path,
    target: Path,
    keys: tuple[Path, ...],
    trust: tuple[Path, ...],
    timeout: float,
    allow_downgrade: bool,
    reserve_space: str,
    dry_run: bool,
    pull_policy: str,
    checks: VerificationChecks,
) -> None:
    """Verify BUNDLE and install it into --target, then wait for health.

    When the new release does not become healthy, the previous one is
    brought back and started again, and the command exits 1. Ctrl-C stops
    at the next safe point and reports the state it left the target in.
    """
    options = InstallOptions(
        bundle=bundle,
        target=target,
        health_timeout=timeout,
        allow_downgrade=allow_downgrade,
        dry_run=dry_run,
        pull_policy=PullPolicyMode(pull_policy),
        reserve_bytes=parse_size(reserve_space),
        **checks.install_fields(keys, trust, audited=not dry_run),
    )
    interrupts = Interrupts()
    previous = signal.signal(signal.SIGINT, lambda _signum, _frame: interrupts.request())
    try:
        result = install(options, progress=make_reporter(), interrupts=interrupts)
    finally:
        signal.signal(signal.SIGINT, previous)
    _print_install(result)


@main.command(epilog=EXIT_CODES_HELP)
@bundle_argument
@target_option
@key_option
@trust_option
@allow_downgrade_option
@reserve_option
@json_option
@verification_options
@report_errors
def plan(
    bundle: Path,
    target: Path,
    keys: tuple[Path, ...],
    trust: tuple[Path, ...],
    allow_downgrade: bool,
    reserve_space: str,
    as_json: bool,
    checks: VerificationChecks,
) -> None:
    """Show what installing BUNDLE into --target would change, changing nothing.

    The bundle is verified in a temporary folder, which is removed. Exits 4
    when a preflight check fails.
    """
    options = InstallOptions(
        bundle=bundle,
        target=target,
        allow_downgrade=allow_downgrade,
        reserve_bytes=parse_size(reserve_space),
        **checks.install_fields(keys, trust, audited=False),
    )
    result = plan_install(options, progress=make_reporter())
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2, sort_keys=True))
    else:
        click.echo(format_plan(result))
    raise_for_errors(result.findings)


@main.command(epilog=EXIT_CODES_HELP)
@target_option
@json_option
@report_errors
def status(target: Path, as_json: bool) -> None:
    """Show the current release in --target, its services and the earlier releases."""
    state = load_state(target)
    interrupted = load_journal(target)
    if state is None:
        if interrupted is not None:
            raise UsageError(
                f"nothing is installed in {target}: {interrupted.describe()}",
                hint="run the same install again to finish it",
            )
        raise NotInstalledError(target)
    services = service_status(engine.connect(), state.current.project_name)
    if as_json:
        data = state.to_json()
        data["services"] = [
            {"service": s.service, "state": s.state, "health": s.health, "image": s.image}
            for s in services
        ]
        data["interrupted"] = interrupted.describe() if interrupted else None
        click.echo(json.dumps(data, indent=2, sort_keys=True))
        return
    current = state.current
    click.echo(
        f"{state.name} {current.version} (sequence {current.sequence}), "
        f"installed {current.installed_at}"
    )
    if interrupted is not None:
        click.echo(f"  interrupted: {interrupted.describe()}")
    for s in services:
        health = f", {s.health}" if s.health else ""
        click.echo(f"  {s.service}: {s.state}{health}")
    for release in reversed(state.history):
        click.echo(
            f"  other release: {release.version} (sequence {release.sequence}), "
            f"installed {release.installed_at}"
        )


@main.command(epilog=EXIT_CODES_HELP)
@target_option
@click.option(
    "--to",
    "to_version",
    help="Version to bring back (default: the newest one older than the current).",
)
@timeout_option
@report_errors
def rollback(target: Path, to_version: str | None, timeout: float) -> None:
    """Bring an earlier release in --target back and wait for its health.

    After an interrupted install, brings back the release that ran before it.
    """
    options = RollbackOptions(target=target, to_version=to_version, health_timeout=timeout)
    result = rollback_release(options, progress=make_reporter())
    if result.recovered:
        click.echo(f"note: finished {result.recovered}")
    release = result.release
    left = f" (was {result.left.version})" if result.left else ""
    click.echo(f"rolled back to {release.version} (sequence {release.sequence}){left}")
    for s in result.services:
        health = f", {s.health}" if s.health else ""
        click.echo(f"  {s.service}: {s.state}{health}")


@main.command(epilog=EXIT_CODES_HELP)
@target_option
@reserve_option
@json_option
@report_errors
def doctor(target: Path, reserve_space: str, as_json: bool) -> None:
    """Run the preflight checks against the release installed in --target.

    Exits 4 when a check fails; warnings alone exit 0.
    """
    findings = run_doctor(target.resolve(), os.environ, reserve=parse_size(reserve_space))
    if as_json:
        click.echo(json.dumps([f.to_json() for f in findings], indent=2, sort_keys=True))
    else:
        for finding in findings:
            click.echo(finding.format())
    raise_for_errors(findings)


@main.command(epilog=EXIT_CODES_HELP)
@target_option
@json_option
@report_errors
def inventory(target: Path, as_json: bool) -> None:
    """List the images of every release kept in --target and whether Docker holds them.

    Removes nothing. An image marked removable is used by no release newer
    than the one a rollback returns to.
    """
    images = take_inventory(target.resolve(), engine.connect())
    if as_json:
        click.echo(json.dumps([image.to_json() for image in images], indent=2, sort_keys=True))
        return
    for image in images:
        where = "present" if image.present else "absent"
        if image.present and not image.tagged:
            where += f", not tagged {image.load_tag}"
        size = f", {format_amount(image.size, 'B')}" if image.size is not None else ""
        removable = ", removable" if image.removable else ""
        click.echo(f"{image.reference} {image.image_id[:19]}: {where}{size}{removable}")
        click.echo(f"  used by {', '.join(image.releases)}")


if __name__ == "__main__":
    main()
