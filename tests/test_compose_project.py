"""Tests for loading compose projects: files, merging, extends, include, ports, profiles."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from bundler.build import _stage_compose, operator_variables
from bundler.spec import load_spec
from installer import dotenv
from installer.compose import (
    MissingVariablesError,
    PublishedPort,
    interpolate_tree,
    load_project,
    project_environment,
    variable_uses,
)
from installer.errors import ComposeError, InterpolationError
from installer.manifest import GeneratedSecret, Manifest
from installer.variable_sources import describe_manifest_sources, describe_sources

DATA = Path(__file__).parent / "data" / "compose"
AUTHENTIK_2026 = DATA / "authentik-2026.2" / "compose.yml"
AUTHENTIK_2025 = DATA / "authentik-2025.2" / "docker-compose.yml"
AUTHENTIK_SECRETS = {"PG_PASS": "db-password", "AUTHENTIK_SECRET_KEY": "secret-key"}


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def environment_of(path: Path, environ: dict[str, str], service: str) -> dict[str, Any]:
    """Return one service's interpolated `environment` mapping, as the tests need values."""
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    resolved = interpolate_tree(document, environ, source=path.name)
    return resolved["services"][service]["environment"]


# The real authentik files


def test_authentik_2026_loads_three_services() -> None:
    project = load_project([AUTHENTIK_2026], AUTHENTIK_SECRETS)

    assert project.name is None
    assert list(project.services) == ["postgresql", "server", "worker"]
    assert project.volumes == ["database"]
    assert project.files == [AUTHENTIK_2026]
    assert project.services["postgresql"].image == "docker.io/library/postgres:16-alpine"
    assert project.services["server"].image == "ghcr.io/goauthentik/server:2026.2.2"
    assert project.services["worker"].image == "ghcr.io/goauthentik/server:2026.2.2"


def test_authentik_2026_health_and_ports() -> None:
    project = load_project([AUTHENTIK_2026], AUTHENTIK_SECRETS)

    postgresql = project.services["postgresql"]
    server = project.services["server"]
    assert postgresql.has_healthcheck
    assert not server.has_healthcheck
    assert server.published_ports == (
        PublishedPort("", 9000, 9000, "tcp"),
        PublishedPort("", 9443, 9443, "tcp"),
    )
    assert postgresql.published_ports == ()
    assert not server.has_build
    assert server.pull_policy is None
    assert server.platform is None
    assert server.profiles == ()


def test_authentik_2026_env_overrides_image_and_ports() -> None:
    environ = {
        **AUTHENTIK_SECRETS,
        "AUTHENTIK_IMAGE": "registry.example:5000/goauthentik/server",
        "AUTHENTIK_TAG": "2026.2.1",
        "COMPOSE_PORT_HTTP": "8080",
    }

    project = load_project([AUTHENTIK_2026], environ)

    assert project.services["server"].image == "registry.example:5000/goauthentik/server:2026.2.1"
    assert project.services["server"].published_ports[0] == PublishedPort("", 8080, 9000)


def test_authentik_2026_lists_missing_secrets_together() -> None:
    with pytest.raises(MissingVariablesError) as caught:
        load_project([AUTHENTIK_2026], {})

    source = AUTHENTIK_2026.name
    assert [(item.name, item.message, item.source) for item in caught.value.missing] == [
        (
            "PG_PASS",
            "database password required",
            f"{source}: services.postgresql.environment.POSTGRES_PASSWORD",
        ),
        (
            "AUTHENTIK_SECRET_KEY",
            "secret key required",
            f"{source}: services.server.environment.AUTHENTIK_SECRET_KEY",
        ),
        (
            "AUTHENTIK_SECRET_KEY",
            "secret key required",
            f"{source}: services.worker.environment.AUTHENTIK_SECRET_KEY",
        ),
    ]
    assert str(caught.value).startswith(
        "required variables are missing a value: PG_PASS: database password required "
        f"({source}: services.postgresql.environment.POSTGRES_PASSWORD); "
    )


def test_authentik_2026_required_variables_found_without_values() -> None:
    document = yaml.safe_load(AUTHENTIK_2026.read_text(encoding="utf-8"))

    required = {
        use.name: use.message
        for use in variable_uses(document, source="compose.yml")
        if use.required
    }

    assert required == {
        "PG_PASS": "database password required",
        "AUTHENTIK_SECRET_KEY": "secret key required",
    }


