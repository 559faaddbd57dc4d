"""A release that fails its health check is rolled back; `rollback` brings any release back."""

from __future__ import annotations

import io
import json
import os
import signal
import stat
import subprocess
import sys
import uuid
from pathlib import Path

import docker
import pytest
from bundle_factory import make_manifest
from upgrade_support import (
    V1,
    V2,
    V3_BROKEN,
    build_release,
    containers,
    current_version,
    env_values,
    install,
    isolate_host_files,
    make_keys,
    make_target,
    run,
    wait_for,
)

from installer import releases
from installer.manifest import Descriptor, ImageRecord
from installer.state import Release

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_keys(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def bundles(standins: dict[str, str], keys: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    folder = tmp_path_factory.mktemp("bundles")
    return {
        release.version: build_release(release, folder, keys) for release in (V1, V2, V3_BROKEN)
    }


@pytest.fixture(autouse=True)
def host_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    isolate_host_files(tmp_path, monkeypatch)


@pytest.fixture
def target(tmp_path: Path, compose_project_name: str) -> Path:
    return make_target(tmp_path / "target", compose_project_name)


def test_unhealthy_upgrade_rolls_back_to_previous(
    bundles, keys: Path, target: Path, compose_project_name: str, docker_client: docker.DockerClient
) -> None:  # type: ignore[no-untyped-def]
    first = install(bundles["1.0"], target, keys)
    assert first.returncode == 0, first.stderr
    env_before = (target / ".env").read_bytes()
    compose_before = (target / "compose.yml").read_bytes()

    result = install(bundles["3.0"], target, keys)

    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stderr.splitlines()
    error_line = next(line for line in lines if line.startswith("error: "))
    assert error_line == (
        "error: upgrade-test 3.0 (sequence 3) failed: 1 service(s) failed: db (running, unhealthy)"
    )
    assert "db: last 20 log lines of" in result.stderr
    assert (
        "rolled back: the previous release 1.0 (sequence 1) is running and healthy again"
        in result.stderr
    )
    assert "hint: fix the cause, then install the bundle again" in result.stderr
    assert current_version(target) == "1.0"
    assert (target / ".env").read_bytes() == env_before
    assert (target / "compose.yml").read_bytes() == compose_before
    assert containers(docker_client, compose_project_name) == {
        "db": ("running", "healthy"),
        "cache": ("running", "healthy"),
    }
    assert not (target / ".airlock" / "journal.json").exists()
    assert env_values(target)["DB_PASS"] not in result.stdout + result.stderr


def test_rollback_to_version_restores_release(
    bundles, keys: Path, target: Path, compose_project_name: str, docker_client: docker.DockerClient
) -> None:  # type: ignore[no-untyped-def]
    assert install(bundles["1.0"], target, keys).returncode == 0
    env_v1 = (target / ".env").read_bytes()
    # An operator edit made while 1.0 runs must come back with 1.0.
    with (target / ".env").open("a") as handle:
        handle.write("EDITED_UNDER_1=yes\n")
    env_v1_edited = (target / ".env").read_bytes()
    upgrade = install(bundles["2.0"], target, keys)
    assert upgrade.returncode == 0, upgrade.stderr
    assert set(containers(docker_client, compose_project_name)) == {"db"}
    env_v2 = (target / ".env").read_bytes()
    assert env_v2 != env_v1

    result = run(
        "airlock-install", "rollback", "--target", str(target), "--to", "1.0", "--timeout", "60"
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "rolled back to 1.0 (sequence 1) (was 2.0)"
    audit_lines = Path(os.environ["AIRLOCK_AUDIT_LOG"]).read_text().splitlines()
    record = json.loads(audit_lines[-1])
    assert record["action"] == "rollback"
    assert record["result"] == "ok"
    assert record["version"] == "1.0"
    assert record["target"] == str(target.resolve())
    assert (target / ".env").read_bytes() == env_v1_edited
    assert stat.S_IMODE((target / ".env").stat().st_mode) == 0o600
    assert current_version(target) == "1.0"
    assert containers(docker_client, compose_project_name) == {
        "db": ("running", "healthy"),
        "cache": ("running", "healthy"),
    }
    saved_v2 = target / ".airlock" / "releases" / "2-2.0" / "env"
    assert saved_v2.read_bytes() == env_v2
    assert stat.S_IMODE(saved_v2.stat().st_mode) == 0o600

    status = run("airlock-install", "status", "--target", str(target), "--json")
    assert status.returncode == 0, status.stderr
    data = json.loads(status.stdout)
    assert data["current"]["version"] == "1.0"
    assert [release["version"] for release in data["history"]] == ["2.0"]
    assert data["interrupted"] is None

    # Nothing is older than 1.0, so a plain rollback has nowhere to go.
    again = run("airlock-install", "rollback", "--target", str(target))
    assert again.returncode == 2
    assert again.stderr.splitlines()[0] == (
        "error: no release older than 1.0 (sequence 1) is recorded in this target"
    )

    # 2.0 keeps its sequence, so it installs again without --allow-downgrade.
    forward = install(bundles["2.0"], target, keys)
    assert forward.returncode == 0, forward.stderr
    assert (target / ".env").read_bytes() == env_v2


def test_rollback_to_unknown_version_lists_known(bundles, keys: Path, target: Path) -> None:  # type: ignore[no-untyped-def]
    assert install(bundles["1.0"], target, keys).returncode == 0

    result = run("airlock-install", "rollback", "--target", str(target), "--to", "9.9")

    assert result.returncode == 2
    assert result.stderr.splitlines()[0] == (
        "error: release 9.9 is not installed in this target; known: 1.0 (sequence 1)"
    )


def test_failed_first_install_keeps_volumes(
    bundles, keys: Path, target: Path, compose_project_name: str, docker_client: docker.DockerClient
) -> None:  # type: ignore[no-untyped-def]
    result = install(bundles["3.0"], target, keys)

    assert result.returncode == 1
    assert (
        f"nothing to roll back to (first install): project {compose_project_name} was taken "
        "down, its volumes and .env kept"
    ) in result.stderr
    assert containers(docker_client, compose_project_name) == {}
    volumes = docker_client.volumes.list(
        filters={"label": f"com.docker.compose.project={compose_project_name}"}
    )
    assert [volume.name for volume in volumes] == [f"{compose_project_name}_data"]
    assert not (target / ".airlock" / "state.json").exists()
    assert "DB_PASS" in env_values(target)


def test_ctrl_c_during_health_wait_rolls_back(
    bundles, keys: Path, target: Path, compose_project_name: str, docker_client: docker.DockerClient
) -> None:  # type: ignore[no-untyped-def]
    assert install(bundles["1.0"], target, keys).returncode == 0
    env_v1 = (target / ".env").read_bytes()
    journal = target / ".airlock" / "journal.json"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "installer.cli",
            "install",
            str(bundles["3.0"]),
            "--target",
            str(target),
            "--key",
            str(keys / "release.pub"),
            "--timeout",
            "60",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ),
    )
    try:
        wait_for(lambda: journal.exists() and '"started"' in journal.read_text())
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()

    assert process.returncode == 1, stdout + stderr
    error_line = next(line for line in stderr.splitlines() if line.startswith("error: "))
    assert error_line == "error: upgrade-test 3.0 (sequence 3) failed: interrupted (Ctrl-C)"
    assert (
        "rolled back: the previous release 1.0 (sequence 1) is running and healthy again" in stderr
    )
    assert (target / ".env").read_bytes() == env_v1
    assert containers(docker_client, compose_project_name)["db"] == ("running", "healthy")
    assert not journal.exists()


def test_rollback_moves_retagged_image_back(
    docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    """A later release loaded another image under the tag; the earlier release gets its own back."""
    tag = f"airlock-test-retag/{uuid.uuid4().hex[:12]}:1"
    built = []
    for label in ("old", "new"):
        dockerfile = f"FROM airlock-standin/base:latest\nLABEL airlock.test.retag={label}\n"
        image, _ = docker_client.images.build(
            fileobj=io.BytesIO(dockerfile.encode()), rm=True, labels={"airlock.test": label}
        )
        built.append(image.id)
    old_id, new_id = built
    try:
        docker_client.api.tag(new_id, *tag.split(":"))
        record = ImageRecord(
            reference=tag,
            source=f"127.0.0.1:5000/{tag}",
            index_digest=None,
            manifest_digest="sha256:" + "0" * 64,
            manifest_media_type="application/vnd.docker.distribution.manifest.v2+json",
            config=Descriptor("application/vnd.docker.container.image.v1+json", old_id, 1),
            platform="linux/amd64",
            layers=(),
            load_tag=tag,
        )
        manifest = make_manifest([], images=(record,))
        release = Release("1.0", 1, "sha256:" + "1" * 64, "2026-01-01T00:00:00Z", "p", [], [])
        folder = releases.folder_of(tmp_path, release)
        folder.mkdir(parents=True)
        (folder / releases.RELEASE_MANIFEST).write_bytes(manifest.to_bytes())

        releases.retag_images(docker_client, tmp_path, release)

        assert docker_client.images.get(tag).id == old_id
    finally:
        for image_id in (new_id, old_id):
            docker_client.images.remove(image_id, force=True)
