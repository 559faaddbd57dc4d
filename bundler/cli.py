"""`airlock-bundle`: build signed bundles on the connected side."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from bundler import __version__
from bundler.build import BuildOptions, build
from bundler.keys import generate_key_pair
from bundler.registry import parse_mirrors
from bundler.split import join_parts, parse_size, split_bundle
from installer._cli_common import EXIT_CODES_HELP, configure_logging, report_errors
from installer.inspect import describe_bundle, format_description
from installer.progress import format_amount, make_reporter


@click.group(epilog=EXIT_CODES_HELP)
@click.version_option(__version__, prog_name="airlock-bundle")
@click.option("-v", "--verbose", count=True, help="Log each step and show tracebacks.")
@click.option("-q", "--quiet", is_flag=True, help="Log warnings and errors only.")
def main(verbose: int, quiet: bool) -> None:
    """Build signed airlock bundles of a Compose application."""
    configure_logging(verbose, quiet)


@main.command(epilog=EXIT_CODES_HELP)
@click.option(
    "--out",
    required=True,
    type=click.Path(path_type=Path, file_okay=False),
    help="Folder for the key pair.",
)
@click.option(
    "--name", default="signing", show_default=True, help="File name stem of the key pair."
)
@report_errors
def keygen(out: Path, name: str) -> None:
    """Create an Ed25519 key pair: OUT/NAME.key (0600) and OUT/NAME.pub."""
    pair = generate_key_pair(out, name)
    click.echo(f"private key: {pair.private_path}")
    click.echo(f"public key:  {pair.public_path}")
    click.echo(f"key id:      {pair.key_id}")


@main.command("build", epilog=EXIT_CODES_HELP)
@click.argument("spec", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--key",
    "keys",
    required=True,
    multiple=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="Ed25519 private key (PEM) to sign with. Repeatable.",
)
@click.option(
    "--output",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="Bundle file to write.",
)
@click.option(
    "--mirror",
    "mirrors",
    multiple=True,
    metavar="SOURCE=TARGET",
    help="Pull images of registry SOURCE from TARGET instead, e.g. docker.io=127.0.0.1:5000. Repeatable.",
)
@click.option(
    "--platform", help="Target platform os/arch[/variant]; default: the spec's, else linux/amd64."
)
@click.option(
    "--min-docker-version",
    metavar="MAJOR.MINOR",
    help="Oldest Docker Engine the bundle must load on; default: the spec's, else 20.10. "
    "zstd layers need 23.0.",
)
@click.option(
    "--split",
    "split_size",
    metavar="SIZE",
    help="Write parts of at most SIZE bytes (K, M, G, T are binary units; 4G means "
    "4 GiB - 1, FAT32's limit) and a signed parts index instead of one file.",
)
@report_errors
def build_command(
    spec: Path,
    keys: tuple[Path, ...],
    output: Path,
    mirrors: tuple[str, ...],
    platform: str | None,
    min_docker_version: str | None,
    split_size: str | None,
) -> None:
    """Build a signed bundle from the bundle spec SPEC."""
    options = BuildOptions(
        spec_path=spec,
        key_paths=keys,
        output=output,
        mirrors=parse_mirrors(mirrors),
        platform=platform,
        min_docker_version=min_docker_version,
        split_size=None if split_size is None else parse_size(split_size),
    )
    result = build(options, environ=os.environ, progress=make_reporter())
    manifest = result.manifest
    size = format_amount(result.size, "B")
    if result.parts is None:
        written = f"{result.output} ({size})"
    else:
        parts = result.parts.parts
        written = (
            f"{parts[0]} ... {parts[-1].name} and {result.parts.index.name} "
            f"({size} in {len(parts)} parts)"
        )
    click.echo(
        f"wrote {written}: {manifest.name} {manifest.version}, "
        f"{len(manifest.images)} images, {len(manifest.members)} members"
    )
    if result.operator_variables:
        click.echo(
            "the operator must set these in .env before install: "
            + ", ".join(result.operator_variables)
        )


@main.command(epilog=EXIT_CODES_HELP)
@click.argument("bundle", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--size",
    required=True,
    metavar="SIZE",
    help="Maximum part size in bytes; K, M, G, T are binary units, and 4G means 4 GiB - 1.",
)
@click.option(
    "--key",
    "keys",
    multiple=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="Ed25519 private key (PEM) to sign the parts index with. Repeatable.",
)
@report_errors
def split(bundle: Path, size: str, keys: tuple[Path, ...]) -> None:
    """Split BUNDLE into BUNDLE.001, BUNDLE.002, ... and BUNDLE.parts.json beside it."""
    result = split_bundle(bundle, parse_size(size), key_paths=keys)
    for part in result.parts:
        click.echo(str(part))
    signed = ", ".join(result.signed_by) if result.signed_by else "unsigned"
    click.echo(f"{result.index} ({signed})")


@main.command(epilog=EXIT_CODES_HELP)
@click.argument("parts", nargs=-1, required=True, type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--output",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Bundle file to write; default: the first part's name without its number.",
)
@report_errors
def join(parts: tuple[Path, ...], output: Path | None) -> None:
    """Join PARTS, in order, into one bundle, checking them against the parts index."""
    click.echo(f"wrote {join_parts(parts, output)}")


@main.command(epilog=EXIT_CODES_HELP)
@click.argument("bundle", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@report_errors
def inspect(bundle: Path, as_json: bool) -> None:
    """Show what BUNDLE holds, without extracting it."""
    description = describe_bundle(bundle)
    if as_json:
        click.echo(json.dumps(description, indent=2, sort_keys=True))
    else:
        click.echo(format_description(description))


if __name__ == "__main__":
    main()
