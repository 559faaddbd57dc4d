"""The changes an install would make to a target, worked out without making them.

`make_plan` compares the verified bundle with the release installed in the
target: images to load, `.env` keys added, changed or removed (by name
only, since values may be secrets), services added, changed or removed,
and named volumes, which are always kept. `install` acts on the same plan,
and `airlock-install plan` and `install --dry-run` print it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import docker

from installer import compose, dotenv, engine, envmerge, images, releases
from installer.archive import VerifiedBundle
from installer.compose import ComposeProject, Service
from installer.constants import ENV_FILE, IMAGES_DIR
from installer.errors import AirlockError
from installer.manifest import ImageRecord
from installer.preflight import Finding
from installer.state import InstallState

logger = logging.getLogger(__name__)


@dataclass
class ImagePlan:
    """One image of the bundle: its local tag and whether the engine already has it."""

    tag: str
    image_id: str
    # None when the engine could not be asked.
    present: bool | None

    def to_json(self) -> dict[str, Any]:
        return {"tag": self.tag, "image_id": self.image_id, "present": self.present}


@dataclass
class Plan:
    """Everything an install of one bundle into one target would change."""

    name: str
    version: str
    sequence: int
    current_version: str | None
    current_sequence: int | None
    same_release: bool
    images: list[ImagePlan]
    env: envmerge.EnvChange
    services_added: list[str] = field(default_factory=list)
    # Service name -> the settings that differ, e.g. ["image"].
    services_changed: dict[str, list[str]] = field(default_factory=dict)
    services_removed: list[str] = field(default_factory=list)
    services_unchanged: list[str] = field(default_factory=list)
    volumes_kept: list[str] = field(default_factory=list)
    volumes_added: list[str] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    # Size of the bundle's image store, which install loads whole.
    store_bytes: int = 0
    # Not serialised: the merged `.env` text and the values compose will see.
    env_text: str = field(default="", repr=False)
    env_values: dict[str, str] = field(default_factory=dict, repr=False)
    service_images: dict[str, str] = field(default_factory=dict)
    project: ComposeProject | None = field(default=None, repr=False)
    project_name: str = ""

    @property
    def images_to_load(self) -> list[ImagePlan]:
        return [image for image in self.images if image.present is not True]

    @property
    def load_bytes(self) -> int:
        """Bytes `docker load` reads: the whole image store once any image is absent."""
        return self.store_bytes if self.images_to_load else 0

    def to_json(self) -> dict[str, Any]:
        return {
            "bundle": {"name": self.name, "version": self.version, "sequence": self.sequence},
            "current": None
            if self.current_version is None
            else {"version": self.current_version, "sequence": self.current_sequence},
            "same_release": self.same_release,
            "project_name": self.project_name,
            "images": {
                "load": [image.tag for image in self.images_to_load],
                "present": [image.tag for image in self.images if image.present],
            },
            "env": self.env.to_json(),
            "services": {
                "added": self.services_added,
                "changed": self.services_changed,
                "removed": self.services_removed,
                "unchanged": self.services_unchanged,
            },
            "volumes": {"kept": self.volumes_kept, "added": self.volumes_added},
            "preflight": [finding.to_json() for finding in self.findings],
        }


def _image_plan(client: docker.DockerClient | None, image: ImageRecord) -> ImagePlan:
    present = None if client is None else engine.image_id(client, image.load_tag) == image.image_id
    return ImagePlan(image.load_tag, image.image_id, present)


def _service_differences(old: Service, new: Service) -> list[str]:
    """Name the compared settings that differ between two versions of a service.

    NOTE: `Service` models image, build, pull policy, profiles, healthcheck,
    published ports and platform. A change only to, say, `environment` or
    `command` is not listed here, although compose recreates the container.
    """
    return [
        item.name
        for item in fields(Service)
        if item.name != "name" and getattr(old, item.name) != getattr(new, item.name)
    ]


def _current_project(
    target: Path, state: InstallState, environ: Mapping[str, str]
) -> ComposeProject | None:
    """Load the installed release's compose project as it runs now, or None if it cannot be read."""
    current = state.current
    files = releases.compose_files(target, current.compose_files)
    env_path = target / ENV_FILE
    try:
        if not all(path.is_file() for path in files):
            files, env_path = releases.saved_files(target, current)
        values = dotenv.parse(env_path.read_text(encoding="utf-8"))
        project_env = compose.project_environment(values, environ)
        manifest = releases.load_manifest(target, current)
        profiles = manifest.profiles if manifest is not None else ()
        return compose.load_project(files, project_env, profiles=profiles)
    except (AirlockError, OSError) as err:
        logger.warning("cannot read the installed release's compose files: %s", err)
        return None


