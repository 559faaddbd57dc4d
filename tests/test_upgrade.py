"""Upgrades keep data and secrets: authentik 2025.2 to 2026.2 on the real engine, and `.env` merging."""

from __future__ import annotations

import json
import shutil
import stat
from pathlib import Path

import docker
import pytest
from bundle_factory import make_manifest
from upgrade_support import (
    MIRRORS,
    REPO,
    containers,
    env_values,
    free_port,
    install,
    isolate_host_files,
    make_keys,
    run,
)

from installer.envmerge import merge_env
from installer.manifest import GeneratedSecret

FIXTURES = Path("/work/shared/fixtures/authentik")
EXAMPLE = REPO / "examples" / "authentik"
OLD_SERVER = "2025.2.4"
# authentik's own files check health every 30 s, so each install waits at least that long.
AUTHENTIK_TIMEOUT = "240"

SPEC_2025 = f"""\
name: authentik
version: {OLD_SERVER}
sequence: 1
platform: linux/amd64
compose:
  files: [docker-compose.yml]
  project_name: authentik
env:
  set:
    AUTHENTIK_TAG: "{OLD_SERVER}"
    AUTHENTIK_DISABLE_STARTUP_ANALYTICS: "true"
    AUTHENTIK_DISABLE_UPDATE_CHECK: "true"
    AUTHENTIK_ERROR_REPORTING__ENABLED: "false"
    # Set by this release only: the upgrade removes it.
    AUTHENTIK_REDIS__DB: "0"
  generate:
    - name: PG_PASS
      length: 40
    - name: AUTHENTIK_SECRET_KEY
      length: 60
"""


# ---------------------------------------------------------------------------
# .env merging, without Docker
# ---------------------------------------------------------------------------

LIVE_ENV = (
    "APP_SECRET=K7eexisting\nENCRYPTION_SALT=9c1existing\nSMTP_PASSWORD='p$ss'\nCUSTOM_FLAG=on\n"
)


def test_merge_keeps_secrets_and_operator_values() -> None:
    manifest = make_manifest(
        [],
        env_set={"APP_TAG": "2.0.0", "NEW_LIMIT": "100"},
        env_generate=(GeneratedSecret("APP_SECRET", 32), GeneratedSecret("ENCRYPTION_SALT", 32)),
    )

    text, change = merge_env(LIVE_ENV, manifest)

    assert text.startswith(LIVE_ENV)
    assert text[len(LIVE_ENV) :] == "APP_TAG=2.0.0\nNEW_LIMIT=100\nCOMPOSE_PROJECT_NAME=demo\n"
    assert change.added == ["APP_TAG", "NEW_LIMIT", "COMPOSE_PROJECT_NAME"]
    assert change.kept == ["APP_SECRET", "ENCRYPTION_SALT"]
    assert change.generated == []
    assert change.changed == []
    assert change.removed == []


def test_merge_removes_unchanged_dropped_keys() -> None:
    previous = make_manifest([], env_set={"APP_TAG": "1.0", "OLD_A": "x", "OLD_B": "y"})
    manifest = make_manifest([], env_set={"APP_TAG": "2.0"}, env_generate=())
    live = "COMPOSE_PROJECT_NAME=demo\nAPP_TAG=1.0\nOLD_A=x\n# the operator changed this one\nOLD_B=mine\n"

    text, change = merge_env(live, manifest, previous)

    assert (
        text
        == "COMPOSE_PROJECT_NAME=demo\nAPP_TAG=2.0\n# the operator changed this one\nOLD_B=mine\n"
    )
    assert change.changed == ["APP_TAG"]
    assert change.removed == ["OLD_A"]


def test_merge_generates_only_absent_secrets() -> None:
    manifest = make_manifest(
        [], env_set={}, env_generate=(GeneratedSecret("A", 20), GeneratedSecret("B", 20))
    )

    text, change = merge_env("A=kept\n", manifest)

    assert change.kept == ["A"]
    assert change.generated == ["B"]
    assert text.startswith("A=kept\nB=")
    assert len(text.splitlines()[1]) == len("B=") + 20


