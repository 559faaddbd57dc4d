"""An install or rollback killed with SIGKILL at any phase boundary is finished by the next run.

The kill comes from the installer's own test hook: with
`AIRLOCK_TEST_KILL_AT=<phase>` the process sends itself SIGKILL right
after recording that phase in its journal (see installer/journal.py).
All cases share one target, which each case first brings to the release
it starts from, so that the many kills fit in a few minutes.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
from upgrade_support import (
    V1,
    V2,
    ReleaseSpec,
    build_release,
    containers,
    current_version,
    env_values,
    install,
    make_keys,
    make_target,
    run,
    state,
)

from installer import dotenv, journal
from installer.install import Interrupts
from installer.lock import TargetLock
from installer.state import load_state

pytestmark = pytest.mark.docker

KILLED = -signal.SIGKILL
# Another bundle after 2.0, for an install that follows an interrupted one.
V2_1 = ReleaseSpec("2.1", 3, with_cache=False)
V1_SERVICES = {"db": ("running", "healthy"), "cache": ("running", "healthy")}
V2_SERVICES = {"db": ("running", "healthy")}


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_keys(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def bundles(standins: dict[str, str], keys: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    folder = tmp_path_factory.mktemp("bundles")
    releases = (V1, V2, V2_1)
    return {release.version: build_release(release, folder, keys) for release in releases}


@pytest.fixture(scope="module")
def project(docker_client: docker.DockerClient) -> Iterator[str]:
    """A project name shared by the module's cases, taken down with its volumes at the end."""
    name = f"airlock-crash-{uuid.uuid4().hex[:12]}"
    yield name
    label = {"label": f"com.docker.compose.project={name}"}
    for container in docker_client.containers.list(all=True, filters=label):
        container.remove(force=True, v=True)
    for network in docker_client.networks.list(filters=label):
        network.remove()
    for volume in docker_client.volumes.list(filters=label):
        volume.remove(force=True)


@pytest.fixture(scope="module")
def shared_target(
    tmp_path_factory: pytest.TempPathFactory, project: str
) -> Iterator[tuple[Path, dict[str, str]]]:
    folder = tmp_path_factory.mktemp("crash")
    target = make_target(folder / "target", project)
    host_env = {
        "AIRLOCK_HOST_RECORD": str(folder / "host-record.json"),
        "AIRLOCK_AUDIT_LOG": str(folder / "audit.log"),
    }
    yield target, host_env


