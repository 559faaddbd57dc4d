"""Resolve and download images from registries, with no Docker engine.

`RegistryClient.resolve()` turns an image reference into the exact manifest,
config and layer list for one platform, and `download_blob()` streams a
layer into a file while checking its size and digest. Requests go through
an oras-py session, which handles token authentication with the
credentials in `~/.docker/config.json`. Everything else is done here,
because oras-py 0.2.43 parses references differently from Docker, retries
for about two minutes against a dead registry, and checks no digests.

Every digest is computed over the exact bytes the registry sent, never over
re-serialised JSON, and is checked against each of these that is present:
the `Docker-Content-Digest` header, a digest pinned in the reference, and
the descriptor of the parent index or manifest.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from http.cookiejar import DefaultCookiePolicy
from types import TracebackType
from typing import Any, BinaryIO, NamedTuple, NoReturn

import oras.container
import oras.provider
import requests

from installer.constants import (
    DOCKER_HUB,
    DOCKER_HUB_API,
    IMAGE_MANIFEST_MEDIA_TYPES,
    INDEX_MEDIA_TYPES,
    MANIFEST_ACCEPT,
    OCI_INDEX,
    OCI_MANIFEST,
)
from installer.errors import (
    EXIT_USAGE,
    AirlockError,
    DigestMismatchError,
    InvalidReferenceError,
    RegistryError,
    UsageError,
)
from installer.reference import ImageReference, parse

__all__ = [
    "Descriptor",
    "RegistryClient",
    "RegistryUsageError",
    "ResolvedImage",
    "parse_mirrors",
    "parse_platform",
]

logger = logging.getLogger(__name__)

# OCI distribution-spec: clients and registries "SHOULD expect to be able to
# support manifest pushes of at least 4 megabytes". Manifests are read whole
# into memory, so larger ones are rejected.
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
# Image configs are read whole into memory too. Real configs are a few
# kilobytes, and this bound is airlock's guard, not a number from a specification.
MAX_CONFIG_BYTES = 16 * 1024 * 1024
# Blobs stream through memory in pieces of this size.
CHUNK_SIZE = 1024 * 1024

# Responses worth retrying: rate limiting and server-side failures.
_RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
# The first retry waits this long, and each later one twice as long.
_FIRST_RETRY_DELAY_SECONDS = 0.5

# Docker's deprecated schema 1 manifests have no config blob, which `docker load` needs.
_SCHEMA1_MEDIA_TYPES = frozenset(
    {
        "application/vnd.docker.distribution.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v1+prettyjws",
    }
)
_SUPPORTED_DIGEST_ALGORITHMS = frozenset({"sha256", "sha384", "sha512"})

# oras-py 0.2.43 wraps `Registry.do_request` in a retry decorator with fixed
# attempts (5) and waits (2 + 3**n seconds). `functools.wraps` keeps the
# undecorated function as `__wrapped__`, so airlock's own retry policy
# replaces oras-py's while its authentication handling stays. A release
# without the decorator has no `__wrapped__`, and then the method is used as is.
_ORAS_DO_REQUEST: Callable[..., requests.Response] = getattr(
    oras.provider.Registry.do_request, "__wrapped__", oras.provider.Registry.do_request
)


class RegistryUsageError(RegistryError, UsageError):
    """A `--mirror` or `--platform` value is malformed."""

    exit_code = EXIT_USAGE


@dataclass(frozen=True)
class Descriptor:
    """Content address of a blob or manifest: media type, digest and size in bytes."""

    media_type: str
    digest: str
    size: int


@dataclass(frozen=True)
class ResolvedImage:
    """One image resolved to a single platform, with the bytes that define it.

    `source` is the repository that was requested, after any mirror rewrite
    (e.g. `127.0.0.1:5000/library/postgres`). `index_digest` is set when the
    reference named an index or manifest list. `tag_digest` is set when the
    reference pins a digest and also has a tag: it is the digest the tag
    pointed to at resolve time, or None when the tag was not found.
    """

    reference: ImageReference
    source: str
    index_digest: str | None
    manifest_digest: str
    manifest_media_type: str
    manifest_bytes: bytes
    config: Descriptor
    config_bytes: bytes
    layers: tuple[Descriptor, ...]
    platform: str
    tag_digest: str | None = None


class _Platform(NamedTuple):
    os: str
    architecture: str
    variant: str | None

    def __str__(self) -> str:
        parts = [self.os, self.architecture]
        if self.variant:
            parts.append(self.variant)
        return "/".join(parts)


@dataclass(frozen=True)
class _Endpoint:
    """API location of one repository: `host` as in the reference, `api_host` as contacted."""

    host: str
    api_host: str
    path: str
    scheme: str

    @property
    def source(self) -> str:
        return f"{self.host}/{self.path}"

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://{self.api_host}/v2/{self.path}"


def parse_mirrors(values: Sequence[str]) -> dict[str, str]:
    """Parse `--mirror SOURCE=TARGET` values into a source-to-target mapping.

    SOURCE is a registry domain such as `docker.io` or `ghcr.io`. TARGET is
    `HOST[:PORT][/PREFIX]`, and the image's repository path follows it, so
    with `docker.io=127.0.0.1:5000` the image `docker.io/library/postgres`
    is requested as `127.0.0.1:5000/library/postgres`. Raises
    RegistryUsageError for a malformed or repeated value.
    """
    mirrors: dict[str, str] = {}
    for value in values:
        source, separator, target = value.partition("=")
        source, target = source.strip(), target.strip().rstrip("/")
        if not separator or not source or not target:
            raise RegistryUsageError(
                f"invalid mirror {value!r}: expected SOURCE=TARGET",
                hint="for example --mirror docker.io=127.0.0.1:5000",
            )
        if "://" in target or "@" in target:
            raise RegistryUsageError(
                f"invalid mirror {value!r}: TARGET must be HOST[:PORT][/PREFIX], "
                "without a scheme or credentials",
                hint="credentials belong in ~/.docker/config.json (docker login)",
            )
        try:
            # Parsing a sample image checks both sides with the reference grammar.
            normalised = parse(f"{source}/airlock/probe").domain
            parse("airlock/probe").with_domain(target)
        except InvalidReferenceError as err:
            raise RegistryUsageError(f"invalid mirror {value!r}: {err.message}") from err
        if normalised != source and source != "index.docker.io":
            raise RegistryUsageError(
                f"invalid mirror {value!r}: SOURCE must be a registry host such as docker.io"
            )
        if normalised in mirrors:
            raise RegistryUsageError(f"invalid mirror {value!r}: {normalised} is mirrored twice")
        mirrors[normalised] = target
        logger.debug("mirror %s -> %s", normalised, target)
    return mirrors


def parse_platform(text: str) -> str:
    """Return the normalised form of `OS/ARCH[/VARIANT]`, e.g. `linux/arm/v7` for `linux/armhf`.

    Raises RegistryUsageError for anything else.
    """
    return str(_parse_platform(text))


class RegistryClient:
    """Client for the registries images are pulled from on the connected side.

    `mirrors` maps a registry domain to `HOST[:PORT][/PREFIX]` (see
    `parse_mirrors`). A mirrored registry is the only one asked, with no
    fallback to the original. Loopback hosts (`localhost`, `127.0.0.0/8`,
    `[::1]`) are spoken to in plain HTTP, all others in HTTPS. `timeout` is
    in seconds per connect and per read. A request that fails to connect,
    times out or gets HTTP 429 or 5xx is retried `retries` times, waiting
    0.5 s, then 1 s, and so on.
    """

    def __init__(
        self,
        mirrors: Mapping[str, str] | None = None,
        *,
        timeout: float = 30,
        retries: int = 2,
    ) -> None:
        if retries < 0:
            raise ValueError(f"retries must be 0 or more, got {retries}")
        self._mirrors = dict(mirrors or {})
        self._timeout = timeout
        self._retries = retries
        # oras-py keeps one bearer token per Registry object and does not ask
        # for a new scope when the repository changes, so each repository
        # gets its own object.
        self._sessions: dict[tuple[str, str], oras.provider.Registry] = {}

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close every HTTP connection this client opened."""
        for registry in self._sessions.values():
            registry.session.close()
        self._sessions.clear()

    def resolve(self, ref: ImageReference, platform: str = "linux/amd64") -> ResolvedImage:
        """Fetch the manifest and config of `ref` for `platform`, checking every digest.

        Steps, each of which fails closed:
        1. Fetch the manifest by digest when `ref` pins one, else by tag.
        2. If it is an index or manifest list, pick the entry for `platform`
           and fetch that manifest.
        3. Fetch the config blob and check its size and digest.
        4. For a single-platform image, check that the config's OS and
           architecture match `platform`.
        5. When `ref` has both a tag and a digest, record where the tag points now.
        """
        requested = _parse_platform(platform)
        endpoint = self._endpoint(ref)
        logger.debug("resolving %s as %s for %s", ref, endpoint.source, requested)

        body, media_type, digest = self._fetch_manifest(endpoint, ref, ref.manifest_reference)
        index_digest: str | None = None
        if media_type in INDEX_MEDIA_TYPES:
            index_digest = digest
            entry, chosen = _select_platform(
                _parse_json(body, ref, "index"), requested, ref, digest
            )
            body, media_type, digest = self._fetch_manifest(
                endpoint, ref, entry.digest, expected_size=entry.size
            )
            if media_type not in IMAGE_MANIFEST_MEDIA_TYPES:
                _fail(ref, f"index entry {entry.digest} for {chosen} is {media_type}, not an image")
        else:
            chosen = requested

        manifest = _parse_json(body, ref, "manifest")
        config = _descriptor(manifest.get("config"), ref, "config")
        raw_layers = manifest.get("layers")
        if not isinstance(raw_layers, list):
            _fail(ref, f"manifest {digest} has no layers list")
        layers = tuple(_descriptor(layer, ref, "layer") for layer in raw_layers)

        config_bytes = self._fetch_config(endpoint, ref, config)
        if index_digest is None:
            chosen = _check_config_platform(config_bytes, requested, ref)

        tag_digest = None
        if ref.tag is not None and ref.digest is not None:
            tag_digest = self._check_tag(endpoint, ref)

        size = config.size + sum(layer.size for layer in layers)
        logger.info(
            "resolved %s (%s) to %s: %d layers, %d bytes",
            ref,
            chosen,
            digest,
            len(layers),
            size,
        )
        return ResolvedImage(
            reference=ref,
            source=endpoint.source,
            index_digest=index_digest,
            manifest_digest=digest,
            manifest_media_type=media_type,
            manifest_bytes=body,
            config=config,
            config_bytes=config_bytes,
            layers=layers,
            platform=str(chosen),
            tag_digest=tag_digest,
        )

    def resolve_many(
        self, refs: Iterable[ImageReference], platform: str = "linux/amd64"
    ) -> tuple[list[ResolvedImage], list[AirlockError]]:
        """Resolve every reference, collecting failures instead of stopping at the first.

        Returns the resolved images and the errors, each in input order, so
        that one run reports every missing or broken image.
        """
        _parse_platform(platform)
        resolved: list[ResolvedImage] = []
        errors: list[AirlockError] = []
        for ref in refs:
            try:
                resolved.append(self.resolve(ref, platform))
            except AirlockError as err:
                logger.debug("resolving %s failed: %s", ref, err)
                errors.append(err)
        return resolved, errors

    def download_blob(
        self,
        image: ResolvedImage,
        descriptor: Descriptor,
        out: BinaryIO,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        """Stream one blob of `image` into `out`, checking size and digest on the way.

        `progress` is called with the byte count of each chunk written.
        Raises DigestMismatchError when the bytes differ from `descriptor`,
        and RegistryError when the registry fails. After an error `out`
        contains partial or wrong bytes, which the caller must discard.
        """
        endpoint = self._endpoint_for_source(image.source)
        algorithm, expected_hex = _split_digest(descriptor.digest, image.reference)
        url = f"{endpoint.base_url}/blobs/{descriptor.digest}"
        item = f"blob {descriptor.digest} of image {image.reference}"
        logger.debug("downloading %s (%d bytes) from %s", item, descriptor.size, url)

        response = self._request(endpoint, "GET", url, stream=True)
        with response:
            _check_status(
                response,
                image.reference,
                endpoint,
                item,
                not_found=f"image {image.reference} is incomplete: {endpoint.host} has no {item}",
            )
            hasher = hashlib.new(algorithm)
            received = 0
            try:
                for chunk in response.iter_content(CHUNK_SIZE):
                    received += len(chunk)
                    if received > descriptor.size:
                        break
                    hasher.update(chunk)
                    out.write(chunk)
                    if progress is not None:
                        progress(len(chunk))
            except requests.RequestException as err:
                raise RegistryError(
                    f"download of {item} from {endpoint.host} failed after {received} "
                    f"bytes: {_describe(err)}",
                    hint="run the command again",
                ) from err

        if received != descriptor.size:
            # The loop stops at the first chunk past the size, so the exact excess is unknown.
            amount = f"{received}" if received < descriptor.size else f"over {descriptor.size}"
            raise DigestMismatchError(
                f"{item} from {endpoint.source} is {amount} bytes, expected {descriptor.size}",
                hint="the registry or a proxy changed the content; check the registry",
            )
        actual_hex = hasher.hexdigest()
        if actual_hex != expected_hex:
            raise DigestMismatchError(
                f"{item} from {endpoint.source} has digest {algorithm}:{actual_hex}, "
                f"expected {descriptor.digest}",
                hint="the registry or a proxy changed the content; check the registry",
            )
        logger.debug("downloaded %s", item)

    # Endpoints and requests.

    def _endpoint(self, ref: ImageReference) -> _Endpoint:
        """Apply the mirror for `ref`'s registry, if any, and return where to send requests."""
        target = self._mirrors.get(ref.domain)
        if target is None:
            return _endpoint_for(ref.domain, ref.path)
        mirrored = ref.with_domain(target)
        logger.debug("mirror rewrites %s to %s", ref.repository, mirrored.repository)
        return _endpoint_for(mirrored.domain, mirrored.path)

    def _endpoint_for_source(self, source: str) -> _Endpoint:
        host, _, path = source.partition("/")
        return _endpoint_for(host, path)

    def _session(self, endpoint: _Endpoint) -> oras.provider.Registry:
        key = (endpoint.api_host, endpoint.path)
        registry = self._sessions.get(key)
        if registry is not None:
            return registry

        registry = oras.provider.Registry(
            hostname=endpoint.api_host, insecure=endpoint.scheme == "http"
        )
        # oras-py sends no timeout, so a stalled registry would block forever.
        session = _TimeoutSession(self._timeout)
        session.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))
        registry.session = session
        registry.auth.session = session

        # NOTE: Docker stores Docker Hub credentials under
        # "https://index.docker.io/v1/", which oras-py does not look up for
        # registry-1.docker.io, so Docker Hub pulls are anonymous.
        container = oras.container.Container(endpoint.path, registry=endpoint.api_host)
        container.registry = endpoint.api_host
        registry.auth.load_configs(container)

        self._sessions[key] = registry
        return registry

    def _request(
        self,
        endpoint: _Endpoint,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        stream: bool = False,
    ) -> requests.Response:
        """Send one request through oras-py's authentication, retrying transient failures."""
        registry = self._session(endpoint)
        attempts = self._retries + 1
        for attempt in range(1, attempts + 1):
            delay = _FIRST_RETRY_DELAY_SECONDS * 2 ** (attempt - 1)
            try:
                response = _ORAS_DO_REQUEST(
                    registry, url, method, headers=dict(headers or {}), stream=stream
                )
            except requests.exceptions.SSLError as err:
                raise RegistryError(
                    f"TLS handshake with registry {endpoint.host} failed for {url}: "
                    f"{_describe(err)}",
                    hint="check the registry's certificate, or mirror it on a loopback host",
                ) from err
            except (requests.ConnectionError, requests.Timeout) as err:
                if attempt == attempts:
                    raise RegistryError(
                        f"registry {endpoint.host} is unreachable at {url} after "
                        f"{attempts} attempts: {_describe(err)}",
                        hint="check that the registry is running, or the --mirror option",
                    ) from err
                logger.warning(
                    "%s %s failed (%s), retry %d of %d in %.1f s",
                    method,
                    url,
                    _describe(err),
                    attempt,
                    self._retries,
                    delay,
                )
                time.sleep(delay)
                continue
            except ValueError as err:
                # oras-py raises ValueError when a 401 carries no usable challenge.
                raise RegistryError(
                    f"registry {endpoint.host} rejected authentication for {url}: {err}",
                    hint="log in with docker login, or check ~/.docker/config.json",
                ) from err
            except requests.RequestException as err:
                raise RegistryError(
                    f"request to registry {endpoint.host} failed for {url}: {_describe(err)}"
                ) from err

            if response.status_code in _RETRY_STATUSES and attempt < attempts:
                logger.warning(
                    "%s %s returned HTTP %d, retry %d of %d in %.1f s",
                    method,
                    url,
                    response.status_code,
                    attempt,
                    self._retries,
                    delay,
                )
                response.close()
                time.sleep(delay)
                continue
            return response
        raise AssertionError("unreachable: the last attempt returns or raises")

    # Manifests and configs.

    def _fetch_manifest(
        self,
        endpoint: _Endpoint,
        ref: ImageReference,
        reference: str,
        *,
        expected_size: int | None = None,
    ) -> tuple[bytes, str, str]:
        """Fetch manifest `reference` (tag or digest); return its bytes, media type and digest.

        The digest is checked against `Docker-Content-Digest` and, when
        `reference` is a digest, against it and `expected_size`.
        """
        separator = "@" if ":" in reference else ":"
        manifest_name = f"{endpoint.path}{separator}{reference}"
        item = f"manifest {manifest_name} of image {ref}"
        url = f"{endpoint.base_url}/manifests/{reference}"
        response = self._request(
            endpoint, "GET", url, headers={"Accept": MANIFEST_ACCEPT}, stream=True
        )
        with response:
            _check_status(
                response,
                ref,
                endpoint,
                item,
                not_found=f"image {ref} not found: {endpoint.host} has no manifest {manifest_name}",
            )
            body = _read_bounded(response, MAX_MANIFEST_BYTES, item)
            header_digest = response.headers.get("Docker-Content-Digest")
            content_type = response.headers.get("Content-Type", "").split(";")[0].strip()

        if len(body) > MAX_MANIFEST_BYTES:
            _fail(ref, f"{item} is larger than the limit of {MAX_MANIFEST_BYTES} bytes")
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        if header_digest and header_digest.startswith("sha256:") and header_digest != digest:
            raise DigestMismatchError(
                f"{item} from {endpoint.host}: the registry sent bytes with "
                f"digest {digest}, but its Docker-Content-Digest header says {header_digest}",
                hint="the registry or a proxy changed the content; check the registry",
            )
        if separator == "@":
            if reference.startswith("sha256:") and digest != reference:
                raise DigestMismatchError(
                    f"{item} from {endpoint.host} has digest {digest}, expected {reference}",
                    hint="the registry or a proxy changed the content; check the registry",
                )
            if expected_size is not None and len(body) != expected_size:
                raise DigestMismatchError(
                    f"{item} from {endpoint.host} is {len(body)} bytes, "
                    f"the index says {expected_size}",
                    hint="the registry or a proxy changed the content; check the registry",
                )

        media_type = _manifest_media_type(body, content_type, ref, item)
        logger.debug("fetched %s: %s, %d bytes, %s", item, media_type, len(body), digest)
        return body, media_type, digest

    def _fetch_config(self, endpoint: _Endpoint, ref: ImageReference, config: Descriptor) -> bytes:
        """Fetch the config blob whole and check its size and digest."""
        item = f"config {config.digest} of image {ref}"
        if config.size > MAX_CONFIG_BYTES:
            _fail(ref, f"config is {config.size} bytes, the limit is {MAX_CONFIG_BYTES}")
        algorithm, expected_hex = _split_digest(config.digest, ref)

        url = f"{endpoint.base_url}/blobs/{config.digest}"
        response = self._request(endpoint, "GET", url, stream=True)
        with response:
            _check_status(
                response,
                ref,
                endpoint,
                item,
                not_found=f"image {ref} is incomplete: {endpoint.host} has no {item}",
            )
            body = _read_bounded(response, config.size, item)

        actual_hex = hashlib.new(algorithm, body).hexdigest()
        if len(body) != config.size or actual_hex != expected_hex:
            # One byte more than the size means the registry sent at least that many.
            received = f"{len(body)}" if len(body) <= config.size else f"over {config.size}"
            raise DigestMismatchError(
                f"{item} from {endpoint.source} is {received} bytes with digest "
                f"{algorithm}:{actual_hex}, expected {config.size} bytes with digest "
                f"{config.digest}",
                hint="the registry or a proxy changed the content; check the registry",
            )
        return body

    def _check_tag(self, endpoint: _Endpoint, ref: ImageReference) -> str | None:
        """Return the digest `ref`'s tag points to now, warning when it is not the pinned one.

        The pinned digest is what gets bundled either way, as `docker pull
        name:tag@digest` does. A tag that moved on usually means a newer
        release or a pin that was never updated.
        """
        url = f"{endpoint.base_url}/manifests/{ref.tag}"
        response = self._request(endpoint, "HEAD", url, headers={"Accept": MANIFEST_ACCEPT})
        with response:
            tag_digest = response.headers.get("Docker-Content-Digest")
            status = response.status_code
        if status != 200 or not tag_digest:
            logger.warning(
                "image %s: tag %s not found at %s (HTTP %d), using the pinned digest",
                ref,
                ref.tag,
                endpoint.host,
                status,
            )
            return None
        if tag_digest != ref.digest:
            logger.warning(
                "image %s: tag %s now points to %s, bundling the pinned digest %s",
                ref,
                ref.tag,
                tag_digest,
                ref.digest,
            )
        return tag_digest


