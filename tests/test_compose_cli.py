"""Tests for installer.compose_cli: finding Compose, its command lines, and health waits.

The project tests run the Compose found on PATH against the real engine.
Here that is docker-compose v1 1.29, because the v2 plugin is not installed,
so v2 is covered by command-line tests and by a stand-in `docker` script.
"""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import docker
import docker.errors
import pytest

from installer.compose_cli import (
    ComposeCommand,
    ServiceStatus,
    detect,
    service_status,
    wait_healthy,
)
from installer.errors import ComposeUnavailableError, HealthCheckError, InstallError
from installer.progress import LoggingProgress

BUSYBOX = Path("/bin/busybox")
PROJECT_DIR = Path("/srv/app")
FILES = [Path("/srv/app/compose.yml"), Path("/srv/app/compose.override.yml")]
IN_CI = os.environ.get("CI") == "true"


def skip_or_fail(reason: str) -> None:
    """Skip on a developer's machine, but fail in CI, where every component must exist."""
    if IN_CI:
        pytest.fail(f"CI needs this: {reason}")
    pytest.skip(reason)


# TODO: move docker_client and the busybox image builder to tests/conftest.py
# once it exists, because test_engine.py carries a copy of both.
@pytest.fixture(scope="module")
def docker_client() -> Iterator[docker.DockerClient]:
    """Connect to the local engine, skipping without one except in CI, where that fails."""
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as err:
        skip_or_fail(f"no Docker engine: {err}")
    yield client
    client.close()


def busybox_rootfs() -> bytes:
    """Build a rootfs tar with static busybox, one link per applet, and /etc/passwd."""
    if not BUSYBOX.is_file():
        skip_or_fail("needs /bin/busybox from the busybox-static package")
    listing = subprocess.run([str(BUSYBOX), "--list"], capture_output=True, text=True, check=True)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for directory in ("bin", "etc", "tmp"):
            info = tarfile.TarInfo(directory)
            info.type = tarfile.DIRTYPE
            info.mode = 0o1777 if directory == "tmp" else 0o755
            tar.addfile(info)
        tar.add(str(BUSYBOX), arcname="bin/busybox")
        for applet in listing.stdout.split():
            if applet == "busybox":
                continue
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type = tarfile.SYMTYPE
            link.linkname = "busybox"
            tar.addfile(link)
        passwd = b"root:x:0:0:root:/root:/bin/sh\n"
        info = tarfile.TarInfo("etc/passwd")
        info.size = len(passwd)
        info.mode = 0o644
        tar.addfile(info, io.BytesIO(passwd))
    return buffer.getvalue()


@pytest.fixture(scope="module")
def busybox_image(docker_client: docker.DockerClient) -> Iterator[str]:
    """Import a uniquely named busybox image for the compose projects and yield its reference."""
    repository = f"airlock-test/compose-{uuid.uuid4().hex[:12]}"
    docker_client.api.import_image_from_data(
        busybox_rootfs(), repository=repository, tag="1", changes=["ENV PATH=/bin"]
    )
    reference = f"{repository}:1"
    yield reference
    try:
        docker_client.api.remove_image(reference, force=True)
    except docker.errors.NotFound:
        pass


@pytest.fixture(scope="module")
def compose() -> ComposeCommand:
    try:
        return detect()
    except ComposeUnavailableError as err:
        skip_or_fail(str(err))
        raise


ProjectFactory = Callable[[str], tuple[Path, list[Path], str]]


@pytest.fixture()
def make_project(
    compose: ComposeCommand, busybox_image: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProjectFactory]:
    """Write compose projects from YAML with `IMAGE` replaced, and take each down -v at teardown."""
    created: list[tuple[Path, list[Path], str]] = []

    def make(compose_yaml: str) -> tuple[Path, list[Path], str]:
        project_dir = tmp_path_factory.mktemp("project")
        compose_file = project_dir / "compose.yml"
        compose_file.write_text(compose_yaml.replace("IMAGE", busybox_image), encoding="utf-8")
        project = (project_dir, [compose_file], f"airlock-test-{uuid.uuid4().hex[:10]}")
        created.append(project)
        return project

    yield make
    for project_dir, files, name in created:
        compose.down(project_dir, files, name, remove_volumes=True, stop_timeout=1)


def write_script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body, encoding="utf-8")
    path.chmod(0o755)
    return path