def test_authentik_2025_loads_with_redis() -> None:
    project = load_project([AUTHENTIK_2025], AUTHENTIK_SECRETS)

    assert list(project.services) == ["postgresql", "redis", "server", "worker"]
    assert project.services["redis"].image == "docker.io/library/redis:alpine"
    assert project.services["redis"].has_healthcheck
    assert project.services["server"].image == "ghcr.io/goauthentik/server:2025.2.4"
    assert project.volumes == ["database", "redis"]


def test_authentik_healthcheck_keeps_escaped_dollar() -> None:
    document = yaml.safe_load(AUTHENTIK_2026.read_text(encoding="utf-8"))

    resolved = interpolate_tree(document, AUTHENTIK_SECRETS, source="compose.yml")

    assert resolved["services"]["postgresql"]["healthcheck"]["test"] == [
        "CMD-SHELL",
        "pg_isready -d ${POSTGRES_DB} -U ${POSTGRES_USER}",
    ]


# Cases from real failures, reduced


A01_COMPOSE = """\
services:
  db:
    image: registry.example:5000/demo/db:${DB_TAG:-${BASE_TAG:-16}}
    environment:
      POSTGRES_DB: ${POSTGRES_DB:-${POSTGRES_USER}}
      BANNER: "{{{ ${FOO:-foo} }}}"
"""


def test_nested_default_resolves_image_tag(tmp_path: Path) -> None:
    """the inner default applies, and a set inner variable wins."""
    compose_file = write(tmp_path, "compose.yml", A01_COMPOSE)

    plain = load_project([compose_file], {})
    with_base = load_project([compose_file], {"BASE_TAG": "15"})

    assert plain.services["db"].image == "registry.example:5000/demo/db:16"
    assert with_base.services["db"].image == "registry.example:5000/demo/db:15"


def test_nested_default_environment_from_dotenv(tmp_path: Path) -> None:
    """no brace leaks into POSTGRES_DB, with or without POSTGRES_DB set."""
    compose_file = write(tmp_path, "compose.yml", A01_COMPOSE)
    both = dotenv.parse("POSTGRES_DB=test\nPOSTGRES_USER=test\n")
    user_only = dotenv.parse("POSTGRES_USER=test\n")

    with_both = environment_of(compose_file, project_environment(both, {}), "db")
    with_user = environment_of(compose_file, project_environment(user_only, {}), "db")

    assert with_both == {"POSTGRES_DB": "test", "BANNER": "{{{ foo }}}"}
    assert with_user == {"POSTGRES_DB": "test", "BANNER": "{{{ foo }}}"}


def test_unterminated_expression_names_file_and_key(tmp_path: Path) -> None:
    """a broken `${` is an error, never a partly substituted image."""
    compose_file = write(
        tmp_path, "compose.yml", "services:\n  db:\n    image: demo/db:${DB_TAG:-16\n"
    )

    with pytest.raises(InterpolationError) as caught:
        load_project([compose_file], {})

    assert str(caught.value) == (
        'compose.yml: services.db.image: invalid interpolation "${DB_TAG:-16": '
        "unterminated ${; write $$ for a literal $"
    )


def test_crlf_dotenv_gives_clean_image(tmp_path: Path) -> None:
    """the image read through a BOM and CRLF `.env` has no CR in it."""
    compose_file = write(tmp_path, "compose.yml", "services:\n  app:\n    image: ${APP_IMAGE}\n")
    env_text = (
        b"\xef\xbb\xbfAPP_IMAGE=registry.example:5000/demo/app:1.0\r\n"
        b'DB_PASSWORD="s3cret"\r\nEMPTY=\r\n'
    ).decode("utf-8")

    project = load_project([compose_file], dotenv.parse(env_text))

    assert project.services["app"].image == "registry.example:5000/demo/app:1.0"


def test_control_character_in_image_rejected(tmp_path: Path) -> None:
    """A CR that reaches an image reference is an error, not a silently broken reference."""
    compose_file = write(tmp_path, "compose.yml", "services:\n  app:\n    image: ${APP_IMAGE}\n")

    with pytest.raises(ComposeError) as caught:
        load_project([compose_file], {"APP_IMAGE": "demo/app:local\r"})

    assert str(caught.value) == (
        f"{compose_file}: the image of service app contains whitespace or a control "
        "character: 'demo/app:local\\r'; check the line endings and quoting of the .env file"
    )


