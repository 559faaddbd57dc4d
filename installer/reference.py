"""Image references parsed and normalised the way Docker does it.

The grammar and the normalisation rules follow distribution/reference
(`regexp.go`, `normalize.go`), the package the Docker engine and CLI use:

    reference := name [":" tag] ["@" digest]
    name      := [domain "/"] path
    domain    := host [":" port]

The first path component is a registry domain only if it contains "." or
":", is "localhost", or has upper-case letters. Otherwise the image is on
Docker Hub (`docker.io`), and a single-component path gets the `library/`
namespace: `postgres` is `docker.io/library/postgres`.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from dataclasses import dataclass
from typing import NoReturn

from installer.constants import DOCKER_HUB
from installer.errors import InvalidReferenceError

__all__ = ["ImageReference", "parse", "DEFAULT_TAG", "MAX_NAME_LENGTH"]

logger = logging.getLogger(__name__)

DEFAULT_TAG = "latest"
# Docker 20.10's copy of distribution/reference counts the whole name
# (domain and path) against this limit; newer releases count the path only.
# The stricter rule keeps every accepted name valid for both.
MAX_NAME_LENGTH = 255
MAX_TAG_LENGTH = 128

# distribution/reference normalize.go: the legacy Docker Hub domain and the
# namespace of official images.
_LEGACY_DOCKER_HUB = "index.docker.io"
_OFFICIAL_PREFIX = "library/"
_LOCALHOST = "localhost"

# distribution/reference regexp.go. Python's `\w` matches Unicode letters,
# so the tag pattern spells out Go's ASCII-only `\w`.
_PATH_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = re.compile(
    rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?"
)
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
# A bare 64-hex string is an image ID, which Docker rejects as a name.
_IDENTIFIER = re.compile(r"[a-f0-9]{64}")
# distribution/reference accepts any algorithm with at least 32 hex digits,
# but the registry client verifies content with sha256 only.
_DIGEST = re.compile(r"sha256:[a-f0-9]{64}")

# Messages quote at most this many characters of each rejected value. A valid
# reference is at most 456 characters (name 255, ":" and tag 129, "@" and digest 72).
_QUOTE_LIMIT = 512


@dataclass(frozen=True)
class ImageReference:
    """A normalised image reference: `domain/path[:tag][@digest]`.

    Construct it with `parse()`. The constructor validates every field and
    applies Docker Hub's normalisation (`index.docker.io` to `docker.io`,
    `library/` before a single-component path), so a hand-built instance is
    as valid and canonical as a parsed one. When both a tag and a
    digest are present, the digest identifies the content and the tag is
    metadata only, as in `docker pull name:tag@digest`.
    """

    domain: str
    path: str
    tag: str | None = None
    digest: str | None = None

    def __post_init__(self) -> None:
        # The dataclass is frozen, so normalising in place needs object.__setattr__.
        if self.domain == _LEGACY_DOCKER_HUB:
            object.__setattr__(self, "domain", DOCKER_HUB)
        if self.domain == DOCKER_HUB and self.path and "/" not in self.path:
            object.__setattr__(self, "path", _OFFICIAL_PREFIX + self.path)
        _validate(self.domain, self.path, self.tag, self.digest, text=self._compose())

    @property
    def repository(self) -> str:
        """Full repository name without tag or digest, e.g. `docker.io/library/postgres`."""
        return f"{self.domain}/{self.path}"

    @property
    def manifest_reference(self) -> str:
        """Tag or digest to request from a registry: the digest when pinned, else the tag."""
        return self.digest or self.tag or DEFAULT_TAG

    def __str__(self) -> str:
        return self._compose()

    def familiar(self) -> str:
        """Return Docker's short form, e.g. `postgres:16-alpine` or `goauthentik/x:1`.

        Only Docker Hub names shorten. `library/` is dropped only when a
        single component follows it, as distribution/reference's
        `familiarizeName` does.
        """
        if self.domain != DOCKER_HUB:
            return self._compose()
        path = self.path
        remainder = path.removeprefix(_OFFICIAL_PREFIX)
        if path.startswith(_OFFICIAL_PREFIX) and "/" not in remainder:
            path = remainder
        return path + self._suffix()

    def with_domain(self, host_and_prefix: str) -> ImageReference:
        """Rewrite the reference for another registry, keeping path, tag and digest.

        `host_and_prefix` is `HOST[:PORT][/PREFIX]`. A prefix goes before
        the path, so `registry.example:5000/mirror` turns
        `docker.io/library/redis:7` into `registry.example:5000/mirror/library/redis:7`.
        The host is taken as a registry even without a dot or port.
        """
        host, _, prefix = host_and_prefix.partition("/")
        prefix = prefix.rstrip("/")
        path = f"{prefix}/{self.path}" if prefix else self.path
        return ImageReference(domain=host, path=path, tag=self.tag, digest=self.digest)

    def tagged_or_latest(self) -> ImageReference:
        """Return this reference, with the tag `latest` when it has neither tag nor digest."""
        if self.tag is None and self.digest is None:
            return dataclasses.replace(self, tag=DEFAULT_TAG)
        return self

    def _suffix(self) -> str:
        suffix = ""
        if self.tag is not None:
            suffix += f":{self.tag}"
        if self.digest is not None:
            suffix += f"@{self.digest}"
        return suffix

    def _compose(self) -> str:
        return f"{self.domain}/{self.path}{self._suffix()}"


def parse(text: str) -> ImageReference:
    """Parse `text` into a normalised `ImageReference`, as `docker pull` reads it.

    Raises InvalidReferenceError naming the reference and the rule it breaks.
    """
    if not isinstance(text, str):
        raise InvalidReferenceError(
            f"invalid image reference {text!r}: expected a string, got {type(text).__name__}"
        )
    if text == "":
        _reject(text, "the reference is empty")
    for char in text:
        if ord(char) < 0x20 or ord(char) == 0x7F or char.isspace():
            _reject(text, f"contains the control or white-space character U+{ord(char):04X}")
    if _IDENTIFIER.fullmatch(text):
        _reject(text, "a 64-character hex string is an image ID, not a name")

    # The digest follows the only "@". The tag follows the last ":" after the
    # last "/", because an earlier ":" belongs to the registry port.
    name, at, digest = text.partition("@")
    if at and not digest:
        _reject(text, "the digest after '@' is empty")
    if "@" in digest:
        _reject(text, "contains more than one '@'")
    tag: str | None = None
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        name, tag = name[:colon], name[colon + 1 :]
        if tag == "":
            _reject(text, "the tag after ':' is empty")

    if name == "":
        _reject(text, "the repository name is empty")

    domain, path = _split_domain(name)
    logger.debug(
        "parsed %r as domain %s, path %s, tag %s, digest %s", text, domain, path, tag, digest
    )
    _validate(domain, path, tag, digest or None, text=text)
    return ImageReference(domain=domain, path=path, tag=tag, digest=digest or None)


def _split_domain(name: str) -> tuple[str, str]:
    """Split a name into registry domain and path by Docker's rules."""
    first, slash, rest = name.partition("/")
    if not slash:
        return DOCKER_HUB, _OFFICIAL_PREFIX + name

    if first == _LEGACY_DOCKER_HUB:
        domain, path = DOCKER_HUB, rest
    elif first == _LOCALHOST or "." in first or ":" in first or first.lower() != first:
        domain, path = first, rest
    else:
        domain, path = DOCKER_HUB, name

    if domain == DOCKER_HUB and "/" not in path:
        path = _OFFICIAL_PREFIX + path
    return domain, path


