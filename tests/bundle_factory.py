"""Make small, valid bundles without a registry, for tests of the format itself."""

from __future__ import annotations

import hashlib
import io
import tarfile
from dataclasses import dataclass, replace
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bundler.archive import write_archive
from bundler.keys import sign
from installer.manifest import GeneratedSecret, Manifest, Member
from installer.signing import TrustedKey, key_id

COMPOSE_TEXT = b"services:\n  app:\n    image: registry.example:5000/demo/app:1.0\n"


@dataclass
class SmallBundle:
    path: Path
    manifest: Manifest
    key: Ed25519PrivateKey
    trusted: TrustedKey


def trusted_key(private_key: Ed25519PrivateKey, name: str = "test") -> TrustedKey:
    public = private_key.public_key()
    return TrustedKey(key_id(public), name, public)


def make_manifest(members: list[Member], **overrides: object) -> Manifest:
    manifest = Manifest(
        name="demo",
        version="1.0.0",
        sequence=1,
        created="2026-01-01T00:00:00Z",
        builder="airlock-bundle test",
        platform="linux/amd64",
        compose_files=("compose/compose.yml",),
        project_name="demo",
        env_set={"APP_TAG": "1.0"},
        env_generate=(GeneratedSecret("APP_SECRET", 32),),
        env_required=(),
        images=(),
        members=tuple(members),
    )
    return replace(manifest, **overrides)  # type: ignore[arg-type]


def make_bundle(
    folder: Path,
    files: dict[str, bytes] | None = None,
    *,
    key: Ed25519PrivateKey | None = None,
    name: str = "bundle.airlock",
    **manifest_overrides: object,
) -> SmallBundle:
    """Write a signed bundle holding `files` (member path -> bytes)."""
    files = files if files is not None else {"compose/compose.yml": COMPOSE_TEXT}
    key = key or Ed25519PrivateKey.generate()
    payload = folder / f"{name}.payload"
    members = []
    for path, data in sorted(files.items()):
        (payload / path).parent.mkdir(parents=True, exist_ok=True)
        (payload / path).write_bytes(data)
        members.append(
            Member(path, len(data), hashlib.sha256(data).hexdigest(), "application/yaml")
        )
    manifest = make_manifest(members, **manifest_overrides)
    manifest_bytes = manifest.to_bytes()
    signatures = dict([sign(key, manifest_bytes)])
    output = folder / name
    write_archive(output, manifest_bytes, signatures, payload, members, mtime=0)
    return SmallBundle(output, manifest, key, trusted_key(key))


def rewrite_tar(source: Path, dest: Path, edit) -> None:  # type: ignore[no-untyped-def]
    """Copy a tar member by member through `edit(info, data) -> list[(info, data)]`."""
    with (
        tarfile.open(source) as tar_in,
        tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as tar_out,
    ):
        for info in tar_in.getmembers():
            data = tar_in.extractfile(info).read() if info.isfile() else b""  # type: ignore[union-attr]
            for new_info, new_data in edit(info, data):
                tar_out.addfile(new_info, io.BytesIO(new_data) if new_info.isfile() else None)