def test_empty_image_after_interpolation_rejected(tmp_path: Path) -> None:
    compose_file = write(tmp_path, "compose.yml", "services:\n  app:\n    image: ${APP_IMAGE}\n")

    with pytest.raises(ComposeError, match="the image of service app is empty after interpolation"):
        load_project([compose_file], {})


def test_required_variables_listed_with_messages(tmp_path: Path) -> None:
    """DB_USER is reported with its message; the set DB_PASS is not."""
    compose_file = write(
        tmp_path,
        "compose.yml",
        "services:\n"
        "  app:\n"
        "    image: registry.example:5000/demo/app:${APP_TAG:?set APP_TAG}\n"
        "    environment:\n"
        '      DSN: "_${DB_USER:?user missing}_${DB_PASS:?pass missing}_"\n',
    )
    environ = dotenv.parse("APP_TAG=1.0\nDB_PASS=x\n")

    with pytest.raises(MissingVariablesError) as caught:
        load_project([compose_file], environ)

    assert str(caught.value) == (
        "required variable is missing a value: DB_USER: user missing "
        "(compose.yml: services.app.environment.DSN); "
        "set them in .env or in the environment"
    )


def test_required_forms_treat_empty_differently(tmp_path: Path) -> None:
    """`${VAR:?}` rejects an empty value, `${VAR?}` only an unset one."""
    compose_file = write(
        tmp_path,
        "compose.yml",
        "services:\n  app:\n    image: app:${TAG?no tag}\n"
        "    environment:\n      P: ${P:?empty password}\n",
    )

    with pytest.raises(MissingVariablesError) as caught:
        load_project([compose_file], {"TAG": "", "P": ""})

    assert [item.name for item in caught.value.missing] == ["P"]


def test_pull_policy_and_platform_reported(tmp_path: Path) -> None:
    """The bundler gets `pull_policy: always` and the platform, so it can act on both."""
    compose_file = write(
        tmp_path,
        "compose.yml",
        "services:\n  app:\n    image: registry.example:5000/demo/app:1.4.2\n"
        "    pull_policy: always\n    platform: linux/arm64\n",
    )

    service = load_project([compose_file], {}).services["app"]

    assert service.pull_policy == "always"
    assert service.platform == "linux/arm64"


# Environment precedence


def test_shell_beats_dotenv_beats_file_default(tmp_path: Path) -> None:
    compose_file = write(
        tmp_path,
        "compose.yml",
        "services:\n"
        "  a:\n    image: a:${A_TAG:-file}\n"
        "  b:\n    image: b:${B_TAG:-file}\n"
        "  c:\n    image: c:${C_TAG:-file}\n",
    )
    from_dotenv = dotenv.parse("A_TAG=dotenv\nB_TAG=dotenv\n")

    environ = project_environment(from_dotenv, {"A_TAG": "shell"})
    project = load_project([compose_file], environ)

    assert project.services["a"].image == "a:shell"
    assert project.services["b"].image == "b:dotenv"
    assert project.services["c"].image == "c:file"


def test_project_environment_keeps_shell_empty_value() -> None:
    assert project_environment({"A": "dotenv"}, {"A": ""}) == {"A": ""}


# Several files


def test_override_file_merges_like_compose(tmp_path: Path) -> None:
    base = write(
        tmp_path,
        "compose.yml",
        "name: demo\n"
        "services:\n"
        "  app:\n"
        "    image: demo/app:1.0\n"
        "    command: [serve, --port, '80']\n"
        "    profiles: [web]\n"
        "    pull_policy: always\n"
        "    ports: ['8080:80', '8443:443']\n"
        "    healthcheck:\n      test: [CMD, true]\n      interval: 10s\n"
        "volumes:\n  data: {}\n",
    )
    override = write(
        tmp_path,
        "override.yml",
        "services:\n"
        "  app:\n"
        "    image: registry.example:5000/demo/app:2.0\n"
        "    command: serve\n"
        "    profiles: [web, admin]\n"
        "    pull_policy: never\n"
        "    platform: linux/amd64\n"
        "    ports: ['8080:80', '9090:90/udp']\n"
        "    healthcheck:\n      test: [NONE]\n"
        "  extra:\n    image: demo/extra:1\n"
        "volumes:\n  logs: {}\n",
    )

    project = load_project([base, override], {})

    app = project.services["app"]
    assert project.name == "demo"
    assert project.files == [base, override]
    assert project.volumes == ["data", "logs"]
    assert app.image == "registry.example:5000/demo/app:2.0"
    assert app.profiles == ("web", "admin")
    assert app.pull_policy == "never"
    assert app.platform == "linux/amd64"
    assert not app.has_healthcheck
    assert app.published_ports == (
        PublishedPort("", 8080, 80),
        PublishedPort("", 8443, 443),
        PublishedPort("", 9090, 90, "udp"),
    )
    assert list(project.services) == ["app", "extra"]


