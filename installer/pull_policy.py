"""Keep Compose from reaching a registry inside the enclave, and check image platforms.

A service with `pull_policy: always` (or `daily`, `weekly`, `every_…`,
`build`), or with `build:` and the default policy `missing`, makes Compose
v2 pull or build even when the image is loaded. The bundler records such
services in the manifest. Before the installer starts anything, it either
stops or runs Compose with an extra file that sets `pull_policy: never` for
them. After the images are loaded it checks each service's image platform
against the service's `platform:` and the bundle's platform, because
Compose would otherwise start a wrong-architecture image or try to pull
the right one.

Measured with docker-compose 1.29.2 (Debian 12): v1 accepts `pull_policy`
in a file but never acts on it. `up` with the image present does not pull
even with `always`, and `up` with the image absent pulls even with
`never`; `config` prints the key for one file and drops it when it merges
several `-f` files. Under v1 the override file is harmless and only the
installer's own presence check keeps `up` from pulling.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import docker
import yaml

from installer import compose, engine
from installer.archive import VerifiedBundle
from installer.compose_cli import ComposeCommand
from installer.constants import COMPOSE_DIR, ENV_FILE, STATE_DIR
from installer.errors import ComposeUnavailableError, InstallError, InterpolationError
from installer.manifest import PullingService
from installer.state import write_atomic

logger = logging.getLogger(__name__)

__all__ = [
    "OVERRIDE_FILE",
    "ComposeRun",
    "PullPolicyMode",
    "normalise_platform",
    "override_text",
    "check_compose",
    "prepare_run",
    "pulling_services",
]

# Written into TARGET/.airlock/ and added to the `-f` list when a service's
# pull policy is overridden.
OVERRIDE_FILE = "pull-policy.override.yml"

# Compose Specification, services.pull_policy: these pull whatever is local.
_ALWAYS_PULLING = frozenset({"always", "daily", "weekly"})
# Policies that build the image when it is missing; `missing` is the default.
_BUILD_IF_MISSING = frozenset({"missing", "if_not_present"})


class PullPolicyMode(enum.StrEnum):
    """The installer's action for a service that would pull or build."""

    OVERRIDE = "override"
    STOP = "stop"


def _would_pull(service: compose.Service) -> bool:
    policy = service.pull_policy
    if policy is None:
        return service.has_build
    if policy in _ALWAYS_PULLING or policy.startswith("every_") or policy == "build":
        return True
    return policy in _BUILD_IF_MISSING and service.has_build


def pulling_services(project: compose.ComposeProject) -> list[PullingService]:
    """List the active services whose settings would make Compose pull or build."""
    return [
        PullingService(service.name, service.pull_policy, service.has_build)
        for service in project.active_services()
        if _would_pull(service)
    ]


def describe(service: PullingService) -> str:
    """Format a service for a message: `app (pull_policy: always)`, `web (build:)`."""
    reasons = []
    if service.pull_policy is not None:
        reasons.append(f"pull_policy: {service.pull_policy}")
    if service.build:
        reasons.append("build:")
    return f"{service.service} ({', '.join(reasons)})"


def override_text(services: Sequence[str]) -> str:
    """Return a compose file that sets `pull_policy: never` for `services`."""
    document = {"services": {name: {"pull_policy": "never"} for name in sorted(services)}}
    header = (
        "# Written by airlock-install: these services would make Compose pull or build\n"
        "# inside the enclave, so this file sets pull_policy: never for them.\n"
    )
    return header + yaml.safe_dump(document, sort_keys=True)


def normalise_platform(text: str) -> str:
    """Normalise `os/arch[/variant]` the way containerd compares platforms.

    `linux/x86_64` is `linux/amd64`, `linux/aarch64` and `linux/arm64/v8`
    are `linux/arm64`, `linux/arm` is `linux/arm/v7`.
    """
    parts = text.strip().lower().split("/")
    os_name = parts[0]
    architecture = parts[1] if len(parts) > 1 else ""
    variant = parts[2] if len(parts) > 2 else ""
    if architecture in ("x86_64", "x86-64"):
        architecture = "amd64"
    if architecture == "amd64" and variant == "v1":
        variant = ""
    if architecture == "aarch64":
        architecture = "arm64"
    if architecture == "arm64" and variant in ("8", "v8"):
        variant = ""
    if architecture == "arm" and variant in ("", "7"):
        variant = "v7"
    return "/".join(part for part in (os_name, architecture, variant) if part)


