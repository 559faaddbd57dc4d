"""Fixtures for tests that need the real Docker engine, registry and stand-in images.

`scripts/services.sh start` starts the engine and the registry, and
`scripts/build-standins.sh` builds the stand-in images. On a developer's
machine without them, the tests that need them are skipped. With CI=true they
fail instead, and so does any test that skips itself for a missing Docker
engine or registry, because CI must run every test.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any, NoReturn

import docker
import docker.errors
import pytest

REPO = Path(__file__).resolve().parent.parent
BUILD_STANDINS = REPO / "scripts" / "build-standins.sh"
REGISTRY = f"127.0.0.1:{os.environ.get('AIRLOCK_REGISTRY_PORT', '5000')}"
IN_CI = os.environ.get("CI") == "true"

logger = logging.getLogger(__name__)

# Fixtures that need the engine or the registry. Tests that use them get the
# `docker` marker, so `pytest -m "not docker"` leaves them out.
DOCKER_FIXTURES = frozenset(
    {"docker_client", "registry", "build_standins", "standins", "compose_project_name"}
)

# Skip reasons that mean "the engine or the registry is missing". In CI such a
# skip is turned into a failure. Other skips (a missing Compose v2 plugin, for
# example) stay skips.
MISSING_SERVICE_REASON = re.compile(
    r"docker engine|docker daemon|dockerd|docker\.sock|\bregistry\b", re.IGNORECASE
)

# Seconds allowed for build-standins.sh. With Docker 20.10 and the vfs storage
# driver, a first build took 11 to 20 s and a run with nothing to rebuild 0.5 s.
BUILD_TIMEOUT = 600
# Seconds allowed for `docker-compose down`, which stops containers with a
# 10 s grace period each.
COMPOSE_DOWN_TIMEOUT = 180


def _service_unavailable(reason: str) -> NoReturn:
    """Skip the test on a developer's machine, or fail it in CI."""
    message = f"{reason}; start it with scripts/services.sh start"
    if IN_CI:
        pytest.fail(f"CI requires a running service: {message}", pytrace=False)
    pytest.skip(message)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if DOCKER_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.docker)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if not IN_CI or not report.skipped or hasattr(report, "wasxfail"):
        return

    # A skip's longrepr is (path, line number, "Skipped: reason").
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    if MISSING_SERVICE_REASON.search(reason):
        report.outcome = "failed"
        report.longrepr = f"CI=true does not allow skips for a missing engine or registry: {reason}"


# The installer keeps host-wide files: the trust store, the record of the
# highest release installed per bundle, and the audit log. Tests, and the CLI
# processes they start, must use their own, or one test's record would make
# another test's bundle look like a replay, and runs would leave files in /etc.
HOST_FILE_VARIABLES = {
    "AIRLOCK_TRUST_STORE": "trust",
    "AIRLOCK_HOST_RECORD": "installed.json",
    "AIRLOCK_AUDIT_LOG": "audit.log",
}


@pytest.fixture(scope="session", autouse=True)
def private_host_files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Point the installer's host-wide files at a folder of this test session."""
    folder = tmp_path_factory.mktemp("host-files")
    saved = {name: os.environ.get(name) for name in HOST_FILE_VARIABLES}
    for name, leaf in HOST_FILE_VARIABLES.items():
        os.environ[name] = str(folder / leaf)
    yield folder
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    """A client of the local Docker engine, with the API version negotiated."""
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as err:
        _service_unavailable(f"Docker engine not reachable ({err})")
    yield client
    client.close()


@pytest.fixture(scope="session")
def registry() -> str:
    """The address HOST:PORT of the local registry (plain HTTP on loopback)."""
    url = f"http://{REGISTRY}/v2/"
    try:
        with urllib.request.urlopen(url, timeout=5):
            pass
    except (urllib.error.URLError, OSError) as err:
        _service_unavailable(f"registry not reachable at {url} ({err})")
    return REGISTRY


@pytest.fixture(scope="session")
def build_standins(
    docker_client: docker.DockerClient, registry: str
) -> Callable[..., dict[str, str]]:
    """A function that runs build-standins.sh with extra options.

    It returns a map from each upstream reference, such as
    `ghcr.io/goauthentik/server:2026.2.2`, to the reference the image was
    pushed to in the local registry.
    """

    def build(*options: str) -> dict[str, str]:
        command = ["bash", str(BUILD_STANDINS), "--registry", registry, *options]
        result = subprocess.run(
            command,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=BUILD_TIMEOUT,
            check=False,
        )
        if result.returncode != 0:
            pytest.fail(
                f"{' '.join(command)} failed with exit status {result.returncode}:\n"
                f"{result.stderr}",
                pytrace=False,
            )
        references: dict[str, str] = {}
        for line in result.stdout.splitlines():
            upstream, pushed = line.split()
            references[upstream] = pushed
        return references

    return build


@pytest.fixture(scope="session")
def standins(build_standins: Callable[..., dict[str, str]]) -> dict[str, str]:
    """The default stand-ins: upstream reference -> local registry reference."""
    return build_standins()


@pytest.fixture
def compose_project_name(docker_client: docker.DockerClient) -> Iterator[str]:
    """A unique Compose project name, whose project is taken down after the test.

    Teardown runs `docker-compose down -v` with the files and folder the
    project's containers were created from, then removes whatever still
    carries the project's label, including volumes and networks.
    """
    name = f"airlock-test-{uuid.uuid4().hex[:12]}"
    yield name
    _compose_down(docker_client, name)
    _remove_labelled(docker_client, name)


def _compose_down(client: docker.DockerClient, project: str) -> None:
    """Run `docker-compose down -v` for the project if it has containers."""
    label = f"com.docker.compose.project={project}"
    containers = client.containers.list(all=True, filters={"label": label})
    if not containers:
        return

    # Compose 1.29 cannot take a project down by name alone: it needs the
    # files, and it reads the .env file in the project folder.
    labels = containers[0].labels
    working_dir = labels.get("com.docker.compose.project.working_dir", "")
    config_files = labels.get("com.docker.compose.project.config_files", "")
    if not working_dir or not Path(working_dir).is_dir():
        return
    command = ["docker-compose", "-p", project, "--project-directory", working_dir]
    for config_file in config_files.split(","):
        if config_file:
            command += ["-f", config_file]
    command += ["down", "-v", "--remove-orphans"]
    result = subprocess.run(
        command,
        cwd=working_dir,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=COMPOSE_DOWN_TIMEOUT,
        check=False,
    )
    # The label sweep that follows removes what this command left behind.
    if result.returncode != 0:
        logger.warning(
            "docker-compose down failed for project %s (exit status %d): %s",
            project,
            result.returncode,
            result.stderr.strip(),
        )


def _remove_labelled(client: docker.DockerClient, project: str) -> None:
    """Remove containers, networks and volumes that still carry the project's label."""
    filters = {"label": f"com.docker.compose.project={project}"}
    for container in client.containers.list(all=True, filters=filters):
        container.remove(force=True, v=True)
    for network in client.networks.list(filters=filters):
        network.remove()
    for volume in client.volumes.list(filters=filters):
        volume.remove(force=True)
