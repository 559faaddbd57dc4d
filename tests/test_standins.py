"""The busybox stand-ins behave enough like the real images for authentik's compose file."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import docker
import docker.errors
import pytest
from docker.models.containers import Container

COMPOSE_2026 = Path(__file__).parent / "data" / "compose" / "authentik-2026.2" / "compose.yml"

SERVER = "ghcr.io/goauthentik/server:2026.2.2"
POSTGRES = "docker.io/library/postgres:16-alpine"
REDIS = "docker.io/library/redis:alpine"
OUTPOSTS = [f"ghcr.io/goauthentik/{name}:2026.2.2" for name in ("ldap", "proxy", "rac", "radius")]

# The real compose file checks PostgreSQL every 30 s, and Docker runs the
# first check one interval after the start, so healthy takes at least 30 s.
STACK_TIMEOUT = 120
# Environment the server stand-in requires, like authentik itself.
SERVER_ENVIRONMENT = {"AUTHENTIK_SECRET_KEY": "test-secret", "AUTHENTIK_POSTGRESQL__HOST": "db"}
# Label on every container these tests start, so that leftovers are easy to find.
TEST_LABEL = "airlock.test"


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for(condition: Callable[[], bool], timeout: float, description: str) -> None:
    """Poll `condition` every half second until it is true, or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {description}")
        time.sleep(0.5)


def http_status(url: str) -> int | None:
    """Return the HTTP status of a GET request to `url`, or None when nothing responds."""
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return int(response.status)
    except urllib.error.HTTPError as err:
        return err.code
    except OSError:
        return None


def exec_output(container: Container, *command: str) -> tuple[int, str]:
    """Run `command` in `container` and return its exit status and output."""
    result = container.exec_run(list(command))
    return result.exit_code, result.output.decode()


@pytest.fixture
def run_container(docker_client: docker.DockerClient) -> Iterator[Callable[..., Container]]:
    """A function that starts a detached container and removes it after the test."""
    started: list[Container] = []

    def run(image: str, *command: str, **options: object) -> Container:
        container = docker_client.containers.run(
            image,
            list(command) or None,
            detach=True,
            labels={TEST_LABEL: "standins"},
            **options,
        )
        started.append(container)
        return container

    yield run
    for container in started:
        try:
            container.remove(force=True, v=True)
        except docker.errors.NotFound:
            pass  # the test removed it already


@pytest.fixture
def upstream_tags(
    docker_client: docker.DockerClient, standins: dict[str, str]
) -> Iterator[dict[str, str]]:
    """Tag the stand-ins with their upstream names, as an installed bundle would.

    At teardown it removes only the tags that did not exist before the test.
    """
    added: list[str] = []
    for upstream, pushed in standins.items():
        try:
            docker_client.images.get(upstream)
        except docker.errors.ImageNotFound:
            added.append(upstream)
        docker_client.images.get(pushed).tag(upstream)
    yield standins
    for upstream in added:
        docker_client.images.remove(upstream, noprune=True)


def compose(project_dir: Path, project: str, *arguments: str) -> subprocess.CompletedProcess[str]:
    """Run docker-compose (v1) in `project_dir` and fail the test when it fails."""
    command = ["docker-compose", "-p", project, *arguments]
    result = subprocess.run(
        command,
        cwd=project_dir,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=STACK_TIMEOUT + 60,
        check=False,
    )
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stderr}"
    return result


def service_container(client: docker.DockerClient, project: str, service: str) -> Container:
    filters = {
        "label": [f"com.docker.compose.project={project}", f"com.docker.compose.service={service}"]
    }
    containers = client.containers.list(all=True, filters=filters)
    assert len(containers) == 1, f"expected one {service} container, found {len(containers)}"
    return containers[0]


def health_status(container: Container) -> str:
    container.reload()
    return str(container.attrs["State"].get("Health", {}).get("Status", "none"))


def test_authentik_compose_comes_up_healthy(
    tmp_path: Path,
    docker_client: docker.DockerClient,
    upstream_tags: dict[str, str],
    compose_project_name: str,
) -> None:
    shutil.copy(COMPOSE_2026, tmp_path / "compose.yml")
    http_port = free_port()
    https_port = free_port()
    (tmp_path / ".env").write_text(
        "PG_PASS=stand-in-password\n"
        "AUTHENTIK_SECRET_KEY=stand-in-secret-key\n"
        f"COMPOSE_PORT_HTTP={http_port}\n"
        f"COMPOSE_PORT_HTTPS={https_port}\n"
    )

    # Compose 1.29 starts server and worker only once PostgreSQL is healthy
    # (depends_on: service_healthy), so `up -d` returns after that.
    started = time.monotonic()
    compose(tmp_path, compose_project_name, "up", "-d")
    up_seconds = time.monotonic() - started

    postgres = service_container(docker_client, compose_project_name, "postgresql")
    assert health_status(postgres) == "healthy"

    live_url = f"http://127.0.0.1:{http_port}/-/health/live/"
    wait_for(lambda: http_status(live_url) == 200, 30, f"HTTP 200 from {live_url}")
    assert http_status(f"http://127.0.0.1:{http_port}/-/health/ready/") == 200

    server = service_container(docker_client, compose_project_name, "server")
    wait_for(lambda: health_status(server) == "healthy", 30, "the server to be healthy")

    worker = service_container(docker_client, compose_project_name, "worker")
    worker.reload()
    assert worker.status == "running"
    assert worker.attrs["Config"]["User"] == "root"

    # The data volume contains the files the stand-in wrote when it initialized.
    status, output = exec_output(postgres, "cat", "/var/lib/postgresql/data/PG_VERSION")
    assert status == 0
    assert output.strip() == "16"

    compose(tmp_path, compose_project_name, "down", "-v")
    assert not docker_client.containers.list(
        all=True, filters={"label": f"com.docker.compose.project={compose_project_name}"}
    )
    print(f"docker-compose up -d took {up_seconds:.1f} s")