# A stand-in for the docker CLI with the v2 plugin. It reports a v2 version,
# records its directory, arguments and stdin, and exits with $FAKE_EXIT.
FAKE_DOCKER_V2 = """\
if [ "$1 $2 $3" = "compose version --short" ]; then echo "2.24.5"; exit 0; fi
{ pwd; for argument in "$@"; do echo "$argument"; done; } > "$RECORD_FILE"
if read -r line; then echo "stdin was open" >> "$RECORD_FILE"; fi
i=1; while [ $i -le 30 ]; do echo "progress line $i" >&2; i=$((i+1)); done
exit "${FAKE_EXIT:-0}"
"""


# Command lines. Compose v2 cannot run here, so its options are checked as built.


def test_v2_up_command_never_pulls() -> None:
    command = ComposeCommand(("docker", "compose"), "2.24.5")

    assert command.is_v2
    assert command.up_command(PROJECT_DIR, FILES, "demo") == [
        "docker",
        "compose",
        "--project-directory",
        "/srv/app",
        "--file",
        "/srv/app/compose.yml",
        "--file",
        "/srv/app/compose.override.yml",
        "--project-name",
        "demo",
        "up",
        "--detach",
        "--pull",
        "never",
        "--no-build",
        "--remove-orphans",
    ]


def test_v1_up_command_has_no_pull_option() -> None:
    command = ComposeCommand(("/usr/bin/docker-compose",), "1.29.2")

    argv = command.up_command(PROJECT_DIR, FILES[:1], "demo", ["web"])

    assert not command.is_v2
    assert "--pull" not in argv
    assert argv[-5:] == ["up", "--detach", "--no-build", "--remove-orphans", "web"]
    assert argv[:3] == ["/usr/bin/docker-compose", "--project-directory", "/srv/app"]


def test_down_command_keeps_volumes_by_default() -> None:
    command = ComposeCommand(("docker", "compose"), "2.24.5")

    keep = command.down_command(PROJECT_DIR, FILES[:1], "demo")
    remove = command.down_command(
        PROJECT_DIR, FILES[:1], "demo", remove_volumes=True, stop_timeout=5
    )

    assert keep[-2:] == ["down", "--remove-orphans"]
    assert remove[-5:] == ["down", "--remove-orphans", "--volumes", "--timeout", "5"]


def test_compose_command_repr_hides_environment() -> None:
    command = ComposeCommand(("docker", "compose"), "2.24.5", {"DB_PASSWORD": "hunter2"})

    assert "hunter2" not in repr(command)
    assert "DB_PASSWORD" not in repr(command)


# Detection.