def test_override_file_adds_build_to_image_service(tmp_path: Path) -> None:
    base = write(tmp_path, "compose.yml", "services:\n  app:\n    image: demo/app:1\n")
    override = write(tmp_path, "override.yml", "services:\n  app:\n    build: ./app\n")

    assert load_project([base, override], {}).services["app"].has_build


def test_build_string_and_mapping_merge(tmp_path: Path) -> None:
    base = write(tmp_path, "compose.yml", "services:\n  app:\n    image: a:1\n    build: .\n")
    override = write(
        tmp_path, "override.yml", "services:\n  app:\n    build:\n      target: prod\n"
    )

    assert load_project([base, override], {}).services["app"].has_build


def test_reset_tag_removes_earlier_value(tmp_path: Path) -> None:
    base = write(
        tmp_path,
        "compose.yml",
        "services:\n  app:\n    image: a:1\n    ports: ['80:80']\n    build: .\n",
    )
    override = write(
        tmp_path, "override.yml", "services:\n  app:\n    ports: !reset []\n    build: !reset\n"
    )

    app = load_project([base, override], {}).services["app"]

    assert app.published_ports == ()
    assert not app.has_build


def test_override_tag_replaces_list(tmp_path: Path) -> None:
    base = write(
        tmp_path, "compose.yml", "services:\n  app:\n    image: a:1\n    ports: ['80:80']\n"
    )
    override = write(
        tmp_path, "override.yml", "services:\n  app:\n    ports: !override ['81:81']\n"
    )

    app = load_project([base, override], {}).services["app"]

    assert app.published_ports == (PublishedPort("", 81, 81),)


def test_override_tag_in_first_file_still_merges(tmp_path: Path) -> None:
    base = write(
        tmp_path,
        "compose.yml",
        "services:\n  app:\n    image: a:1\n    ports: !override ['80:80']\n",
    )
    override = write(tmp_path, "override.yml", "services:\n  app:\n    ports: ['81:81']\n")

    app = load_project([base, override], {}).services["app"]

    assert app.published_ports == (PublishedPort("", 80, 80), PublishedPort("", 81, 81))


def test_missing_variables_collected_across_files(tmp_path: Path) -> None:
    first = write(tmp_path, "a.yml", "services:\n  a:\n    image: a:${A:?need A}\n")
    second = write(tmp_path, "b.yml", "services:\n  b:\n    image: b:${B:?need B}\n")

    with pytest.raises(MissingVariablesError) as caught:
        load_project([first, second], {})

    assert [item.name for item in caught.value.missing] == ["A", "B"]


# extends and include


def test_extends_within_file(tmp_path: Path) -> None:
    compose_file = write(
        tmp_path,
        "compose.yml",
        "services:\n"
        "  base:\n    image: demo/base:${TAG:-1}\n    healthcheck:\n      test: [CMD, ok]\n"
        "  web:\n    extends: base\n    ports: ['80:80']\n"
        "  worker:\n    extends:\n      service: web\n    image: demo/worker:1\n",
    )

    project = load_project([compose_file], {})

    assert project.services["web"].image == "demo/base:1"
    assert project.services["web"].has_healthcheck
    assert project.services["worker"].image == "demo/worker:1"
    assert project.services["worker"].published_ports == (PublishedPort("", 80, 80),)


def test_extends_from_other_file(tmp_path: Path) -> None:
    common = write(tmp_path, "common.yml", "services:\n  base:\n    image: demo/common:${TAG}\n")
    compose_file = write(
        tmp_path,
        "compose.yml",
        "services:\n  app:\n    extends:\n      file: common.yml\n      service: base\n",
    )

    project = load_project([compose_file], {"TAG": "3"})

    assert project.services["app"].image == "demo/common:3"
    assert project.files == [compose_file, common]


