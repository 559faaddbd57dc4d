"""Checks that a host can take an install, shared by `install`, `plan` and `doctor`.

Each check is a small function that returns findings (ok, warning or
error, with a message) instead of raising, so that one run reports every
problem at once. `raise_for_errors` turns the errors into one exception.
"""

from __future__ import annotations

import errno
import logging
import re
import shutil
import socket
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import docker

from installer import dotenv, engine, releases
from installer.compose import (
    ComposeProject,
    NestedExpression,
    VariableUse,
    nested_expressions,
    read_document,
    variable_uses,
)
from installer.compose_cli import ComposeCommand, detect, service_status
from installer.constants import COMPOSE_PROJECT_LABEL, ENV_FILE
from installer.errors import (
    AirlockError,
    ComposeUnavailableError,
    DiskSpaceError,
    EnvironmentNotReadyError,
    NotInstalledError,
    UsageError,
)
from installer.journal import load_journal
from installer.progress import format_amount
from installer.state import load_state

logger = logging.getLogger(__name__)

OK = "ok"
WARNING = "warning"
ERROR = "error"

# The oldest Engine API airlock accepts: 1.40 is Docker Engine 19.03.
# NOTE: tested only against API 1.41 (Engine 20.10).
MIN_API_VERSION = "1.40"
# Free space kept beyond what an install writes, for the engine, logs and
# the application's own growth. `--reserve-space` changes it.
DEFAULT_RESERVE_BYTES = 1024**3
# NOTE: an estimate. `docker load` copies the archive into the data root's
# tmp folder and then unpacks each layer. An unpacked layer takes about
# twice its compressed size for typical images, but the ratio varies.
LOAD_SPACE_FACTOR = 3
# Seconds a TCP connect to an SMTP server or S3 endpoint may take.
ENDPOINT_TIMEOUT = 3.0

SMTP_HOST_KEY = "AUTHENTIK_EMAIL__HOST"
SMTP_PORT_KEY = "AUTHENTIK_EMAIL__PORT"
SMTP_DEFAULT_PORT = 25
S3_ENDPOINT_KEY = "AUTHENTIK_STORAGE__MEDIA__S3__ENDPOINT"

FreeSpace = Callable[[Path], int]


@dataclass(frozen=True)
class Finding:
    """The result of one check: its name, level (ok, warning, error) and message."""

    check: str
    level: str
    message: str
    hint: str | None = None
    # The error class raise_for_errors uses when this is the only kind of error.
    error_class: type[AirlockError] = EnvironmentNotReadyError

    def to_json(self) -> dict[str, str | None]:
        return {
            "check": self.check,
            "level": self.level,
            "message": self.message,
            "hint": self.hint,
        }

    def format(self) -> str:
        hint = f" ({self.hint})" if self.hint and self.level != OK else ""
        return f"{self.level:<7} {self.check}: {self.message}{hint}"


class PreflightError(EnvironmentNotReadyError):
    """One or more preflight checks failed; `findings` contains all of them."""

    def __init__(self, message: str, findings: Sequence[Finding], *, hint: str | None = None):
        super().__init__(message, hint=hint)
        self.findings = list(findings)


def raise_for_errors(findings: Sequence[Finding]) -> None:
    """Raise when any finding is an error, with every error message in one exception.

    A single kind of error keeps its own class (DiskSpaceError for space),
    so scripts and tests can tell them apart.
    """
    errors = [finding for finding in findings if finding.level == ERROR]
    if not errors:
        return
    message = "; ".join(f"{finding.check}: {finding.message}" for finding in errors)
    hints = [finding.hint for finding in errors if finding.hint]
    hint = "; ".join(dict.fromkeys(hints)) or None
    classes = {finding.error_class for finding in errors}
    error_class = classes.pop() if len(classes) == 1 else EnvironmentNotReadyError
    if issubclass(error_class, EnvironmentNotReadyError):
        error = error_class(f"preflight failed: {message}", hint=hint)
        if isinstance(error, PreflightError):
            error.findings = errors
        raise error
    raise PreflightError(f"preflight failed: {message}", errors, hint=hint)


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version)[:2])


