"""The signed bundle manifest: its model, canonical form and schema check.

The manifest is the only thing the signature covers directly; every other
member is trusted through the size and sha256 recorded here. The bytes that
get signed are the canonical JSON form (sorted keys, no insignificant
whitespace, UTF-8), so the bundler and the installer agree on them without
sharing code paths beyond this module.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from typing import Any

import jsonschema

import schemas
from installer.constants import FORMAT_VERSION
from installer.errors import ManifestError

logger = logging.getLogger(__name__)

# Docker Engine 20.10 is the oldest engine airlock supports: it loads gzip
# and uncompressed layers from a docker-archive.
DEFAULT_MIN_DOCKER_VERSION = "20.10"
# Engine 23.0 is the first whose `docker load` reads zstd layers; 20.10
# fails with "invalid tar header".
ZSTD_MIN_DOCKER_VERSION = "23.0"
_ENGINE_VERSION = re.compile(r"^v?(\d+)\.(\d+)")


def engine_version(text: str) -> tuple[int, int]:
    """Parse MAJOR.MINOR from a Docker Engine version such as `20.10.24+dfsg1`.

    Raises ValueError when `text` does not start with two dotted numbers.
    """
    match = _ENGINE_VERSION.match(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a Docker Engine version (expected MAJOR.MINOR...)")
    return int(match.group(1)), int(match.group(2))


def canonical_json(value: Any) -> bytes:
    """Serialise `value` as canonical JSON: sorted keys, compact, UTF-8."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


@dataclass(frozen=True)
class Descriptor:
    """A content-addressed blob: media type, `sha256:` digest and size in bytes."""

    media_type: str
    digest: str
    size: int

    def to_json(self) -> dict[str, Any]:
        return {"media_type": self.media_type, "digest": self.digest, "size": self.size}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Descriptor:
        return cls(data["media_type"], data["digest"], data["size"])


@dataclass(frozen=True)
class Member:
    """One payload file of the archive, as the manifest records it."""

    path: str
    size: int
    sha256: str
    media_type: str

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "size": self.size,
            "sha256": self.sha256,
            "media_type": self.media_type,
        }