class _TimeoutSession(requests.Session):
    """A requests session that applies a default timeout to every request."""

    def __init__(self, timeout: float) -> None:
        super().__init__()
        self._timeout = timeout

    def request(
        self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any
    ) -> requests.Response:  # type: ignore[override]
        kwargs.setdefault("timeout", self._timeout)
        return super().request(method, url, *args, **kwargs)


# Helpers without state.


def _endpoint_for(host: str, path: str) -> _Endpoint:
    api_host = DOCKER_HUB_API if host == DOCKER_HUB else host
    scheme = "http" if _is_loopback(host) else "https"
    return _Endpoint(host=host, api_host=api_host, path=path, scheme=scheme)


def _is_loopback(host: str) -> bool:
    """Tell whether `host` (with an optional port) is localhost, 127.0.0.0/8 or [::1]."""
    if host.startswith("["):
        name = host[1 : host.find("]")]
    else:
        name = host.rsplit(":", 1)[0]
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _parse_platform(text: str) -> _Platform:
    parts = text.strip().split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise RegistryUsageError(
            f"invalid platform {text!r}: expected OS/ARCH[/VARIANT]",
            hint="for example linux/amd64 or linux/arm64",
        )
    variant = parts[2] if len(parts) == 3 else None
    return _normalise_platform(parts[0], parts[1], variant)


