"""Image reference parsing, checked against Docker's own normalisation rules."""

from __future__ import annotations

import dataclasses

import pytest

from installer.errors import InvalidReferenceError
from installer.reference import ImageReference, parse

HEX = "0123456789abcdef" * 4
DIGEST = f"sha256:{HEX}"


# Registry with a port or localhost: the first ":" must not be taken as the
# tag separator. Columns: input, domain, path, tag after defaulting, digest.
REGISTRY_PORT_TABLE = [
    ("localhost:5000/team/app", "localhost:5000", "team/app", "latest", None),
    ("registry.example:5000/app:1.2", "registry.example:5000", "app", "1.2", None),
    ("192.0.2.10:5050/x/y:dev", "192.0.2.10:5050", "x/y", "dev", None),
    ("localhost/app:1", "localhost", "app", "1", None),
    (f"registry.example:5000/app@{DIGEST}", "registry.example:5000", "app", None, DIGEST),
]


@pytest.mark.parametrize(("text", "domain", "path", "tag", "digest"), REGISTRY_PORT_TABLE)
def test_parse_registry_with_port(
    text: str, domain: str, path: str, tag: str | None, digest: str | None
) -> None:
    ref = parse(text)

    assert ref.domain == domain
    assert ref.path == path
    assert ref.tagged_or_latest().tag == tag
    assert ref.digest == digest
    assert str(ref) == text


@pytest.mark.parametrize(("text", "domain", "path", "tag", "digest"), REGISTRY_PORT_TABLE)
def test_registry_port_rewrite_keeps_path_and_digest(
    text: str, domain: str, path: str, tag: str | None, digest: str | None
) -> None:
    rewritten = parse(text).with_domain("registry.enclave:5000")

    assert rewritten.domain == "registry.enclave:5000"
    assert rewritten.path == path
    assert rewritten.digest == digest
    assert parse(str(rewritten)) == rewritten


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("postgres", "docker.io/library/postgres"),
        ("postgres:16-alpine", "docker.io/library/postgres:16-alpine"),
        ("library/postgres:16", "docker.io/library/postgres:16"),
        ("docker.io/postgres:16", "docker.io/library/postgres:16"),
        ("index.docker.io/postgres:16", "docker.io/library/postgres:16"),
        ("index.docker.io/goauthentik/server:1", "docker.io/goauthentik/server:1"),
        ("goauthentik/server:2026.2.2", "docker.io/goauthentik/server:2026.2.2"),
        ("ghcr.io/goauthentik/server:2026.2.2", "ghcr.io/goauthentik/server:2026.2.2"),
        ("a/b/c/d", "docker.io/a/b/c/d"),
        ("Registry/app", "Registry/app"),
        ("[::1]:5000/app:1", "[::1]:5000/app:1"),
        ("[2001:db8::1]/app", "[2001:db8::1]/app"),
        ("localhost:5000", "docker.io/library/localhost:5000"),
        (
            "my-registry.example/a__b/c--d/e.f_g:V1.0-rc_1",
            "my-registry.example/a__b/c--d/e.f_g:V1.0-rc_1",
        ),
        (f"redis@{DIGEST}", f"docker.io/library/redis@{DIGEST}"),
    ],
)
def test_parse_normalises_like_docker(text: str, canonical: str) -> None:
    ref = parse(text)

    assert str(ref) == canonical
    assert parse(canonical) == ref


def test_parse_keeps_tag_and_digest() -> None:
    ref = parse(f"registry.example:5000/demo/app:1.4.2@{DIGEST}")

    assert ref.domain == "registry.example:5000"
    assert ref.path == "demo/app"
    assert ref.tag == "1.4.2"
    assert ref.digest == DIGEST
    assert ref.manifest_reference == DIGEST
    assert str(ref) == f"registry.example:5000/demo/app:1.4.2@{DIGEST}"


def test_digest_pinned_rewrite_keeps_digest() -> None:
    rewritten = parse(f"docker.io/library/redis@{DIGEST}").with_domain("registry.example:5000")

    assert str(rewritten) == f"registry.example:5000/library/redis@{DIGEST}"