def _bring_to(version: str, target: Path, bundles, keys: Path, env: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    """Make `version` the running release of the shared target."""
    if (target / ".airlock" / "state.json").exists() and current_version(target) == version:
        return
    if version == "1.0" and (target / ".airlock" / "state.json").exists():
        result = run("airlock-install", "rollback", "--target", str(target), "--to", "1.0", env=env)
    else:
        result = install(bundles[version], target, keys, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert current_version(target) == version


def _assert_consistent(target: Path) -> None:
    """Check what a killed run may leave: whole files, complete release folders, a journal."""
    assert load_state(target) is not None
    env_path = target / ".env"
    dotenv.parse(env_path.read_text())
    assert stat.S_IMODE(env_path.stat().st_mode) == 0o600
    releases = target / ".airlock" / "releases"
    for folder in releases.iterdir():
        if folder.name.startswith("."):
            # A folder still being written has a hidden name until it is renamed.
            continue
        assert (folder / "manifest.json").is_file(), folder
        assert (folder / "env").is_file(), folder
        assert stat.S_IMODE((folder / "env").stat().st_mode) == 0o600
        assert (folder / "compose" / "compose.yml").is_file(), folder
    # write_atomic's temporary files are named ".<name>.<random>".
    leftovers = [*target.glob("..env.*"), *target.glob(".compose.yml.*")]
    assert not leftovers, f"temporary files left in the target: {leftovers}"


@pytest.mark.parametrize("phase", journal.INSTALL_PHASES[1:])
def test_killed_upgrade_finishes_on_rerun(
    phase: str,
    shared_target: tuple[Path, dict[str, str]],
    bundles,  # type: ignore[no-untyped-def]
    keys: Path,
    project: str,
    docker_client: docker.DockerClient,
) -> None:
    target, host_env = shared_target
    _bring_to("1.0", target, bundles, keys, host_env)
    env_before = (target / ".env").read_text()
    secret = env_values(target)["DB_PASS"]

    killed = install(
        bundles["2.0"], target, keys, env={**host_env, journal.KILL_AT_VARIABLE: phase}
    )

    assert killed.returncode == KILLED, killed.stdout + killed.stderr
    recorded = journal.load_journal(target)
    assert recorded is not None
    assert recorded.phase == phase
    _assert_consistent(target)
    env_after_kill = (target / ".env").read_text()

    rerun = install(bundles["2.0"], target, keys, env=host_env)

    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert rerun.stdout.splitlines()[0].startswith(
        "note: resumed an earlier install from 1.0 (sequence 1) to 2.0 (sequence 2), process "
    )
    assert rerun.stdout.splitlines()[0].endswith(f"stopped after phase {phase}")
    assert current_version(target) == "2.0"
    assert containers(docker_client, project) == V2_SERVICES
    assert env_values(target)["DB_PASS"] == secret
    assert env_after_kill in (env_before, (target / ".env").read_text())
    assert not (target / ".airlock" / "journal.json").exists()
    assert (target / ".airlock" / "releases" / "1-1.0" / "env").read_text() == env_before


@pytest.mark.parametrize("phase", journal.ROLLBACK_PHASES)
def test_killed_rollback_finishes_on_rerun(
    phase: str,
    shared_target: tuple[Path, dict[str, str]],
    bundles,  # type: ignore[no-untyped-def]
    keys: Path,
    project: str,
    docker_client: docker.DockerClient,
) -> None:
    target, host_env = shared_target
    _bring_to("2.0", target, bundles, keys, host_env)
    env_v1 = (target / ".airlock" / "releases" / "1-1.0" / "env").read_text()

    killed = run(
        "airlock-install",
        "rollback",
        "--target",
        str(target),
        "--to",
        "1.0",
        env={**host_env, journal.KILL_AT_VARIABLE: phase},
    )

    assert killed.returncode == KILLED, killed.stdout + killed.stderr
    _assert_consistent(target)

    rerun = run("airlock-install", "rollback", "--target", str(target), "--to", "1.0", env=host_env)

    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert rerun.stdout.splitlines()[0].startswith(
        "note: finished an earlier rollback from 2.0 (sequence 2) to 1.0 (sequence 1), process "
    )
    assert current_version(target) == "1.0"
    assert (target / ".env").read_text() == env_v1
    assert containers(docker_client, project) == V1_SERVICES


def test_rollback_after_killed_upgrade(
    shared_target: tuple[Path, dict[str, str]],
    bundles,  # type: ignore[no-untyped-def]
    keys: Path,
    project: str,
    docker_client: docker.DockerClient,
) -> None:
    target, host_env = shared_target
    _bring_to("1.0", target, bundles, keys, host_env)
    env_before = (target / ".env").read_text()
    killed = install(
        bundles["2.0"], target, keys, env={**host_env, journal.KILL_AT_VARIABLE: journal.STARTED}
    )
    assert killed.returncode == KILLED

    status = run("airlock-install", "status", "--target", str(target), env=host_env)
    assert status.returncode == 0, status.stderr
    assert "  interrupted: an earlier install from 1.0 (sequence 1) to 2.0" in status.stdout

    result = run("airlock-install", "rollback", "--target", str(target), env=host_env)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "rolled back to 1.0 (sequence 1)" in result.stdout
    assert (target / ".env").read_text() == env_before
    assert current_version(target) == "1.0"
    assert containers(docker_client, project) == V1_SERVICES
    assert not (target / ".airlock" / "journal.json").exists()


def test_concurrent_install_names_lock_holder(
    shared_target: tuple[Path, dict[str, str]],
    bundles,  # type: ignore[no-untyped-def]
    keys: Path,
) -> None:
    target, host_env = shared_target
    env_before = (target / ".env").read_bytes()
    lock = TargetLock(target)
    lock.acquire()
    try:
        result = install(bundles["2.0"], target, keys, env=host_env)
    finally:
        lock.release()

    assert result.returncode == 1
    assert result.stderr.splitlines()[0] == (
        f"error: another airlock-install (process {os.getpid()}) is working on {target}"
    )
    assert (target / ".env").read_bytes() == env_before


def test_simultaneous_installs_one_wins(
    shared_target: tuple[Path, dict[str, str]],
    bundles,  # type: ignore[no-untyped-def]
    keys: Path,
) -> None:
    """Two real installs started together: exactly one gets the lock."""
    target, host_env = shared_target
    command = [
        sys.executable,
        "-m",
        "installer.cli",
        "install",
        "--target",
        str(target),
        "--key",
        str(keys / "release.pub"),
        "--timeout",
        "60",
    ]
    environment = {**os.environ, **host_env}
    first = subprocess.Popen(
        [*command[:4], str(bundles["2.0"]), *command[4:]],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    second = subprocess.Popen(
        [*command[:4], str(bundles["2.0"]), *command[4:]],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    first_out = first.communicate(timeout=300)
    second_out = second.communicate(timeout=300)

    codes = sorted([first.returncode, second.returncode])
    assert codes == [0, 1], first_out + second_out
    loser = first_out if first.returncode == 1 else second_out
    assert "error: another airlock-install (process " in loser[1]


@pytest.mark.parametrize("phase", [journal.FILES_WRITTEN, journal.STARTED])
def test_killed_first_install_finishes_on_rerun(
    phase: str,
    bundles,  # type: ignore[no-untyped-def]
    keys: Path,
    tmp_path: Path,
    compose_project_name: str,
    docker_client: docker.DockerClient,
) -> None:
    target = make_target(tmp_path / "target", compose_project_name)
    host_env = {
        "AIRLOCK_HOST_RECORD": str(tmp_path / "host-record.json"),
        "AIRLOCK_AUDIT_LOG": str(tmp_path / "audit.log"),
    }

    killed = install(
        bundles["1.0"], target, keys, env={**host_env, journal.KILL_AT_VARIABLE: phase}
    )

    assert killed.returncode == KILLED, killed.stdout + killed.stderr
    assert not (target / ".airlock" / "state.json").exists()
    secret = env_values(target)["DB_PASS"]
    status = run("airlock-install", "status", "--target", str(target), env=host_env)
    assert status.returncode == 2
    error, hint = status.stderr.splitlines()
    assert error.startswith(f"error: nothing is installed in {target}: an earlier install to 1.0 ")
    assert error.endswith(f"stopped after phase {phase}")
    assert hint == "hint: run the same install again to finish it"

    rerun = install(bundles["1.0"], target, keys, env=host_env)

    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert rerun.stdout.splitlines()[0].startswith("note: resumed an earlier install to 1.0 ")
    assert current_version(target) == "1.0"
    assert env_values(target)["DB_PASS"] == secret
    assert containers(docker_client, compose_project_name) == V1_SERVICES


def test_interrupts_wait_for_safe_point() -> None:
    """Outside a wait, Ctrl-C is recorded; a second one, or one during a wait, raises."""
    interrupts = Interrupts()

    interrupts.request()

    assert interrupts.requested
    with pytest.raises(KeyboardInterrupt):
        interrupts.request()
    with pytest.raises(KeyboardInterrupt), interrupts.interruptible():
        pass

    waiting = Interrupts()
    with pytest.raises(KeyboardInterrupt), waiting.interruptible():
        waiting.request()


def test_twice_killed_upgrade_keeps_changed_mark(
    shared_target: tuple[Path, dict[str, str]],
    bundles,  # type: ignore[no-untyped-def]
    keys: Path,
    project: str,
    docker_client: docker.DockerClient,
) -> None:
    """A resumed run killed before its own first change still records the earlier run's."""
    target, host_env = shared_target
    _bring_to("1.0", target, bundles, keys, host_env)
    first = install(
        bundles["2.0"], target, keys, env={**host_env, journal.KILL_AT_VARIABLE: "files-written"}
    )
    assert first.returncode == KILLED

    second = install(
        bundles["2.0"], target, keys, env={**host_env, journal.KILL_AT_VARIABLE: "verified"}
    )

    assert second.returncode == KILLED
    recorded = journal.load_journal(target)
    assert recorded is not None
    assert recorded.phase == "verified"
    assert "files-written" in recorded.phases
    assert recorded.target_changed()

    third = install(bundles["2.0"], target, keys, env=host_env)

    assert third.returncode == 0, third.stdout + third.stderr
    assert current_version(target) == "2.0"
    assert containers(docker_client, project) == V2_SERVICES


def test_other_bundle_undoes_interrupted_install(
    bundles,  # type: ignore[no-untyped-def]
    keys: Path,
    tmp_path: Path,
    compose_project_name: str,
    docker_client: docker.DockerClient,
) -> None:
    target = make_target(tmp_path / "target", compose_project_name)
    host_env = {
        "AIRLOCK_HOST_RECORD": str(tmp_path / "host-record.json"),
        "AIRLOCK_AUDIT_LOG": str(tmp_path / "audit.log"),
    }
    assert install(bundles["1.0"], target, keys, env=host_env).returncode == 0
    env_v1 = (target / ".env").read_text()
    killed = install(
        bundles["2.0"], target, keys, env={**host_env, journal.KILL_AT_VARIABLE: "files-written"}
    )
    assert killed.returncode == KILLED

    result = install(bundles["2.1"], target, keys, env=host_env)

    assert result.returncode == 0, result.stdout + result.stderr
    note = result.stdout.splitlines()[0]
    assert note.startswith(
        "note: undid an earlier install from 1.0 (sequence 1) to 2.0 (sequence 2), process "
    )
    assert note.endswith("stopped after phase files-written")
    assert current_version(target) == "2.1"
    assert containers(docker_client, compose_project_name) == V2_SERVICES
    assert (target / ".airlock" / "releases" / "1-1.0" / "env").read_text() == env_v1
    assert [release["version"] for release in state(target)["history"]] == ["1.0"]  # type: ignore[index]
