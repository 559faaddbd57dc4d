"""`plan` and `install --dry-run` describe what an install will do, and change nothing."""

from __future__ import annotations

import json
from pathlib import Path

import docker
import pytest
from upgrade_support import (
    V1,
    V2,
    build_release,
    containers,
    env_values,
    install,
    isolate_host_files,
    make_keys,
    make_target,
    run,
)

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_keys(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def bundles(standins: dict[str, str], keys: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    folder = tmp_path_factory.mktemp("bundles")
    return {release.version: build_release(release, folder, keys) for release in (V1, V2)}


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


def _plan(bundle: Path, target: Path, keys: Path, *extra: str, env=None):  # type: ignore[no-untyped-def]
    return run(
        "airlock-install",
        "plan",
        str(bundle),
        "--target",
        str(target),
        "--key",
        str(keys / "release.pub"),
        *extra,
        env=env,
    )


def test_plan_of_first_install_changes_nothing(
    bundles,  # type: ignore[no-untyped-def]
    keys: Path,
    target: Path,
    tmp_path: Path,
    compose_project_name: str,
    docker_client: docker.DockerClient,
) -> None:
    before = _snapshot(target)
    temporary = tmp_path / "tmp"
    temporary.mkdir()

    result = _plan(bundles["1.0"], target, keys, "--json", env={"TMPDIR": str(temporary)})

    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["bundle"] == {"name": "upgrade-test", "version": "1.0", "sequence": 1}
    assert plan["current"] is None
    assert plan["env"]["added"] == ["APP_TAG"]
    assert plan["env"]["generated"] == ["DB_PASS"]
    assert plan["services"]["added"] == ["db", "cache"]
    assert plan["volumes"] == {"kept": [], "added": ["data"]}
    assert sorted(plan["images"]["load"] + plan["images"]["present"]) == [
        "docker.io/library/postgres:16-alpine",
        "docker.io/library/redis:alpine",
    ]
    assert {finding["check"] for finding in plan["preflight"]} >= {
        "engine",
        "compose",
        "disk",
        "ports",
        "images",
    }
    assert all(finding["level"] == "ok" for finding in plan["preflight"])
    assert _snapshot(target) == before
    assert not (target / ".airlock").exists()
    assert list(temporary.iterdir()) == []
    assert containers(docker_client, compose_project_name) == {}


def test_plan_matches_what_upgrade_does(
    bundles,  # type: ignore[no-untyped-def]
    keys: Path,
    target: Path,
    compose_project_name: str,
    docker_client: docker.DockerClient,
) -> None:
    assert install(bundles["1.0"], target, keys).returncode == 0
    secret = env_values(target)["DB_PASS"]

    planned = _plan(bundles["2.0"], target, keys, "--json")
    text = _plan(bundles["2.0"], target, keys)
    result = install(bundles["2.0"], target, keys)

    assert planned.returncode == 0, planned.stderr
    assert text.returncode == 0, text.stderr
    assert result.returncode == 0, result.stderr
    plan = json.loads(planned.stdout)
    assert plan["current"] == {"version": "1.0", "sequence": 1}
    assert plan["env"]["changed"] == ["APP_TAG"]
    assert "  .env changed: APP_TAG" in result.stdout.splitlines()
    assert plan["env"]["kept"] == ["DB_PASS"]
    assert "  .env kept: DB_PASS" in result.stdout.splitlines()
    assert plan["services"] == {
        "added": [],
        "changed": {},
        "removed": ["cache"],
        "unchanged": ["db"],
    }
    assert "  services removed: cache" in result.stdout.splitlines()
    assert set(containers(docker_client, compose_project_name)) == {"db"}
    assert plan["volumes"] == {"kept": ["data"], "added": []}
    loaded = next(
        (line for line in result.stdout.splitlines() if line.startswith("  images loaded: ")),
        "  images loaded: ",
    )
    assert loaded.removeprefix("  images loaded: ").split(", ") == (plan["images"]["load"] or [""])

    assert text.stdout.splitlines()[0] == (
        "plan: upgrade-test 2.0 (sequence 2); now 1.0 (sequence 1)"
    )
    assert "  .env changed: APP_TAG (values not shown)" in text.stdout.splitlines()
    assert "  services removed: cache" in text.stdout.splitlines()
    assert "  volumes kept: data" in text.stdout.splitlines()
    for output in (planned.stdout, text.stdout, result.stdout, result.stderr):
        assert secret not in output


def test_dry_run_prints_plan_and_changes_nothing(
    bundles,  # type: ignore[no-untyped-def]
    keys: Path,
    target: Path,
    compose_project_name: str,
    docker_client: docker.DockerClient,
) -> None:
    before = _snapshot(target)

    result = install(bundles["1.0"], target, keys, "--dry-run")

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "plan: upgrade-test 1.0 (sequence 1); now nothing installed"
    assert "  services added: db, cache" in lines
    assert lines[-1] == "dry run: nothing changed"
    assert _snapshot(target) == before
    assert not (target / ".airlock").exists()
    assert containers(docker_client, compose_project_name) == {}


def test_plan_rejects_untrusted_key(bundles, tmp_path: Path, target: Path) -> None:  # type: ignore[no-untyped-def]
    other = make_keys(tmp_path / "other")
    before = _snapshot(target)

    result = _plan(bundles["1.0"], target, other)

    assert result.returncode == 3
    error = next(line for line in result.stderr.splitlines() if line.startswith("error: "))
    assert "not in the trusted keys" in error
    assert _snapshot(target) == before
    assert not (target / ".airlock").exists()
