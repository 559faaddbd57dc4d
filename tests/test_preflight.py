"""Preflight checks stop an install before anything changes, and `doctor` reruns them."""

from __future__ import annotations

import socket
from pathlib import Path

import docker
import pytest
from upgrade_support import (
    V1,
    build_release,
    containers,
    free_port,
    install,
    isolate_host_files,
    make_keys,
    make_target,
    run,
)

from installer import preflight
from installer.errors import DiskSpaceError, UsageError
from installer.install import InstallOptions
from installer.install import install as install_bundle
from installer.signing import load_trusted_keys

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_keys(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def bundle(standins: dict[str, str], keys: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_release(V1, tmp_path_factory.mktemp("bundles"), keys)


@pytest.fixture(autouse=True)
def host_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    isolate_host_files(tmp_path, monkeypatch)


@pytest.fixture
def target(tmp_path: Path, compose_project_name: str) -> Path:
    return make_target(tmp_path / "target", compose_project_name)


def _snapshot(folder: Path) -> list[tuple[str, bytes]]:
    return sorted(
        (str(path.relative_to(folder)), path.read_bytes())
        for path in folder.rglob("*")
        if path.is_file()
    )


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith(("error: ", "hint: "))]


def _app_port(target: Path) -> int:
    for line in (target / ".env").read_text().splitlines():
        if line.startswith("APP_PORT="):
            return int(line.removeprefix("APP_PORT="))
    raise AssertionError("APP_PORT not in .env")


def test_busy_port_stops_install_before_changes(
    bundle: Path,
    keys: Path,
    target: Path,
    compose_project_name: str,
    docker_client: docker.DockerClient,
) -> None:
    port = _app_port(target)
    before = _snapshot(target)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()

        result = install(bundle, target, keys)

    assert result.returncode == 4, result.stdout + result.stderr
    assert _error_lines(result.stderr) == [
        f"error: preflight failed: ports: port 127.0.0.1:{port}/tcp for service db is in use "
        "by another program",
        "hint: stop that program (`ss -ltnp` shows it), or publish another port by changing "
        "the port variable in the target's .env",
    ]
    assert _snapshot(target) == before
    assert not (target / ".airlock").exists()
    assert containers(docker_client, compose_project_name) == {}


def test_reserve_beyond_free_space_is_disk_error(
    bundle: Path, keys: Path, target: Path, compose_project_name: str, docker_client
) -> None:  # type: ignore[no-untyped-def]
    before = _snapshot(target)

    result = install(bundle, target, keys, "--reserve-space", "1000000T")

    assert result.returncode == 4, result.stdout + result.stderr
    error, hint = _error_lines(result.stderr)
    assert error.startswith(f"error: preflight failed: disk: not enough space in target {target}: ")
    assert " free, 1000000.0 TiB needed (bundle staging " in error
    assert error.endswith(" MiB + reserve 1000000.0 TiB)")
    assert hint == f"hint: free space on the filesystem of {target}"
    assert _snapshot(target) == before
    assert not (target / ".airlock").exists()
    assert containers(docker_client, compose_project_name) == {}


def test_full_docker_data_root_is_disk_error(
    bundle: Path, keys: Path, target: Path, compose_project_name: str, docker_client
) -> None:  # type: ignore[no-untyped-def]
    """The free-space probe is replaced: the target has room, the data root 10 MiB."""
    before = _snapshot(target)

    def free_space(path: Path) -> int:
        return 10 * 1024**2 if str(path).startswith("/var/lib/docker") else 1024**4

    options = InstallOptions(
        bundle=bundle,
        target=target,
        trusted=tuple(load_trusted_keys([keys / "release.pub"], [])),
        reserve_bytes=100 * 1024**2,
        free_space=free_space,
    )
    with pytest.raises(DiskSpaceError) as raised:
        install_bundle(options)

    message = raised.value.message
    assert message.startswith("preflight failed: disk: not enough space in Docker data root ")
    assert (
        ": 10.0 MiB free, 100.0 MiB needed (images to load, estimated 0 B + reserve 100.0 MiB)"
        in message
    )
    assert _snapshot(target) == before
    assert not (target / ".airlock").exists()
    assert containers(docker_client, compose_project_name) == {}


def test_missing_compose_is_environment_error(bundle: Path, keys: Path, target: Path) -> None:
    before = _snapshot(target)

    result = install(bundle, target, keys, env={"PATH": str(target / "no-bin")})

    assert result.returncode == 4, result.stdout + result.stderr
    assert _error_lines(result.stderr)[0] == (
        "error: preflight failed: compose: Docker Compose not found: neither `docker compose` "
        "(v2) nor `docker-compose` (v1) runs with this PATH"
    )
    assert _snapshot(target) == before
    assert not (target / ".airlock").exists()


def test_unreachable_engine_is_environment_error(bundle: Path, keys: Path, target: Path) -> None:
    socket_path = target / "no-such.sock"

    result = install(bundle, target, keys, env={"DOCKER_HOST": f"unix://{socket_path}"})

    assert result.returncode == 4, result.stdout + result.stderr
    assert _error_lines(result.stderr)[0] == (
        f"error: preflight failed: engine: Docker engine at unix://{socket_path} does not "
        f"respond: no socket at {socket_path}"
    )
    assert not (target / ".airlock").exists()


def test_image_not_in_bundle_stops_install(bundle: Path, keys: Path, target: Path) -> None:
    with (target / ".env").open("a") as handle:
        handle.write("DB_IMAGE=docker.io/library/postgres:99-missing\n")
    before = _snapshot(target)

    result = install(bundle, target, keys)

    assert result.returncode == 1, result.stdout + result.stderr
    assert _error_lines(result.stderr)[0] == (
        "error: service db uses image docker.io/library/postgres:99-missing, "
        "which the bundle does not carry"
    )
    assert _snapshot(target) == before
    assert not (target / ".airlock").exists()


def test_unreachable_smtp_and_s3_are_warnings(bundle: Path, keys: Path, target: Path) -> None:
    closed = free_port()
    with (target / ".env").open("a") as handle:
        handle.write(
            f"AUTHENTIK_EMAIL__HOST=127.0.0.1\nAUTHENTIK_EMAIL__PORT={closed}\n"
            f"AUTHENTIK_STORAGE__MEDIA__S3__ENDPOINT=http://127.0.0.1:{closed}/media\n"
        )

    result = run(
        "airlock-install",
        "plan",
        str(bundle),
        "--target",
        str(target),
        "--key",
        str(keys / "release.pub"),
    )

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert (
        f"  warning endpoints: SMTP server (AUTHENTIK_EMAIL__HOST) 127.0.0.1:{closed} is not "
        "reachable: Connection refused (the application starts, but mail or media storage "
        "fails until it is)"
    ) in lines
    assert any(
        line.startswith(
            "  warning endpoints: S3 endpoint (AUTHENTIK_STORAGE__MEDIA__S3__ENDPOINT) "
            f"127.0.0.1:{closed} is not reachable: Connection refused"
        )
        for line in lines
    )


def test_reachable_smtp_is_ok() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]

        findings = preflight.check_endpoints(
            {"AUTHENTIK_EMAIL__HOST": "127.0.0.1", "AUTHENTIK_EMAIL__PORT": str(port)}
        )

    assert [(f.level, f.message) for f in findings] == [
        ("ok", f"SMTP server (AUTHENTIK_EMAIL__HOST) 127.0.0.1:{port} accepts connections")
    ]


