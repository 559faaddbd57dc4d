"""Small releases of one Compose application, for the upgrade, rollback and crash tests.

Each release is a real bundle built by `airlock-bundle build` from the
stand-in images in the local registry. Healthchecks run every second, so
an install takes a few seconds instead of the half minute authentik's own
compose files need.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from installer import dotenv

REPO = Path(__file__).resolve().parents[1]
MIRRORS = ["--mirror", "docker.io=127.0.0.1:5000", "--mirror", "ghcr.io=127.0.0.1:5000"]
HEALTH_TIMEOUT = "60"

_DB = """\
  db:
    image: ${DB_IMAGE:-docker.io/library/postgres:16-alpine}
    environment:
      POSTGRES_PASSWORD: ${DB_PASS:?database password required}
      STANDIN_FAIL: "%(fail)s"
    healthcheck:
      test: ["CMD", "pg_isready", "-q"]
      interval: 1s
      timeout: 2s
      retries: 3
    volumes:
      - data:/var/lib/postgresql/data
    ports:
      - "127.0.0.1:${APP_PORT:-15432}:5432"
"""
_CACHE = """\
  cache:
    image: docker.io/library/redis:alpine
    healthcheck:
      test: ["CMD-SHELL", "redis-cli ping | grep PONG"]
      interval: 1s
      timeout: 2s
      retries: 3
"""


@dataclass(frozen=True)
class ReleaseSpec:
    """One release of the test application."""

    version: str
    sequence: int
    with_cache: bool
    fail: str = "none"
    app_tag: str = ""

    def compose_text(self) -> str:
        services = _DB % {"fail": self.fail} + (_CACHE if self.with_cache else "")
        return f"services:\n{services}volumes:\n  data:\n"

    def spec_text(self) -> str:
        return (
            "name: upgrade-test\n"
            f'version: "{self.version}"\n'
            f"sequence: {self.sequence}\n"
            "compose:\n  files: [compose.yml]\n  project_name: upgradetest\n"
            "env:\n  set:\n"
            f'    APP_TAG: "{self.app_tag or self.version}"\n'
            "  generate:\n    - name: DB_PASS\n      length: 32\n"
        )


# 1.0 runs a database and a cache; 2.0 drops the cache and changes APP_TAG;
# 3.0 is 2.0 whose database never becomes healthy.
V1 = ReleaseSpec("1.0", 1, with_cache=True)
V2 = ReleaseSpec("2.0", 2, with_cache=False)
V3_BROKEN = ReleaseSpec("3.0", 3, with_cache=False, fail="unhealthy")


def run(
    *args: str, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run one of the two programs as a user would, through its entry point."""
    program, *rest = args
    module = {"airlock-bundle": "bundler.cli", "airlock-install": "installer.cli"}[program]
    return subprocess.run(
        [sys.executable, "-m", module, *rest],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        stdin=subprocess.DEVNULL,
        timeout=timeout,
        check=False,
    )


def make_keys(folder: Path) -> Path:
    result = run("airlock-bundle", "keygen", "--out", str(folder), "--name", "release")
    assert result.returncode == 0, result.stderr
    return folder


def build_release(release: ReleaseSpec, folder: Path, keys: Path) -> Path:
    """Build the bundle of `release` in `folder` and return its path."""
    spec_dir = folder / f"spec-{release.version}"
    spec_dir.mkdir(parents=True)
    (spec_dir / "compose.yml").write_text(release.compose_text())
    (spec_dir / "bundle.yaml").write_text(release.spec_text())
    output = folder / f"upgrade-test-{release.version}.airlock"
    result = run(
        "airlock-bundle",
        "build",
        str(spec_dir / "bundle.yaml"),
        "--key",
        str(keys / "release.key"),
        "--output",
        str(output),
        *MIRRORS,
    )
    assert result.returncode == 0, result.stderr
    return output


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_target(folder: Path, project_name: str) -> Path:
    """Create a target whose .env contains a free port, the project name and an operator value."""
    folder.mkdir(parents=True)
    (folder / ".env").write_text(
        f"COMPOSE_PROJECT_NAME={project_name}\nAPP_PORT={free_port()}\n"
        "# the operator's own setting\nCUSTOM_FLAG=on\n"
    )
    return folder


def install(bundle: Path, target: Path, keys: Path, *extra: str, **kwargs: object):  # type: ignore[no-untyped-def]
    return run(
        "airlock-install",
        "install",
        str(bundle),
        "--target",
        str(target),
        "--key",
        str(keys / "release.pub"),
        "--timeout",
        HEALTH_TIMEOUT,
        *extra,
        **kwargs,  # type: ignore[arg-type]
    )


def env_values(target: Path) -> dict[str, str]:
    return dotenv.parse((target / ".env").read_text())


def state(target: Path) -> dict[str, object]:
    return json.loads((target / ".airlock" / "state.json").read_text())


def current_version(target: Path) -> str:
    return str(state(target)["current"]["version"])  # type: ignore[index]


def containers(client, project: str) -> dict[str, tuple[str, str | None]]:  # type: ignore[no-untyped-def]
    """Map each service of `project` to (state, health) of its container."""
    found: dict[str, tuple[str, str | None]] = {}
    for container in client.containers.list(
        all=True, filters={"label": f"com.docker.compose.project={project}"}
    ):
        container.reload()
        health = (container.attrs["State"].get("Health") or {}).get("Status")
        found[container.labels["com.docker.compose.service"]] = (container.status, health)
    return found


def wait_for(predicate, timeout: float = 60.0, interval: float = 0.1) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {predicate}")
        time.sleep(interval)


def isolate_host_files(folder: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Point the host-wide replay record and audit log of every run at files in `folder`."""
    monkeypatch.setenv("AIRLOCK_HOST_RECORD", str(folder / "host-record.json"))
    monkeypatch.setenv("AIRLOCK_AUDIT_LOG", str(folder / "audit.log"))
