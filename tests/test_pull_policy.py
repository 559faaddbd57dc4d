"""Services that would make Compose pull or build: bundle-time record, install-time decision."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
import yaml

from installer import compose
from installer.manifest import PullingService
from installer.pull_policy import normalise_platform, override_text, pulling_services

MIRROR = ["--mirror", "docker.io=127.0.0.1:5000"]
IMAGE = "docker.io/library/postgres:16-alpine"


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    program, *rest = args
    module = {"airlock-bundle": "bundler.cli", "airlock-install": "installer.cli"}[program]
    return subprocess.run(
        [sys.executable, "-m", module, *rest],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        stdin=subprocess.DEVNULL,
        timeout=600,
    )


def error_line(stderr: str) -> str:
    return next(line for line in stderr.splitlines() if line.startswith("error: "))


# ---------------------------------------------------------------------------
# Which services would pull
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "pulls"),
    [
        ("pull_policy: always", True),
        ("pull_policy: daily", True),
        ("pull_policy: weekly", True),
        ("pull_policy: every_12h", True),
        ("pull_policy: build", True),
        ("pull_policy: never", False),
        ("pull_policy: missing", False),
        ("pull_policy: if_not_present", False),
        ("build: .", True),
        ("{pull_policy: missing, build: .}", True),
        ("{pull_policy: never, build: .}", False),
        ("{}", False),
    ],
)
def test_pulling_services_by_setting(tmp_path: Path, settings: str, pulls: bool) -> None:
    extra = yaml.safe_load(settings)
    service = {"image": IMAGE, **extra}
    path = write(tmp_path, "compose.yml", yaml.safe_dump({"services": {"app": service}}))
    project = compose.load_project([path], {})

    expected = [PullingService("app", extra.get("pull_policy"), "build" in extra)] if pulls else []
    assert pulling_services(project) == expected


def test_inactive_profile_service_does_not_count(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "compose.yml",
        f"services:\n  debug:\n    image: {IMAGE}\n    pull_policy: always\n    profiles: [debug]\n",
    )

    assert pulling_services(compose.load_project([path], {})) == []


def test_override_text_sets_never_for_each_service() -> None:
    document = yaml.safe_load(override_text(["web", "app"]))

    assert document == {
        "services": {"app": {"pull_policy": "never"}, "web": {"pull_policy": "never"}}
    }


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("linux/amd64", "linux/amd64"),
        ("linux/x86_64", "linux/amd64"),
        ("linux/arm64/v8", "linux/arm64"),
        ("linux/aarch64", "linux/arm64"),
        ("linux/arm", "linux/arm/v7"),
        ("linux/arm/v6", "linux/arm/v6"),
    ],
)
def test_normalise_platform(text: str, expected: str) -> None:
    assert normalise_platform(text) == expected


# ---------------------------------------------------------------------------
# What docker-compose 1.29 does with pull_policy
# ---------------------------------------------------------------------------


class _Listener:
    """A TCP listener on a free loopback port that counts the connections it accepts."""

    def __init__(self) -> None:
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.socket.listen(16)
        self.socket.settimeout(0.2)
        self.port = int(self.socket.getsockname()[1])
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self.socket.accept()
            except OSError:
                continue
            self.connections += 1
            connection.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.socket.close()


@pytest.fixture
def listener() -> Iterator[_Listener]:
    server = _Listener()
    yield server
    server.close()


def test_compose_v1_ignores_pull_policy_never(
    tmp_path: Path, listener: _Listener, compose_project_name: str
) -> None:
    """docker-compose 1.29.2 ignores pull_policy, so only a presence check prevents pulls."""
    image = f"127.0.0.1:{listener.port}/airlock-test/absent:1"
    write(
        tmp_path, "compose.yml", f"services:\n  app:\n    image: {image}\n    pull_policy: never\n"
    )
    command = ["docker-compose", "--project-name", compose_project_name, "--file", "compose.yml"]

    config = subprocess.run(
        [*command, "config"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    up = subprocess.run(
        [*command, "up", "--detach", "--no-build"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert config.returncode == 0, config.stderr
    assert "pull_policy: never" in config.stdout
    assert up.returncode == 1
    assert f"Pulling app ({image})..." in up.stderr
    assert listener.connections >= 1


# ---------------------------------------------------------------------------
# Real builds and installs
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("keys")
    result = run("airlock-bundle", "keygen", "--out", str(folder), "--name", "release")
    assert result.returncode == 0, result.stderr
    return folder


@pytest.fixture(scope="module")
def bundle(
    standins: dict[str, str], keys: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, str]:
    """A bundle whose service `app` has pull_policy: always; returns it and the build's stderr."""
    spec_dir = tmp_path_factory.mktemp("spec")
    write(
        spec_dir,
        "compose.yml",
        f"services:\n  app:\n    image: {IMAGE}\n    pull_policy: always\n"
        '    entrypoint: ["sleep", "3600"]\n',
    )
    write(
        spec_dir,
        "bundle.yaml",
        "name: pull-demo\nversion: '1.0'\nsequence: 1\ncompose:\n  files: [compose.yml]\n",
    )
    output = tmp_path_factory.mktemp("dist") / "pull-demo.airlock"
    built = run(
        "airlock-bundle",
        "build",
        str(spec_dir / "bundle.yaml"),
        "--key",
        str(keys / "release.key"),
        "--output",
        str(output),
        *MIRROR,
    )
    assert built.returncode == 0, built.stderr
    return output, built.stderr