def test_with_domain_puts_prefix_before_path() -> None:
    ref = parse("postgres:16-alpine")

    rewritten = ref.with_domain("registry.enclave:5000/airlock/mirror")

    assert str(rewritten) == "registry.enclave:5000/airlock/mirror/library/postgres:16-alpine"
    assert rewritten.repository == "registry.enclave:5000/airlock/mirror/library/postgres"


def test_with_domain_takes_dotless_host_as_registry() -> None:
    rewritten = parse("ghcr.io/goauthentik/server:1").with_domain("registry")

    assert rewritten.domain == "registry"
    assert rewritten.path == "goauthentik/server"


def test_with_domain_docker_hub_adds_library() -> None:
    rewritten = parse("localhost:5000/redis:7").with_domain("docker.io")

    assert str(rewritten) == "docker.io/library/redis:7"


@pytest.mark.parametrize("target", ["", "bad host:5000", "host:port", "host/UPPER", "host//x"])
def test_with_domain_rejects_invalid_target(target: str) -> None:
    with pytest.raises(InvalidReferenceError):
        parse("redis:7").with_domain(target)


@pytest.mark.parametrize(
    ("text", "familiar"),
    [
        ("docker.io/library/postgres:16-alpine", "postgres:16-alpine"),
        ("docker.io/goauthentik/x:1", "goauthentik/x:1"),
        ("docker.io/library/a/b:1", "library/a/b:1"),
        (f"redis:7@{DIGEST}", f"redis:7@{DIGEST}"),
        ("ghcr.io/goauthentik/server:2026.2.2", "ghcr.io/goauthentik/server:2026.2.2"),
        ("localhost:5000/team/app", "localhost:5000/team/app"),
    ],
)
def test_familiar_form(text: str, familiar: str) -> None:
    assert parse(text).familiar() == familiar


def test_repository_property() -> None:
    assert parse("postgres:16").repository == "docker.io/library/postgres"


def test_tagged_or_latest_leaves_digest_alone() -> None:
    ref = parse(f"redis@{DIGEST}")

    assert ref.tagged_or_latest() is ref
    assert ref.tagged_or_latest().tag is None


def test_tagged_or_latest_defaults_tag() -> None:
    assert str(parse("redis").tagged_or_latest()) == "docker.io/library/redis:latest"


def test_manifest_reference_defaults_to_latest() -> None:
    assert parse("redis").manifest_reference == "latest"
    assert parse("redis:7").manifest_reference == "7"


def test_reference_is_hashable_value() -> None:
    assert parse("postgres") == parse("docker.io/library/postgres")
    assert len({parse("postgres"), parse("docker.io/library/postgres")}) == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        parse("postgres").tag = "1"  # type: ignore[misc]


def test_constructor_normalises_docker_hub() -> None:
    ref = ImageReference(domain="index.docker.io", path="postgres", tag="16")

    assert ref.domain == "docker.io"
    assert ref.path == "library/postgres"
    assert ref == parse("postgres:16")


def test_constructor_validates_fields() -> None:
    with pytest.raises(InvalidReferenceError, match="must be lowercase"):
        ImageReference(domain="docker.io", path="library/Postgres")


def test_tag_at_length_limit_is_accepted() -> None:
    assert parse("redis:" + "a" * 128).tag == "a" * 128