@dataclass(frozen=True)
class ComposeRun:
    """The project an install starts, checked for pulls, and the files to run it with."""

    project: compose.ComposeProject
    pulling: tuple[PullingService, ...]
    mode: PullPolicyMode
    # The bundle's platform: the default for services without `platform:`.
    platform: str

    @property
    def override(self) -> bool:
        """Whether Compose runs with the file that sets `pull_policy: never`."""
        return bool(self.pulling) and self.mode is PullPolicyMode.OVERRIDE

    def check_images(
        self,
        client: docker.DockerClient,
        command: ComposeCommand,
        service_images: Mapping[str, str],
    ) -> None:
        """Check, before `up`, that Compose can run the project from the loaded images.

        Raises what `check_compose` raises, and InstallError naming every
        service whose loaded image has another platform than the service
        (its `platform:`, else the bundle's) needs.
        """
        check_compose(self.project, command)
        wrong = []
        for service in self.project.active_services():
            tag = service_images.get(service.name)
            if tag is None:
                continue
            wanted = normalise_platform(service.platform or self.platform)
            found = normalise_platform(engine.image_platform(client, tag))
            if found != wanted:
                wrong.append(f"service {service.name} needs {wanted}, image {tag} is {found}")
            else:
                logger.debug("service %s: image %s is %s", service.name, tag, found)
        if wrong:
            raise InstallError(
                "wrong image platform: " + "; ".join(wrong),
                hint="build the bundle for the platform the services ask for "
                "(airlock-bundle build --platform), or fix their `platform:`",
            )

    def write_override(self, target: Path) -> list[Path]:
        """Write TARGET/.airlock/OVERRIDE_FILE when needed; return it in a list for `-f`.

        Without an override the list is empty, and a file an earlier
        install left is removed.
        """
        path = target / STATE_DIR / OVERRIDE_FILE
        if not self.override:
            if path.exists():
                path.unlink()
                logger.info("removed %s: no service needs it any more", path)
            return []
        text = override_text([service.service for service in self.pulling])
        write_atomic(path, text.encode("utf-8"))
        logger.info("compose override %s sets pull_policy: never", path)
        return [path]


def check_compose(project: compose.ComposeProject, command: ComposeCommand) -> None:
    """Raise ComposeUnavailableError when `command` cannot read the project's files.

    docker-compose 1.29 rejects a top-level `include` ("'include' does not
    match any of the regexes: '^x-'"), which Compose v2.20 introduced.
    """
    if project.uses_include and not command.is_v2:
        raise ComposeUnavailableError(
            f"the compose files use `include`, which docker-compose {command.version} rejects",
            hint="install the Compose v2 plugin (`docker compose`, 2.20 or later) "
            "and install again",
        )


def prepare_run(
    verified: VerifiedBundle,
    env_values: Mapping[str, str],
    environ: Mapping[str, str],
    mode: PullPolicyMode | str = PullPolicyMode.OVERRIDE,
    command: ComposeCommand | None = None,
) -> ComposeRun:
    """Load the staged project and decide what to do about services that would pull.

    Logs a WARNING naming each such service (found in the compose files or
    recorded by the bundler). Raises InstallError in `stop` mode, and what
    `check_compose` raises when `command` is given, before anything outside
    the staging folder has changed.
    """
    mode = PullPolicyMode(mode)
    manifest = verified.manifest
    files = [verified.staged(path) for path in manifest.compose_files]
    project_env = compose.project_environment(env_values, environ)
    try:
        project = compose.load_project(
            files,
            project_env,
            profiles=manifest.profiles,
            project_dir=verified.staged(COMPOSE_DIR.rstrip("/")),
            warn_unset=False,
        )
    except InterpolationError as err:
        raise InterpolationError(
            err.message, hint=f"set the missing values in the target's {ENV_FILE} and install again"
        ) from err

    found = {service.service: service for service in pulling_services(project)}
    active = {service.name for service in project.active_services()}
    for recorded in manifest.pulling_services:
        if recorded.service in active:
            found.setdefault(recorded.service, recorded)
    pulling = tuple(found[name] for name in sorted(found))

    if command is not None:
        check_compose(project, command)
    run = ComposeRun(project, pulling, mode, manifest.platform)
    if not pulling:
        return run
    for service in pulling:
        action = "stopping" if mode is PullPolicyMode.STOP else "overriding with pull_policy: never"
        logger.warning(
            "service %s would make Compose pull or build inside the enclave; %s",
            describe(service),
            action,
        )
    if mode is PullPolicyMode.STOP:
        raise InstallError(
            "services would make Compose contact a registry: "
            + ", ".join(describe(service) for service in pulling),
            hint="install with --pull-policy override to run them with pull_policy: never, "
            "or rebuild the bundle without those settings",
        )
    return run