def check_engine(
    environ: Mapping[str, str],
) -> tuple[list[Finding], docker.DockerClient | None, engine.EngineInfo | None]:
    """Check that the Docker engine responds and speaks a supported API version."""
    try:
        client = engine.connect(environ)
        info = engine.engine_info(client)
    except AirlockError as err:
        finding = Finding("engine", ERROR, err.message, err.hint, type(err))
        return [finding], None, None
    if _version_tuple(info.api_version) < _version_tuple(MIN_API_VERSION):
        finding = Finding(
            "engine",
            ERROR,
            f"Docker Engine {info.server_version} at {info.address} speaks API "
            f"{info.api_version}; airlock needs {MIN_API_VERSION} or later",
            "upgrade the engine to Docker 19.03 or later",
        )
        return [finding], client, info
    message = f"Docker Engine {info.server_version} at {info.address}, API {info.api_version}"
    return [Finding("engine", OK, message)], client, info


def check_compose(environ: Mapping[str, str]) -> tuple[list[Finding], ComposeCommand | None]:
    """Check that Compose v2 or v1 runs."""
    try:
        command = detect(environ)
    except AirlockError as err:
        return [Finding("compose", ERROR, err.message, err.hint, type(err))], None
    generation = "v2" if command.is_v2 else "v1"
    program = " ".join(command.program)
    return [Finding("compose", OK, f"Compose {command.version} ({generation}, {program})")], command


_WORD_KIND = {":-": "default", "-": "default", ":?": "message", "?": "message"}


def _display_name(path: Path, project: ComposeProject) -> str:
    if project.project_dir is not None and path.is_relative_to(project.project_dir):
        return str(path.relative_to(project.project_dir))
    return str(path)


def _nested_hint(nested: NestedExpression) -> str:
    v2 = "install the Compose v2 plugin (`docker compose`) and install again"
    if not nested.inner_braced and nested.operator in (":-", "-"):
        # Checked with docker-compose 1.29.2: it does not interpolate a
        # default, so `${A:-$B}` gives the text `$B` only while A is unset.
        return f"{v2}, or set {nested.name} to a non-empty value in the target's .env"
    # Checked with docker-compose 1.29.2: `${A:-${B:-16}}` gives `${B:-16}`
    # with A unset and `<A's value>}` with A set, whatever B is.
    return (
        f"{v2}, or have the bundle rebuilt without the nested expression; "
        "no value in .env avoids it under docker-compose v1"
    )


def check_nested_defaults(
    project: ComposeProject | None, command: ComposeCommand | None
) -> list[Finding]:
    """Reject nested defaults (`${A:-${B}}`) and alternative values under Compose v1.

    Compose v2 reads both as the Compose Specification says, as airlock does.
    docker-compose v1 ends an expression at its first `}` and never
    interpolates the default, so it runs a wrong image or value.
    """
    if project is None or command is None:
        return []
    found: list[NestedExpression] = []
    alternatives: list[VariableUse] = []
    for path in project.compose_files:
        document = read_document(path)
        source = _display_name(path, project)
        found += nested_expressions(document, source=source)
        alternatives += [
            use for use in variable_uses(document, source=source) if use.operator in (":+", "+")
        ]
    findings = [] if command.is_v2 else _v1_alternatives(alternatives, command)
    if not found:
        return findings
    if command.is_v2:
        message = (
            f"Compose {command.version} reads nested defaults as the Compose Specification "
            f"says ({len(found)} found)"
        )
        return [Finding("compose", OK, message)]
    for nested in found:
        kind = _WORD_KIND.get(nested.operator, "replacement")
        findings.append(
            Finding(
                "compose",
                ERROR,
                f"{nested.describe()} has an expression inside its {kind}; "
                f"docker-compose {command.version} reads nested defaults differently "
                "from the Compose Specification",
                _nested_hint(nested),
                ComposeUnavailableError,
            )
        )
    return findings


