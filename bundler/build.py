"""Build a bundle from a spec: resolve images, stage the payload, sign, write the archive."""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bundler import __version__
from bundler.archive import checksums_member, file_member, write_archive
from bundler.chart import chart_images, package_chart
from bundler.image_store import STORE_DIR, StoredImage, StoreSummary, write_store
from bundler.keys import load_private_key, sign
from bundler.registry import RegistryClient, ResolvedImage
from bundler.spec import BundleSpec, check_min_docker_version, load_spec
from bundler.split import SplitResult, split_bundle
from installer import compose, compose_files, pull_policy, reference, variable_sources
from installer.archive import verify_file
from installer.constants import COMPOSE_DIR
from installer.errors import (
    AirlockError,
    BundleRejectedError,
    ComposeError,
    InterpolationError,
    RegistryError,
    SpecError,
)
from installer.manifest import Descriptor as ManifestDescriptor
from installer.manifest import ImageRecord, Manifest, Member, PullingService
from installer.progress import NullProgress, ProgressReporter
from installer.signing import TrustedKey, key_id

logger = logging.getLogger(__name__)

COMPOSE_MEDIA_TYPE = "application/yaml"
# A value the operator supplies inside the enclave; bundling never needs it,
# but interpolating the rest of the file does.
_PLACEHOLDER = "airlock-placeholder"


@dataclass(frozen=True)
class BuildOptions:
    """Everything `airlock-bundle build` takes from its command line."""

    spec_path: Path
    key_paths: tuple[Path, ...]
    output: Path
    mirrors: Mapping[str, str] = field(default_factory=dict)
    platform: str | None = None
    source_date_epoch: int | None = None
    # Overrides the spec's min_docker_version (MAJOR.MINOR) when set.
    min_docker_version: str | None = None
    # Split the finished bundle into parts of at most this many bytes.
    split_size: int | None = None


@dataclass(frozen=True)
class BuildResult:
    """The bundle a build wrote, for the CLI to report."""

    output: Path
    manifest: Manifest
    operator_variables: tuple[str, ...]
    size: int
    parts: SplitResult | None = None


@dataclass(frozen=True)
class _ImageUse:
    reference: reference.ImageReference
    written: str
    services: tuple[str, ...]


def creation_time(environ: Mapping[str, str], override: int | None = None) -> int:
    """Return the build's timestamp in seconds since the epoch.

    SOURCE_DATE_EPOCH (reproducible-builds.org) wins; without it the time is
    0, so two builds of the same inputs stay byte-identical.
    """
    if override is not None:
        return override
    value = environ.get("SOURCE_DATE_EPOCH")
    if value is None:
        return 0
    try:
        return int(value)
    except ValueError as err:
        raise SpecError(f"SOURCE_DATE_EPOCH={value!r} is not an integer number of seconds") from err


def _read_compose(spec: BundleSpec) -> list[tuple[Path, object]]:
    documents = []
    for path in spec.compose_files:
        try:
            documents.append((path, yaml.safe_load(path.read_text(encoding="utf-8"))))
        except (OSError, yaml.YAMLError) as err:
            raise ComposeError(f"cannot read compose file {path}: {err}") from err
    return documents


def operator_variables(spec: BundleSpec) -> tuple[list[str], dict[str, str]]:
    """Find required variables the spec neither sets nor generates.

    Returns their names and an environment with placeholders for them, so
    the rest of the compose files can be interpolated at build time. A
    required variable inside an `image:` gets no placeholder: the image
    list must come from real values.
    """
    provided = set(spec.env_set) | {secret.name for secret in spec.env_generate}
    missing: dict[str, str] = {}
    for path, document in _read_compose(spec):
        for use in compose.variable_uses(document, source=path.name):
            if use.name in provided or not use.required:
                continue
            if use.key_path.endswith(".image"):
                continue
            missing.setdefault(use.name, use.message or "")
    names = sorted(missing)
    environ = dict(spec.env_set)
    for secret in spec.env_generate:
        environ[secret.name] = _PLACEHOLDER
    for name in names:
        environ[name] = _PLACEHOLDER
    return names, environ


def collect_images(spec: BundleSpec, environ: Mapping[str, str]) -> list[_ImageUse]:
    """List every image the active services use plus the spec's extra images."""
    try:
        project = compose.load_project(list(spec.compose_files), environ, profiles=spec.profiles)
    except InterpolationError as err:
        raise InterpolationError(
            f"{err.message}", hint="set the variable in the spec's env.set, or give it a default"
        ) from err

    by_reference: dict[str, tuple[reference.ImageReference, str, list[str]]] = {}
    for service in project.active_services():
        if service.image is None:
            raise ComposeError(
                f"service {service.name} has no image; a bundle can carry only images"
            )
        parsed = reference.parse(service.image)
        entry = by_reference.setdefault(str(parsed), (parsed, service.image, []))
        entry[2].append(service.name)
    for written in spec.extra_images:
        parsed = reference.parse(written)
        by_reference.setdefault(str(parsed), (parsed, written, []))
    return [
        _ImageUse(parsed, written, tuple(sorted(services)))
        for _, (parsed, written, services) in sorted(by_reference.items())
    ]


