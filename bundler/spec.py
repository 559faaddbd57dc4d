"""The bundle spec: the YAML file a release engineer writes for one release."""

from __future__ import annotations

import hashlib
import logging
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import yaml

import schemas
from installer.errors import SpecError
from installer.manifest import DEFAULT_MIN_DOCKER_VERSION, GeneratedSecret

logger = logging.getLogger(__name__)

DEFAULT_PLATFORM = "linux/amd64"
# 48 characters of [A-Za-z0-9] is about 285 bits of entropy.
DEFAULT_SECRET_LENGTH = 48
# NOTE: a compose file larger than this is taken for a wrong URL, not a
# compose file; real ones are a few KiB.
MAX_COMPOSE_DOWNLOAD_BYTES = 16 * 1024 * 1024
# Seconds to wait for a compose file server to connect or send the next bytes.
DOWNLOAD_TIMEOUT = 60
_CHUNK_SIZE = 64 * 1024
_MAJOR_MINOR = re.compile(r"[0-9]+\.[0-9]+")


@dataclass(frozen=True)
class ComposeSource:
    """Where one compose file comes from: a path next to the spec, or a URL pinned by sha256."""

    location: str
    sha256: str | None = None
    name: str | None = None

    @property
    def is_url(self) -> bool:
        return self.sha256 is not None


@dataclass(frozen=True)
class BundleSpec:
    """A validated bundle spec with paths resolved against its folder."""

    path: Path
    name: str
    version: str
    sequence: int
    platform: str
    compose_files: tuple[Path, ...]
    project_name: str
    profiles: tuple[str, ...]
    env_set: dict[str, str]
    env_generate: tuple[GeneratedSecret, ...]
    extra_images: tuple[str, ...]
    chart: Path | None
    expires: str | None
    raw: dict[str, Any]
    compose_sources: tuple[ComposeSource, ...] = ()
    min_docker_version: str = DEFAULT_MIN_DOCKER_VERSION

    @property
    def folder(self) -> Path:
        return self.path.parent