def _v1_alternatives(uses: list[VariableUse], command: ComposeCommand) -> list[Finding]:
    """Reject `${VAR:+word}` and `${VAR+word}`, which docker-compose v1 refuses to read.

    docker-compose 1.29.2 stops with "Invalid interpolation format" on them
    (checked here with `docker-compose config`), which would only show at `up`.
    """
    return [
        Finding(
            "compose",
            ERROR,
            f"{use.source}: {use.key_path}: ${{{use.name}{use.operator}...}} gives an "
            f"alternative value, which docker-compose {command.version} rejects as an "
            "invalid interpolation format",
            "install the Compose v2 plugin (`docker compose`) and install again, or have "
            "the bundle rebuilt without the alternative-value expression",
            ComposeUnavailableError,
        )
        for use in uses
    ]


def _disk_usage_free(path: Path) -> int:
    return shutil.disk_usage(path).free


def check_space(
    label: str,
    path: Path,
    needed: int,
    reserve: int,
    *,
    what: str,
    free_space: FreeSpace = _disk_usage_free,
) -> list[Finding]:
    """Check that the filesystem of `path` has `needed` plus `reserve` bytes free."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = free_space(probe)
    except OSError as err:
        return [
            Finding("disk", WARNING, f"free space of {label} {path} unreadable: {err.strerror}")
        ]
    wanted = needed + reserve
    figures = (
        f"{format_amount(free, 'B')} free, {format_amount(wanted, 'B')} needed "
        f"({what} {format_amount(needed, 'B')} + reserve {format_amount(reserve, 'B')})"
    )
    if free < wanted:
        return [
            Finding(
                "disk",
                ERROR,
                f"not enough space in {label} {path}: {figures}",
                f"free space on the filesystem of {path}",
                DiskSpaceError,
            )
        ]
    return [Finding("disk", OK, f"{label} {path}: {figures}")]


def check_engine_space(
    info: engine.EngineInfo,
    load_bytes: int,
    reserve: int,
    *,
    free_space: FreeSpace | None = None,
) -> list[Finding]:
    """Check free space in the engine's data root for the images to load."""
    needed = load_bytes * LOAD_SPACE_FACTOR
    if free_space is None:
        if info.free_bytes is None:
            return [
                Finding(
                    "disk",
                    WARNING,
                    f"free space of the Docker data root {info.data_root or '(unknown)'} "
                    "cannot be read from this host; not checked",
                )
            ]
        known = info.free_bytes
        free_space = lambda _path: known  # noqa: E731
    return check_space(
        "Docker data root",
        Path(info.data_root),
        needed,
        reserve,
        what="images to load, estimated",
        free_space=free_space,
    )


def _own_ports(client: docker.DockerClient, project_name: str) -> dict[tuple[int, str], str]:
    """Map (host port, protocol) to the container of `project_name` that publishes it."""
    with engine.engine_errors(f"listing containers of compose project {project_name}"):
        containers = client.api.containers(
            filters={"label": f"{COMPOSE_PROJECT_LABEL}={project_name}"}
        )
    owned: dict[tuple[int, str], str] = {}
    for summary in containers:
        name = (summary.get("Names") or ["?"])[0].lstrip("/")
        for port in summary.get("Ports") or []:
            if port.get("PublicPort"):
                owned[(int(port["PublicPort"]), str(port.get("Type", "tcp")))] = name
    return owned