def load_tag(ref: reference.ImageReference) -> str:
    """Return the name `docker load` gives an image so compose finds it locally.

    A digest-pinned reference (`name@sha256:...` or `name:tag@sha256:...`)
    loads as `name:sha256-<64 hex>`, because Docker's classic image store
    drops registry digests on load and cannot find either form afterwards;
    the installer points such services at this tag. The tag of a
    `name:tag@sha256:...` reference is not used, so loading never moves an
    existing `name:tag`. Any other reference loads under its tag.
    """
    if ref.digest is not None:
        return f"{ref.repository}:{ref.digest.replace(':', '-')}"
    if ref.tag is not None:
        return f"{ref.repository}:{ref.tag}"
    return f"{ref.repository}:latest"


def resolve_images(
    client: RegistryClient, uses: Sequence[_ImageUse], platform: str
) -> list[ResolvedImage]:
    """Resolve every image, reporting all failures in one error."""
    resolved: list[ResolvedImage] = []
    failures: list[str] = []
    for use in uses:
        try:
            resolved.append(client.resolve(use.reference, platform))
        except RegistryError as err:
            failures.append(str(err))
    if failures:
        raise RegistryError(
            f"{len(failures)} of {len(uses)} images could not be resolved:\n  "
            + "\n  ".join(failures)
        )
    return resolved


@dataclass(frozen=True)
class _StagedCompose:
    # Members of the spec's compose files, in -f order.
    paths: list[str]
    pulling: tuple[PullingService, ...]


def _stage_compose(
    spec: BundleSpec, root: Path, environ: Mapping[str, str], required: Sequence[str]
) -> _StagedCompose:
    """Copy every file the compose project loads into `root/compose/`, keeping its layout.

    Also logs where each interpolated variable's value comes from (never a
    secret's value) and warns about each service that would make Compose
    pull or build inside the enclave.
    """
    project = compose.load_project(
        list(spec.compose_files),
        environ,
        profiles=spec.profiles,
        project_dir=spec.folder,
        warn_unset=False,
    )
    carried = compose_files.carried_files(project, spec.compose_files, spec.folder)
    (root / COMPOSE_DIR).mkdir(parents=True)
    for item in carried:
        destination = root / item.member
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(item.source, destination)
        logger.debug("carrying %s as %s", item.source, item.member)
    members = {item.source.resolve(): item.member for item in carried}
    paths = [members[path.resolve()] for path in spec.compose_files]

    uses = [
        use
        for path in project.compose_files
        for use in compose.variable_uses(compose.read_document(path), source=path.name)
    ]
    for source in variable_sources.describe_sources(
        uses,
        env_set=spec.env_set,
        generated=[secret.name for secret in spec.env_generate],
        required=required,
    ):
        logger.info("variable %s", source.describe())

    for path in project.compose_files:
        document = compose.read_document(path)
        for nested in compose.nested_expressions(document, source=path.name):
            logger.warning(
                "%s contains a nested expression, which docker-compose v1 reads "
                "differently from the Compose Specification; installs need Compose v2",
                nested.describe(),
            )

    pulling = tuple(pull_policy.pulling_services(project))
    for service in pulling:
        logger.warning(
            "service %s would make Compose pull or build inside the enclave; "
            "the installer overrides it with pull_policy: never or stops",
            pull_policy.describe(service),
        )
    return _StagedCompose(paths, pulling)


_BLOB_PATH = re.compile(r"^images/blobs/sha256/([0-9a-f]{64})$")


def _payload_member(root: Path, path: str) -> Member:
    """Describe one staged payload file for the manifest.

    A blob's name is its sha256, checked while it was downloaded or written,
    so it is not read a second time; the read-back check after the archive
    is written still hashes every byte.
    """
    match = _BLOB_PATH.match(path)
    if match is None:
        return file_member(root, path, _media_type(path))
    return Member(path, (root / path).stat().st_size, match.group(1), _media_type(path))


def _media_type(path: str) -> str:
    if path.startswith(COMPOSE_DIR):
        return COMPOSE_MEDIA_TYPE
    if path.endswith(".json") or path.endswith("oci-layout"):
        return "application/json"
    return "application/octet-stream"


def _check_written(output: Path, keys: Sequence[Ed25519PrivateKey]) -> None:
    """Read the written bundle back as the installer will, removing it when it fails.

    This catches a disk that corrupted the write and any disagreement
    between this writer and the installer's reader, at the cost of reading
    the bundle once more.
    """
    trusted = [
        TrustedKey(key_id(key.public_key()), "signing key of this build", key.public_key())
        for key in keys
    ]
    try:
        verify_file(output, trusted, threshold=len(trusted))
    except BundleRejectedError as err:
        output.unlink(missing_ok=True)
        raise AirlockError(
            f"the bundle just written to {output} does not verify: {err.message}",
            hint="check the disk the output folder is on, then build again",
        ) from err
    logger.debug("read %s back: signature and every member verified", output)


