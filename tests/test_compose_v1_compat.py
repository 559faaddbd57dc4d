"""Nested defaults (`${A:-${B:-16}}`) against the real docker-compose v1 on this machine.

airlock resolves them as the Compose Specification defines them, but
docker-compose 1.29 does not, so the installer must reject them before
changing anything when v1 is the Compose it runs. No Compose v2 is
installed here, so the v2 case gives the check a ComposeCommand with a v2
version number, the only thing the check reads from it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import docker
import pytest
import yaml

from installer.compose import load_project
from installer.compose_cli import ComposeCommand, detect
from installer.preflight import ERROR, OK, check_nested_defaults
from tests.registry_push import PushedImage, push_image, tar_layer, unique_repository

pytestmark = pytest.mark.docker

NESTED = "${DB_TAG:-${BASE_TAG:-16}}"
V1_ERROR = (
    "error: preflight failed: compose: docker-compose.yml: services.db.image: "
    f"{NESTED} has an expression inside its default; docker-compose 1.29.2 reads "
    "nested defaults differently from the Compose Specification"
)
V1_HINT = (
    "hint: install the Compose v2 plugin (`docker compose`) and install again, "
    "or have the bundle rebuilt without the nested expression; "
    "no value in .env avoids it under docker-compose v1"
)


def run(*args: str) -> subprocess.CompletedProcess[str]:
    """Run one of the two programs as a user would, through its entry point."""
    program, *rest = args
    module = {"airlock-bundle": "bundler.cli", "airlock-install": "installer.cli"}[program]
    return subprocess.run(
        [sys.executable, "-m", module, *rest],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        stdin=subprocess.DEVNULL,
        timeout=600,
    )


def lines_starting(text: str, prefix: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(prefix)]


def v1_command() -> ComposeCommand:
    command = detect(os.environ)
    if command.is_v2:
        pytest.skip(f"this test needs docker-compose v1; found Compose {command.version}")
    return command


@pytest.fixture(scope="module")
def image(registry: str) -> PushedImage:
    return push_image(registry, unique_repository(), [tar_layer({"a.txt": b"a"})], tag="16")


def _write_compose(folder: Path, image: PushedImage) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    repository = f"{image.registry}/{image.repository}"
    compose = {"services": {"db": {"image": f"{repository}:{NESTED}", "command": ["sleep", "1"]}}}
    path = folder / "docker-compose.yml"
    path.write_text(yaml.safe_dump(compose, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("keys")
    result = run("airlock-bundle", "keygen", "--out", str(folder), "--name", "release")
    assert result.returncode == 0, result.stderr
    return folder


@pytest.fixture(scope="module")
def built(
    image: PushedImage, keys: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """The bundle of a compose file with a nested default in `image:`, and its build's output."""
    folder = tmp_path_factory.mktemp("spec")
    _write_compose(folder, image)
    spec = {
        "name": "nested",
        "version": "1.0.0",
        "sequence": 1,
        "compose": {"files": ["docker-compose.yml"], "project_name": "nested"},
    }
    (folder / "bundle.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    output = tmp_path_factory.mktemp("dist") / "nested-1.0.0.airlock"
    result = run(
        "airlock-bundle",
        "build",
        str(folder / "bundle.yaml"),
        "--key",
        str(keys / "release.key"),
        "--output",
        str(output),
    )
    assert result.returncode == 0, result.stderr
    return output, result


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(folder)): path.read_bytes() if path.is_file() else b""
        for path in sorted(folder.rglob("*"))
    }


def _engine_images(client: docker.DockerClient) -> set[str]:
    return {image.id for image in client.images.list(all=True)}


