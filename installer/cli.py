"""`airlock-install`: verify a bundle and install it inside the enclave."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from installer import __version__, engine
from installer._cli_common import EXIT_CODES_HELP, configure_logging, report_errors
from installer.archive import verify_file
from installer.compose_cli import service_status
from installer.inspect import describe_bundle, format_description
from installer.install import DEFAULT_HEALTH_TIMEOUT, InstallOptions, InstallResult, install
from installer.progress import make_reporter
from installer.pull_policy import PullPolicyMode
from installer.signing import load_trusted_keys
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


def _trusted(keys: tuple[Path, ...], trust: tuple[Path, ...]) -> tuple[Any, ...]:
    return tuple(load_trusted_keys(keys, trust))


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
@report_errors
def verify(
    bundle: Path, keys: tuple[Path, ...], trust: tuple[Path, ...], parts_only: bool
) -> None:
    """Check BUNDLE's signature and every member's digest, changing nothing."""
    if parts_only:
        from installer.parts import check_parts

        report = check_parts(bundle, _trusted(keys, trust))
        signers = ", ".join(f"{key.name} ({key.key_id[:16]})" for key in report.signers)
        click.echo(f"OK {report.index.bundle}: {report.checked} parts verified, signed by {signers}")
        return
    verified = verify_file(bundle, _trusted(keys, trust), progress=make_reporter())
    manifest = verified.manifest
    signers = ", ".join(f"{key.name} ({key.key_id[:16]})" for key in verified.signers)
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
    manifest = result.manifest
    if result.dry_run:
        click.echo(f"dry run: {manifest.name} {manifest.version} verified; nothing changed")
    elif result.unchanged:
        click.echo(f"{manifest.name} {manifest.version} is already installed; nothing changed")
    else:
        click.echo(f"installed {manifest.name} {manifest.version} (sequence {manifest.sequence})")
    env = result.env
    for label, keys in (
        ("added", env.added),
        ("changed", env.changed),
        ("generated", env.generated),
        ("kept", env.kept),
    ):
        if keys:
            click.echo(f"  .env {label}: {', '.join(keys)}")
    if env.normalised:
        click.echo("  .env rewritten with LF line endings and no byte-order mark")
    if result.images_loaded:
        click.echo(f"  images loaded: {', '.join(result.images_loaded)}")
    for status in result.services:
        health = f", {status.health}" if status.health else ""
        click.echo(f"  {status.service}: {status.state}{health}")


@main.command("install", epilog=EXIT_CODES_HELP)
@bundle_argument
@click.option(
    "--target",
    required=True,
    type=click.Path(path_type=Path, file_okay=False),
    help="Folder the application lives in.",
)
@key_option
@trust_option
@click.option(
    "--timeout",
    type=float,
    default=DEFAULT_HEALTH_TIMEOUT,
    show_default=True,
    help="Seconds to wait for services to become healthy.",
)
@click.option(
    "--allow-downgrade", is_flag=True, help="Install a bundle older than the one installed."
)
@click.option("--dry-run", is_flag=True, help="Verify and check, but change nothing.")
@click.option(
    "--pull-policy",
    type=click.Choice([mode.value for mode in PullPolicyMode]),
    default=PullPolicyMode.OVERRIDE.value,
    show_default=True,
    help="For services whose pull_policy or build: would make Compose contact a registry: "
    "run them with pull_policy: never (override), or stop before starting anything (stop).",
)
@report_errors
def install_command(
    bundle: Path,
    target: Path,
    keys: tuple[Path, ...],
    trust: tuple[Path, ...],
    timeout: float,
    allow_downgrade: bool,
    dry_run: bool,
    pull_policy: str,
) -> None:
    """Verify BUNDLE and install it into --target, then wait for health."""
    options = InstallOptions(
        bundle=bundle,
        target=target,
        trusted=_trusted(keys, trust),
        health_timeout=timeout,
        allow_downgrade=allow_downgrade,
        dry_run=dry_run,
        pull_policy=PullPolicyMode(pull_policy),
    )
    _print_install(install(options, progress=make_reporter()))


@main.command(epilog=EXIT_CODES_HELP)
@click.option("--target", required=True, type=click.Path(path_type=Path, file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@report_errors
def status(target: Path, as_json: bool) -> None:
    """Show the installed release in --target and its services."""
    state = load_state(target)
    if state is None:
        raise click.UsageError(f"nothing is installed in {target}")
    services = service_status(engine.connect(), state.current.project_name)
    if as_json:
        data = state.to_json()
        data["services"] = [
            {"service": s.service, "state": s.state, "health": s.health, "image": s.image}
            for s in services
        ]
        click.echo(json.dumps(data, indent=2, sort_keys=True))
        return
    current = state.current
    click.echo(
        f"{state.name} {current.version} (sequence {current.sequence}), installed {current.installed_at}"
    )
    for s in services:
        health = f", {s.health}" if s.health else ""
        click.echo(f"  {s.service}: {s.state}{health}")
    for release in reversed(state.history):
        click.echo(
            f"  earlier: {release.version} (sequence {release.sequence}), installed {release.installed_at}"
        )


if __name__ == "__main__":
    main()
