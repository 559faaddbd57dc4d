"""authentik's real compose file, bundled from the local registry and installed on the real engine."""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from installer import dotenv
from installer.signing import load_public_key

pytestmark = pytest.mark.docker

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "authentik"
MIRRORS = ["--mirror", "docker.io=127.0.0.1:5000", "--mirror", "ghcr.io=127.0.0.1:5000"]


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run one of the two programs as a user would, through its entry point."""
    program, *rest = args
    module = {"airlock-bundle": "bundler.cli", "airlock-install": "installer.cli"}[program]
    return subprocess.run(
        [sys.executable, "-m", module, *rest],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        stdin=subprocess.DEVNULL,
        timeout=900,
    )


def error_line(stderr: str) -> str:
    """Return the one `error:` line; progress and log lines come before it."""
    lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, stderr
    return lines[0]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("keys")
    result = run("airlock-bundle", "keygen", "--out", str(folder), "--name", "release")
    assert result.returncode == 0, result.stderr
    return folder


@pytest.fixture(scope="module")
def bundle(standins: dict[str, str], keys: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("dist") / "authentik-2026.2.2.airlock"
    result = run(
        "airlock-bundle",
        "build",
        str(EXAMPLE / "bundle.yaml"),
        "--key",
        str(keys / "release.key"),
        "--output",
        str(output),
        *MIRRORS,
    )
    assert result.returncode == 0, result.stderr
    return output


@pytest.fixture
def target(tmp_path: Path, compose_project_name: str) -> Iterator[Path]:
    """A target folder whose .env moves the published ports off the demo's."""
    folder = tmp_path / "target"
    folder.mkdir()
    http, https = free_port(), free_port()
    (folder / ".env").write_text(
        f"COMPOSE_PROJECT_NAME={compose_project_name}\n"
        f"COMPOSE_PORT_HTTP={http}\nCOMPOSE_PORT_HTTPS={https}\n"
        "# the operator's own setting, kept across installs\nCUSTOM_FLAG=on\n"
    )
    yield folder


def _http_port(target: Path) -> int:
    return int(dotenv.parse((target / ".env").read_text())["COMPOSE_PORT_HTTP"])


def test_build_reports_operator_variables_and_images(bundle: Path) -> None:
    result = run("airlock-bundle", "inspect", str(bundle), "--json")
    assert result.returncode == 0, result.stderr
    assert '"name": "authentik"' in result.stdout
    for image in (
        "docker.io/library/postgres:16-alpine",
        "ghcr.io/goauthentik/server:2026.2.2",
        "ghcr.io/goauthentik/ldap:2026.2.2",
        "ghcr.io/goauthentik/radius:2026.2.2",
    ):
        assert image in result.stdout