def _normalise_platform(os_name: str, architecture: str, variant: str | None) -> _Platform:
    """Normalise a platform as containerd does, so `linux/arm64/v8` equals `linux/arm64`."""
    # Aliases and default variants as in containerd/platforms database.go
    # (normalizeOS, normalizeArch).
    os_name, architecture, variant = os_name.lower(), architecture.lower(), (variant or "").lower()
    if os_name == "macos":
        os_name = "darwin"
    if architecture == "i386":
        architecture, variant = "386", ""
    elif architecture in ("x86_64", "x86-64", "amd64"):
        architecture = "amd64"
        variant = "" if variant == "v1" else variant
    elif architecture in ("aarch64", "arm64"):
        architecture = "arm64"
        variant = "" if variant in ("8", "v8") else variant
    elif architecture == "armhf":
        architecture, variant = "arm", "v7"
    elif architecture == "armel":
        architecture, variant = "arm", "v6"
    elif architecture == "arm":
        if variant in ("", "7"):
            variant = "v7"
        elif variant in ("5", "6", "8"):
            variant = "v" + variant
    return _Platform(os_name, architecture, variant or None)


def _select_platform(
    index: dict[str, Any], requested: _Platform, ref: ImageReference, index_digest: str
) -> tuple[Descriptor, _Platform]:
    """Pick the image manifest for `requested` from an index.

    Raises RegistryError listing the platforms the index has when none matches.
    """
    entries = index.get("manifests")
    if not isinstance(entries, list):
        _fail(ref, f"index {index_digest} has no manifests list")

    available: list[str] = []
    for entry in entries:
        if not isinstance(entry, dict) or entry.get("mediaType") not in IMAGE_MANIFEST_MEDIA_TYPES:
            continue
        raw = entry.get("platform")
        if not isinstance(raw, dict):
            continue
        variant = raw.get("variant")
        found = _normalise_platform(
            str(raw.get("os", "")),
            str(raw.get("architecture", "")),
            variant if isinstance(variant, str) else None,
        )
        # Build attestations are listed with the platform unknown/unknown.
        if found.os == "unknown":
            continue
        if found == requested:
            logger.debug("index %s: %s is %s", index_digest, requested, entry.get("digest"))
            return _descriptor(entry, ref, "index entry"), found
        available.append(str(found))

    # NOTE: no fallback to older variants (linux/arm/v6 for a linux/arm/v7
    # host), which containerd would accept.
    listed = ", ".join(sorted(set(available))) or "no platforms"
    raise RegistryError(
        f"image {ref} has no {requested} variant: index {index_digest} lists {listed}",
        hint="choose one of those with --platform, or use an image built for this platform",
    )