@dataclass(frozen=True)
class ImageRecord:
    """One image in the bundle's image store and the name it loads under."""

    reference: str
    source: str
    index_digest: str | None
    manifest_digest: str
    manifest_media_type: str
    config: Descriptor
    platform: str
    layers: tuple[Descriptor, ...]
    load_tag: str
    services: tuple[str, ...] = ()

    @property
    def image_id(self) -> str:
        """The id Docker gives the image after loading: its config digest."""
        return self.config.digest

    def to_json(self) -> dict[str, Any]:
        return {
            "reference": self.reference,
            "source": self.source,
            "index_digest": self.index_digest,
            "manifest_digest": self.manifest_digest,
            "manifest_media_type": self.manifest_media_type,
            "config": self.config.to_json(),
            "platform": self.platform,
            "layers": [layer.to_json() for layer in self.layers],
            "load_tag": self.load_tag,
            "services": list(self.services),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ImageRecord:
        return cls(
            reference=data["reference"],
            source=data["source"],
            index_digest=data.get("index_digest"),
            manifest_digest=data["manifest_digest"],
            manifest_media_type=data["manifest_media_type"],
            config=Descriptor.from_json(data["config"]),
            platform=data["platform"],
            layers=tuple(Descriptor.from_json(layer) for layer in data["layers"]),
            load_tag=data["load_tag"],
            services=tuple(data["services"]),
        )


@dataclass(frozen=True)
class GeneratedSecret:
    """A `.env` key the installer fills from a CSPRNG when the target lacks it."""

    name: str
    length: int


@dataclass(frozen=True)
class ChartDependency:
    """A subchart archive vendored in the chart archive's `charts/` folder."""

    name: str
    version: str
    # As Chart.yaml writes it: `file://…`, `https://…` or `oci://…`.
    repository: str
    # Path of the subchart archive inside the chart archive.
    path: str
    sha256: str


@dataclass(frozen=True)
class ChartRecord:
    """The Helm chart archive carried in the bundle."""

    name: str
    version: str
    path: str
    sha256: str
    dependencies: tuple[ChartDependency, ...] = ()


@dataclass(frozen=True)
class PullingService:
    """A service whose compose settings would make Compose pull or build its image."""

    service: str
    # The service's `pull_policy`, or None when the file sets none.
    pull_policy: str | None
    build: bool


@dataclass(frozen=True)
class Manifest:
    """The model of `airlock/manifest.json`: what a bundle is and what it contains."""

    name: str
    version: str
    sequence: int
    created: str
    builder: str
    platform: str
    compose_files: tuple[str, ...]
    project_name: str
    env_set: dict[str, str]
    env_generate: tuple[GeneratedSecret, ...]
    env_required: tuple[str, ...]
    images: tuple[ImageRecord, ...]
    members: tuple[Member, ...]
    profiles: tuple[str, ...] = ()
    chart: ChartRecord | None = None
    expires: str | None = None
    layer_bytes: int = 0
    layer_bytes_stored: int = 0
    spec: dict[str, Any] = field(default_factory=dict)
    pulling_services: tuple[PullingService, ...] = ()
    # The oldest Docker Engine, MAJOR.MINOR, that can load every image here.
    min_docker_version: str = DEFAULT_MIN_DOCKER_VERSION

    def member(self, path: str) -> Member | None:
        for member in self.members:
            if member.path == path:
                return member
        return None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "version": self.version,
            "sequence": self.sequence,
            "created": self.created,
            "expires": self.expires,
            "builder": self.builder,
            "platform": self.platform,
            "min_docker_version": self.min_docker_version,
            "spec": self.spec,
            "compose": {
                "files": list(self.compose_files),
                "project_name": self.project_name,
                "profiles": list(self.profiles),
                "pulling_services": [
                    {"service": s.service, "pull_policy": s.pull_policy, "build": s.build}
                    for s in self.pulling_services
                ],
            },
            "env": {
                "set": dict(self.env_set),
                "generate": [{"name": s.name, "length": s.length} for s in self.env_generate],
                "required": list(self.env_required),
            },
            "images": [image.to_json() for image in self.images],
            "chart": None
            if self.chart is None
            else {
                "name": self.chart.name,
                "version": self.chart.version,
                "path": self.chart.path,
                "sha256": self.chart.sha256,
                "dependencies": [
                    {
                        "name": dependency.name,
                        "version": dependency.version,
                        "repository": dependency.repository,
                        "path": dependency.path,
                        "sha256": dependency.sha256,
                    }
                    for dependency in self.chart.dependencies
                ],
            },
            "storage": {
                "layer_bytes": self.layer_bytes,
                "layer_bytes_stored": self.layer_bytes_stored,
            },
            "members": [member.to_json() for member in self.members],
        }
        return data

    def to_bytes(self) -> bytes:
        """Return the canonical bytes that are signed and stored in the bundle."""
        return canonical_json(self.to_json())

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Manifest:
        """Build the model from JSON that already passed `validate`."""
        chart = data.get("chart")
        storage = data.get("storage") or {}
        return cls(
            name=data["name"],
            version=data["version"],
            sequence=data["sequence"],
            created=data["created"],
            expires=data.get("expires"),
            builder=data["builder"],
            platform=data["platform"],
            spec=data.get("spec") or {},
            compose_files=tuple(data["compose"]["files"]),
            project_name=data["compose"]["project_name"],
            profiles=tuple(data["compose"].get("profiles", ())),
            env_set=dict(data["env"]["set"]),
            env_generate=tuple(
                GeneratedSecret(item["name"], item["length"]) for item in data["env"]["generate"]
            ),
            env_required=tuple(data["env"]["required"]),
            images=tuple(ImageRecord.from_json(image) for image in data["images"]),
            chart=None
            if chart is None
            else ChartRecord(
                name=chart["name"],
                version=chart["version"],
                path=chart["path"],
                sha256=chart["sha256"],
                dependencies=tuple(
                    ChartDependency(**dependency) for dependency in chart.get("dependencies", ())
                ),
            ),
            pulling_services=tuple(
                PullingService(item["service"], item["pull_policy"], item["build"])
                for item in data["compose"].get("pulling_services", ())
            ),
            layer_bytes=storage.get("layer_bytes", 0),
            layer_bytes_stored=storage.get("layer_bytes_stored", 0),
            members=tuple(Member(**member) for member in data["members"]),
            min_docker_version=data["min_docker_version"],
        )


def validate(data: Any) -> None:
    """Check `data` against the manifest schema; the error names the JSON path."""
    validator = jsonschema.Draft202012Validator(
        schemas.load(schemas.MANIFEST), format_checker=jsonschema.FormatChecker()
    )
    errors = sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path))
    if errors:
        first = errors[0]
        raise ManifestError(
            f"manifest is invalid at {first.json_path}: {first.message}",
            hint="the bundle was not made by a compatible airlock-bundle; rebuild it",
        )

    paths = [member["path"] for member in data["members"]]
    if len(paths) != len(set(paths)):
        duplicate = next(p for p in paths if paths.count(p) > 1)
        raise ManifestError(f"manifest lists member {duplicate} twice")


def parse(raw: bytes) -> Manifest:
    """Parse and validate manifest bytes whose signature was already checked."""
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ManifestError(f"manifest is not valid UTF-8 JSON: {err}") from err
    if not isinstance(data, dict):
        raise ManifestError("manifest is not a JSON object")
    validate(data)
    return Manifest.from_json(data)