def _target(tmp_path: Path, project: str) -> Path:
    target = tmp_path / "target"
    target.mkdir()
    (target / ".env").write_text(f"COMPOSE_PROJECT_NAME={project}\n")
    return target


def _install(
    bundle: Path, keys: Path, target: Path, *options: str
) -> subprocess.CompletedProcess[str]:
    return run(
        "airlock-install",
        "install",
        str(bundle),
        "--target",
        str(target),
        "--key",
        str(keys / "release.pub"),
        "--timeout",
        "60",
        *options,
    )


def test_build_warns_and_records_pulling_service(bundle: tuple[Path, str]) -> None:
    output, stderr = bundle
    with tarfile.open(output) as archive:
        handle = archive.extractfile("airlock/manifest.json")
        assert handle is not None
        manifest = json.load(handle)

    assert manifest["compose"]["pulling_services"] == [
        {"service": "app", "pull_policy": "always", "build": False}
    ]
    assert (
        "service app (pull_policy: always) would make Compose pull or build inside the "
        "enclave; the installer overrides it with pull_policy: never or stops"
    ) in stderr


def test_install_overrides_pull_policy_and_comes_up(
    bundle: tuple[Path, str],
    keys: Path,
    tmp_path: Path,
    compose_project_name: str,
    docker_client: docker.DockerClient,
) -> None:
    target = _target(tmp_path, compose_project_name)

    result = _install(bundle[0], keys, target)

    assert result.returncode == 0, result.stdout + result.stderr
    assert (
        "service app (pull_policy: always) would make Compose pull or build inside the "
        "enclave; overriding with pull_policy: never"
    ) in result.stderr
    assert "app: running" in result.stdout
    override = target / ".airlock" / "pull-policy.override.yml"
    assert yaml.safe_load(override.read_text()) == {"services": {"app": {"pull_policy": "never"}}}
    [container] = docker_client.containers.list(
        filters={"label": f"com.docker.compose.project={compose_project_name}"}
    )
    config_files = container.labels["com.docker.compose.project.config_files"]
    assert config_files.endswith("pull-policy.override.yml")


def test_install_with_stop_changes_nothing(
    bundle: tuple[Path, str],
    keys: Path,
    tmp_path: Path,
    compose_project_name: str,
    docker_client: docker.DockerClient,
) -> None:
    target = _target(tmp_path, compose_project_name)
    env_before = (target / ".env").read_bytes()

    result = _install(bundle[0], keys, target, "--pull-policy", "stop")

    assert result.returncode == 1, result.stdout + result.stderr
    assert error_line(result.stderr) == (
        "error: services would make Compose contact a registry: app (pull_policy: always)"
    )
    assert "hint: install with --pull-policy override" in result.stderr
    assert (target / ".env").read_bytes() == env_before
    assert not (target / "compose.yml").exists()
    assert not docker_client.containers.list(
        all=True, filters={"label": f"com.docker.compose.project={compose_project_name}"}
    )
