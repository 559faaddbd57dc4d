"""Make a synthetic image of incompressible layers, push it to a registry, delete it again.

Layer content comes from a seeded generator, so the same size and seed give
the same blobs on every run. The registry then keeps one copy of them on
disk however often the benchmark runs, even though deleting a repository
through the API leaves the blob files behind until the registry's garbage
collection runs.
"""

from __future__ import annotations

import hashlib
import json
import random
import tarfile
import uuid
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urljoin

import requests

from installer.constants import DOCKER_CONFIG, DOCKER_LAYER_GZIP, DOCKER_MANIFEST

# Random bytes are generated, hashed and compressed in pieces of this size,
# so making a layer needs about this much memory, not the layer's size.
GENERATE_CHUNK = 16 * 1024 * 1024
# gzip level 1: random data does not compress at any level, and level 1 is
# about 20 % faster to write than the default 6.
GZIP_LEVEL = 1
# Seconds for one registry request; a 1 GiB blob upload on loopback takes a few.
TIMEOUT = 300


@dataclass(frozen=True)
class Layer:
    """A gzip layer file with the digests a manifest and a config record for it."""

    path: Path
    digest: str
    size: int
    diff_id: str


@dataclass(frozen=True)
class SyntheticImage:
    """An image pushed to `registry` as `repository:tag`."""

    registry: str
    repository: str
    tag: str
    layers: tuple[Layer, ...]
    config: bytes
    manifest: bytes

    @property
    def image_id(self) -> str:
        """Return the id Docker gives the image: the config's digest."""
        return "sha256:" + hashlib.sha256(self.config).hexdigest()

    @property
    def manifest_digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.manifest).hexdigest()

    @property
    def layer_bytes(self) -> int:
        """Return the compressed size of all layers, the bytes a pull transfers."""
        return sum(layer.size for layer in self.layers)


def make_layers(folder: Path, total_bytes: int, count: int, seed: int) -> list[Layer]:
    """Write `count` gzip layers of random data totalling about `total_bytes`, or reuse them.

    A layer file is reused when a previous run with the same size and seed
    left it complete in `folder`, which saves most of a minute per GiB.
    """
    folder.mkdir(parents=True, exist_ok=True)
    per_layer = max(total_bytes // count, 1)
    jobs = [(folder, index, per_layer, seed) for index in range(count)]
    # zlib and hashlib release the GIL on large buffers, so threads use every core.
    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(lambda job: _make_layer(*job), jobs))


def _make_layer(folder: Path, index: int, size: int, seed: int) -> Layer:
    stem = f"layer-{seed}-{index}-{size}"
    path = folder / f"{stem}.tar.gz"
    record = folder / f"{stem}.json"
    if path.exists() and record.exists():
        saved = json.loads(record.read_text())
        if path.stat().st_size == saved["size"]:
            return Layer(path, saved["digest"], saved["size"], saved["diff_id"])

    info = tarfile.TarInfo(f"bench/layer-{index}.bin")
    info.size = size
    info.mode = 0o644
    header = info.tobuf(format=tarfile.PAX_FORMAT)
    trailer = b"\0" * (-size % tarfile.BLOCKSIZE) + b"\0" * (2 * tarfile.BLOCKSIZE)

    generator = random.Random(f"{seed}-{index}")
    tar_hash = hashlib.sha256()
    gz_hash = hashlib.sha256()
    # wbits 31: a gzip wrapper with an empty header, so equal input gives equal bytes.
    compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)
    partial = path.with_suffix(".partial")
    with partial.open("wb") as out:

        def feed(data: bytes) -> None:
            tar_hash.update(data)
            compressed = compressor.compress(data)
            gz_hash.update(compressed)
            out.write(compressed)

        feed(header)
        remaining = size
        while remaining:
            piece = min(GENERATE_CHUNK, remaining)
            feed(generator.randbytes(piece))
            remaining -= piece
        feed(trailer)
        tail = compressor.flush()
        gz_hash.update(tail)
        out.write(tail)
    partial.rename(path)

    layer = Layer(
        path, "sha256:" + gz_hash.hexdigest(), path.stat().st_size, "sha256:" + tar_hash.hexdigest()
    )
    record.write_text(
        json.dumps({"digest": layer.digest, "size": layer.size, "diff_id": layer.diff_id})
    )
    return layer


def push_image(
    registry: str, layers: list[Layer], *, prefix: str = "airlock-bench"
) -> SyntheticImage:
    """Push `layers` with a config and a Docker schema-2 manifest to a new repository."""
    repository = f"{prefix}/{uuid.uuid4().hex[:12]}"
    config = _json(
        {
            "architecture": "amd64",
            "os": "linux",
            "created": "1970-01-01T00:00:00Z",
            "config": {"Cmd": ["/bench"]},
            "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
            "history": [{"created_by": f"airlock benchmark layer {i}"} for i in range(len(layers))],
        }
    )
    config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
    manifest = _json(
        {
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": {"mediaType": DOCKER_CONFIG, "digest": config_digest, "size": len(config)},
            "layers": [
                {"mediaType": DOCKER_LAYER_GZIP, "digest": layer.digest, "size": layer.size}
                for layer in layers
            ],
        }
    )

    _upload(registry, repository, config_digest, config)
    for layer in layers:
        with layer.path.open("rb") as body:
            _upload(registry, repository, layer.digest, body)
    response = requests.put(
        f"http://{registry}/v2/{repository}/manifests/1",
        data=manifest,
        headers={"Content-Type": DOCKER_MANIFEST},
        timeout=TIMEOUT,
    )
    _expect(response, 201, f"pushing the manifest of {repository}")
    return SyntheticImage(registry, repository, "1", tuple(layers), config, manifest)


def delete_image(image: SyntheticImage) -> None:
    """Delete the image's manifest and its blob links from the registry.

    NOTE: Distribution keeps the blob files until `registry garbage-collect`
    runs, and that is unsafe while others push. Because the layers are
    seeded, the leftover is one copy per size and seed.
    """
    base = f"http://{image.registry}/v2/{image.repository}"
    response = requests.delete(f"{base}/manifests/{image.manifest_digest}", timeout=TIMEOUT)
    _expect(response, 202, f"deleting the manifest of {image.repository}")
    digests = ["sha256:" + hashlib.sha256(image.config).hexdigest()]
    digests += [layer.digest for layer in image.layers]
    for digest in digests:
        response = requests.delete(f"{base}/blobs/{digest}", timeout=TIMEOUT)
        _expect(response, 202, f"deleting blob {digest} of {image.repository}")


def _upload(registry: str, repository: str, digest: str, body: bytes | BinaryIO) -> None:
    """Upload one blob monolithically: POST opens the session, PUT sends the body."""
    base = f"http://{registry}"
    response = requests.post(f"{base}/v2/{repository}/blobs/uploads/", timeout=TIMEOUT)
    _expect(response, 202, f"opening an upload in {repository}")
    location = urljoin(base, response.headers["Location"])
    separator = "&" if "?" in location else "?"
    response = requests.put(
        f"{location}{separator}digest={digest}",
        data=body,
        headers={"Content-Type": "application/octet-stream"},
        timeout=TIMEOUT,
    )
    _expect(response, 201, f"uploading blob {digest} to {repository}")


def _json(value: object) -> bytes:
    return json.dumps(value, indent=3).encode()


def _expect(response: requests.Response, status: int, action: str) -> None:
    if response.status_code != status:
        raise RuntimeError(
            f"{action} failed: expected HTTP {status}, got {response.status_code}: "
            f"{response.text[:300]}"
        )