def _validate(domain: str, path: str, tag: str | None, digest: str | None, *, text: str) -> None:
    """Check each part against distribution/reference's grammar, naming the rule broken."""
    if not _DOMAIN.fullmatch(domain):
        _reject(
            text,
            f"registry {_quote(domain)} is not a valid host name or IP address "
            "with an optional port",
        )

    if path == "":
        _reject(text, "the repository name is empty")
    if path.lower() != path:
        _reject(text, f"repository name {_quote(path)} must be lowercase")
    for component in path.split("/"):
        if component == "":
            _reject(text, f"repository name {_quote(path)} has an empty path component")
        if not _PATH_COMPONENT.fullmatch(component):
            _reject(
                text,
                f"path component {_quote(component)} must be lowercase letters and digits, "
                "separated by '.', '_', '__' or dashes",
            )
    name_length = len(domain) + 1 + len(path)
    if name_length > MAX_NAME_LENGTH:
        _reject(text, f"name is {name_length} characters long, the limit is {MAX_NAME_LENGTH}")

    if tag is not None:
        if len(tag) > MAX_TAG_LENGTH:
            _reject(text, f"tag is {len(tag)} characters long, the limit is {MAX_TAG_LENGTH}")
        if not _TAG.fullmatch(tag):
            _reject(
                text,
                f"tag {_quote(tag)} must match [A-Za-z0-9_][A-Za-z0-9_.-]* "
                "(a letter, digit or '_' first, then also '.' and '-')",
            )

    if digest is not None and not _DIGEST.fullmatch(digest):
        _reject(
            text, f"digest {_quote(digest)} must be 'sha256:' followed by 64 lowercase hex digits"
        )


def _reject(text: str, rule: str) -> NoReturn:
    raise InvalidReferenceError(f"invalid image reference {_quote(text)}: {rule}")


def _quote(value: str) -> str:
    """Quote a value for a message, escaping control characters and cutting it short."""
    if len(value) > _QUOTE_LIMIT:
        return repr(value[:_QUOTE_LIMIT]) + "..."
    return repr(value)