def _check_config_platform(
    config_bytes: bytes, requested: _Platform, ref: ImageReference
) -> _Platform:
    """Check that a single-platform image was built for `requested`; return its platform."""
    config = _parse_json(config_bytes, ref, "config")
    os_name, architecture = config.get("os"), config.get("architecture")
    if not isinstance(os_name, str) or not isinstance(architecture, str):
        logger.warning("image %s: config names no OS or architecture, assuming %s", ref, requested)
        return requested
    variant = config.get("variant")
    found = _normalise_platform(
        os_name, architecture, variant if isinstance(variant, str) else None
    )
    if found != requested:
        raise RegistryError(
            f"image {ref} is built for {found} only, not {requested}",
            hint=f"bundle with --platform {found}, or use an image built for {requested}",
        )
    return found


def _manifest_media_type(body: bytes, content_type: str, ref: ImageReference, item: str) -> str:
    """Return the media type of a manifest: its `mediaType` field, else the Content-Type."""
    if content_type in _SCHEMA1_MEDIA_TYPES:
        _fail(ref, f"{item} is a Docker schema 1 manifest, which airlock does not support")
    document = _parse_json(body, ref, item)
    media_type = document.get("mediaType") or content_type
    if media_type in _SCHEMA1_MEDIA_TYPES or document.get("schemaVersion") == 1:
        _fail(ref, f"{item} is a Docker schema 1 manifest, which airlock does not support")
    if document.get("schemaVersion") != 2:
        _fail(ref, f"{item} has schemaVersion {document.get('schemaVersion')!r}, expected 2")
    # OCI image-spec makes `mediaType` optional in manifests and indexes.
    if media_type not in INDEX_MEDIA_TYPES and media_type not in IMAGE_MANIFEST_MEDIA_TYPES:
        if "manifests" in document:
            media_type = OCI_INDEX
        elif "config" in document and "layers" in document:
            media_type = OCI_MANIFEST
        else:
            _fail(ref, f"{item} has the unsupported media type {media_type!r}")
    return str(media_type)