def test_build_warns_about_nested_default(
    built: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    _, result = built

    warnings = [line for line in result.stderr.splitlines() if "nested expression" in line]

    assert len(warnings) == 1, result.stderr
    assert warnings[0] == (
        f"docker-compose.yml: services.db.image: {NESTED} contains a nested expression, "
        "which docker-compose v1 reads differently from the Compose Specification; "
        "installs need Compose v2"
    ), warnings[0]


def test_install_with_v1_rejects_nested_default_unchanged(
    built: tuple[Path, subprocess.CompletedProcess[str]],
    keys: Path,
    image: PushedImage,
    tmp_path: Path,
    compose_project_name: str,
    docker_client: docker.DockerClient,
) -> None:
    v1_command()
    bundle, _ = built
    target = tmp_path / "target"
    target.mkdir()
    (target / ".env").write_text(f"COMPOSE_PROJECT_NAME={compose_project_name}\n")
    files_before = _snapshot(target)
    images_before = _engine_images(docker_client)

    result = run(
        "airlock-install",
        "install",
        str(bundle),
        "--target",
        str(target),
        "--key",
        str(keys / "release.pub"),
    )

    assert result.returncode == 4, result.stdout + result.stderr
    assert lines_starting(result.stderr, "error: ") == [V1_ERROR]
    assert lines_starting(result.stderr, "hint: ") == [V1_HINT]
    assert _snapshot(target) == files_before
    assert _engine_images(docker_client) == images_before
    assert not docker_client.images.list(name=f"{image.registry}/{image.repository}")


def test_dry_run_with_v1_reports_nested_default(
    built: tuple[Path, subprocess.CompletedProcess[str]], keys: Path, tmp_path: Path
) -> None:
    v1_command()
    bundle, _ = built
    target = tmp_path / "target"

    result = run(
        "airlock-install",
        "install",
        "--dry-run",
        str(bundle),
        "--target",
        str(target),
        "--key",
        str(keys / "release.pub"),
    )

    assert result.returncode == 4, result.stdout + result.stderr
    assert lines_starting(result.stderr, "error: ") == [V1_ERROR]
    assert not target.exists()


def test_plan_with_v1_lists_nested_default(
    built: tuple[Path, subprocess.CompletedProcess[str]], keys: Path, tmp_path: Path
) -> None:
    v1_command()
    bundle, _ = built
    target = tmp_path / "target"

    result = run(
        "airlock-install",
        "plan",
        str(bundle),
        "--target",
        str(target),
        "--key",
        str(keys / "release.pub"),
    )

    assert result.returncode == 4, result.stdout + result.stderr
    assert lines_starting(result.stderr, "error: ") == [V1_ERROR]
    assert V1_ERROR.removeprefix("error: preflight failed: compose: ") in result.stdout
    assert not target.exists()


def test_v1_misreads_nested_default_whatever_env_sets(image: PushedImage, tmp_path: Path) -> None:
    """Back the hint: with docker-compose v1 no `.env` value gives the right image.

    `config` writes a literal `$` as `$$`, so `$${BASE_TAG:-16}` is the text
    `${BASE_TAG:-16}` that v1 hands to the engine.
    """
    v1_command()
    compose_file = _write_compose(tmp_path, image)
    repository = f"{image.registry}/{image.repository}"
    cases = {
        "": f"{repository}:$${{BASE_TAG:-16}}",
        "BASE_TAG=15\n": f"{repository}:$${{BASE_TAG:-16}}",
        "DB_TAG=15\n": f"{repository}:15}}",
        "DB_TAG=15\nBASE_TAG=14\n": f"{repository}:15}}",
    }
    for env_text, expected in cases.items():
        (tmp_path / ".env").write_text(env_text)

        result = subprocess.run(
            ["docker-compose", "--file", str(compose_file), "config"],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env={key: value for key, value in os.environ.items() if "TAG" not in key},
            timeout=60,
        )

        assert result.returncode == 0, result.stderr
        config = yaml.safe_load(result.stdout)
        assert config["services"]["db"]["image"] == expected, env_text


def test_check_under_v1_lists_each_expression(image: PushedImage, tmp_path: Path) -> None:
    command = v1_command()
    compose_file = _write_compose(tmp_path, image)
    extra = tmp_path / "override.yml"
    extra.write_text("services:\n  db:\n    environment:\n      NAME: ${NAME:-$USER_NAME}\n")
    project = load_project([compose_file, extra], {})

    findings = check_nested_defaults(project, command)

    assert [finding.level for finding in findings] == [ERROR, ERROR]
    assert findings[0].message.startswith(f"docker-compose.yml: services.db.image: {NESTED} ")
    assert findings[1].message == (
        "override.yml: services.db.environment.NAME: ${NAME:-$USER_NAME} has an expression "
        "inside its default; docker-compose 1.29.2 reads nested defaults differently "
        "from the Compose Specification"
    )
    # Without braces v1 returns the default's text unchanged, so only the
    # outer variable set to a non-empty value in .env works around it.
    assert findings[1].hint == (
        "install the Compose v2 plugin (`docker compose`) and install again, "
        "or set NAME to a non-empty value in the target's .env"
    )


def test_check_under_v2_passes(image: PushedImage, tmp_path: Path) -> None:
    project = load_project([_write_compose(tmp_path, image)], {})
    command = ComposeCommand(("docker", "compose"), "2.24.6")

    findings = check_nested_defaults(project, command)

    assert [(finding.level, finding.message) for finding in findings] == [
        (
            OK,
            "Compose 2.24.6 reads nested defaults as the Compose Specification says (1 found)",
        )
    ]


def test_check_without_nested_default_is_silent(tmp_path: Path) -> None:
    compose_file = tmp_path / "docker-compose.yml"
    compose_file.write_text("services:\n  db:\n    image: busybox:${TAG:-1}\n")
    project = load_project([compose_file], {})

    assert check_nested_defaults(project, v1_command()) == []


def test_alternative_value_under_v1_is_rejected(tmp_path: Path) -> None:
    """docker-compose 1.29 refuses `${VAR:+word}` and `${VAR+word}` as invalid formats."""
    compose_file = tmp_path / "docker-compose.yml"
    compose_file.write_text(
        "services:\n  db:\n    image: busybox:1\n"
        "    environment:\n      DEBUG: ${VERBOSE:+yes}\n      TRACE: ${TRACE+on}\n"
    )
    command = v1_command()
    project = load_project([compose_file], {})

    findings = check_nested_defaults(project, command)

    assert [(finding.level, finding.message) for finding in findings] == [
        (
            ERROR,
            "docker-compose.yml: services.db.environment.DEBUG: ${VERBOSE:+...} gives an "
            f"alternative value, which docker-compose {command.version} rejects as an "
            "invalid interpolation format",
        ),
        (
            ERROR,
            "docker-compose.yml: services.db.environment.TRACE: ${TRACE+...} gives an "
            f"alternative value, which docker-compose {command.version} rejects as an "
            "invalid interpolation format",
        ),
    ]
    rejected = subprocess.run(
        ["docker-compose", "-f", str(compose_file), "config"],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
    )
    assert rejected.returncode != 0
    assert "Invalid interpolation format" in rejected.stderr


def test_alternative_value_under_v2_passes(tmp_path: Path) -> None:
    compose_file = tmp_path / "docker-compose.yml"
    compose_file.write_text("services:\n  db:\n    image: busybox:${TAG:+1}\n")
    project = load_project([compose_file], {"TAG": "x"})
    command = ComposeCommand(("docker", "compose"), "2.24.6")

    assert check_nested_defaults(project, command) == []