def _as_env_string(value: Any) -> str:
    # YAML reads `true` and `2026.2` as bool and float; .env wants the text.
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def load_spec(path: Path, *, download_dir: Path | None = None) -> BundleSpec:
    """Read and validate a bundle spec; errors name the file and the JSON path.

    Compose files given as URLs are downloaded into `download_dir` and
    checked against their pinned sha256; `compose_files` then lists the
    downloaded copies in the spec's order. Without `download_dir` a spec
    with URL sources raises SpecError.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise SpecError(f"cannot read bundle spec {path}: {err.strerror}") from err
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise SpecError(f"bundle spec {path} is not valid YAML: {err}") from err

    validator = jsonschema.Draft202012Validator(
        schemas.load(schemas.BUNDLE_SPEC), format_checker=jsonschema.FormatChecker()
    )
    errors = sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path))
    if errors:
        first = errors[0]
        raise SpecError(f"bundle spec {path} is invalid at {first.json_path}: {first.message}")

    folder = path.parent
    compose = data["compose"]
    sources = tuple(_compose_source(item) for item in compose["files"])
    compose_files = tuple(_local_compose_file(path, source, download_dir) for source in sources)

    env = data.get("env", {})
    generate = []
    for item in env.get("generate", []):
        if isinstance(item, str):
            generate.append(GeneratedSecret(item, DEFAULT_SECRET_LENGTH))
        else:
            generate.append(
                GeneratedSecret(item["name"], item.get("length", DEFAULT_SECRET_LENGTH))
            )
    env_set = {key: _as_env_string(value) for key, value in env.get("set", {}).items()}
    overlap = sorted(set(env_set) & {secret.name for secret in generate})
    if overlap:
        raise SpecError(
            f"bundle spec {path} both sets and generates {', '.join(overlap)}",
            hint="a generated secret must not have a fixed value; remove it from env.set",
        )

    chart = data.get("chart")
    chart_path = folder / chart if chart else None
    if chart_path is not None and not chart_path.exists():
        raise SpecError(f"bundle spec {path} names chart {chart_path}, which does not exist")

    return BundleSpec(
        path=path,
        name=data["name"],
        version=str(data["version"]),
        sequence=data["sequence"],
        platform=data.get("platform", DEFAULT_PLATFORM),
        compose_files=compose_files,
        project_name=compose.get("project_name", data["name"].replace(".", "-")),
        profiles=tuple(compose.get("profiles", ())),
        env_set=env_set,
        env_generate=tuple(generate),
        extra_images=tuple(data.get("images", ())),
        chart=chart_path,
        expires=data.get("expires"),
        raw=data,
        compose_sources=sources,
        min_docker_version=data.get("min_docker_version", DEFAULT_MIN_DOCKER_VERSION),
    )


def check_min_docker_version(text: str) -> str:
    """Return `text` when it is a MAJOR.MINOR engine version, else raise SpecError."""
    if _MAJOR_MINOR.fullmatch(text) is None:
        raise SpecError(
            f"minimum Docker version {text!r} is invalid", hint="give MAJOR.MINOR, e.g. 20.10"
        )
    return text


def _compose_source(item: str | dict[str, str]) -> ComposeSource:
    if isinstance(item, str):
        return ComposeSource(item)
    return ComposeSource(item["url"], item["sha256"], item.get("name"))


def _local_compose_file(spec_path: Path, source: ComposeSource, download_dir: Path | None) -> Path:
    """Return the local path of one compose source, downloading it if it is a URL."""
    if not source.is_url:
        local = spec_path.parent / source.location
        if not local.is_file():
            raise SpecError(
                f"bundle spec {spec_path} names compose file {local}, which does not exist"
            )
        return local

    if download_dir is None:
        raise SpecError(
            f"bundle spec {spec_path} names compose URL {source.location}, "
            "but this command does not download"
        )
    name = source.name or PurePosixPath(urlsplit(source.location).path).name
    if not name or name in (".", ".."):
        raise SpecError(
            f"compose URL {source.location} in {spec_path} has no file name",
            hint="add name: FILE to that entry of compose.files",
        )
    download_dir.mkdir(parents=True, exist_ok=True)
    target = download_dir / name
    if target.exists():
        raise SpecError(
            f"bundle spec {spec_path} names two compose files called {name}; rename one"
        )
    assert source.sha256 is not None
    download_compose_file(source.location, source.sha256, target)
    return target


def download_compose_file(url: str, sha256: str, target: Path) -> None:
    """Download `url` to `target`, checking its size bound and pinned sha256.

    Nothing is left at `target` when the download fails or the digest differs.
    """
    logger.info("downloading compose file %s", url)
    digest = hashlib.sha256()
    received = 0
    partial = target.with_name(target.name + ".partial")
    try:
        with (
            urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT) as response,
            partial.open("wb") as out,
        ):
            while chunk := response.read(_CHUNK_SIZE):
                received += len(chunk)
                if received > MAX_COMPOSE_DOWNLOAD_BYTES:
                    raise SpecError(
                        f"compose file {url} is larger than {MAX_COMPOSE_DOWNLOAD_BYTES} bytes",
                        hint="check the URL in the bundle spec",
                    )
                digest.update(chunk)
                out.write(chunk)
    except (urllib.error.URLError, OSError) as err:
        partial.unlink(missing_ok=True)
        if isinstance(err, urllib.error.HTTPError):
            reason: object = f"HTTP {err.code} {err.reason}"
        else:
            reason = getattr(err, "reason", None) or err
        raise SpecError(
            f"download of compose file {url} failed: {reason}",
            hint="check the URL and the network, then build again",
        ) from err
    except SpecError:
        partial.unlink(missing_ok=True)
        raise

    found = digest.hexdigest()
    if found != sha256:
        partial.unlink(missing_ok=True)
        raise SpecError(
            f"compose file {url} has sha256 {found}, the spec pins {sha256}",
            hint="if the file changed on purpose, review it and put its new sha256 in the spec",
        )
    partial.rename(target)
    logger.debug("compose file %s saved as %s (%d bytes)", url, target, received)