def test_detect_without_compose_fails(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()

    with pytest.raises(ComposeUnavailableError) as caught:
        detect({"PATH": str(empty)})

    assert caught.value.message == (
        "Docker Compose not found: neither `docker compose` (v2) nor `docker-compose` (v1) "
        "runs with this PATH"
    )
    assert "docker-compose-plugin" in str(caught.value)
    assert "apt-get install docker-compose" in str(caught.value)


def test_detect_prefers_v2_plugin(tmp_path: Path) -> None:
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    fake_docker = write_script(fake_bin / "docker", FAKE_DOCKER_V2)
    write_script(fake_bin / "docker-compose", 'echo "1.29.2"\n')

    command = detect({"PATH": str(fake_bin)})

    assert command.program == (str(fake_docker), "compose")
    assert command.version == "2.24.5"
    assert command.is_v2


def test_detect_falls_back_to_v1(tmp_path: Path) -> None:
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    # The docker CLI without the plugin exits 1 on `docker compose`.
    write_script(
        fake_bin / "docker", "echo \"docker: 'compose' is not a docker command.\" >&2\nexit 1\n"
    )
    legacy = write_script(fake_bin / "docker-compose", 'echo "1.29.2"\n')

    command = detect({"PATH": str(fake_bin)})

    assert command.program == (str(legacy),)
    assert command.version == "1.29.2"
    assert not command.is_v2


def test_detect_reads_standalone_v2_as_v2(tmp_path: Path) -> None:
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    legacy = write_script(fake_bin / "docker-compose", 'echo "v2.20.3"\n')

    command = detect({"PATH": str(fake_bin)})

    assert command.program == (str(legacy),)
    assert command.is_v2


# Running commands, with the stand-in v2 CLI.


def fake_v2(tmp_path: Path, **environ: str) -> tuple[ComposeCommand, Path]:
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    write_script(fake_bin / "docker", FAKE_DOCKER_V2)
    record = tmp_path / "record.txt"
    command = detect({"PATH": f"{fake_bin}:/usr/bin:/bin", "RECORD_FILE": str(record), **environ})
    return command, record


def test_up_runs_in_project_dir_with_stdin_closed(tmp_path: Path) -> None:
    command, record = fake_v2(tmp_path)
    project_dir = tmp_path / "project"
    project_dir.mkdir()

    command.up(project_dir, [project_dir / "compose.yml"], "demo")

    lines = record.read_text(encoding="utf-8").splitlines()
    assert lines[0] == str(project_dir)
    assert lines[1:] == command.up_command(project_dir, [project_dir / "compose.yml"], "demo")[1:]
    assert "stdin was open" not in lines


def test_failed_command_quotes_stderr_tail(tmp_path: Path) -> None:
    command, _ = fake_v2(tmp_path, FAKE_EXIT="17", SECRET_FROM_ENV="hunter2")
    project_dir = tmp_path / "project"
    project_dir.mkdir()

    with pytest.raises(InstallError) as caught:
        command.up(project_dir, [project_dir / "compose.yml"], "demo")

    message = caught.value.message
    first_line, *tail = message.splitlines()
    assert first_line.startswith(f"`{command.program[0]} compose --project-directory")
    assert first_line.endswith(
        " up --detach --pull never --no-build --remove-orphans` failed with exit code 17:"
    )
    assert tail == [f"  progress line {i}" for i in range(11, 31)]
    assert "hunter2" not in message


def test_slow_command_times_out(tmp_path: Path) -> None:
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    write_script(fake_bin / "docker-compose", 'echo "1.29.2"; [ "$1" = version ] || sleep 30\n')
    command = detect({"PATH": f"{fake_bin}:/usr/bin:/bin"})

    started = time.monotonic()
    with pytest.raises(InstallError) as caught:
        command.up(tmp_path, [tmp_path / "compose.yml"], "demo", timeout=1)

    assert time.monotonic() - started < 10
    assert caught.value.message.endswith("timed out after 1 s")


# Real projects under the Compose found on PATH (docker-compose v1 here).

HEALTHY_PROJECT = """\
services:
  checked:
    image: IMAGE
    command: ["sh", "-c", "echo checked-started; exec sleep 3600"]
    healthcheck:
      test: ["CMD", "true"]
      interval: 1s
      timeout: 2s
      retries: 3
  plain:
    image: IMAGE
    command: ["sleep", "3600"]
"""


@pytest.mark.docker
def test_healthy_project_comes_up(
    compose: ComposeCommand, docker_client: docker.DockerClient, make_project: ProjectFactory
) -> None:
    project_dir, files, name = make_project(HEALTHY_PROJECT)

    compose.up(project_dir, files, name)
    statuses = wait_healthy(
        docker_client,
        name,
        ["checked", "plain"],
        timeout=60,
        poll=0.5,
        progress=LoggingProgress(),
    )

    by_service = {status.service: status for status in statuses}
    assert sorted(by_service) == ["checked", "plain"]
    assert by_service["checked"].state == "running"
    assert by_service["checked"].health == "healthy"
    assert by_service["plain"].state == "running"
    assert by_service["plain"].health is None
    assert by_service["plain"].exit_code is None
    assert by_service["plain"].image.startswith("airlock-test/compose-")
    assert service_status(docker_client, name) == statuses
    assert sorted(compose.ps(project_dir, files, name)) == sorted(
        status.container_id for status in statuses
    )


@pytest.mark.docker
def test_config_images_lists_service_images(
    compose: ComposeCommand, busybox_image: str, make_project: ProjectFactory
) -> None:
    project_dir, files, name = make_project(HEALTHY_PROJECT)

    assert compose.config_images(project_dir, files, name) == [busybox_image]


@pytest.mark.docker
def test_unhealthy_service_fails_early_with_logs(
    compose: ComposeCommand, docker_client: docker.DockerClient, make_project: ProjectFactory
) -> None:
    project_dir, files, name = make_project(
        """\
services:
  broken:
    image: IMAGE
    command: ["sh", "-c", "echo broken-log-line-1; echo broken-log-line-2; exec sleep 3600"]
    healthcheck:
      test: ["CMD-SHELL", "echo probe-refused-connection; exit 1"]
      interval: 1s
      timeout: 2s
      retries: 2
  plain:
    image: IMAGE
    command: ["sleep", "3600"]
"""
    )
    compose.up(project_dir, files, name)

    started = time.monotonic()
    with pytest.raises(HealthCheckError) as caught:
        wait_healthy(docker_client, name, ["broken", "plain"], timeout=60, poll=0.5)

    assert time.monotonic() - started < 30
    lines = caught.value.message.splitlines()
    assert lines[0] == "1 service(s) failed: broken (running, unhealthy)"
    assert lines[1].startswith("broken: last 20 log lines of ")
    assert lines[2:4] == ["  broken-log-line-1", "  broken-log-line-2"]
    assert lines[4] == "broken: last health check output: probe-refused-connection"
    assert caught.value.hint is not None
    assert caught.value.hint.startswith("see `docker logs ")


@pytest.mark.docker
def test_exited_service_fails_early(
    compose: ComposeCommand, docker_client: docker.DockerClient, make_project: ProjectFactory
) -> None:
    project_dir, files, name = make_project(
        """\
services:
  crasher:
    image: IMAGE
    command: ["sh", "-c", "echo missing-config-file; exit 3"]
"""
    )
    compose.up(project_dir, files, name)

    with pytest.raises(HealthCheckError) as caught:
        wait_healthy(docker_client, name, ["crasher"], timeout=60, poll=0.5)

    lines = caught.value.message.splitlines()
    assert lines[0] == "1 service(s) failed: crasher (exited with code 3)"
    assert lines[2] == "  missing-config-file"


@pytest.mark.docker
def test_restart_loop_fails_early(
    compose: ComposeCommand, docker_client: docker.DockerClient, make_project: ProjectFactory
) -> None:
    project_dir, files, name = make_project(
        """\
services:
  looper:
    image: IMAGE
    restart: always
    command: ["sh", "-c", "echo looping; exit 1"]
"""
    )
    compose.up(project_dir, files, name)

    started = time.monotonic()
    with pytest.raises(HealthCheckError) as caught:
        wait_healthy(docker_client, name, ["looper"], timeout=60, poll=0.5)

    assert time.monotonic() - started < 30
    first_line = caught.value.message.splitlines()[0]
    assert first_line.startswith("1 service(s) failed: looper (")
    assert "restarted" in first_line
    assert "  looping" in caught.value.message.splitlines()


@pytest.mark.docker
def test_exhausted_retry_limit_fails_early(
    compose: ComposeCommand, docker_client: docker.DockerClient, make_project: ProjectFactory
) -> None:
    project_dir, files, name = make_project(
        """\
services:
  retrier:
    image: IMAGE
    restart: "on-failure:1"
    command: ["sh", "-c", "echo giving-up; exit 1"]
"""
    )
    compose.up(project_dir, files, name)

    started = time.monotonic()
    with pytest.raises(HealthCheckError) as caught:
        wait_healthy(docker_client, name, ["retrier"], timeout=60, poll=0.5)

    assert time.monotonic() - started < 30
    assert caught.value.message.splitlines()[0] == (
        "1 service(s) failed: retrier (exited with code 1)"
    )


@pytest.mark.docker
def test_slow_healthcheck_times_out(
    compose: ComposeCommand, docker_client: docker.DockerClient, make_project: ProjectFactory
) -> None:
    project_dir, files, name = make_project(
        """\
services:
  slow:
    image: IMAGE
    command: ["sleep", "3600"]
    healthcheck:
      test: ["CMD", "true"]
      interval: 1h
"""
    )
    compose.up(project_dir, files, name)

    with pytest.raises(HealthCheckError) as caught:
        wait_healthy(docker_client, name, ["slow"], timeout=2, poll=0.5)

    assert caught.value.message.splitlines()[0] == (
        "timed out after 2 s waiting for 1 service(s): slow (running, health starting)"
    )


@pytest.mark.docker
def test_missing_service_times_out(
    docker_client: docker.DockerClient,
) -> None:
    name = f"airlock-test-{uuid.uuid4().hex[:10]}"

    with pytest.raises(HealthCheckError) as caught:
        wait_healthy(docker_client, name, ["ghost"], timeout=1, poll=0.2)

    assert caught.value.message == (
        "timed out after 1 s waiting for 1 service(s): ghost (no container)"
    )
    assert caught.value.hint is None


def test_service_status_fields_have_defaults() -> None:
    status = ServiceStatus("web", "demo-web-1", "running", None, "app:1", None)

    assert status.restart_count == 0
    assert status.health_output is None


def test_run_in_missing_folder_names_folder(tmp_path: Path) -> None:
    command, _ = fake_v2(tmp_path)
    missing = tmp_path / "missing"

    with pytest.raises(InstallError) as caught:
        command.up(missing, [missing / "compose.yml"], "demo")

    assert caught.value.message.endswith(f"failed: project folder {missing} not found")
