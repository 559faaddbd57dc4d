"""The bundle spec: the YAML file a release engineer writes for one release."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import yaml

import schemas
from installer.errors import SpecError
from installer.manifest import GeneratedSecret

DEFAULT_PLATFORM = "linux/amd64"
# 48 characters of [A-Za-z0-9] is about 285 bits of entropy.
DEFAULT_SECRET_LENGTH = 48


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

    @property
    def folder(self) -> Path:
        return self.path.parent


def _as_env_string(value: Any) -> str:
    # YAML reads `true` and `2026.2` as bool and float; .env wants the text.
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def load_spec(path: Path) -> BundleSpec:
    """Read and validate a bundle spec; errors name the file and the JSON path."""
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
    compose_files = tuple((folder / name) for name in compose["files"])
    for compose_file in compose_files:
        if not compose_file.is_file():
            raise SpecError(
                f"bundle spec {path} names compose file {compose_file}, which does not exist"
            )

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
    )
