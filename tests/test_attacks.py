"""Forged, tampered, replayed and malicious bundles change nothing on the host.

Each attack is staged against a real authentik bundle built from the
stand-in images, offered to `airlock-install install` for a target where
the genuine bundle is installed and healthy. The test asserts the exact
error line, exit code 3, and that the engine's images, the registry's
catalog, the target folder (every file's bytes and mode), the trust store
and the host record are exactly what they were before.

NOTE: the image list and the catalog are compared whole, so another
process building images or pushing to the registry at the same time
makes these tests fail.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tarfile
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import pytest

pytestmark = pytest.mark.docker

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "authentik"
MIRRORS = ["--mirror", "docker.io=127.0.0.1:5000", "--mirror", "ghcr.io=127.0.0.1:5000"]
MANIFEST = "airlock/manifest.json"
COMPOSE = "compose/compose.yml"
REDO = "hint: the copy is damaged or was altered; copy the bundle again from the source"
REBUILD = "hint: airlock-bundle never writes this; rebuild the bundle and copy it again"
UNSAFE = (
    "hint: airlock-bundle writes only regular files at relative paths, so this archive was "
    "altered; do not unpack it, and get a fresh copy from the publisher"
)


def run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run one of the two programs through its entry point, as an operator would."""
    program, *rest = args
    module = {"airlock-bundle": "bundler.cli", "airlock-install": "installer.cli"}[program]
    return subprocess.run(
        [sys.executable, "-m", module, *rest],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        stdin=subprocess.DEVNULL,
        timeout=900,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Host:
    """An installed target and the host files the installer keeps, all in a temporary folder."""

    root: Path
    env: dict[str, str]
    keys: Path
    bundle: Path
    older: Path
    target: Path
    project: str

    @property
    def audit_log(self) -> Path:
        return Path(self.env["AIRLOCK_AUDIT_LOG"])

    def install(self, bundle: Path, target: Path | None = None) -> subprocess.CompletedProcess[str]:
        return run(
            "airlock-install",
            "install",
            str(bundle),
            "--target",
            str(target or self.target),
            "--timeout",
            "240",
            env=self.env,
        )


def _build(spec_dir: Path, sequence: int, keys: Path, output: Path, env: dict[str, str]) -> None:
    spec = (EXAMPLE / "bundle.yaml").read_text()
    spec = spec.replace("sequence: 1\n", f"sequence: {sequence}\n")
    assert f"sequence: {sequence}\n" in spec
    (spec_dir / "bundle.yaml").write_text(spec)
    result = run(
        "airlock-bundle",
        "build",
        str(spec_dir / "bundle.yaml"),
        "--key",
        str(keys / "release.key"),
        "--output",
        str(output),
        *MIRRORS,
        env=env,
    )
    assert result.returncode == 0, result.stderr


def _compose_down(client: docker.DockerClient, target: Path, project: str) -> None:
    subprocess.run(
        ["docker-compose", "-p", project, "down", "-v", "--remove-orphans"],
        cwd=target,
        capture_output=True,
        stdin=subprocess.DEVNULL,
        timeout=180,
        check=False,
    )
    filters = {"label": f"com.docker.compose.project={project}"}
    for container in client.containers.list(all=True, filters=filters):
        container.remove(force=True, v=True)
    for network in client.networks.list(filters=filters):
        network.remove()
    for volume in client.volumes.list(filters=filters):
        volume.remove(force=True)


@pytest.fixture(scope="module")
def host(
    standins: dict[str, str],
    docker_client: docker.DockerClient,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Host]:
    """authentik sequence 2 installed and healthy, with its key in a private trust store."""
    root = tmp_path_factory.mktemp("host")
    env = {
        "AIRLOCK_TRUST_STORE": str(root / "etc" / "trust"),
        "AIRLOCK_HOST_RECORD": str(root / "etc" / "installed.json"),
        "AIRLOCK_AUDIT_LOG": str(root / "log" / "audit.log"),
    }
    keys = root / "keys"
    assert (
        run("airlock-bundle", "keygen", "--out", str(keys), "--name", "release", env=env).returncode
        == 0
    )
    added = run("airlock-install", "trust", "add", str(keys / "release.pub"), env=env)
    assert added.returncode == 0, added.stderr

    for sequence in (1, 2):
        (root / f"spec{sequence}").mkdir()
        shutil.copy(EXAMPLE / "compose.yml", root / f"spec{sequence}" / "compose.yml")
    _build(root / "spec2", 2, keys, root / "authentik-2.airlock", env)
    _build(root / "spec1", 1, keys, root / "authentik-1.airlock", env)

    project = f"airlock-attack-{uuid.uuid4().hex[:12]}"
    target = root / "target"
    target.mkdir()
    (target / ".env").write_text(
        f"COMPOSE_PROJECT_NAME={project}\n"
        f"COMPOSE_PORT_HTTP={free_port()}\nCOMPOSE_PORT_HTTPS={free_port()}\n"
    )
    state = Host(
        root, env, keys, root / "authentik-2.airlock", root / "authentik-1.airlock", target, project
    )
    try:
        installed = state.install(state.bundle)
        assert installed.returncode == 0, installed.stdout + installed.stderr
        assert "installed authentik 2026.2.2 (sequence 2)" in installed.stdout
        yield state
    finally:
        _compose_down(docker_client, target, project)


# What must not change.


def _tree(folder: Path) -> dict[str, tuple[int, bytes | str | None]]:
    """Every path below `folder` with its mode and its bytes (files) or link target."""
    tree: dict[str, tuple[int, bytes | str | None]] = {}
    if not folder.exists():
        return tree
    for path in sorted(folder.rglob("*")):
        info = path.lstat()
        content: bytes | str | None = None
        if stat.S_ISREG(info.st_mode):
            content = path.read_bytes()
        elif stat.S_ISLNK(info.st_mode):
            content = os.readlink(path)
        tree[str(path.relative_to(folder))] = (info.st_mode, content)
    return tree


def _catalog(registry: str) -> list[str]:
    """Every repository in the registry, following the catalog's pages of 1000."""
    repositories: list[str] = []
    last = ""
    while True:
        url = f"http://{registry}/v2/_catalog?n=1000" + (f"&last={last}" if last else "")
        with urllib.request.urlopen(url, timeout=10) as reply:
            page = json.load(reply)["repositories"] or []
        repositories += page
        if len(page) < 1000:
            return sorted(repositories)
        last = page[-1]


def _snapshot(
    host: Host, client: docker.DockerClient, registry: str, extra: Path | None
) -> dict[str, Any]:
    # images.list(all=True) makes this same call, then inspects each image,
    # which fails when another process removes an image in between.
    images = sorted(
        (image["Id"], tuple(sorted(image.get("RepoTags") or ())))
        for image in client.api.images(all=True)
    )
    return {
        "images": images,
        "catalog": _catalog(registry),
        "target": _tree(host.target),
        "extra_target": None if extra is None else _tree(extra),
        "trust_store": _tree(Path(host.env["AIRLOCK_TRUST_STORE"])),
        "host_record": Path(host.env["AIRLOCK_HOST_RECORD"]).read_bytes(),
    }


def _audit_lines(host: Host) -> list[dict[str, Any]]:
    return [json.loads(line) for line in host.audit_log.read_text().splitlines()]


# Tar surgery on a copy of the genuine bundle.


@dataclass(frozen=True)
class Entry:
    name: str
    header: int
    data: int
    size: int


def _entries(path: Path) -> list[Entry]:
    with tarfile.open(path) as tar:
        return [Entry(m.name, m.offset, m.offset_data, m.size) for m in tar.getmembers()]


def _entry(path: Path, name: str) -> Entry:
    return next(e for e in _entries(path) if e.name == name)


def _layer(path: Path) -> Entry:
    """The largest member: the busybox layer every stand-in shares."""
    return max(_entries(path), key=lambda e: e.size)


def _signature(path: Path) -> Entry:
    return next(e for e in _entries(path) if e.name.startswith("airlock/signatures/"))


def _flip(data: bytearray, offset: int) -> None:
    data[offset] ^= 0x01


def _with_checksum(header: bytearray) -> bytes:
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    return bytes(header)


def _special_header(name: str, kind: bytes, payload: bytes) -> bytes:
    """A header of type `kind` with `payload` as its data, padded to whole blocks."""
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = len(payload)
    padding = b"\0" * (-len(payload) % tarfile.BLOCKSIZE)
    return info.tobuf(format=tarfile.USTAR_FORMAT) + payload + padding


def _pax_records(**records: str) -> bytes:
    out = b""
    for key, value in records.items():
        body = f" {key}={value}\n".encode()
        length = len(body) + len(str(len(body)))
        length = len(body) + len(str(length))
        out += str(length).encode() + body
    return out


def _member(name: str, payload: bytes, kind: bytes = tarfile.REGTYPE) -> bytes:
    return _special_header(name, kind, payload)


def _rewrite(
    source: Path, dest: Path, edit: Callable[[str, bytes], list[tuple[str, bytes]]]
) -> None:
    """Copy the tar member by member through `edit(name, data) -> [(name, data)]`."""
    with (
        tarfile.open(source) as tar_in,
        tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as tar_out,
    ):
        for info in tar_in.getmembers():
            data = tar_in.extractfile(info).read()  # type: ignore[union-attr]
            for name, new_data in edit(info.name, data):
                new_info = tarfile.TarInfo(name)
                new_info.size = len(new_data)
                new_info.mode = 0o644
                tar_out.addfile(new_info, io.BytesIO(new_data))


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# The attacks: each returns the damaged bundle's bytes and the stderr lines expected.

Attack = Callable[[Host, Path], tuple[bytes, list[str]]]


def flipped_manifest(host: Host, out: Path) -> tuple[bytes, list[str]]:
    data = bytearray(host.bundle.read_bytes())
    _flip(data, _entry(host.bundle, MANIFEST).data + 100)
    sig = _signature(host.bundle).name
    return bytes(data), [
        f"error: signature {sig} does not match the manifest",
        "hint: the bundle was altered or damaged in transit; copy it again from the source",
    ]


def flipped_signature(host: Host, out: Path) -> tuple[bytes, list[str]]:
    data = bytearray(host.bundle.read_bytes())
    sig = _signature(host.bundle)
    _flip(data, sig.data + 10)
    return bytes(data), [
        f"error: signature {sig.name} does not match the manifest",
        "hint: the bundle was altered or damaged in transit; copy it again from the source",
    ]


def _flipped_member(host: Host, entry: Entry) -> tuple[bytes, list[str]]:
    data = bytearray(host.bundle.read_bytes())
    original = bytes(data[entry.data : entry.data + entry.size])
    _flip(data, entry.data + entry.size // 2)
    damaged = bytes(data[entry.data : entry.data + entry.size])
    return bytes(data), [
        f"error: member {entry.name} has sha256 {_sha256(damaged)}, "
        f"the manifest records {_sha256(original)}",
        REDO,
    ]


def flipped_layer(host: Host, out: Path) -> tuple[bytes, list[str]]:
    return _flipped_member(host, _layer(host.bundle))


def flipped_compose_file(host: Host, out: Path) -> tuple[bytes, list[str]]:
    return _flipped_member(host, _entry(host.bundle, COMPOSE))


def added_member(host: Host, out: Path) -> tuple[bytes, list[str]]:
    def edit(name: str, data: bytes) -> list[tuple[str, bytes]]:
        if name == COMPOSE:
            return [(name, data), ("compose/override.yml", b"services: {}\n")]
        return [(name, data)]

    _rewrite(host.bundle, out, edit)
    return out.read_bytes(), [
        "error: bundle member compose/override.yml is not listed in the manifest",
        REDO,
    ]


def removed_member(host: Host, out: Path) -> tuple[bytes, list[str]]:
    last = _entries(host.bundle)[-1].name
    _rewrite(host.bundle, out, lambda name, data: [] if name == last else [(name, data)])
    return out.read_bytes(), [f"error: bundle ends before member {last}", REDO]


def renamed_member(host: Host, out: Path) -> tuple[bytes, list[str]]:
    renamed = "compose/docker-compose.yml"
    _rewrite(
        host.bundle,
        out,
        lambda name, data: [(renamed if name == COMPOSE else name, data)],
    )
    return out.read_bytes(), [
        f"error: bundle member {renamed} is not listed in the manifest",
        REDO,
    ]


def reordered_members(host: Host, out: Path) -> tuple[bytes, list[str]]:
    names = [e.name for e in _entries(host.bundle)]
    compose_at = names.index(COMPOSE)
    following = names[compose_at + 1]
    moved: list[tuple[str, bytes]] = []

    def edit(name: str, data: bytes) -> list[tuple[str, bytes]]:
        if name == COMPOSE:
            moved.append((name, data))
            return []
        if name == following:
            return [(name, data), *moved]
        return [(name, data)]

    _rewrite(host.bundle, out, edit)
    return out.read_bytes(), [
        f"error: bundle member {following} is out of order: expected {COMPOSE}",
        REDO,
    ]


def duplicate_member(host: Host, out: Path) -> tuple[bytes, list[str]]:
    def edit(name: str, data: bytes) -> list[tuple[str, bytes]]:
        if name == COMPOSE:
            return [(name, data), (name, b"services: {}\n")]
        return [(name, data)]

    _rewrite(host.bundle, out, edit)
    return out.read_bytes(), [
        f"error: bundle member {COMPOSE} appears twice",
        "hint: a second copy could replace the checked one when unpacked; "
        "airlock-bundle never writes this; rebuild the bundle and copy it again",
    ]


def _insert_before(host: Host, name: str, raw: bytes) -> bytes:
    data = host.bundle.read_bytes()
    at = _entry(host.bundle, name).header
    return data[:at] + raw + data[at:]


def traversal_member(host: Host, out: Path) -> tuple[bytes, list[str]]:
    raw = _member("compose/../../../etc/cron.d/airlock", b"* * * * * root id\n")
    return _insert_before(host, COMPOSE, raw), [
        "error: bundle member compose/../../../etc/cron.d/airlock has an empty, '.' or '..' "
        "path component",
        UNSAFE,
    ]


def absolute_member(host: Host, out: Path) -> tuple[bytes, list[str]]:
    info = tarfile.TarInfo("/etc/cron.d/airlock")
    payload = b"* * * * * root id\n"
    info.size = len(payload)
    # tarfile strips a leading slash when it writes; put it back by hand.
    header = bytearray(info.tobuf(format=tarfile.USTAR_FORMAT))
    header[0:100] = b"/etc/cron.d/airlock".ljust(100, b"\0")
    raw = _with_checksum(header) + payload + b"\0" * (-len(payload) % tarfile.BLOCKSIZE)
    return _insert_before(host, COMPOSE, raw), [
        "error: bundle member /etc/cron.d/airlock has an absolute path",
        UNSAFE,
    ]


def _link(kind: bytes) -> Attack:
    def attack(host: Host, out: Path) -> tuple[bytes, list[str]]:
        info = tarfile.TarInfo(COMPOSE)
        info.type = kind
        info.linkname = "/etc/shadow"
        data = host.bundle.read_bytes()
        entry = _entry(host.bundle, COMPOSE)
        end = entry.data + entry.size + (-entry.size % tarfile.BLOCKSIZE)
        return data[: entry.header] + info.tobuf(format=tarfile.USTAR_FORMAT) + data[end:], [
            f"error: bundle member {COMPOSE} is a link to /etc/shadow",
            UNSAFE,
        ]

    return attack


def _device(kind: bytes) -> Attack:
    def attack(host: Host, out: Path) -> tuple[bytes, list[str]]:
        info = tarfile.TarInfo("compose/null0")
        info.type = kind
        info.devmajor, info.devminor = 1, 3
        return _insert_before(host, COMPOSE, info.tobuf(format=tarfile.USTAR_FORMAT)), [
            "error: bundle member compose/null0 is a device or FIFO",
            UNSAFE,
        ]

    return attack


def pax_rename(host: Host, out: Path) -> tuple[bytes, list[str]]:
    raw = _special_header("././@PaxHeader", tarfile.XHDTYPE, _pax_records(path="compose/evil.yml"))
    return _insert_before(host, COMPOSE, raw), [
        f"error: pax header renames bundle member {COMPOSE} to compose/evil.yml",
        REBUILD,
    ]


def pax_huge_size(host: Host, out: Path) -> tuple[bytes, list[str]]:
    entry = _entry(host.bundle, COMPOSE)
    raw = _special_header("././@PaxHeader", tarfile.XHDTYPE, _pax_records(size=str(2**50)))
    return _insert_before(host, COMPOSE, raw), [
        f"error: member {COMPOSE} is {2**50} bytes, the manifest records {entry.size}",
        REDO,
    ]


def pax_unknown_record(host: Host, out: Path) -> tuple[bytes, list[str]]:
    raw = _special_header(
        "././@PaxHeader", tarfile.XHDTYPE, _pax_records(**{"SCHILY.xattr.security.capability": "x"})
    )
    return _insert_before(host, COMPOSE, raw), [
        f"error: bundle member {COMPOSE} has pax header records "
        "SCHILY.xattr.security.capability, which airlock bundles never use",
        REBUILD,
    ]


def global_pax_header(host: Host, out: Path) -> tuple[bytes, list[str]]:
    raw = _special_header("././@PaxHeader", tarfile.XGLTYPE, _pax_records(path="x"))
    at = _entry(host.bundle, COMPOSE).header
    return _insert_before(host, COMPOSE, raw), [
        f"error: bundle has a global pax header at byte {at}",
        REBUILD,
    ]


def gnu_long_name(host: Host, out: Path) -> tuple[bytes, list[str]]:
    raw = _special_header("././@LongLink", tarfile.GNUTYPE_LONGNAME, b"compose/evil.yml\0")
    at = _entry(host.bundle, COMPOSE).header
    return _insert_before(host, COMPOSE, raw), [
        f"error: bundle has a GNU long-name header at byte {at}",
        REBUILD,
    ]


def gnu_sparse_member(host: Host, out: Path) -> tuple[bytes, list[str]]:
    data = bytearray(host.bundle.read_bytes())
    entry = _entry(host.bundle, COMPOSE)
    header = bytearray(data[entry.header : entry.header + tarfile.BLOCKSIZE])
    header[156:157] = tarfile.GNUTYPE_SPARSE
    data[entry.header : entry.header + tarfile.BLOCKSIZE] = _with_checksum(header)
    return bytes(data), [f"error: bundle member {COMPOSE} is a GNU sparse file", REBUILD]


def huge_pax_header(host: Host, out: Path) -> tuple[bytes, list[str]]:
    # The header claims 1 GiB of pax records; only the header block is present.
    info = tarfile.TarInfo("././@PaxHeader")
    info.type = tarfile.XHDTYPE
    info.size = 2**30
    at = _entry(host.bundle, COMPOSE).header
    return _insert_before(host, COMPOSE, info.tobuf(format=tarfile.USTAR_FORMAT)), [
        f"error: bundle has a pax header of {2**30} bytes at byte {at}, more than the 65536 allowed",
        REBUILD,
    ]


def oversized_manifest(host: Host, out: Path) -> tuple[bytes, list[str]]:
    big = b" " * (16 * 1024 * 1024 + 1)
    _rewrite(host.bundle, out, lambda name, data: [(name, big if name == MANIFEST else data)])
    return out.read_bytes(), [
        f"error: bundle member {MANIFEST} is {len(big)} bytes, more than the 16777216 allowed",
        REBUILD,
    ]


def short_signature(host: Host, out: Path) -> tuple[bytes, list[str]]:
    sig = _signature(host.bundle).name
    _rewrite(host.bundle, out, lambda name, data: [(name, data[:63] if name == sig else data)])
    return out.read_bytes(), [
        f"error: signature {sig} is 63 bytes, an Ed25519 signature is 64",
        REDO,
    ]


def trailing_garbage(host: Host, out: Path) -> tuple[bytes, list[str]]:
    data = host.bundle.read_bytes()
    last = _entries(host.bundle)[-1].name
    return data + b"#!/bin/sh\n", [
        f"error: bundle has data after the tar end-of-archive marker at byte {len(data)}, "
        f"after member {last}",
        REDO,
    ]


def untrusted_signer(host: Host, out: Path) -> tuple[bytes, list[str]]:
    other = out.parent / "other-keys"
    assert (
        run("airlock-bundle", "keygen", "--out", str(other), "--name", "release", env={}).returncode
        == 0
    )
    spec_dir = out.parent / "spec"
    spec_dir.mkdir()
    shutil.copy(EXAMPLE / "compose.yml", spec_dir / "compose.yml")
    _build(spec_dir, 3, other, out, {})
    with tarfile.open(out) as tar:
        signer = next(
            n[len("airlock/signatures/") : -4]
            for n in tar.getnames()
            if n.startswith("airlock/signatures/")
        )
    return out.read_bytes(), [
        f"error: bundle is signed by key id {signer}, not in the trusted keys",
        "hint: if you trust the publisher, add their public key with airlock-install trust add "
        "KEYFILE, or pass --key PUBFILE",
    ]


ATTACKS: dict[str, Attack] = {
    "flipped-manifest-byte": flipped_manifest,
    "flipped-signature-byte": flipped_signature,
    "flipped-layer-byte": flipped_layer,
    "flipped-compose-byte": flipped_compose_file,
    "member-added": added_member,
    "member-removed": removed_member,
    "member-renamed": renamed_member,
    "members-reordered": reordered_members,
    "member-duplicated": duplicate_member,
    "path-traversal": traversal_member,
    "absolute-path": absolute_member,
    "symlink": _link(tarfile.SYMTYPE),
    "hardlink": _link(tarfile.LNKTYPE),
    "character-device": _device(tarfile.CHRTYPE),
    "block-device": _device(tarfile.BLKTYPE),
    "fifo": _device(tarfile.FIFOTYPE),
    "pax-rename": pax_rename,
    "pax-huge-size": pax_huge_size,
    "pax-unknown-record": pax_unknown_record,
    "pax-global-header": global_pax_header,
    "pax-header-bomb": huge_pax_header,
    "gnu-long-name": gnu_long_name,
    "gnu-sparse": gnu_sparse_member,
    "manifest-over-limit": oversized_manifest,
    "signature-wrong-size": short_signature,
    "trailing-garbage": trailing_garbage,
    "untrusted-signer": untrusted_signer,
}


@pytest.mark.parametrize("attack", list(ATTACKS), ids=list(ATTACKS))
def test_attack_is_rejected_and_changes_nothing(
    attack: str,
    host: Host,
    tmp_path: Path,
    docker_client: docker.DockerClient,
    registry: str,
) -> None:
    damaged = tmp_path / "damaged.airlock"
    data, expected = ATTACKS[attack](host, tmp_path / "rewritten.airlock")
    damaged.write_bytes(data)
    before = _snapshot(host, docker_client, registry, None)
    audit_before = len(_audit_lines(host))

    result = host.install(damaged)

    assert result.returncode == 3, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith(("error:", "hint:"))]
    assert lines[: len(expected)] == expected
    assert _snapshot(host, docker_client, registry, None) == before
    records = _audit_lines(host)[audit_before:]
    assert [(r["action"], r["result"]) for r in records] == [("install", "rejected")]
    assert records[0]["error"]["message"] == expected[0].removeprefix("error: ")


def test_replay_into_fresh_target_rejected(
    host: Host, tmp_path: Path, docker_client: docker.DockerClient, registry: str
) -> None:
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / ".env").write_text(f"COMPOSE_PROJECT_NAME={host.project}-fresh\n")
    before = _snapshot(host, docker_client, registry, fresh)

    result = host.install(host.older, fresh)

    assert result.returncode == 3, result.stdout + result.stderr
    assert result.stderr.splitlines()[-2:] == [
        f"error: bundle sequence 1 (2026.2.2) < 2 (2026.2.2) installed on this host in "
        f"{host.target}; downgrade not allowed",
        "hint: this is an older bundle, perhaps a stale copy; use a newer one, or pass "
        f"--allow-downgrade to install it on purpose (recorded in {host.env['AIRLOCK_HOST_RECORD']})",
    ]
    assert _snapshot(host, docker_client, registry, fresh) == before


def test_replay_into_installed_target_rejected(
    host: Host, docker_client: docker.DockerClient, registry: str
) -> None:
    before = _snapshot(host, docker_client, registry, None)

    result = host.install(host.older)

    assert result.returncode == 3, result.stdout + result.stderr
    assert result.stderr.splitlines()[-2].startswith("error: bundle sequence 1 (2026.2.2) < 2 ")
    assert _snapshot(host, docker_client, registry, None) == before


def test_genuine_reinstall_is_audited_noop(
    host: Host, docker_client: docker.DockerClient, registry: str
) -> None:
    before = _snapshot(host, docker_client, registry, None)
    audit_before = len(_audit_lines(host))

    result = host.install(host.bundle)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "authentik 2026.2.2 is already installed; nothing changed" in result.stdout
    assert "  signed by: release" in result.stdout
    assert _snapshot(host, docker_client, registry, None) == before
    (record,) = _audit_lines(host)[audit_before:]
    assert record["action"] == "install"
    assert record["result"] == "ok"
    assert record["sequence"] == 2
    assert record["target"] == str(host.target)
    assert record["flags"] == {"allow_downgrade": False, "ignore_expiry": False, "threshold": 1}
    assert len(record["signers"]) == 1