def test_verify_names_signer(bundle: Path, keys: Path) -> None:
    result = run("airlock-install", "verify", str(bundle), "--key", str(keys / "release.pub"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("OK authentik 2026.2.2 (sequence 1): ")
    assert "signed by release (" in result.stdout


def test_install_brings_authentik_up_and_second_install_is_noop(
    bundle: Path, keys: Path, target: Path
) -> None:
    result = run(
        "airlock-install",
        "install",
        str(bundle),
        "--target",
        str(target),
        "--key",
        str(keys / "release.pub"),
        "--timeout",
        "240",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "installed authentik 2026.2.2 (sequence 1)" in result.stdout
    assert "postgresql: running, healthy" in result.stdout
    assert "server: running" in result.stdout
    assert "worker: running" in result.stdout

    env_text = (target / ".env").read_text()
    values = dotenv.parse(env_text)
    assert stat.S_IMODE((target / ".env").stat().st_mode) == 0o600
    assert len(values["PG_PASS"]) == 40
    assert len(values["AUTHENTIK_SECRET_KEY"]) == 60
    assert values["AUTHENTIK_DISABLE_UPDATE_CHECK"] == "true"
    assert values["CUSTOM_FLAG"] == "on"
    for secret in ("PG_PASS", "AUTHENTIK_SECRET_KEY"):
        assert values[secret] not in result.stdout + result.stderr

    with urllib.request.urlopen(
        f"http://127.0.0.1:{_http_port(target)}/-/health/live/", timeout=10
    ) as response:
        assert response.status == 200

    again = run(
        "airlock-install",
        "install",
        str(bundle),
        "--target",
        str(target),
        "--key",
        str(keys / "release.pub"),
        "--timeout",
        "240",
    )
    assert again.returncode == 0, again.stdout + again.stderr
    assert "authentik 2026.2.2 is already installed; nothing changed" in again.stdout
    assert (target / ".env").read_text() == env_text

    listed = run("airlock-install", "inventory", "--target", str(target), "--json")
    assert listed.returncode == 0, listed.stderr
    inventory = {item["reference"]: item for item in json.loads(listed.stdout)}
    server = inventory["ghcr.io/goauthentik/server:2026.2.2"]
    assert server["present"] is True
    assert server["tagged"] is True
    assert server["removable"] is False
    assert server["releases"] == ["2026.2.2 (sequence 1)"]
    assert len(inventory) == 6


def test_tampered_bundle_changes_nothing(
    bundle: Path, keys: Path, target: Path, tmp_path: Path, docker_client
) -> None:
    damaged = tmp_path / "damaged.airlock"
    shutil.copyfile(bundle, damaged)
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0x01
    damaged.write_bytes(bytes(data))
    before_images = sorted(image.id for image in docker_client.images.list(all=True))
    before_files = sorted(
        (p.relative_to(target), p.read_bytes()) for p in target.rglob("*") if p.is_file()
    )

    result = run(
        "airlock-install",
        "install",
        str(damaged),
        "--target",
        str(target),
        "--key",
        str(keys / "release.pub"),
    )

    assert result.returncode == 3, result.stderr
    assert error_line(result.stderr).startswith("error: member images/blobs/sha256/")
    assert "copy the bundle again" in result.stderr
    assert sorted(image.id for image in docker_client.images.list(all=True)) == before_images
    after_files = sorted(
        (p.relative_to(target), p.read_bytes()) for p in target.rglob("*") if p.is_file()
    )
    assert after_files == before_files
    assert not (target / ".airlock").exists()


def test_untrusted_key_is_rejected(bundle: Path, keys: Path, tmp_path: Path, target: Path) -> None:
    other = tmp_path / "other"
    assert run("airlock-bundle", "keygen", "--out", str(other)).returncode == 0
    result = run(
        "airlock-install",
        "install",
        str(bundle),
        "--target",
        str(target),
        "--key",
        str(other / "signing.pub"),
    )
    assert result.returncode == 3
    assert error_line(result.stderr) == (
        "error: bundle is signed by key id "
        f"{load_public_key(keys / 'release.pub').key_id}, not in the trusted keys"
    )


def test_missing_operator_variable_stops_before_any_change(
    standins: dict[str, str], keys: Path, tmp_path: Path, target: Path
) -> None:
    """A spec that neither sets nor generates PG_PASS leaves it to the operator."""
    spec_dir = tmp_path / "spec"
    shutil.copytree(EXAMPLE, spec_dir)
    spec = (spec_dir / "bundle.yaml").read_text()
    spec = spec.replace("    - name: PG_PASS\n      length: 40\n", "")
    (spec_dir / "bundle.yaml").write_text(spec)
    output = tmp_path / "nopass.airlock"

    built = run(
        "airlock-bundle",
        "build",
        str(spec_dir / "bundle.yaml"),
        "--key",
        str(keys / "release.key"),
        "--output",
        str(output),
        *MIRRORS,
    )
    assert built.returncode == 0, built.stderr
    assert "the operator must set these in .env before install: PG_PASS" in built.stdout

    env_before = (target / ".env").read_bytes()
    result = run(
        "airlock-install",
        "install",
        str(output),
        "--target",
        str(target),
        "--key",
        str(keys / "release.pub"),
    )
    assert result.returncode != 0
    assert "PG_PASS: database password required" in result.stderr
    assert (target / ".env").read_bytes() == env_before


def test_image_missing_from_registry_names_reference_and_registry(
    standins: dict[str, str], keys: Path, tmp_path: Path
) -> None:
    spec_dir = tmp_path / "spec"
    shutil.copytree(EXAMPLE, spec_dir)
    spec = (spec_dir / "bundle.yaml").read_text().replace("ldap:2026.2.2", "ldap:0.0.0-missing")
    (spec_dir / "bundle.yaml").write_text(spec)
    result = run(
        "airlock-bundle",
        "build",
        str(spec_dir / "bundle.yaml"),
        "--key",
        str(keys / "release.key"),
        "--output",
        str(tmp_path / "x.airlock"),
        *MIRRORS,
    )
    assert result.returncode == 1
    assert "ghcr.io/goauthentik/ldap:0.0.0-missing" in result.stderr
    assert "127.0.0.1:5000" in result.stderr
    assert not (tmp_path / "x.airlock").exists()


def test_no_docker_engine_is_environment_error(bundle: Path, keys: Path, target: Path) -> None:
    result = run(
        "airlock-install",
        "install",
        str(bundle),
        "--target",
        str(target),
        "--key",
        str(keys / "release.pub"),
        env={"DOCKER_HOST": f"unix://{target}/no-such.sock"},
    )
    assert result.returncode == 4, result.stderr
    assert "Docker engine" in error_line(result.stderr)


def test_second_target_with_same_project_is_rejected(
    bundle: Path, keys: Path, target: Path, tmp_path: Path
) -> None:
    """A second folder reusing a running project's name must not take its containers over."""
    first = run(
        "airlock-install",
        "install",
        str(bundle),
        "--target",
        str(target),
        "--key",
        str(keys / "release.pub"),
        "--timeout",
        "240",
    )
    assert first.returncode == 0, first.stdout + first.stderr
    other = tmp_path / "other-target"
    other.mkdir()
    (other / ".env").write_text((target / ".env").read_text().split("AUTHENTIK")[0])
    env_before = (other / ".env").read_bytes()

    second = run(
        "airlock-install",
        "install",
        str(bundle),
        "--target",
        str(other),
        "--key",
        str(keys / "release.pub"),
    )

    assert second.returncode == 4, second.stdout + second.stderr
    project = dotenv.parse(env_before.decode())["COMPOSE_PROJECT_NAME"]
    assert error_line(second.stderr) == (
        f"error: preflight failed: project: compose project {project} already runs from "
        f"{target.resolve()}, "
        f"not from {other.resolve()}"
    )
    assert (other / ".env").read_bytes() == env_before
    assert sorted(p.name for p in other.iterdir()) == [".env"]