def _descriptor(value: object, ref: ImageReference, item: str) -> Descriptor:
    """Validate a descriptor from a manifest or index."""
    if not isinstance(value, dict):
        _fail(ref, f"{item} descriptor is missing or not an object")
    media_type, digest, size = value.get("mediaType"), value.get("digest"), value.get("size")
    if not isinstance(media_type, str) or not media_type:
        _fail(ref, f"{item} descriptor has no mediaType")
    if not isinstance(digest, str):
        _fail(ref, f"{item} descriptor has no digest")
    _split_digest(digest, ref)
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        _fail(ref, f"{item} descriptor {digest} has invalid size {size!r}")
    return Descriptor(media_type=media_type, digest=digest, size=size)


def _split_digest(digest: str, ref: ImageReference) -> tuple[str, str]:
    """Split `algorithm:hex` and check both parts, so the digest is safe in a URL."""
    algorithm, _, encoded = digest.partition(":")
    length = {"sha256": 64, "sha384": 96, "sha512": 128}.get(algorithm)
    if (
        algorithm not in _SUPPORTED_DIGEST_ALGORITHMS
        or len(encoded) != length
        or not all(c in "0123456789abcdef" for c in encoded)
    ):
        _fail(ref, f"digest {digest[:80]!r} is not sha256, sha384 or sha512 in lowercase hex")
    return algorithm, encoded