def _port_free(host_ip: str, port: int, protocol: str) -> OSError | None:
    family = socket.AF_INET6 if ":" in host_ip else socket.AF_INET
    kind = socket.SOCK_DGRAM if protocol == "udp" else socket.SOCK_STREAM
    with socket.socket(family, kind) as sock:
        # Without SO_REUSEADDR a port in TIME_WAIT would count as busy.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host_ip or ("::" if family == socket.AF_INET6 else "0.0.0.0"), port))
        except OSError as err:
            return err
    return None


def check_ports(
    project: ComposeProject, client: docker.DockerClient | None, own_project: str | None
) -> list[Finding]:
    """Check that every host port the services publish is free or held by this application."""
    owned = _own_ports(client, own_project) if client is not None and own_project else {}
    findings: list[Finding] = []
    checked: list[str] = []
    for service in project.active_services():
        for published in service.published_ports:
            if published.host_port is None:
                continue
            where = f"{published.host_ip or '0.0.0.0'}:{published.host_port}/{published.protocol}"
            holder = owned.get((published.host_port, published.protocol))
            if holder is not None:
                checked.append(f"{where} (held by this application's {holder})")
                continue
            err = _port_free(published.host_ip, published.host_port, published.protocol)
            if err is None:
                checked.append(where)
            elif err.errno == errno.EADDRINUSE:
                findings.append(
                    Finding(
                        "ports",
                        ERROR,
                        f"port {where} for service {service.name} is in use by another program",
                        "stop that program (`ss -ltnp` shows it), or publish another port "
                        "by changing the port variable in the target's .env",
                    )
                )
            else:
                findings.append(
                    Finding(
                        "ports",
                        ERROR,
                        f"port {where} for service {service.name} cannot be bound: {err.strerror}",
                    )
                )
    if not findings:
        listed = ", ".join(checked) if checked else "none published"
        findings.append(Finding("ports", OK, f"host ports free: {listed}"))
    return findings


def check_images(
    client: docker.DockerClient | None,
    service_images: Mapping[str, str],
    loadable: Iterable[str] = (),
) -> list[Finding]:
    """Check that each service's image is present in the engine or about to be loaded."""
    if client is None:
        return []
    coming = set(loadable)
    missing = [tag for tag in engine.missing_images(client, sorted(set(service_images.values())))]
    absent = sorted(tag for tag in missing if tag not in coming)
    if absent:
        services = sorted(name for name, tag in service_images.items() if tag in absent)
        return [
            Finding(
                "images",
                ERROR,
                f"image {', '.join(absent)} for service {', '.join(services)} is neither "
                "in the Docker engine nor in the bundle",
                "install the bundle that carries it, or check the image variables in .env",
            )
        ]
    message = f"{len(set(service_images.values()))} images present or carried by the bundle"
    return [Finding("images", OK, message)]


def _endpoint(env_values: Mapping[str, str]) -> list[tuple[str, str, int]]:
    """List (purpose, host, port) of the SMTP server and S3 endpoint `.env` names."""
    endpoints: list[tuple[str, str, int]] = []
    smtp_host = env_values.get(SMTP_HOST_KEY, "").strip()
    if smtp_host:
        port_text = env_values.get(SMTP_PORT_KEY, "").strip()
        port = int(port_text) if port_text.isdigit() else SMTP_DEFAULT_PORT
        endpoints.append((f"SMTP server ({SMTP_HOST_KEY})", smtp_host, port))
    s3 = env_values.get(S3_ENDPOINT_KEY, "").strip()
    if s3:
        parsed = urllib.parse.urlsplit(s3 if "://" in s3 else f"https://{s3}")
        if parsed.hostname:
            default = 80 if parsed.scheme == "http" else 443
            try:
                port = parsed.port or default
            except ValueError:
                port = default
            endpoints.append((f"S3 endpoint ({S3_ENDPOINT_KEY})", parsed.hostname, port))
    return endpoints


