"""Drive Docker Compose as a command, and read the state of a project's services.

Two generations of Compose are in use: the v2 plugin (`docker compose`) and
the Python v1 program (`docker-compose`, 1.29 in Debian 12). `detect` finds
one, preferring v2, and `ComposeCommand` builds each command line for the
generation it found. Service state comes from the engine, through the
labels Compose sets on containers, because both generations set the same
labels while their `ps` output differs.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import shutil
import subprocess
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors
import yaml

from installer.constants import COMPOSE_PROJECT_LABEL, COMPOSE_SERVICE_LABEL
from installer.engine import engine_errors
from installer.errors import ComposeUnavailableError, HealthCheckError, InstallError
from installer.progress import NullProgress, ProgressReporter

logger = logging.getLogger(__name__)

# Compose sets this label to "True" on containers that `compose run` starts
# (docker/compose api/labels.go). Those are not part of the running service.
COMPOSE_ONEOFF_LABEL = "com.docker.compose.oneoff"

# Seconds that `docker compose version` may take before the candidate counts
# as missing.
VERSION_PROBE_TIMEOUT = 30
# Lines of stderr quoted when a compose command fails.
STDERR_TAIL_LINES = 20
# Log lines quoted for each service that fails its health wait.
LOG_TAIL_LINES = 20
# A container restarted this many times counts as crash-looping.
MAX_RESTARTS = 3
# A container without a healthcheck counts as ready once it has been seen
# running this many seconds without a restart. A single "running" sample
# would pass a crash-looping container caught between two restarts.
MIN_RUNNING_SECONDS = 3.0

_VERSION = re.compile(r"v?(\d+\.\d+\.\d+[^\s,]*)")

_INSTALL_HINT = (
    "install the Compose v2 plugin (`docker-compose-plugin` from Docker's apt repository, "
    "or the `docker-compose` binary copied to /usr/local/lib/docker/cli-plugins/) "
    "or Compose v1 (`apt-get install docker-compose` on Debian 12), "
    "and check that PATH contains it"
)


@dataclass(frozen=True)
class ComposeCommand:
    """One installed Compose program and the environment it runs with.

    `environ` is the whole environment of every compose run. Compose lets
    these variables override the project's `.env`, so a caller that resolves
    image references itself must use the same mapping.
    """

    program: tuple[str, ...]
    version: str
    # Excluded from repr because the environment may contain secrets.
    environ: Mapping[str, str] = field(repr=False, default_factory=dict)

    @property
    def is_v2(self) -> bool:
        """Whether this is Compose v2 or later, which has `--pull` and `config --images`."""
        major = self.version.split(".", 1)[0]
        return major.isdigit() and int(major) >= 2

    def command(
        self, project_dir: Path, files: Sequence[Path], project_name: str, *arguments: str
    ) -> list[str]:
        """Build the full command line for `arguments` run on one project."""
        argv = [*self.program, "--project-directory", str(project_dir)]
        for path in files:
            argv += ["--file", str(path)]
        argv += ["--project-name", project_name, *arguments]
        return argv

    def up_command(
        self,
        project_dir: Path,
        files: Sequence[Path],
        project_name: str,
        services: Sequence[str] = (),
    ) -> list[str]:
        """Build the `up` command line that starts services from local images only.

        v2 gets `--pull never`. v1 has no such option and pulls a missing
        image, so the caller must have checked that every image is present.
        `--no-build` keeps both from building a service that has `build:`.
        NOTE: v2 releases before about 2.15 (early 2023) accepted `--pull`
        on `up` but ignored it, so there too only the caller's check stops a pull.
        """
        arguments = ["up", "--detach"]
        if self.is_v2:
            arguments += ["--pull", "never"]
        arguments += ["--no-build", "--remove-orphans", *services]
        return self.command(project_dir, files, project_name, *arguments)

    def down_command(
        self,
        project_dir: Path,
        files: Sequence[Path],
        project_name: str,
        *,
        remove_volumes: bool = False,
        stop_timeout: int | None = None,
    ) -> list[str]:
        """Build the `down` command line, which removes volumes only when asked."""
        arguments = ["down", "--remove-orphans"]
        if remove_volumes:
            arguments.append("--volumes")
        if stop_timeout is not None:
            arguments += ["--timeout", str(stop_timeout)]
        return self.command(project_dir, files, project_name, *arguments)

    def up(
        self,
        project_dir: Path,
        files: Sequence[Path],
        project_name: str,
        *,
        services: Sequence[str] = (),
        timeout: float | None = None,
    ) -> None:
        """Create and start the project's containers in the background, never pulling."""
        logger.info("starting compose project %s in %s", project_name, project_dir)
        self.run(self.up_command(project_dir, files, project_name, services), project_dir, timeout)

    def down(
        self,
        project_dir: Path,
        files: Sequence[Path],
        project_name: str,
        remove_volumes: bool = False,
        *,
        stop_timeout: int | None = None,
        timeout: float | None = None,
    ) -> None:
        """Stop and remove the project's containers and networks, and its volumes if asked."""
        logger.info("stopping compose project %s", project_name)
        argv = self.down_command(
            project_dir,
            files,
            project_name,
            remove_volumes=remove_volumes,
            stop_timeout=stop_timeout,
        )
        self.run(argv, project_dir, timeout)

    def ps(
        self,
        project_dir: Path,
        files: Sequence[Path],
        project_name: str,
        *,
        timeout: float | None = None,
    ) -> list[str]:
        """Return the ids of the project's containers, stopped ones included."""
        argv = self.command(project_dir, files, project_name, "ps", "--all", "--quiet")
        output = self.run(argv, project_dir, timeout)
        return [line.strip() for line in output.splitlines() if line.strip()]

    def config_images(
        self,
        project_dir: Path,
        files: Sequence[Path],
        project_name: str,
        *,
        timeout: float | None = None,
    ) -> list[str]:
        """Return the image of every service after Compose's interpolation, without repeats."""
        if self.is_v2:
            argv = self.command(project_dir, files, project_name, "config", "--images")
            output = self.run(argv, project_dir, timeout)
            images = [line.strip() for line in output.splitlines() if line.strip()]
        else:
            # v1 has no `config --images`, so read the resolved file it prints.
            argv = self.command(project_dir, files, project_name, "config")
            resolved = yaml.safe_load(self.run(argv, project_dir, timeout)) or {}
            services = resolved.get("services") or {}
            images = [str(spec["image"]) for spec in services.values() if spec.get("image")]
        return list(dict.fromkeys(images))

    def run(self, argv: Sequence[str], project_dir: Path, timeout: float | None = None) -> str:
        """Run `argv` in `project_dir` with stdin closed, and return its stdout.

        Raises InstallError naming the command and quoting the end of its
        stderr when it fails or times out. The environment is never logged
        or quoted, because it may contain secrets.
        """
        command_line = shlex.join(argv)
        # subprocess reports a missing cwd as FileNotFoundError too, which
        # would read as a missing Compose program below.
        if not project_dir.is_dir():
            raise InstallError(f"`{command_line}` failed: project folder {project_dir} not found")
        logger.debug("running %s in %s", command_line, project_dir)
        try:
            completed = subprocess.run(
                list(argv),
                cwd=project_dir,
                env=dict(self.environ),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                errors="replace",
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as err:
            stderr = err.stderr.decode("utf-8", "replace") if isinstance(err.stderr, bytes) else ""
            raise InstallError(
                f"`{command_line}` timed out after {timeout:g} s{_tail(stderr)}"
            ) from err
        except FileNotFoundError as err:
            raise ComposeUnavailableError(
                f"`{command_line}` failed: {argv[0]} not found", hint=_INSTALL_HINT
            ) from err

        if completed.returncode != 0:
            raise InstallError(
                f"`{command_line}` failed with exit code {completed.returncode}"
                f"{_tail(completed.stderr)}"
            )
        return completed.stdout


def _tail(text: str, lines: int = STDERR_TAIL_LINES) -> str:
    last_lines = [line for line in text.splitlines() if line.strip()][-lines:]
    if not last_lines:
        return ""
    return ":\n" + "\n".join(f"  {line}" for line in last_lines)


def detect(environ: Mapping[str, str] | None = None) -> ComposeCommand:
    """Find Compose on the PATH of `environ`: the v2 plugin first, then v1 `docker-compose`.

    Raises ComposeUnavailableError, with what to install, when neither runs.
    """
    env = dict(os.environ if environ is None else environ)
    search_path = env.get("PATH", os.defpath)

    docker_cli = shutil.which("docker", path=search_path)
    if docker_cli is not None:
        version = _probe_version([docker_cli, "compose", "version", "--short"], env)
        if version is not None:
            logger.debug("using Compose %s as `docker compose`", version)
            return ComposeCommand((docker_cli, "compose"), version, env)

    # A standalone binary of v2 may also be named docker-compose, so the
    # version decides which options it gets, not the name.
    legacy = shutil.which("docker-compose", path=search_path)
    if legacy is not None:
        version = _probe_version([legacy, "version", "--short"], env)
        if version is not None:
            logger.debug("using Compose %s as %s", version, legacy)
            return ComposeCommand((legacy,), version, env)

    raise ComposeUnavailableError(
        "Docker Compose not found: neither `docker compose` (v2) nor `docker-compose` (v1) "
        "runs with this PATH",
        hint=_INSTALL_HINT,
    )


def _probe_version(argv: list[str], env: Mapping[str, str]) -> str | None:
    """Return the version `argv` prints, or None when it fails or prints none."""
    try:
        completed = subprocess.run(
            argv,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=VERSION_PROBE_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        logger.debug("%s failed: %s", shlex.join(argv), err)
        return None
    if completed.returncode != 0:
        logger.debug("%s exited with %d", shlex.join(argv), completed.returncode)
        return None
    match = _VERSION.search(completed.stdout)
    if match is None:
        logger.debug("%s printed no version", shlex.join(argv))
        return None
    return match.group(1)


@dataclass(frozen=True)
class ServiceStatus:
    """State of one container of a Compose service, as the engine reports it."""

    service: str
    container_name: str
    # Docker's container state: created, running, restarting, paused, exited or dead.
    state: str
    # healthy, unhealthy or starting, or None when neither image nor service has a healthcheck.
    health: str | None
    image: str
    # Set only once the container has stopped (exited or dead).
    exit_code: int | None
    container_id: str = ""
    restart_count: int = 0
    restart_policy: str = ""
    # The limit of an "on-failure:N" restart policy, 0 when unlimited.
    max_retries: int = 0
    # Output of the most recent health check, to explain an unhealthy verdict.
    health_output: str | None = None


def service_status(client: docker.DockerClient, project_name: str) -> list[ServiceStatus]:
    """List the containers of compose project `project_name`, sorted by service and name.

    Containers that `compose run` started are left out.
    """
    with engine_errors(f"listing containers of compose project {project_name}"):
        summaries = client.api.containers(
            all=True, filters={"label": f"{COMPOSE_PROJECT_LABEL}={project_name}"}
        )

    statuses: list[ServiceStatus] = []
    for summary in summaries:
        labels = summary.get("Labels") or {}
        if labels.get(COMPOSE_ONEOFF_LABEL) == "True":
            continue
        with engine_errors(f"inspecting container {summary['Id'][:12]}"):
            try:
                attrs = client.api.inspect_container(summary["Id"])
            except docker.errors.NotFound:
                # Removed between the listing and the inspect.
                continue
        statuses.append(_status_from_inspect(labels.get(COMPOSE_SERVICE_LABEL, ""), attrs))
    return sorted(statuses, key=lambda status: (status.service, status.container_name))


def _status_from_inspect(service: str, attrs: dict[str, Any]) -> ServiceStatus:
    state = attrs.get("State") or {}
    status = str(state.get("Status", "unknown"))
    health = state.get("Health") or {}
    health_log = health.get("Log") or []
    health_output = str(health_log[-1].get("Output", "")).strip() if health_log else None
    restart_policy = (attrs.get("HostConfig") or {}).get("RestartPolicy") or {}
    stopped = status in ("exited", "dead")
    return ServiceStatus(
        service=service,
        container_name=str(attrs.get("Name", "")).lstrip("/"),
        state=status,
        health=health.get("Status") or None,
        image=str((attrs.get("Config") or {}).get("Image", "")),
        exit_code=int(state.get("ExitCode", 0)) if stopped else None,
        container_id=str(attrs.get("Id", "")),
        restart_count=int(attrs.get("RestartCount", 0)),
        restart_policy=str(restart_policy.get("Name") or ""),
        max_retries=int(restart_policy.get("MaximumRetryCount") or 0),
        health_output=health_output,
    )


def wait_healthy(
    client: docker.DockerClient,
    project_name: str,
    services: Collection[str],
    *,
    timeout: float,
    poll: float = 2,
    progress: ProgressReporter | None = None,
) -> list[ServiceStatus]:
    """Wait until each service's containers are running and healthy.

    A container without a healthcheck counts as healthy once it has been
    running `MIN_RUNNING_SECONDS` without a restart.

    Fails early, without waiting for the timeout, when a container exited
    and will not be restarted, died, restarted `MAX_RESTARTS` times, or is
    unhealthy. Returns the status of every container of `services`.
    NOTE: a one-shot service that exits 0 by design also counts as failed,
    so callers leave such services out of `services`.

    Raises HealthCheckError naming each failing service, its state and
    health, and the last log lines of its containers.
    """
    expected_services = list(dict.fromkeys(services))
    reporter = progress if progress is not None else NullProgress()
    deadline = time.monotonic() + timeout
    ready: set[str] = set()
    # Container id -> (restart count, monotonic time) when first seen running.
    first_running: dict[str, tuple[int, float]] = {}

    reporter.start(
        f"Waiting for {len(expected_services)} services", len(expected_services), "services"
    )
    try:
        while True:
            statuses = service_status(client, project_name)
            now = time.monotonic()
            by_service: dict[str, list[ServiceStatus]] = {name: [] for name in expected_services}
            for status in statuses:
                if status.service in by_service:
                    by_service[status.service].append(status)

            failed: dict[str, str] = {}
            pending: dict[str, str] = {}
            for name, containers in by_service.items():
                verdict, reason = _judge(containers, first_running, now)
                if verdict == "failed":
                    failed[name] = reason
                elif verdict == "pending":
                    pending[name] = reason
                elif name not in ready:
                    ready.add(name)
                    reporter.advance(1)
                    logger.info("service %s is %s", name, reason)

            if failed:
                raise _health_error(client, f"{len(failed)} service(s) failed", failed, by_service)
            if not pending:
                return [status for status in statuses if status.service in by_service]
            remaining = deadline - now
            if remaining <= 0:
                raise _health_error(
                    client,
                    f"timed out after {timeout:g} s waiting for {len(pending)} service(s)",
                    pending,
                    by_service,
                )
            logger.debug("waiting for %s", ", ".join(f"{n} ({r})" for n, r in pending.items()))
            time.sleep(min(poll, remaining))
    finally:
        reporter.finish()


def _judge(
    containers: list[ServiceStatus], first_running: dict[str, tuple[int, float]], now: float
) -> tuple[str, str]:
    """Classify a service as "ready", "pending" or "failed", with the reason.

    `first_running` records when each container was first seen running, and
    this call updates it.
    """
    if not containers:
        return "pending", "no container"

    pending_reasons: list[str] = []
    for container in containers:
        failure = _failure(container)
        if failure is not None:
            return "failed", failure
        if container.state == "running" and container.health == "healthy":
            continue
        if container.state == "running" and container.health is None:
            # NOTE: a container that crashes only after MIN_RUNNING_SECONDS
            # still counts as ready; only a healthcheck can tell.
            seen = first_running.get(container.container_id)
            if seen is None or seen[0] != container.restart_count:
                seen = (container.restart_count, now)
                first_running[container.container_id] = seen
            if now - seen[1] >= MIN_RUNNING_SECONDS:
                continue
            pending_reasons.append(f"running for less than {MIN_RUNNING_SECONDS:g} s")
            continue
        reason = container.state
        if container.health is not None:
            reason += f", health {container.health}"
        pending_reasons.append(reason)

    if pending_reasons:
        return "pending", "; ".join(pending_reasons)
    return "ready", "healthy" if all(c.health == "healthy" for c in containers) else "running"


def _failure(container: ServiceStatus) -> str | None:
    """Return why `container` can no longer become healthy, or None while it still can."""
    if container.state == "dead":
        return "dead"
    if container.state == "exited":
        # Docker restarts an exited container under "always" and
        # "unless-stopped", and under "on-failure" after a non-zero exit
        # until the policy's retry limit.
        retries_left = container.max_retries == 0 or container.restart_count < container.max_retries
        restarts = container.restart_policy in ("always", "unless-stopped") or (
            container.restart_policy == "on-failure" and container.exit_code != 0 and retries_left
        )
        if not restarts:
            return f"exited with code {container.exit_code}"
    if container.restart_count >= MAX_RESTARTS:
        return f"{container.state}, restarted {container.restart_count} times"
    if container.health == "unhealthy":
        return f"{container.state}, unhealthy"
    return None


def _health_error(
    client: docker.DockerClient,
    summary: str,
    reasons: Mapping[str, str],
    by_service: Mapping[str, list[ServiceStatus]],
) -> HealthCheckError:
    """Build the error for the services in `reasons`, quoting their containers' logs."""
    listed = ", ".join(f"{name} ({reason})" for name, reason in reasons.items())
    lines = [f"{summary}: {listed}"]
    first_container = ""
    for name in reasons:
        for container in by_service.get(name, []):
            first_container = first_container or container.container_name
            lines.append(f"{name}: last {LOG_TAIL_LINES} log lines of {container.container_name}:")
            lines += [f"  {line}" for line in _log_tail(client, container.container_id)]
            if container.health_output:
                lines.append(f"{name}: last health check output: {container.health_output}")
    hint = f"see `docker logs {first_container}`" if first_container else None
    return HealthCheckError("\n".join(lines), hint=hint)


def _log_tail(client: docker.DockerClient, container_id: str) -> list[str]:
    try:
        raw = client.api.logs(container_id, stdout=True, stderr=True, tail=LOG_TAIL_LINES)
    except docker.errors.APIError as err:
        return [f"(logs not available: {err.explanation or err})"]
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    last_lines = text.splitlines()[-LOG_TAIL_LINES:]
    return last_lines or ["(no output)"]