def test_doctor_reports_stopped_service(
    bundle: Path,
    keys: Path,
    target: Path,
    compose_project_name: str,
    docker_client: docker.DockerClient,
) -> None:
    assert install(bundle, target, keys).returncode == 0

    healthy = run("airlock-install", "doctor", "--target", str(target))

    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    lines = healthy.stdout.splitlines()
    assert all(line.startswith("ok ") for line in lines), lines
    assert "ok      services: 2 containers running" in lines
    assert any("held by this application's" in line for line in lines)

    database = docker_client.containers.list(
        filters={"label": f"com.docker.compose.project={compose_project_name}"}
    )
    stopped = next(c for c in database if c.labels["com.docker.compose.service"] == "db")
    stopped.stop(timeout=5)

    broken = run("airlock-install", "doctor", "--target", str(target))

    assert broken.returncode == 4
    assert (
        f"error   services: db ({stopped.name}) is exited (see `docker logs {stopped.name}`)"
        in broken.stdout.splitlines()
    )
    assert _error_lines(broken.stderr)[0] == (
        f"error: preflight failed: services: db ({stopped.name}) is exited"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [("0", 0), ("512", 512), ("1K", 1024), ("100M", 100 * 1024**2), ("2GiB", 2 * 1024**3)],
)
def test_parse_size_units(text: str, expected: int) -> None:
    assert preflight.parse_size(text) == expected


def test_parse_size_rejects_words() -> None:
    with pytest.raises(UsageError) as raised:
        preflight.parse_size("lots")
    assert raised.value.message == (
        "invalid size 'lots'; use a number of bytes or a suffix K, M, G or T"
    )