def test_extends_cycle_raises(tmp_path: Path) -> None:
    compose_file = write(
        tmp_path,
        "compose.yml",
        "services:\n  a:\n    image: a\n    extends: b\n  b:\n    image: b\n    extends: a\n",
    )

    with pytest.raises(ComposeError, match="`extends` forms a cycle"):
        load_project([compose_file], {})


def test_extends_unknown_service_raises(tmp_path: Path) -> None:
    compose_file = write(tmp_path, "compose.yml", "services:\n  a:\n    extends: nothing\n")

    with pytest.raises(ComposeError, match="names service nothing, which is not defined"):
        load_project([compose_file], {})


def test_include_uses_its_own_dotenv(tmp_path: Path) -> None:
    (tmp_path / "db").mkdir()
    write(tmp_path / "db", ".env", "DB_TAG=16\n")
    included = write(tmp_path / "db", "compose.yml", "services:\n  db:\n    image: pg:${DB_TAG}\n")
    main = write(
        tmp_path, "compose.yml", "include:\n  - db/compose.yml\nservices:\n  app:\n    image: app\n"
    )

    project = load_project([main], {})

    assert project.services["db"].image == "pg:16"
    assert set(project.services) == {"app", "db"}
    # The included project's .env is read, so it is a file the project loads.
    assert project.files == [main, tmp_path / "db" / ".env", included]
    assert project.uses_include


def test_include_conflicting_service_raises(tmp_path: Path) -> None:
    write(tmp_path, "other.yml", "services:\n  app:\n    image: other\n")
    main = write(
        tmp_path, "compose.yml", "include:\n  - path: other.yml\nservices:\n  app:\n    image: a\n"
    )

    with pytest.raises(ComposeError, match="service app is defined both here and in an included"):
        load_project([main], {})


# Rejected inputs


def test_build_without_image_rejected(tmp_path: Path) -> None:
    compose_file = write(tmp_path, "compose.yml", "services:\n  app:\n    build: .\n")

    with pytest.raises(ComposeError) as caught:
        load_project([compose_file], {})

    assert str(caught.value) == (
        f"{compose_file}: service app has `build:` and no `image:`; "
        "a bundle can carry only images; "
        "build the image, push it to a registry and set `image:` for app"
    )


def test_service_without_image_rejected(tmp_path: Path) -> None:
    compose_file = write(tmp_path, "compose.yml", "services:\n  app:\n    command: x\n")

    with pytest.raises(ComposeError, match="service app has no `image:`"):
        load_project([compose_file], {})


def test_duplicate_key_rejected_like_compose_go(tmp_path: Path) -> None:
    compose_file = write(tmp_path, "compose.yml", "services:\n  app:\n    image: a\n    image: b\n")

    with pytest.raises(ComposeError, match="mapping key 'image' is defined twice"):
        load_project([compose_file], {})


def test_invalid_yaml_names_file(tmp_path: Path) -> None:
    compose_file = write(tmp_path, "compose.yml", "services: [\n")

    with pytest.raises(ComposeError, match=f"^{compose_file}: invalid YAML"):
        load_project([compose_file], {})


def test_missing_file_names_file(tmp_path: Path) -> None:
    with pytest.raises(ComposeError, match="cannot read compose file"):
        load_project([tmp_path / "absent.yml"], {})


def test_invalid_port_names_service(tmp_path: Path) -> None:
    compose_file = write(
        tmp_path, "compose.yml", "services:\n  app:\n    image: a\n    ports: ['http:80']\n"
    )

    with pytest.raises(ComposeError, match=r"services.app.ports: invalid host port 'http'"):
        load_project([compose_file], {})


# YAML 1.2 scalars


def test_yaml_12_keeps_sexagesimal_looking_port(tmp_path: Path) -> None:
    """YAML 1.1 would read 22:22 as 1342; compose-go reads YAML 1.2, where it is a string."""
    compose_file = write(
        tmp_path, "compose.yml", "services:\n  ssh:\n    image: a\n    ports:\n      - 22:22\n"
    )

    ssh = load_project([compose_file], {}).services["ssh"]

    assert ssh.published_ports == (PublishedPort("", 22, 22),)


def test_yaml_12_reads_yes_and_dates_as_strings(tmp_path: Path) -> None:
    compose_file = write(
        tmp_path,
        "compose.yml",
        "services:\n  app:\n    image: a\n    profiles: [yes, 2024-01-01]\n",
    )

    app = load_project([compose_file], {}).services["app"]

    assert app.profiles == ("yes", "2024-01-01")


