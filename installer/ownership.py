"""Whether a target folder is safe to install into, and owns its compose project.

Compose names a project's containers, networks and volumes after the
project name alone. Two target folders with the same project name therefore
share one project: installing into the second silently replaces the first
one's containers, and with new generated secrets against the first one's
volumes. Compose records the folder it ran from in a container label, which
is what this check reads.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import docker

from installer import engine
from installer.constants import COMPOSE_PROJECT_LABEL, ENV_FILE
from installer.preflight import ERROR, OK, WARNING, Finding

# Set by docker-compose 1.26 and later and by Compose v2 (docker/compose api/labels.go).
WORKING_DIR_LABEL = "com.docker.compose.project.working_dir"


def check_project_owner(
    client: docker.DockerClient | None, project_name: str, target: Path
) -> list[Finding]:
    """Reject a project name whose containers were started from another folder."""
    if client is None:
        return []
    with engine.engine_errors(f"listing containers of compose project {project_name}"):
        containers = client.api.containers(
            all=True, filters={"label": f"{COMPOSE_PROJECT_LABEL}={project_name}"}
        )
    resolved = target.resolve()
    others = sorted(
        {
            labels[WORKING_DIR_LABEL]
            for labels in (container.get("Labels") or {} for container in containers)
            if labels.get(WORKING_DIR_LABEL)
            and Path(labels[WORKING_DIR_LABEL]).resolve() != resolved
        }
    )
    if others:
        return [
            Finding(
                "project",
                ERROR,
                f"compose project {project_name} already runs from {', '.join(others)}, "
                f"not from {resolved}",
                f"install into {others[0]}, or set COMPOSE_PROJECT_NAME to another name "
                f"in {resolved / '.env'} to run a second copy",
            )
        ]
    return [Finding("project", OK, f"compose project {project_name} belongs to {resolved}")]


def check_target_folder(target: Path) -> list[Finding]:
    """Check the target's `.env` is a regular file and the folder is not writable by others."""
    findings: list[Finding] = []
    env_path = target / ENV_FILE
    if env_path.is_symlink():
        findings.append(
            Finding(
                "target",
                ERROR,
                f"{env_path} is a symbolic link to {os.readlink(env_path)}; the installer "
                "replaces .env atomically, which would turn the link into a regular file",
                f"copy the linked file to {env_path}, or move settings you share between "
                "folders into an env_file the compose file names",
            )
        )
    try:
        mode = stat.S_IMODE(target.stat().st_mode)
    except FileNotFoundError:
        return findings
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        findings.append(
            Finding(
                "target",
                WARNING,
                f"{target} is writable by other users (mode {mode:04o}); they can change the "
                "compose files that docker compose runs",
                f"chmod go-w {target}",
            )
        )
    return findings