def _read_bounded(response: requests.Response, limit: int, item: str) -> bytes:
    """Read a response body whole, but at most `limit` + 1 bytes, so callers can tell excess."""
    chunks: list[bytes] = []
    received = 0
    try:
        for chunk in response.iter_content(CHUNK_SIZE):
            chunks.append(chunk)
            received += len(chunk)
            if received > limit:
                break
    except requests.RequestException as err:
        raise RegistryError(
            f"reading {item} from {response.url} failed: {_describe(err)}",
            hint="run the command again",
        ) from err
    return b"".join(chunks)[: limit + 1]


def _parse_json(body: bytes, ref: ImageReference, item: str) -> dict[str, Any]:
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RegistryError(f"image {ref}: {item} is not valid JSON: {err}") from err
    if not isinstance(document, dict):
        _fail(ref, f"{item} is not a JSON object")
    return document


def _check_status(
    response: requests.Response,
    ref: ImageReference,
    endpoint: _Endpoint,
    item: str,
    not_found: str,
) -> None:
    """Raise RegistryError for any status but 200; `not_found` is the message for 404."""
    status = response.status_code
    if status == 200:
        return
    if status == 404:
        if endpoint.source != ref.repository:
            hint = (
                f"check the tag, or the --mirror option that sends {ref.domain} to {endpoint.host}"
            )
        else:
            hint = "check the image name and tag"
        raise RegistryError(not_found, hint=hint)
    if status in (401, 403):
        raise RegistryError(
            f"registry {endpoint.host} denied access to {item} (HTTP {status})",
            hint="log in with docker login, or check ~/.docker/config.json",
        )
    raise RegistryError(
        f"registry {endpoint.host} returned HTTP {status} for {item}"
        f"{_registry_error_detail(response)}",
        hint="run the command again later, or check the registry's logs",
    )


def _registry_error_detail(response: requests.Response) -> str:
    """Return the codes and messages of a distribution API error body, if any."""
    try:
        body = response.raw.read(64 * 1024, decode_content=True)
        errors = json.loads(body).get("errors", [])
        details = [f"{e.get('code')}: {e.get('message')}" for e in errors if isinstance(e, dict)]
    except (ValueError, AttributeError, OSError, requests.RequestException):
        return ""
    return f" ({'; '.join(details)})" if details else ""


def _describe(err: BaseException) -> str:
    """Return the root cause of a requests exception, e.g. `[Errno 111] Connection refused`."""
    root: BaseException = err
    seen = {id(root)}
    while True:
        cause = root.__cause__ or root.__context__
        if cause is None or id(cause) in seen:
            break
        seen.add(id(cause))
        root = cause
    text = str(root) or type(root).__name__
    return f"{type(root).__name__}: {text}"


def _fail(ref: ImageReference, problem: str) -> NoReturn:
    raise RegistryError(
        f"image {ref}: {problem}",
        hint="the registry sent an invalid manifest; check the image",
    )