# Ports


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("'3000'", [PublishedPort("", None, 3000)]),
        ("3000", [PublishedPort("", None, 3000)]),
        ("'3000-3001'", [PublishedPort("", None, 3000), PublishedPort("", None, 3001)]),
        ("'8000:8000'", [PublishedPort("", 8000, 8000)]),
        (
            "'9090-9091:8080-8081'",
            [PublishedPort("", 9090, 8080), PublishedPort("", 9091, 8081)],
        ),
        ("'49100:22'", [PublishedPort("", 49100, 22)]),
        ("'127.0.0.1:8001:8001'", [PublishedPort("127.0.0.1", 8001, 8001)]),
        (
            "'127.0.0.1:5000-5001:5000-5001'",
            [PublishedPort("127.0.0.1", 5000, 5000), PublishedPort("127.0.0.1", 5001, 5001)],
        ),
        ("'127.0.0.1::5000'", [PublishedPort("127.0.0.1", None, 5000)]),
        ("'6060:6060/udp'", [PublishedPort("", 6060, 6060, "udp")]),
        ("'[::1]:6001:6001'", [PublishedPort("::1", 6001, 6001)]),
        ("'::1:6002:6002'", [PublishedPort("::1", 6002, 6002)]),
        ("'8000-8001:80'", [PublishedPort("", 8000, 80), PublishedPort("", 8001, 80)]),
        (
            "{target: 80, published: '8080', host_ip: 127.0.0.1, protocol: tcp, mode: host}",
            [PublishedPort("127.0.0.1", 8080, 80)],
        ),
        (
            "{target: 80, published: 8080-8081}",
            [PublishedPort("", 8080, 80), PublishedPort("", 8081, 80)],
        ),
        ("{target: 53, protocol: udp}", [PublishedPort("", None, 53, "udp")]),
    ],
)
def test_port_syntax_parsed(tmp_path: Path, entry: str, expected: list[PublishedPort]) -> None:
    compose_file = write(
        tmp_path, "compose.yml", f"services:\n  app:\n    image: a\n    ports:\n      - {entry}\n"
    )

    app = load_project([compose_file], {}).services["app"]

    assert list(app.published_ports) == expected


def test_port_ranges_of_different_length_rejected(tmp_path: Path) -> None:
    compose_file = write(
        tmp_path, "compose.yml", "services:\n  app:\n    image: a\n    ports: ['80-82:80-81']\n"
    )

    with pytest.raises(ComposeError, match="host range 80-82 and container range 80-81"):
        load_project([compose_file], {})


# Health checks and profiles


@pytest.mark.parametrize(
    ("healthcheck", "expected"),
    [
        ("{test: [CMD, 'true']}", True),
        ("{test: 'curl -f localhost'}", True),
        ("{test: [NONE]}", False),
        ("{test: [CMD, 'true'], disable: true}", False),
        ("{disable: true}", False),
        ("{interval: 10s}", False),
    ],
)
def test_healthcheck_detection(tmp_path: Path, healthcheck: str, expected: bool) -> None:
    compose_file = write(
        tmp_path,
        "compose.yml",
        f"services:\n  app:\n    image: a\n    healthcheck: {healthcheck}\n",
    )

    assert load_project([compose_file], {}).services["app"].has_healthcheck is expected


PROFILES_COMPOSE = """\
services:
  always:
    image: a
  debug:
    image: b
    profiles: [debug]
  outpost:
    image: c
    profiles: [outposts, ldap]
"""


@pytest.mark.parametrize(
    ("profiles", "environ", "expected"),
    [
        ((), {}, ["always"]),
        (("debug",), {}, ["always", "debug"]),
        (("ldap",), {}, ["always", "outpost"]),
        (("*",), {}, ["always", "debug", "outpost"]),
        ((), {"COMPOSE_PROFILES": "debug, ldap"}, ["always", "debug", "outpost"]),
        (("debug",), {"COMPOSE_PROFILES": "ldap"}, ["always", "debug"]),
    ],
)
def test_active_services_follow_profiles(
    tmp_path: Path, profiles: tuple[str, ...], environ: dict[str, str], expected: list[str]
) -> None:
    compose_file = write(tmp_path, "compose.yml", PROFILES_COMPOSE)

    project = load_project([compose_file], environ, profiles=profiles)

    assert [service.name for service in project.active_services()] == expected
    assert len(project.services) == 3


