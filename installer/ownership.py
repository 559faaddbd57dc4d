"""Which target folder a running compose project belongs to.

Compose names a project's containers, networks and volumes after the
project name alone. Two target folders with the same project name therefore
share one project: installing into the second silently replaces the first
one's containers, and with new generated secrets against the first one's
volumes. Compose records the folder it ran from in a container label, which
is what this check reads.
"""

from __future__ import annotations

from pathlib import Path

import docker

from installer import engine
from installer.constants import COMPOSE_PROJECT_LABEL
from installer.preflight import ERROR, OK, Finding

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
