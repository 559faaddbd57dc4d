"""What images the releases kept in a target use, and which the engine still holds.

An enclave host fills up with images of old releases, and rollback needs the
previous release's images. This module reports which images only releases
older than that one use, and removes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker

from installer import engine, releases
from installer.errors import NotInstalledError
from installer.state import load_state


@dataclass
class InventoryImage:
    """One image of one or more kept releases, and its state in the engine."""

    reference: str
    load_tag: str
    image_id: str
    releases: list[str] = field(default_factory=list)
    present: bool = False
    tagged: bool = False
    size: int | None = None
    # True when neither the current nor the previous release uses it, so
    # removing it cannot break the running release or a rollback.
    removable: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "reference": self.reference,
            "load_tag": self.load_tag,
            "image_id": self.image_id,
            "releases": self.releases,
            "present": self.present,
            "tagged": self.tagged,
            "size": self.size,
            "removable": self.removable,
        }


def take_inventory(target: Path, client: docker.DockerClient) -> list[InventoryImage]:
    """List every image the releases kept in `target` use, newest release first."""
    state = load_state(target)
    if state is None:
        raise NotInstalledError(target)
    kept = [state.current, *sorted(state.history, key=lambda r: r.sequence, reverse=True)]
    # The current release and the one a rollback would return to.
    protected = {release.sequence for release in kept[:2]}

    by_id: dict[str, InventoryImage] = {}
    for release in kept:
        manifest = releases.load_manifest(target, release)
        if manifest is None:
            continue
        label = f"{release.version} (sequence {release.sequence})"
        for image in manifest.images:
            entry = by_id.setdefault(
                image.image_id, InventoryImage(image.reference, image.load_tag, image.image_id)
            )
            entry.releases.append(label)
            if release.sequence in protected:
                entry.removable = False
            elif len(entry.releases) == 1:
                entry.removable = True

    for entry in by_id.values():
        with engine.engine_errors(f"inspecting image {entry.image_id}"):
            try:
                attributes = client.api.inspect_image(entry.image_id)
            except docker.errors.ImageNotFound:
                continue
        entry.present = True
        entry.size = attributes.get("Size")
        entry.tagged = engine.image_id(client, entry.load_tag) == entry.image_id
    return list(by_id.values())
