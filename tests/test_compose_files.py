"""Carrying every file a compose project loads: member paths, target paths, real installs."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import docker
import pytest

from installer import compose
from installer.compose_files import carried_files, target_relative_path
from installer.errors import SpecError, UnsafeMemberError

MIRROR = ["--mirror", "docker.io=127.0.0.1:5000"]
# The postgres stand-in has busybox; `sleep` keeps its container up.
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
    """Return the one-line error a user sees among the progress lines on stderr."""
    return next(line for line in stderr.splitlines() if line.startswith("error: "))


# ---------------------------------------------------------------------------
# target_relative_path
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("member", "expected"),
    [
        ("compose/compose.yml", "compose.yml"),
        ("compose/common/base.env", "common/base.env"),
        ("charts/authentik-2026.8.0.tgz", "charts/authentik-2026.8.0.tgz"),
    ],
)
def test_target_path_of_member(member: str, expected: str) -> None:
    assert target_relative_path(member) == expected


@pytest.mark.parametrize(
    ("member", "message"),
    [
        ("images/index.json", "bundle member images/index.json is not under compose/ or charts/"),
        ("compose/.env", "bundle member compose/.env would replace the target's .env"),
        (
            "compose/.airlock/state.json",
            "bundle member compose/.airlock/state.json would write into .airlock/",
        ),
        (
            "compose/../x.yml",
            "bundle member compose/../x.yml has an empty, '.' or '..' path component",
        ),
        ("/compose/x.yml", "bundle member /compose/x.yml has an absolute path"),
    ],
)
def test_target_path_rejects_unsafe_member(member: str, message: str) -> None:
    with pytest.raises(UnsafeMemberError) as caught:
        target_relative_path(member)
    assert caught.value.message == message


# ---------------------------------------------------------------------------
# carried_files
# ---------------------------------------------------------------------------


def _extends_project(folder: Path) -> Path:
    write(
        folder,
        "compose.yml",
        "services:\n"
        "  app:\n"
        "    extends:\n      file: common/base.yml\n      service: base\n"
        "    env_file: app.env\n",
    )
    write(
        folder,
        "common/base.yml",
        f"services:\n  base:\n    image: {IMAGE}\n"
        '    entrypoint: ["sleep", "3600"]\n'
        "    env_file: [base.env]\n",
    )
    write(folder, "common/base.env", "FROM_BASE=yes\n")
    write(folder, "app.env", "FROM_APP=yes\n")
    return folder / "compose.yml"


def test_carried_files_keep_layout(tmp_path: Path) -> None:
    top = _extends_project(tmp_path)
    (tmp_path / ".env").write_text("SECRET=not carried\n")
    project = compose.load_project([top], {}, project_dir=tmp_path)

    carried = carried_files(project, [top], tmp_path)

    assert [item.member for item in carried] == [
        "compose/app.env",
        "compose/common/base.env",
        "compose/common/base.yml",
        "compose/compose.yml",
    ]


def test_optional_env_file_absent_is_skipped(tmp_path: Path) -> None:
    """Long syntax with `required: false` (Compose v2.24+; docker-compose 1.29 rejects it)."""
    top = write(
        tmp_path,
        "compose.yml",
        f"services:\n  a:\n    image: {IMAGE}\n"
        "    env_file: [{path: optional.env, required: false}, {path: real.env}]\n",
    )
    write(tmp_path, "real.env", "A=1\n")
    project = compose.load_project([top], {}, project_dir=tmp_path)

    assert [item.member for item in carried_files(project, [top], tmp_path)] == [
        "compose/compose.yml",
        "compose/real.env",
    ]


def test_carried_files_skip_target_dotenv(tmp_path: Path) -> None:
    top = write(
        tmp_path, "compose.yml", f"services:\n  a:\n    image: {IMAGE}\n    env_file: .env\n"
    )
    project = compose.load_project([top], {}, project_dir=tmp_path)

    assert [item.member for item in carried_files(project, [top], tmp_path)] == [
        "compose/compose.yml"
    ]


def test_carried_files_include_with_its_dotenv(tmp_path: Path) -> None:
    top = write(tmp_path, "compose.yml", "include:\n  - db/compose.yml\n")
    write(tmp_path, "db/compose.yml", "services:\n  db:\n    image: postgres:${DB_TAG}\n")
    write(tmp_path, "db/.env", "DB_TAG=16-alpine\n")
    project = compose.load_project([top], {}, project_dir=tmp_path)

    carried = carried_files(project, [top], tmp_path)

    assert [item.member for item in carried] == [
        "compose/compose.yml",
        "compose/db/.env",
        "compose/db/compose.yml",
    ]


def test_missing_env_file_names_service_and_file(tmp_path: Path) -> None:
    top = write(
        tmp_path, "compose.yml", f"services:\n  web:\n    image: {IMAGE}\n    env_file: web.env\n"
    )
    project = compose.load_project([top], {}, project_dir=tmp_path)

    with pytest.raises(SpecError) as caught:
        carried_files(project, [top], tmp_path)
    assert caught.value.message == (
        f"service web in {top}: env_file web.env not found ({tmp_path / 'web.env'})"
    )


def test_file_outside_spec_folder_is_rejected(tmp_path: Path) -> None:
    spec = tmp_path / "spec"
    write(tmp_path, "shared/base.yml", f"services:\n  base:\n    image: {IMAGE}\n")
    top = write(
        spec,
        "compose.yml",
        "services:\n  app:\n    extends:\n      file: ../shared/base.yml\n      service: base\n",
    )
    project = compose.load_project([top], {}, project_dir=spec)

    with pytest.raises(SpecError) as caught:
        carried_files(project, [top], spec)
    assert caught.value.message == (
        f"{spec / '../shared/base.yml'} is outside the spec folder {spec}"
    )


def test_file_name_unfit_for_member_is_rejected(tmp_path: Path) -> None:
    top = write(
        tmp_path, "compose.yml", f"services:\n  a:\n    image: {IMAGE}\n    env_file: my vars.env\n"
    )
    write(tmp_path, "my vars.env", "A=1\n")
    project = compose.load_project([top], {}, project_dir=tmp_path)

    with pytest.raises(SpecError) as caught:
        carried_files(project, [top], tmp_path)
    assert caught.value.message == (
        f"{tmp_path / 'my vars.env'}: file name cannot be carried in a bundle as compose/my vars.env"
    )


# ---------------------------------------------------------------------------
# Real builds and installs
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("keys")
    result = run("airlock-bundle", "keygen", "--out", str(folder), "--name", "release")
    assert result.returncode == 0, result.stderr
    return folder


def _spec(folder: Path, name: str) -> Path:
    return write(
        folder,
        "bundle.yaml",
        f"name: {name}\nversion: '1.0'\nsequence: 1\ncompose:\n  files: [compose.yml]\n",
    )


def _build(spec: Path, keys: Path, output: Path) -> subprocess.CompletedProcess[str]:
    return run(
        "airlock-bundle",
        "build",
        str(spec),
        "--key",
        str(keys / "release.key"),
        "--output",
        str(output),
        *MIRROR,
    )


def _install(bundle: Path, keys: Path, target: Path) -> subprocess.CompletedProcess[str]:
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
    )


def _members(bundle: Path) -> list[str]:
    with tarfile.open(bundle) as archive:
        return [name for name in archive.getnames() if name.startswith("compose/")]


def test_extends_project_bundles_installs_and_comes_up(
    standins: dict[str, str],
    keys: Path,
    tmp_path: Path,
    compose_project_name: str,
    docker_client: docker.DockerClient,
) -> None:
    spec_dir = tmp_path / "spec"
    _extends_project(spec_dir)
    spec = _spec(spec_dir, "extends-demo")
    bundle = tmp_path / "extends.airlock"
    target = tmp_path / "target"
    target.mkdir()
    (target / ".env").write_text(f"COMPOSE_PROJECT_NAME={compose_project_name}\n")

    built = _build(spec, keys, bundle)
    assert built.returncode == 0, built.stderr
    assert _members(bundle) == [
        "compose/app.env",
        "compose/common/base.env",
        "compose/common/base.yml",
        "compose/compose.yml",
    ]

    installed = _install(bundle, keys, target)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    assert "app: running" in installed.stdout
    assert (target / "common" / "base.yml").is_file()
    assert (target / "common" / "base.env").read_text() == "FROM_BASE=yes\n"
    assert (target / "app.env").read_text() == "FROM_APP=yes\n"

    [container] = docker_client.containers.list(
        filters={"label": f"com.docker.compose.project={compose_project_name}"}
    )
    environment = container.attrs["Config"]["Env"]
    assert "FROM_BASE=yes" in environment
    assert "FROM_APP=yes" in environment


def test_include_project_stops_under_v1(
    standins: dict[str, str],
    keys: Path,
    tmp_path: Path,
    compose_project_name: str,
    docker_client: docker.DockerClient,
) -> None:
    """Only docker-compose 1.29 is installed here, and it rejects `include`.

    So the install must stop before it changes the target or starts a
    container; with the v2 plugin the same bundle would come up.
    """
    spec_dir = tmp_path / "spec"
    write(spec_dir, "compose.yml", "include:\n  - db/compose.yml\n")
    write(
        spec_dir,
        "db/compose.yml",
        "services:\n  db:\n    image: docker.io/library/postgres:${DB_TAG}\n"
        '    entrypoint: ["sleep", "3600"]\n',
    )
    write(spec_dir, "db/.env", "DB_TAG=16-alpine\n")
    spec = _spec(spec_dir, "include-demo")
    bundle = tmp_path / "include.airlock"
    target = tmp_path / "target"
    target.mkdir()
    env_text = f"COMPOSE_PROJECT_NAME={compose_project_name}\n"
    (target / ".env").write_text(env_text)

    built = _build(spec, keys, bundle)
    assert built.returncode == 0, built.stderr
    assert _members(bundle) == ["compose/compose.yml", "compose/db/.env", "compose/db/compose.yml"]

    installed = _install(bundle, keys, target)
    assert installed.returncode == 4, installed.stdout + installed.stderr
    assert error_line(installed.stderr) == (
        "error: the compose files use `include`, which docker-compose 1.29.2 rejects"
    )
    assert (target / ".env").read_text() == env_text
    assert not (target / "compose.yml").exists()
    assert not docker_client.containers.list(
        all=True, filters={"label": f"com.docker.compose.project={compose_project_name}"}
    )


def test_build_with_missing_env_file_fails_naming_service(keys: Path, tmp_path: Path) -> None:
    spec_dir = tmp_path / "spec"
    write(
        spec_dir, "compose.yml", f"services:\n  web:\n    image: {IMAGE}\n    env_file: web.env\n"
    )
    spec = _spec(spec_dir, "missing-env-file")
    bundle = tmp_path / "x.airlock"

    built = _build(spec, keys, bundle)

    assert built.returncode == 1, built.stderr
    assert error_line(built.stderr) == (
        f"error: service web in {spec_dir / 'compose.yml'}: env_file web.env not found "
        f"({spec_dir / 'web.env'})"
    )
    assert not bundle.exists()