def check_not_expired(spec: BundleSpec, now: datetime | None = None) -> None:
    """Refuse to build a bundle every installer would reject as expired."""
    if spec.expires is None:
        return
    expires = datetime.fromisoformat(spec.expires.replace("Z", "+00:00"))
    if expires.tzinfo is None:
        expires = expires.replace(tzinfo=UTC)
    now = now or datetime.now(UTC)
    if expires <= now:
        raise SpecError(
            f"bundle spec {spec.path} expires at {spec.expires}, which is already past "
            f"(now {now.strftime('%Y-%m-%dT%H:%M:%SZ')})",
            hint="set a later expires, or remove it",
        )


def build(
    options: BuildOptions,
    *,
    environ: Mapping[str, str] | None = None,
    progress: ProgressReporter | None = None,
    client: RegistryClient | None = None,
) -> BuildResult:
    """Build the bundle `options` describe and return what was written.

    1. Read and validate the spec.
    2. Work out which variables the operator must provide inside the enclave.
    3. Interpolate the compose files and collect every image.
    4. Resolve every image in its registry (or mirror) for the platform.
    5. Stage the compose files and the image store in a temporary folder.
    6. Record every member in the manifest, sign it, write the archive,
       and read it back as the installer does.
    7. Split the archive into parts when asked.
    """
    environ = os.environ if environ is None else environ
    progress = progress or NullProgress()
    options.output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="airlock-build-", dir=options.output.parent) as tmp:
        spec = load_spec(options.spec_path, download_dir=Path(tmp) / "downloads")
        check_not_expired(spec)
        result = _build(options, spec, Path(tmp) / "payload", environ, progress, client)
    if options.split_size is not None:
        parts = split_bundle(
            result.output, options.split_size, key_paths=options.key_paths, remove_source=True
        )
        result = replace(result, parts=parts)
    return result


def _build(
    options: BuildOptions,
    spec: BundleSpec,
    root: Path,
    environ: Mapping[str, str],
    progress: ProgressReporter,
    client: RegistryClient | None,
) -> BuildResult:
    keys = [load_private_key(path) for path in options.key_paths]
    platform = options.platform or spec.platform
    min_docker_version = check_min_docker_version(
        options.min_docker_version or spec.min_docker_version
    )
    epoch = creation_time(environ, options.source_date_epoch)

    required, interpolation_env = operator_variables(spec)
    for name in required:
        logger.warning("variable %s must be provided in .env inside the enclave", name)

    uses = collect_images(
        replace(spec, extra_images=(*spec.extra_images, *chart_images(spec))), interpolation_env
    )
    # A chart dependency that is not vendored stops the build before any download.
    chart = package_chart(spec, root, mtime=epoch)
    client = client or RegistryClient(options.mirrors)
    resolved = resolve_images(client, uses, platform)

    staged_compose = _stage_compose(spec, root, interpolation_env, required)
    stored = [
        StoredImage(image, load_tag(use.reference))
        for use, image in zip(uses, resolved, strict=True)
    ]
    summary: StoreSummary = write_store(
        root, stored, client, progress=progress, min_docker_version=min_docker_version
    )

    payload_paths = sorted(
        str(path.relative_to(root)) for path in root.rglob("*") if path.is_file()
    )
    payload: list[Member] = [_payload_member(root, path) for path in payload_paths]
    # The checksum list comes first, so a reader meets it right after the signatures.
    members = [checksums_member(root, payload), *payload]

    records = [
        ImageRecord(
            reference=use.written,
            source=image.source,
            index_digest=image.index_digest,
            manifest_digest=image.manifest_digest,
            manifest_media_type=image.manifest_media_type,
            config=ManifestDescriptor(
                image.config.media_type, image.config.digest, image.config.size
            ),
            platform=image.platform,
            layers=tuple(
                ManifestDescriptor(layer.media_type, layer.digest, layer.size)
                for layer in image.layers
            ),
            load_tag=item.load_tag,
            services=use.services,
        )
        for use, image, item in zip(uses, resolved, stored, strict=True)
    ]
    manifest = Manifest(
        name=spec.name,
        version=spec.version,
        sequence=spec.sequence,
        created=datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        expires=spec.expires,
        builder=f"airlock-bundle {__version__}",
        platform=platform,
        spec=spec.raw,
        compose_files=tuple(staged_compose.paths),
        pulling_services=staged_compose.pulling,
        chart=chart,
        project_name=spec.project_name,
        profiles=spec.profiles,
        env_set=spec.env_set,
        env_generate=spec.env_generate,
        env_required=tuple(required),
        images=tuple(records),
        members=tuple(members),
        layer_bytes=summary.layer_bytes,
        layer_bytes_stored=summary.layer_bytes_stored,
        min_docker_version=min_docker_version,
    )
    manifest_bytes = manifest.to_bytes()
    signatures = dict(sign(key, manifest_bytes) for key in keys)
    write_archive(options.output, manifest_bytes, signatures, root, members, mtime=epoch)
    _check_written(options.output, keys)

    logger.debug("wrote %s (%d images, %d members)", options.output, len(records), len(members))
    return BuildResult(options.output, manifest, tuple(required), options.output.stat().st_size)


__all__ = ["BuildOptions", "BuildResult", "build", "STORE_DIR"]