# ---------------------------------------------------------------------------
# authentik 2025.2 (with Redis) to 2026.2 (without), on the real engine
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_keys(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def authentik_bundles(
    build_standins, standins: dict[str, str], keys: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:  # type: ignore[no-untyped-def]
    """Bundles of authentik's 2025.2 and 2026.2 compose files, sequences 1 and 2."""
    build_standins("--authentik-version", OLD_SERVER, "--only", "server")
    folder = tmp_path_factory.mktemp("authentik")

    old_spec = folder / "spec-2025.2"
    old_spec.mkdir()
    shutil.copyfile(
        FIXTURES / "compose-2025.2" / "docker-compose.yml", old_spec / "docker-compose.yml"
    )
    (old_spec / "bundle.yaml").write_text(SPEC_2025)

    new_spec = folder / "spec-2026.2"
    shutil.copytree(EXAMPLE, new_spec)
    shutil.copyfile(FIXTURES / "compose-2026.2" / "compose.yml", new_spec / "compose.yml")
    spec_text = (new_spec / "bundle.yaml").read_text()
    (new_spec / "bundle.yaml").write_text(spec_text.replace("\nsequence: 1\n", "\nsequence: 2\n"))

    bundles = {}
    for version, spec in (("2025.2", old_spec), ("2026.2", new_spec)):
        output = folder / f"authentik-{version}.airlock"
        result = run(
            "airlock-bundle",
            "build",
            str(spec / "bundle.yaml"),
            "--key",
            str(keys / "release.key"),
            "--output",
            str(output),
            *MIRRORS,
        )
        assert result.returncode == 0, result.stderr
        bundles[version] = output
    return bundles


def _container(client: docker.DockerClient, project: str, service: str):  # type: ignore[no-untyped-def]
    found = client.containers.list(
        filters={
            "label": [
                f"com.docker.compose.project={project}",
                f"com.docker.compose.service={service}",
            ]
        }
    )
    assert len(found) == 1, f"expected one {service} container, found {found}"
    return found[0]


def test_authentik_upgrade_keeps_data_and_secrets(
    authentik_bundles: dict[str, Path],
    keys: Path,
    tmp_path: Path,
    compose_project_name: str,
    docker_client: docker.DockerClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    isolate_host_files(tmp_path, monkeypatch)
    target = tmp_path / "target"
    target.mkdir()
    (target / ".env").write_text(
        f"COMPOSE_PROJECT_NAME={compose_project_name}\n"
        f"COMPOSE_PORT_HTTP={free_port()}\nCOMPOSE_PORT_HTTPS={free_port()}\n"
        "CUSTOM_FLAG=on\n"
    )

    first = install(authentik_bundles["2025.2"], target, keys, "--timeout", AUTHENTIK_TIMEOUT)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "redis: running, healthy" in first.stdout
    database = _container(docker_client, compose_project_name, "postgresql")
    stored = database.exec_run(["pg-put", "upgrade-marker", "written-under-2025.2"])
    assert stored.exit_code == 0, stored.output
    env_before = (target / ".env").read_text()
    secrets_before = {key: env_values(target)[key] for key in ("PG_PASS", "AUTHENTIK_SECRET_KEY")}

    plan = run(
        "airlock-install",
        "plan",
        str(authentik_bundles["2026.2"]),
        "--target",
        str(target),
        "--key",
        str(keys / "release.pub"),
        "--json",
    )
    assert plan.returncode == 0, plan.stderr
    planned = json.loads(plan.stdout)
    assert planned["services"]["removed"] == ["redis"]
    assert planned["services"]["changed"] == {"server": ["image"], "worker": ["image"]}
    assert planned["volumes"]["kept"] == ["database", "redis"]
    assert planned["env"]["changed"] == ["AUTHENTIK_TAG"]
    assert planned["env"]["removed"] == ["AUTHENTIK_REDIS__DB"]
    assert planned["env"]["kept"] == ["PG_PASS", "AUTHENTIK_SECRET_KEY"]
    ports = next(f for f in planned["preflight"] if f["check"] == "ports")
    assert ports["level"] == "ok"
    assert "held by this application's" in ports["message"]

    upgrade = install(authentik_bundles["2026.2"], target, keys, "--timeout", AUTHENTIK_TIMEOUT)

    assert upgrade.returncode == 0, upgrade.stdout + upgrade.stderr
    assert "installed authentik 2026.2.2 (sequence 2)" in upgrade.stdout
    assert "  services removed: redis" in upgrade.stdout
    assert "redis" not in containers(docker_client, compose_project_name)
    volume_names = {
        volume.name
        for volume in docker_client.volumes.list(
            filters={"label": f"com.docker.compose.project={compose_project_name}"}
        )
    }
    assert volume_names == {f"{compose_project_name}_database", f"{compose_project_name}_redis"}
    database = _container(docker_client, compose_project_name, "postgresql")
    read = database.exec_run(["pg-get", "upgrade-marker"])
    assert read.exit_code == 0, read.output
    assert read.output.decode() == "written-under-2025.2"

    values = env_values(target)
    for key, value in secrets_before.items():
        assert values[key] == value
        assert value not in upgrade.stdout + upgrade.stderr + plan.stdout
    assert values["CUSTOM_FLAG"] == "on"
    assert values["AUTHENTIK_TAG"] == "2026.2.2"
    assert "AUTHENTIK_REDIS__DB" not in values
    assert stat.S_IMODE((target / ".env").stat().st_mode) == 0o600

    saved = target / ".airlock" / "releases" / f"1-{OLD_SERVER}" / "env"
    assert saved.read_text() == env_before
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    assert not (target / "docker-compose.yml").exists()
    assert (target / "compose.yml").is_file()

    status = run("airlock-install", "status", "--target", str(target))
    assert status.returncode == 0, status.stderr
    lines = status.stdout.splitlines()
    assert lines[0].startswith("authentik 2026.2.2 (sequence 2), installed ")
    assert "  postgresql: running, healthy" in lines
    assert lines[-1].startswith(f"  other release: {OLD_SERVER} (sequence 1), installed ")