def test_postgres_data_survives_new_container(
    docker_client: docker.DockerClient,
    standins: dict[str, str],
    run_container: Callable[..., Container],
) -> None:
    volume = docker_client.volumes.create(
        f"airlock-test-pgdata-{uuid.uuid4().hex[:12]}", labels={TEST_LABEL: "standins"}
    )
    try:
        mounts = {volume.name: {"bind": "/var/lib/postgresql/data", "mode": "rw"}}
        environment = {"POSTGRES_PASSWORD": "secret"}

        first = run_container(standins[POSTGRES], environment=environment, volumes=mounts)
        wait_for(lambda: exec_output(first, "pg_isready")[0] == 0, 20, "pg_isready")
        assert exec_output(first, "pg-put", "release", "2026.2.2") == (0, "")
        _, initialized = exec_output(
            first, "cat", "/var/lib/postgresql/data/airlock-standin-initialized"
        )
        first.stop(timeout=10)
        first.reload()
        assert first.attrs["State"]["ExitCode"] == 0

        second = run_container(standins[POSTGRES], environment=environment, volumes=mounts)
        wait_for(lambda: exec_output(second, "pg_isready")[0] == 0, 20, "pg_isready")
        assert exec_output(second, "pg-get", "release") == (0, "2026.2.2")
        _, marker = exec_output(
            second, "cat", "/var/lib/postgresql/data/airlock-standin-initialized"
        )
        assert marker == initialized
        assert "Skipping initialization" in second.logs().decode()
    finally:
        for container in docker_client.containers.list(all=True, filters={"volume": volume.name}):
            container.remove(force=True)
        volume.remove(force=True)


def test_postgres_rejects_missing_password(
    standins: dict[str, str], run_container: Callable[..., Container]
) -> None:
    container = run_container(standins[POSTGRES])
    result = container.wait(timeout=20)
    assert result["StatusCode"] == 1
    assert "superuser password is not specified" in container.logs().decode()


def test_pg_get_reports_missing_key(
    standins: dict[str, str], run_container: Callable[..., Container]
) -> None:
    container = run_container(standins[POSTGRES], environment={"POSTGRES_PASSWORD": "secret"})
    wait_for(lambda: exec_output(container, "pg_isready")[0] == 0, 20, "pg_isready")
    assert exec_output(container, "pg-get", "absent") == (1, "pg-get: key 'absent' not found\n")


def test_redis_cli_ping_prints_pong(
    standins: dict[str, str], run_container: Callable[..., Container]
) -> None:
    # The same command line and health check as authentik's 2025.2 compose file.
    container = run_container(standins[REDIS], "--save", "60", "1", "--loglevel", "warning")
    wait_for(
        lambda: exec_output(container, "sh", "-c", "redis-cli ping | grep PONG")[0] == 0,
        20,
        "redis-cli ping",
    )


def test_worker_stays_up_and_healthy(
    standins: dict[str, str], run_container: Callable[..., Container]
) -> None:
    worker = run_container(standins[SERVER], "worker", environment=SERVER_ENVIRONMENT, user="root")
    wait_for(lambda: exec_output(worker, "ak", "healthcheck")[0] == 0, 20, "ak healthcheck")
    worker.reload()
    assert worker.status == "running"


@pytest.mark.parametrize("reference", [POSTGRES, REDIS, SERVER, *OUTPOSTS])
def test_fail_exit_mode_exits_with_status_1(
    reference: str, standins: dict[str, str], run_container: Callable[..., Container]
) -> None:
    environment = {"STANDIN_FAIL": "exit", "POSTGRES_PASSWORD": "secret", **SERVER_ENVIRONMENT}
    container = run_container(standins[reference], environment=environment)
    assert container.wait(timeout=20)["StatusCode"] == 1
    assert "failing on purpose" in container.logs().decode()