def test_name_at_length_limit_is_accepted() -> None:
    path = "a" * (255 - len("registry.example/"))

    assert parse(f"registry.example/{path}").path == path


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "invalid image reference '': the reference is empty"),
        (
            "red\x00is",
            "invalid image reference 'red\\x00is': "
            "contains the control or white-space character U+0000",
        ),
        (
            "redis:7\n",
            "invalid image reference 'redis:7\\n': "
            "contains the control or white-space character U+000A",
        ),
        (
            "redis 7",
            "invalid image reference 'redis 7': "
            "contains the control or white-space character U+0020",
        ),
        (
            "Postgres",
            "invalid image reference 'Postgres': "
            "repository name 'library/Postgres' must be lowercase",
        ),
        (
            "ghcr.io/GoAuthentik/server",
            "invalid image reference 'ghcr.io/GoAuthentik/server': "
            "repository name 'GoAuthentik/server' must be lowercase",
        ),
        (
            "redis:" + "a" * 129,
            f"invalid image reference 'redis:{'a' * 129}': "
            "tag is 129 characters long, the limit is 128",
        ),
        (
            "redis:-7",
            "invalid image reference 'redis:-7': tag '-7' must match [A-Za-z0-9_][A-Za-z0-9_.-]* "
            "(a letter, digit or '_' first, then also '.' and '-')",
        ),
        ("redis:", "invalid image reference 'redis:': the tag after ':' is empty"),
        ("redis@", "invalid image reference 'redis@': the digest after '@' is empty"),
        (":7", "invalid image reference ':7': the repository name is empty"),
        (
            "redis@sha256:abc",
            "invalid image reference 'redis@sha256:abc': "
            "digest 'sha256:abc' must be 'sha256:' followed by 64 lowercase hex digits",
        ),
        (
            f"redis@sha256:{HEX.upper()}",
            f"invalid image reference 'redis@sha256:{HEX.upper()}': "
            f"digest 'sha256:{HEX.upper()}' must be 'sha256:' followed by 64 lowercase hex digits",
        ),
        (
            f"redis@{DIGEST}@{DIGEST}",
            f"invalid image reference 'redis@{DIGEST}@{DIGEST}': contains more than one '@'",
        ),
        (
            HEX,
            f"invalid image reference '{HEX}': "
            "a 64-character hex string is an image ID, not a name",
        ),
        (
            "team//app",
            "invalid image reference 'team//app': "
            "repository name 'team//app' has an empty path component",
        ),
        (
            "localhost:5000/",
            "invalid image reference 'localhost:5000/': the repository name is empty",
        ),
        (
            "team/-app",
            "invalid image reference 'team/-app': path component '-app' must be lowercase "
            "letters and digits, separated by '.', '_', '__' or dashes",
        ),
        (
            "team/a..b",
            "invalid image reference 'team/a..b': path component 'a..b' must be lowercase "
            "letters and digits, separated by '.', '_', '__' or dashes",
        ),
        (
            "team/a___b",
            "invalid image reference 'team/a___b': path component 'a___b' must be lowercase "
            "letters and digits, separated by '.', '_', '__' or dashes",
        ),
        (
            "registry.example:port/app",
            "invalid image reference 'registry.example:port/app': "
            "registry 'registry.example:port' is not a valid host name or IP address "
            "with an optional port",
        ),
        (
            "-registry.example/app",
            "invalid image reference '-registry.example/app': "
            "registry '-registry.example' is not a valid host name or IP address "
            "with an optional port",
        ),
        (
            "registry.example:5000/app:1.0/x",
            "invalid image reference 'registry.example:5000/app:1.0/x': path component "
            "'app:1.0' must be lowercase letters and digits, separated by '.', '_', '__' or dashes",
        ),
        (
            "https://registry.example/app",
            "invalid image reference 'https://registry.example/app': "
            "registry 'https:' is not a valid host name or IP address with an optional port",
        ),
    ],
)
def test_parse_rejects_invalid_reference(text: str, message: str) -> None:
    with pytest.raises(InvalidReferenceError) as caught:
        parse(text)

    assert str(caught.value) == message


def test_parse_rejects_non_ascii_tag() -> None:
    with pytest.raises(InvalidReferenceError, match="tag 'é1' must match"):
        parse("redis:é1")


def test_parse_rejects_name_over_255_characters() -> None:
    path = "a" * (256 - len("registry.example/"))

    with pytest.raises(InvalidReferenceError) as caught:
        parse(f"registry.example/{path}")

    assert str(caught.value).endswith("name is 256 characters long, the limit is 255")


def test_hub_name_limit_counts_library_prefix() -> None:
    # "docker.io/library/" adds 18 characters to a familiar name.
    name = "a" * (255 - 17)

    with pytest.raises(InvalidReferenceError, match="name is 256 characters long"):
        parse(name)


def test_parse_truncates_long_reference_in_message() -> None:
    with pytest.raises(InvalidReferenceError) as caught:
        parse("A" * 1000)

    assert len(str(caught.value)) < 1200
    assert "'...: repository name 'library/AAAA" in str(caught.value)


def test_parse_rejects_non_string() -> None:
    with pytest.raises(InvalidReferenceError, match="expected a string, got bytes"):
        parse(b"redis")  # type: ignore[arg-type]