def check_endpoints(
    env_values: Mapping[str, str], *, timeout: float = ENDPOINT_TIMEOUT
) -> list[Finding]:
    """Warn when the SMTP server or S3 endpoint that `.env` names does not accept TCP connections."""
    findings: list[Finding] = []
    for purpose, host, port in _endpoint(env_values):
        try:
            with socket.create_connection((host, port), timeout=timeout):
                pass
        except OSError as err:
            reason = "timed out" if isinstance(err, TimeoutError) else err.strerror or str(err)
            findings.append(
                Finding(
                    "endpoints",
                    WARNING,
                    f"{purpose} {host}:{port} is not reachable: {reason}",
                    "the application starts, but mail or media storage fails until it is",
                )
            )
        else:
            findings.append(
                Finding("endpoints", OK, f"{purpose} {host}:{port} accepts connections")
            )
    return findings


def log_findings(findings: Iterable[Finding]) -> None:
    for finding in findings:
        if finding.level == WARNING:
            logger.warning("preflight %s", finding.format())
        else:
            logger.debug("preflight %s", finding.format())


def check_services(client: docker.DockerClient, project_name: str) -> list[Finding]:
    """Report containers of the project that are not running, or not healthy."""
    statuses = service_status(client, project_name)
    if not statuses:
        return [Finding("services", ERROR, f"project {project_name} has no containers")]
    findings = []
    for status in statuses:
        if status.state != "running" or status.health not in (None, "healthy"):
            # A stopped container keeps its last health status, which is stale.
            health = f", {status.health}" if status.health and status.state == "running" else ""
            findings.append(
                Finding(
                    "services",
                    ERROR,
                    f"{status.service} ({status.container_name}) is {status.state}{health}",
                    f"see `docker logs {status.container_name}`",
                )
            )
    if not findings:
        findings.append(Finding("services", OK, f"{len(statuses)} containers running"))
    return findings


def doctor(
    target: Path,
    environ: Mapping[str, str],
    *,
    reserve: int = DEFAULT_RESERVE_BYTES,
    free_space: FreeSpace | None = None,
) -> list[Finding]:
    """Run the preflight checks against the release installed in `target`, changing nothing."""
    state = load_state(target)
    if state is None:
        raise NotInstalledError(target)
    findings: list[Finding] = []
    interrupted = load_journal(target)
    if interrupted is not None:
        findings.append(
            Finding(
                "journal",
                ERROR,
                f"{interrupted.describe()}",
                "run the same install again to finish it, or `airlock-install rollback`",
            )
        )

    engine_findings, client, info = check_engine(environ)
    findings += engine_findings
    compose_findings, compose_command = check_compose(environ)
    findings += compose_findings
    space = {} if free_space is None else {"free_space": free_space}
    findings += check_space("target", target, 0, reserve, what="nothing to write", **space)
    if info is not None:
        findings += check_engine_space(info, 0, reserve, **space)

    try:
        _, project_name, service_images, project = releases.running_project(
            target, state.current, environ
        )
    except (AirlockError, OSError) as err:
        message = err.message if isinstance(err, AirlockError) else str(err)
        findings.append(Finding("compose", ERROR, f"installed release unreadable: {message}"))
        return findings
    values = dotenv.parse((target / ENV_FILE).read_text(encoding="utf-8"))
    findings += check_nested_defaults(project, compose_command)
    if client is not None:
        findings += check_ports(project, client, project_name)
        findings += check_images(client, service_images)
        findings += check_services(client, project_name)
    findings += check_endpoints(values)
    return findings


_SIZE = re.compile(r"(\d+)\s*([KMGT]?)(i?B?)?", re.IGNORECASE)
_SIZE_FACTORS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def parse_size(text: str) -> int:
    """Parse a byte count such as `512M`, `1G` or `1GiB` (binary units) into bytes."""
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise UsageError(f"invalid size {text!r}; use a number of bytes or a suffix K, M, G or T")
    return int(match.group(1)) * _SIZE_FACTORS[match.group(2).upper()]