def test_fail_unhealthy_mode_fails_health_checks(
    standins: dict[str, str], run_container: Callable[..., Container]
) -> None:
    environment = {"STANDIN_FAIL": "unhealthy", **SERVER_ENVIRONMENT}
    server = run_container(standins[SERVER], environment=environment)
    postgres = run_container(
        standins[POSTGRES], environment={"STANDIN_FAIL": "unhealthy", "POSTGRES_PASSWORD": "x"}
    )
    ldap = run_container(standins[OUTPOSTS[0]], environment={"STANDIN_FAIL": "unhealthy"})
    wait_for(lambda: exec_output(server, "test", "-f", "/tmp/authentik-mode")[0] == 0, 20, "server")
    wait_for(
        lambda: (
            exec_output(postgres, "test", "-f", "/var/lib/postgresql/data/postmaster.pid")[0] == 0
        ),
        20,
        "postgres",
    )

    assert exec_output(server, "ak", "healthcheck")[0] == 1
    status, _ = exec_output(server, "wget", "-q", "-O", "-", "http://127.0.0.1:9000/-/health/live/")
    assert status != 0
    assert exec_output(postgres, "pg_isready")[0] == 2
    assert exec_output(ldap, "/outpost", "healthcheck")[0] == 1
    for container in (server, postgres, ldap):
        container.reload()
        assert container.status == "running"


def test_server_and_outposts_share_base_layers(
    docker_client: docker.DockerClient, standins: dict[str, str]
) -> None:
    server_layers = docker_client.images.get(standins[SERVER]).attrs["RootFS"]["Layers"]
    postgres_layers = docker_client.images.get(standins[POSTGRES]).attrs["RootFS"]["Layers"]

    # busybox base, shared authentik layer, then the image's own layers.
    assert len(server_layers) > 2
    assert postgres_layers[0] == server_layers[0]
    for outpost in OUTPOSTS:
        outpost_layers = docker_client.images.get(standins[outpost]).attrs["RootFS"]["Layers"]
        assert outpost_layers[:2] == server_layers[:2], outpost
        assert outpost_layers[-1] != server_layers[-1], outpost


def test_standins_pushed_under_upstream_paths(registry: str, standins: dict[str, str]) -> None:
    expected = {
        POSTGRES: f"{registry}/library/postgres:16-alpine",
        REDIS: f"{registry}/library/redis:alpine",
        SERVER: f"{registry}/goauthentik/server:2026.2.2",
        **{outpost: outpost.replace("ghcr.io", registry) for outpost in OUTPOSTS},
    }
    assert standins == expected
    for pushed in standins.values():
        repository, tag = pushed.removeprefix(f"{registry}/").rsplit(":", 1)
        request = urllib.request.Request(
            f"http://{registry}/v2/{repository}/manifests/{tag}",
            method="HEAD",
            headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"},
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.status == 200, pushed


def test_build_standins_skips_unchanged_images(
    docker_client: docker.DockerClient,
    standins: dict[str, str],
    build_standins: Callable[..., dict[str, str]],
) -> None:
    before = {pushed: docker_client.images.get(pushed).id for pushed in standins.values()}
    assert build_standins() == standins
    after = {pushed: docker_client.images.get(pushed).id for pushed in standins.values()}
    assert after == before


def test_build_standins_bakes_in_failure_mode(
    docker_client: docker.DockerClient,
    registry: str,
    standins: dict[str, str],
    build_standins: Callable[..., dict[str, str]],
    run_container: Callable[..., Container],
) -> None:
    suffix = f"-broken-{uuid.uuid4().hex[:8]}"
    built = build_standins(
        "--only",
        "server",
        "--authentik-version",
        "2026.2.3",
        "--tag-suffix",
        suffix,
        "--fail",
        "unhealthy",
    )
    pushed = built[f"ghcr.io/goauthentik/server:2026.2.3{suffix}"]
    try:
        assert list(built) == [f"ghcr.io/goauthentik/server:2026.2.3{suffix}"]
        broken = docker_client.images.get(pushed)
        healthy = docker_client.images.get(standins[SERVER])
        # Only the top layers differ, so a bundle with both carries the base once.
        assert broken.attrs["RootFS"]["Layers"][:2] == healthy.attrs["RootFS"]["Layers"][:2]

        container = run_container(pushed, environment=SERVER_ENVIRONMENT)
        wait_for(
            lambda: exec_output(container, "test", "-f", "/tmp/authentik-mode")[0] == 0,
            20,
            "server",
        )
        assert exec_output(container, "ak", "version") == (0, "2026.2.3\n")
        assert exec_output(container, "ak", "healthcheck")[0] == 1
    finally:
        _delete_pushed_image(docker_client, pushed)


def _delete_pushed_image(client: docker.DockerClient, pushed: str) -> None:
    """Remove a test-built image, its containers and its manifest in the registry."""
    registry, _, rest = pushed.partition("/")
    repository, tag = rest.rsplit(":", 1)
    accept = "application/vnd.docker.distribution.manifest.v2+json"
    head = urllib.request.Request(
        f"http://{registry}/v2/{repository}/manifests/{tag}",
        method="HEAD",
        headers={"Accept": accept},
    )
    with urllib.request.urlopen(head, timeout=5) as response:
        digest = response.headers["Docker-Content-Digest"]
    delete = urllib.request.Request(
        f"http://{registry}/v2/{repository}/manifests/{digest}", method="DELETE"
    )
    with urllib.request.urlopen(delete, timeout=5):
        pass
    for container in client.containers.list(all=True, filters={"ancestor": pushed}):
        container.remove(force=True)
    client.images.remove(pushed)
