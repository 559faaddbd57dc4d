"""Shared helpers for the bundle format tests: specs, runnable images, the two CLIs."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from bundler.keys import KeyPair, generate_key_pair

BUSYBOX = Path("/bin/busybox")
# Seconds a CLI run may take; a build of the authentik stand-ins takes about one.
CLI_TIMEOUT = 600


def run_cli(*args: str, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `airlock-bundle` or `airlock-install` through its module, as a user would."""
    program, *rest = args
    module = {"airlock-bundle": "bundler.cli", "airlock-install": "installer.cli"}[program]
    return subprocess.run(
        [sys.executable, "-m", module, *rest],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        stdin=subprocess.DEVNULL,
        timeout=CLI_TIMEOUT,
        check=False,
    )


def make_keys(folder: Path, name: str = "release") -> KeyPair:
    return generate_key_pair(folder, name)


def write_spec(
    folder: Path,
    services: Mapping[str, str],
    *,
    name: str = "demo",
    compose_name: str = "compose.yml",
    extra: Mapping[str, Any] | None = None,
    service_extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write a compose file with one service per image and a spec naming it; return the spec."""
    folder.mkdir(parents=True, exist_ok=True)
    compose = {
        "services": {
            service: {"image": image, **(service_extra or {})}
            for service, image in services.items()
        }
    }
    (folder / compose_name).write_text(yaml.safe_dump(compose, sort_keys=True))
    spec: dict[str, Any] = {
        "name": name,
        "version": "1.0.0",
        "sequence": 1,
        "compose": {"files": [compose_name], "project_name": name},
    }
    spec.update(extra or {})
    path = folder / "bundle.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def runnable_layer(marker: str = "") -> bytes:
    """Return an uncompressed layer tar with busybox as /bin/busybox and /bin/sh.

    `marker` goes into /marker.txt, so two calls with different markers give
    two different layers.
    """
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        directory = tarfile.TarInfo("bin")
        directory.type = tarfile.DIRTYPE
        directory.mode = 0o755
        archive.addfile(directory)
        data = BUSYBOX.read_bytes()
        binary = tarfile.TarInfo("bin/busybox")
        binary.size = len(data)
        binary.mode = 0o755
        archive.addfile(binary, io.BytesIO(data))
        link = tarfile.TarInfo("bin/sh")
        link.type = tarfile.SYMTYPE
        link.linkname = "busybox"
        archive.addfile(link)
        if marker:
            text = marker.encode()
            info = tarfile.TarInfo("marker.txt")
            info.size = len(text)
            info.mode = 0o644
            archive.addfile(info, io.BytesIO(text))
    return buffer.getvalue()


def tar_names(path: Path) -> list[str]:
    with tarfile.open(path) as archive:
        return archive.getnames()


def flip_byte(path: Path, offset: int) -> None:
    """Change one byte of `path` in place."""
    with path.open("r+b") as handle:
        handle.seek(offset)
        value = handle.read(1)[0]
        handle.seek(offset)
        handle.write(bytes([value ^ 0x01]))


def member_offset(path: Path, name: str) -> int:
    """Return the file offset of member `name`'s first data byte."""
    with tarfile.open(path) as archive:
        return archive.getmember(name).offset_data
