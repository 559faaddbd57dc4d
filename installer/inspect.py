"""Describe a bundle from its manifest, without extracting or verifying the payload.

Only the first members (manifest and signatures) are read, so a 30 GB
bundle is described in milliseconds. The description says plainly that the
signature was not checked: `verify` does that.
"""

from __future__ import annotations

import tarfile
from pathlib import Path
from typing import Any

from installer import manifest as manifest_module
from installer import parts
from installer.archive import check_member_path, open_bundle
from installer.constants import MANIFEST_PATH, MAX_MANIFEST_BYTES, SIGNATURE_SUFFIX, SIGNATURES_DIR
from installer.errors import UnsafeMemberError
from installer.progress import format_amount


def describe_bundle(path: Path) -> dict[str, Any]:
    """Return name, version, signers, images, chart, `.env` values and sizes of a bundle."""
    with open_bundle(path) as stream:
        tar = tarfile.open(fileobj=stream, mode="r|")  # type: ignore[call-overload]
        info = tar.next()
        if info is None or info.name != MANIFEST_PATH or not info.isfile():
            raise UnsafeMemberError(f"{path} does not start with {MANIFEST_PATH}")
        if info.size > MAX_MANIFEST_BYTES:
            raise UnsafeMemberError(f"{MANIFEST_PATH} is {info.size} bytes, over the limit")
        handle = tar.extractfile(info)
        assert handle is not None
        raw = handle.read(info.size)
        signers = []
        while (info := tar.next()) is not None and info.name.startswith(SIGNATURES_DIR):
            check_member_path(info.name)
            signers.append(info.name[len(SIGNATURES_DIR) : -len(SIGNATURE_SUFFIX)])
        tar.close()

    manifest = manifest_module.parse(raw)
    payload = sum(member.size for member in manifest.members)
    index_path = parts.index_path_for(path)
    split = index_path is not None and index_path.is_file()
    part_count = len(parts.load_index(index_path).parts) if split and index_path else None
    return {
        "bundle": str(path),
        "verified": False,
        "name": manifest.name,
        "version": manifest.version,
        "sequence": manifest.sequence,
        "created": manifest.created,
        "expires": manifest.expires,
        "builder": manifest.builder,
        "platform": manifest.platform,
        "min_docker_version": manifest.min_docker_version,
        "signed_by": signers,
        "compose_files": list(manifest.compose_files),
        "project_name": manifest.project_name,
        "env_set": dict(manifest.env_set),
        "env_generated": [secret.name for secret in manifest.env_generate],
        "env_required": list(manifest.env_required),
        "images": [
            {
                "reference": image.reference,
                "platform": image.platform,
                "manifest_digest": image.manifest_digest,
                "load_tag": image.load_tag,
                "size": image.config.size + sum(layer.size for layer in image.layers),
                "layer_media_types": sorted({layer.media_type for layer in image.layers}),
                "services": list(image.services),
            }
            for image in manifest.images
        ],
        "chart": None
        if manifest.chart is None
        else {"name": manifest.chart.name, "version": manifest.chart.version},
        "payload_bytes": payload,
        "layer_bytes": manifest.layer_bytes,
        "layer_bytes_stored": manifest.layer_bytes_stored,
        "file_bytes": parts.bundle_size(path),
        "parts": part_count,
    }


def format_description(d: dict[str, Any]) -> str:
    """Render `describe_bundle`'s result for people."""
    lines = [
        f"{d['name']} {d['version']} (sequence {d['sequence']}), built {d['created']} by {d['builder']}",
        f"platform: {d['platform']}, needs Docker Engine {d['min_docker_version']} or newer",
        "signed by key ids (not verified here; run verify): "
        + (", ".join(d["signed_by"]) or "none"),
        f"compose files: {', '.join(d['compose_files'])} (project {d['project_name']})",
        "images:",
    ]
    for image in d["images"]:
        used = f" [{', '.join(image['services'])}]" if image["services"] else " [extra]"
        lines.append(
            f"  {image['reference']} {image['platform']} {format_amount(image['size'], 'B')}{used}"
        )
    if d["chart"]:
        lines.append(f"chart: {d['chart']['name']} {d['chart']['version']}")
    for key, value in sorted(d["env_set"].items()):
        lines.append(f"  .env sets {key}={value}")
    if d["env_generated"]:
        lines.append(f"  .env generates: {', '.join(d['env_generated'])}")
    if d["env_required"]:
        lines.append(f"  .env needs from the operator: {', '.join(d['env_required'])}")
    saved = d["layer_bytes"] - d["layer_bytes_stored"]
    split = f" in {d['parts']} parts" if d["parts"] else ""
    lines.append(
        f"size: {format_amount(d['file_bytes'], 'B')} on disk{split}; layers "
        f"{format_amount(d['layer_bytes'], 'B')}, {format_amount(d['layer_bytes_stored'], 'B')} "
        f"stored ({format_amount(saved, 'B')} saved by storing shared layers once)"
    )
    return "\n".join(lines)