def make_plan(
    verified: VerifiedBundle,
    target: Path,
    state: InstallState | None,
    same_release: bool,
    environ: Mapping[str, str],
    client: docker.DockerClient | None,
) -> Plan:
    """Work out what installing `verified` into `target` changes; change nothing.

    Raises InterpolationError when a variable the compose files require is
    missing from the merged `.env`, and InstallError when a service's image
    is not in the bundle.
    """
    manifest = verified.manifest
    env_path = target / ENV_FILE
    existing_text = env_path.read_text(encoding="utf-8") if env_path.exists() else ""
    previous_manifest = None
    if state is not None and not same_release:
        previous_manifest = releases.load_manifest(target, state.current)
    env_text, env_change = envmerge.merge_env(existing_text, manifest, previous_manifest)
    env_values = dotenv.parse(env_text)

    service_images = images.service_images(verified, env_values, environ)
    staged = [verified.staged(path) for path in manifest.compose_files]
    project = compose.load_project(
        staged, compose.project_environment(env_values, environ), profiles=manifest.profiles
    )
    project_name = env_values.get(envmerge.PROJECT_NAME_KEY, manifest.project_name)

    plan = Plan(
        name=manifest.name,
        version=manifest.version,
        sequence=manifest.sequence,
        current_version=state.current.version if state else None,
        current_sequence=state.current.sequence if state else None,
        same_release=same_release,
        images=[_image_plan(client, image) for image in manifest.images],
        store_bytes=sum(m.size for m in manifest.members if m.path.startswith(IMAGES_DIR)),
        env=env_change,
        env_text=env_text,
        env_values=env_values,
        service_images=service_images,
        project=project,
        project_name=project_name,
    )

    new_services = {service.name: service for service in project.active_services()}
    old_project = _current_project(target, state, environ) if state is not None else None
    old_services = (
        {service.name: service for service in old_project.active_services()}
        if old_project is not None
        else {}
    )
    for name, service in new_services.items():
        if name not in old_services:
            plan.services_added.append(name)
            continue
        differences = _service_differences(old_services[name], service)
        if differences:
            plan.services_changed[name] = differences
        else:
            plan.services_unchanged.append(name)
    plan.services_removed = sorted(set(old_services) - set(new_services))

    old_volumes = set(old_project.volumes) if old_project is not None else set()
    plan.volumes_kept = sorted(old_volumes)
    plan.volumes_added = sorted(set(project.volumes) - old_volumes)
    return plan


def format_plan(plan: Plan) -> str:
    """Describe the plan in lines for people; `.env` values never appear."""
    lines: list[str] = []
    current = (
        f"{plan.current_version} (sequence {plan.current_sequence})"
        if plan.current_version is not None
        else "nothing installed"
    )
    lines.append(f"plan: {plan.name} {plan.version} (sequence {plan.sequence}); now {current}")
    if plan.same_release:
        lines.append("  this release is installed already")
    load = [image.tag for image in plan.images_to_load]
    present = [image.tag for image in plan.images if image.present]
    lines.append(f"  images to load: {', '.join(load) if load else 'none'}")
    if present:
        lines.append(f"  images present: {', '.join(present)}")
    env = plan.env
    for label, keys in (
        ("added", env.added),
        ("changed", env.changed),
        ("removed", env.removed),
        ("generated", env.generated),
        ("kept", env.kept),
    ):
        if keys:
            lines.append(f"  .env {label}: {', '.join(keys)} (values not shown)")
    lines.append(f"  services added: {', '.join(plan.services_added) or 'none'}")
    changed = ", ".join(
        f"{name} ({', '.join(diff)})" for name, diff in sorted(plan.services_changed.items())
    )
    lines.append(f"  services changed: {changed or 'none'}")
    lines.append(f"  services removed: {', '.join(plan.services_removed) or 'none'}")
    if plan.services_unchanged:
        lines.append(f"  services unchanged: {', '.join(plan.services_unchanged)}")
    lines.append(f"  volumes kept: {', '.join(plan.volumes_kept) or 'none'}")
    if plan.volumes_added:
        lines.append(f"  volumes added: {', '.join(plan.volumes_added)}")
    for finding in plan.findings:
        lines.append(f"  {finding.format()}")
    return "\n".join(lines)