def test_unset_variable_warns_once_per_load(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    compose_file = write(
        tmp_path,
        "compose.yml",
        "services:\n  a:\n    image: a:${TAG}\n  b:\n    image: b:${TAG}\n",
    )

    with caplog.at_level(logging.WARNING, logger="installer.compose"):
        load_project([compose_file], {})

    assert [record.getMessage() for record in caplog.records] == [
        'The "TAG" variable is not set; using an empty string in compose.yml: '
        "services.a.image and 1 more places"
    ]


# Cross-check with a real Compose binary

DOCKER_COMPOSE_V1 = shutil.which("docker-compose")
needs_compose_v1 = pytest.mark.skipif(
    DOCKER_COMPOSE_V1 is None, reason="docker-compose (v1) is not installed"
)


def compose_v1_config(folder: Path, compose_name: str, shell: dict[str, str]) -> dict[str, Any]:
    """Run `docker-compose config` in `folder`, with only `shell` as environment."""
    assert DOCKER_COMPOSE_V1 is not None
    environment = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(folder), **shell}
    completed = subprocess.run(
        [DOCKER_COMPOSE_V1, "--project-directory", str(folder), "-f", compose_name, "config"],
        cwd=folder,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return yaml.safe_load(completed.stdout)


@needs_compose_v1
@pytest.mark.parametrize(
    ("compose_source", "env_text", "shell"),
    [
        (AUTHENTIK_2026, "PG_PASS=pw\nAUTHENTIK_SECRET_KEY=sk\n", {}),
        (
            AUTHENTIK_2026,
            "PG_PASS=pw\nAUTHENTIK_SECRET_KEY=sk\nAUTHENTIK_TAG=2026.2.1\nPG_USER=dotenv\n",
            {"PG_USER": "shell", "AUTHENTIK_IMAGE": "registry.example:5000/goauthentik/server"},
        ),
        (AUTHENTIK_2025, "PG_PASS=pw\nAUTHENTIK_SECRET_KEY=sk\nPG_DB=db\n", {}),
    ],
)
def test_images_and_environment_match_compose_v1(
    tmp_path: Path, compose_source: Path, env_text: str, shell: dict[str, str]
) -> None:
    """These files use only forms that Compose v1 1.29 and the specification read alike."""
    shutil.copy(compose_source, tmp_path / compose_source.name)
    write(tmp_path, ".env", env_text)
    compose_file = tmp_path / compose_source.name
    environ = project_environment(dotenv.parse(env_text), shell)

    expected = compose_v1_config(tmp_path, compose_source.name, shell)
    project = load_project([compose_file], environ)

    assert {name: service.image for name, service in project.services.items()} == {
        name: service["image"] for name, service in expected["services"].items()
    }
    written = yaml.safe_load(compose_file.read_text(encoding="utf-8"))["services"]
    for name in project.services:
        ours = environment_of(compose_file, environ, name) if "environment" in written[name] else {}
        # Compose v1 also merges env_file into `environment`; compare only the keys we wrote.
        theirs = expected["services"][name].get("environment", {})
        assert {key: theirs[key] for key in ours} == ours


@needs_compose_v1
def test_nested_default_differs_from_compose_v1(tmp_path: Path) -> None:
    """Compose v1 1.29 has no nested defaults and leaks the inner expression; the spec wins.

    v1 reads `${DB_TAG:-${BASE_TAG:-16}}` with a pattern that stops at the
    first `}`, so its image ends in a mangled `${BASE_TAG:-16` text. The
    Compose Specification and compose-go evaluate the inner default.
    """
    write(tmp_path, "compose.yml", A01_COMPOSE)
    write(tmp_path, ".env", "POSTGRES_USER=test\n")

    v1_image = compose_v1_config(tmp_path, "compose.yml", {})["services"]["db"]["image"]
    project = load_project([tmp_path / "compose.yml"], {"POSTGRES_USER": "test"})

    assert v1_image != "registry.example:5000/demo/db:16"
    assert project.services["db"].image == "registry.example:5000/demo/db:16"


# Where each variable's value comes from

SOURCES_COMPOSE = """\
services:
  app:
    image: ${REGISTRY:-docker.io}/library/postgres:${APP_TAG}
    environment:
      SECRET_KEY: ${SECRET_KEY}
      DB_PASS: ${DB_PASS:?database password required}
      MODE: ${MODE:-production}
      EXTRA: ${UNSET_VAR}
"""


def test_describe_sources_names_each_source_and_hides_secrets(tmp_path: Path) -> None:
    document = yaml.safe_load(SOURCES_COMPOSE)
    uses = variable_uses(document, source="compose.yml")

    sources = describe_sources(
        uses, env_set={"APP_TAG": "16-alpine"}, generated=["SECRET_KEY"], required=["DB_PASS"]
    )

    assert [source.describe() for source in sources] == [
        'APP_TAG: spec env.set = "16-alpine" (compose.yml: services.app.image)',
        "DB_PASS: operator-provided (required) (compose.yml: services.app.environment.DB_PASS)",
        'MODE: compose file default = "production" (compose.yml: services.app.environment.MODE)',
        'REGISTRY: compose file default = "docker.io" (compose.yml: services.app.image)',
        "SECRET_KEY: generated secret (compose.yml: services.app.environment.SECRET_KEY)",
        "UNSET_VAR: unset (empty string) (compose.yml: services.app.environment.EXTRA)",
    ]


def test_describe_sources_hides_values_from_operator_dotenv() -> None:

    uses = variable_uses(yaml.safe_load(SOURCES_COMPOSE), source="compose.yml")

    sources = describe_sources(
        uses, env_set={}, generated=[], dotenv_values={"MODE": "debug", "DB_PASS": "hunter2"}
    )

    by_name = {source.name: source for source in sources}
    assert by_name["MODE"].describe() == (
        "MODE: operator's .env (compose.yml: services.app.environment.MODE)"
    )
    assert by_name["DB_PASS"].shown_value is None


def test_build_logs_variable_sources_without_secrets(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:

    write(tmp_path, "compose.yml", SOURCES_COMPOSE)
    spec_path = write(
        tmp_path,
        "bundle.yaml",
        "name: sources\nversion: '1'\nsequence: 1\ncompose:\n  files: [compose.yml]\n"
        "env:\n  set:\n    APP_TAG: 16-alpine\n  generate: [SECRET_KEY]\n",
    )
    spec = load_spec(spec_path)
    required, environ = operator_variables(spec)

    with caplog.at_level(logging.INFO, logger="bundler.build"):
        staged = _stage_compose(spec, tmp_path / "payload", environ, required)

    messages = [record.getMessage() for record in caplog.records]
    assert staged.paths == ["compose/compose.yml"]
    assert [m for m in messages if m.startswith("variable ")] == [
        'variable APP_TAG: spec env.set = "16-alpine" (compose.yml: services.app.image)',
        "variable DB_PASS: operator-provided (required) "
        "(compose.yml: services.app.environment.DB_PASS)",
        'variable MODE: compose file default = "production" '
        "(compose.yml: services.app.environment.MODE)",
        'variable REGISTRY: compose file default = "docker.io" (compose.yml: services.app.image)',
        "variable SECRET_KEY: generated secret (compose.yml: services.app.environment.SECRET_KEY)",
        "variable UNSET_VAR: unset (empty string) (compose.yml: services.app.environment.EXTRA)",
    ]
    assert not any(environ["SECRET_KEY"] in message for message in messages)


def test_describe_manifest_sources_reads_staged_files(tmp_path: Path) -> None:
    compose_file = write(tmp_path, "compose.yml", SOURCES_COMPOSE)
    manifest = Manifest(
        name="sources",
        version="1",
        sequence=1,
        created="1970-01-01T00:00:00Z",
        builder="test",
        platform="linux/amd64",
        compose_files=("compose/compose.yml",),
        project_name="sources",
        env_set={"APP_TAG": "16-alpine"},
        env_generate=(GeneratedSecret("SECRET_KEY", 48),),
        env_required=("DB_PASS",),
        images=(),
        members=(),
    )

    sources = describe_manifest_sources(manifest, [compose_file], {"MODE": "debug"})

    assert [(source.name, source.source) for source in sources] == [
        ("APP_TAG", "spec env.set"),
        ("DB_PASS", "operator-provided (required)"),
        ("MODE", "operator's .env"),
        ("REGISTRY", "compose file default"),
        ("SECRET_KEY", "generated secret"),
        ("UNSET_VAR", "unset (empty string)"),
    ]
