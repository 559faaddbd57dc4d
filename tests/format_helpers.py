"""Shared helpers for the bundle format tests: specs, runnable images, the two CLIs."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import tarfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from bundler.keys import KeyPair, generate_key_pair

BUSYBOX = Path("/bin/busybox")
# Seconds to wait for a throwaway registry to respond after it starts.
REGISTRY_START_TIMEOUT = 20
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


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ThrowawayRegistry:
    """A Distribution registry on a free 127.0.0.1 port that the test can stop."""

    def __init__(self, folder: Path) -> None:
        self.address = f"127.0.0.1:{_free_port()}"
        config = {
            "version": 0.1,
            "log": {"level": "error"},
            "storage": {"filesystem": {"rootdirectory": str(folder / "data")}},
            "http": {"addr": self.address},
        }
        config_path = folder / "config.yml"
        config_path.write_text(yaml.safe_dump(config))
        self.log = (folder / "registry.log").open("wb")
        self.process = subprocess.Popen(
            ["docker-registry", "serve", str(config_path)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + REGISTRY_START_TIMEOUT
        while True:
            try:
                if requests.get(f"http://{self.address}/v2/", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline or self.process.poll() is not None:
                self.stop()
                pytest.fail(f"throwaway registry on {self.address} did not start")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.log.close()
