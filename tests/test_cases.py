"""The real-world failure cases of kinds A (interpolation, .env) and F-03/F-04, as tests.

Each test takes a case's minimal input and asserts its expected value. The
cases are reduced from public bug reports: nested defaults that leaked a
brace, `$` in secrets, `export` lines, CRLF and BOM, required variables,
`up` pulling offline, and upgrades that overwrote `.env` secrets.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import docker
import docker.errors
import pytest

from installer import compose, dotenv, envmerge
from installer.errors import ComposeError, DotenvError, InterpolationError
from installer.manifest import GeneratedSecret, Manifest

# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def write(folder: Path, name: str, text: str | bytes) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def load(folder: Path, compose_text: str, dotenv_text: str) -> compose.ComposeProject:
    """Load a project the way Compose does: `.env` values, then the file's defaults."""
    path = write(folder, "compose.yml", compose_text)
    environ = compose.project_environment(dotenv.parse(dotenv_text), {})
    return compose.load_project([path], environ)


def environment_of(folder: Path, service: str, dotenv_text: str) -> dict[str, str]:
    """Interpolate the `environment` of one service in folder/compose.yml."""
    document = compose.read_document(folder / "compose.yml")
    environ = compose.project_environment(dotenv.parse(dotenv_text), {})
    tree = compose.interpolate_tree(document, environ, source="compose.yml")
    return dict(tree["services"][service]["environment"])


# ---------------------------------------------------------------------------
# A-01 nested-default
# ---------------------------------------------------------------------------

A01_COMPOSE = """\
services:
  db:
    image: registry.example:5000/demo/db:${DB_TAG:-${BASE_TAG:-16}}
    environment:
      POSTGRES_DB: ${POSTGRES_DB:-${POSTGRES_USER}}
      BANNER: "{{{ ${FOO:-foo} }}}"
"""


def test_a01_nested_default_keeps_braces(tmp_path: Path) -> None:
    project = load(tmp_path, A01_COMPOSE, "POSTGRES_DB=test\nPOSTGRES_USER=test\n")

    assert project.services["db"].image == "registry.example:5000/demo/db:16"
    assert environment_of(tmp_path, "db", "POSTGRES_DB=test\nPOSTGRES_USER=test\n") == {
        "POSTGRES_DB": "test",
        "BANNER": "{{{ foo }}}",
    }


def test_a01_nested_default_falls_back_to_inner_variable(tmp_path: Path) -> None:
    load(tmp_path, A01_COMPOSE, "")

    assert environment_of(tmp_path, "db", "POSTGRES_USER=test\n")["POSTGRES_DB"] == "test"


def test_a01_inner_default_takes_base_tag(tmp_path: Path) -> None:
    project = load(tmp_path, A01_COMPOSE, "BASE_TAG=15\n")

    assert project.services["db"].image == "registry.example:5000/demo/db:15"


def test_a01_unterminated_expression_names_file_and_key(tmp_path: Path) -> None:
    with pytest.raises(InterpolationError) as caught:
        load(tmp_path, "services:\n  db:\n    image: demo/db:${DB_TAG:-16\n", "")

    assert caught.value.message == (
        "compose.yml: services.db.image: invalid interpolation "
        '"${DB_TAG:-16": unterminated ${'
    )


# ---------------------------------------------------------------------------
# A-03 dollar-in-secret
# ---------------------------------------------------------------------------


def test_a03_dollar_values_follow_quoting(caplog: pytest.LogCaptureFixture) -> None:
    text = "P1=\"abc$def\"\nP2='abc$def'\nP3=pa$$word\nP4='$2a$08$Qx.example.hash'\n"

    with caplog.at_level(logging.WARNING, logger="installer.compose"):
        values = dotenv.parse(text)

    assert values == {
        "P1": "abc",
        "P2": "abc$def",
        "P3": "pa$word",
        "P4": "$2a$08$Qx.example.hash",
    }
    assert [record.getMessage() for record in caplog.records] == [
        'The "def" variable is not set; using an empty string in .env line 1: P1'
    ]


def test_a03_backslash_quote_is_unterminated_at_opening_line() -> None:
    text = "P1=x\nP5='ends-with-backslash\\'\nP6=more\n"

    with pytest.raises(DotenvError) as caught:
        dotenv.parse(text)

    assert caught.value.message == "line 2: unterminated quoted value for P5"


@pytest.mark.parametrize(
    "secret", ["abc$def", "$2a$08$Qx.example.hash", "it's", "back\\slash'", "pa$$word"]
)
def test_a03_written_secret_round_trips(secret: str) -> None:
    document = dotenv.DotenvFile.from_text("")
    document.set("SECRET", secret)

    assert dotenv.parse(document.to_text()) == {"SECRET": secret}


def test_a03_unwritable_secret_names_key_not_value(monkeypatch: pytest.MonkeyPatch) -> None:
    """No value found here fails every quoting, so the round-trip check is made to fail."""
    secret = "$2a$08$Qx.example.hash"
    monkeypatch.setattr(dotenv, "_round_trips", lambda value, written: False)
    document = dotenv.DotenvFile.from_text("")

    with pytest.raises(DotenvError) as caught:
        document.set("DB_PASSWORD", secret)

    assert caught.value.message == (
        "cannot write the value of DB_PASSWORD to .env so that Compose reads it back unchanged"
    )
    assert secret not in str(caught.value)


# ---------------------------------------------------------------------------
# A-04 export-prefix
# ---------------------------------------------------------------------------


def test_a04_export_prefix_is_stripped_only_as_prefix() -> None:
    text = "export COMPOSE_PROJECT_NAME=demo\nexport  APP_TAG=1.4.2\nexporter=prom\n"

    assert dotenv.parse(text) == {
        "COMPOSE_PROJECT_NAME": "demo",
        "APP_TAG": "1.4.2",
        "exporter": "prom",
    }


def test_a04_merge_keeps_export_prefix() -> None:
    text = "export COMPOSE_PROJECT_NAME=demo\nexport  APP_TAG=1.4.2\nexporter=prom\n"
    document = dotenv.DotenvFile.from_text(text)

    document.set("APP_TAG", "1.5.0")
    document.set("NEW_KEY", "1")

    assert document.to_text() == (
        "export COMPOSE_PROJECT_NAME=demo\nexport  APP_TAG=1.5.0\nexporter=prom\nNEW_KEY=1\n"
    )


def test_a04_new_line_copies_uniform_export() -> None:
    document = dotenv.DotenvFile.from_text("export A=1\nexport B=2\n")

    document.set("C", "3")

    assert document.to_text() == "export A=1\nexport B=2\nexport C=3\n"


# ---------------------------------------------------------------------------
# A-05 crlf-and-bom
# ---------------------------------------------------------------------------

A05_DOTENV = (
    b"\xef\xbb\xbfAPP_IMAGE=registry.example:5000/demo/app:1.0\r\n"
    b'DB_PASSWORD="s3cret"\r\n'
    b"EMPTY=\r\n"
)


def test_a05_bom_and_crlf_stay_out_of_values(tmp_path: Path) -> None:
    project = load(
        tmp_path, "services:\n  app:\n    image: ${APP_IMAGE}\n", A05_DOTENV.decode("utf-8")
    )

    assert dotenv.parse(A05_DOTENV.decode("utf-8")) == {
        "APP_IMAGE": "registry.example:5000/demo/app:1.0",
        "DB_PASSWORD": "s3cret",
        "EMPTY": "",
    }
    assert project.services["app"].image == "registry.example:5000/demo/app:1.0"


def test_a05_control_character_in_image_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "compose.yml", "services:\n  app:\n    image: ${APP_IMAGE}\n")

    with pytest.raises(ComposeError) as caught:
        compose.load_project([path], {"APP_IMAGE": "registry.example:5000/demo/app:1.0\r"})

    assert caught.value.message == (
        f"{path}: the image of service app contains whitespace or a control character: "
        "'registry.example:5000/demo/app:1.0\\r'"
    )


def test_a05_rewrite_normalises_line_endings() -> None:
    document = dotenv.DotenvFile.from_text(A05_DOTENV.decode("utf-8"))

    document.set("EMPTY", "x")

    assert document.normalised
    assert document.to_text() == (
        'APP_IMAGE=registry.example:5000/demo/app:1.0\nDB_PASSWORD="s3cret"\nEMPTY=x\n'
    )


# ---------------------------------------------------------------------------
# A-07 required-variable
# ---------------------------------------------------------------------------

A07_COMPOSE = """\
services:
  app:
    image: registry.example:5000/demo/app:${APP_TAG:?set APP_TAG}
    environment:
      DSN: "_${DB_USER:?user missing}_${DB_PASS:?pass missing}_"
"""


def test_a07_every_missing_required_variable_is_listed(tmp_path: Path) -> None:
    with pytest.raises(compose.MissingVariablesError) as caught:
        load(tmp_path, A07_COMPOSE, "APP_TAG=1.0\nDB_PASS=x\n")

    assert [item.describe() for item in caught.value.missing] == [
        "DB_USER: user missing (compose.yml: services.app.environment.DSN)"
    ]


def test_a07_both_missing_in_one_string(tmp_path: Path) -> None:
    with pytest.raises(compose.MissingVariablesError) as caught:
        load(tmp_path, A07_COMPOSE, "APP_TAG=1.0\n")

    assert [item.name for item in caught.value.missing] == ["DB_USER", "DB_PASS"]


@pytest.mark.parametrize(
    ("template", "environ", "fails"),
    [
        ("${VAR:?}", {"VAR": ""}, True),
        ("${VAR:?}", {}, True),
        ("${VAR?}", {"VAR": ""}, False),
        ("${VAR?}", {}, True),
    ],
)
def test_a07_colon_form_also_rejects_empty(
    template: str, environ: dict[str, str], fails: bool
) -> None:
    if fails:
        with pytest.raises(InterpolationError):
            compose.interpolate(template, environ)
    else:
        assert compose.interpolate(template, environ) == ""


# ---------------------------------------------------------------------------
# F-04 env-secrets-overwritten
# ---------------------------------------------------------------------------

F04_LIVE = (
    "APP_SECRET=K7e...existing\n"
    "ENCRYPTION_SALT=9c1...existing\n"
    "SMTP_PASSWORD='p$ss'\n"
    "CUSTOM_FLAG=on\n"
)


def _f04_manifest() -> Manifest:
    return Manifest(
        name="demo",
        version="2.0.0",
        sequence=2,
        created="1970-01-01T00:00:00Z",
        builder="test",
        platform="linux/amd64",
        compose_files=("compose/compose.yml",),
        project_name="demo",
        env_set={"APP_TAG": "2.0.0", "NEW_LIMIT": "100"},
        env_generate=(GeneratedSecret("APP_SECRET", 48), GeneratedSecret("ENCRYPTION_SALT", 48)),
        env_required=(),
        images=(),
        members=(),
    )


def test_f04_upgrade_keeps_secrets_and_operator_keys() -> None:
    text, change = envmerge.merge_env(F04_LIVE, _f04_manifest())

    lines = text.splitlines()
    assert lines[:4] == F04_LIVE.splitlines()
    values = dotenv.parse(text)
    assert values["APP_TAG"] == "2.0.0"
    assert values["NEW_LIMIT"] == "100"
    assert change.added == ["APP_TAG", "NEW_LIMIT", "COMPOSE_PROJECT_NAME"]
    assert change.generated == []
    assert change.kept == ["APP_SECRET", "ENCRYPTION_SALT"]
    assert change.changed == []


def test_f04_absent_secret_is_generated_only_then() -> None:
    live = "SMTP_PASSWORD='p$ss'\nCUSTOM_FLAG=on\n"

    text, change = envmerge.merge_env(live, _f04_manifest())

    values = dotenv.parse(text)
    assert change.generated == ["APP_SECRET", "ENCRYPTION_SALT"]
    assert len(values["APP_SECRET"]) == 48
    assert values["APP_SECRET"] != values["ENCRYPTION_SALT"]
    assert text.startswith(live)


# ---------------------------------------------------------------------------
# F-03 compose-up-pulls (real engine, docker-compose 1.29, local registry)
# ---------------------------------------------------------------------------


class _Listener:
    """A TCP listener on a free loopback port that counts connections.

    Images are named after this port, so any pull or registry lookup by the
    engine or Compose would connect here.
    """

    def __init__(self) -> None:
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.socket.listen(16)
        self.socket.settimeout(0.2)
        self.port = int(self.socket.getsockname()[1])
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self.socket.accept()
            except OSError:
                continue
            self.connections += 1
            connection.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.socket.close()


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    program, *rest = args
    module = {"airlock-bundle": "bundler.cli", "airlock-install": "installer.cli"}[program]
    return subprocess.run(
        [sys.executable, "-m", module, *rest],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        stdin=subprocess.DEVNULL,
        timeout=600,
    )


def error_line(stderr: str) -> str:
    return next(line for line in stderr.splitlines() if line.startswith("error: "))


@pytest.fixture
def listener() -> Iterator[_Listener]:
    server = _Listener()
    yield server
    server.close()


@pytest.fixture
def offline_registry_image(
    listener: _Listener, docker_client: docker.DockerClient
) -> Iterator[str]:
    """The postgres stand-in, named as if it came from the listener's "registry"."""
    image = f"127.0.0.1:{listener.port}/library/postgres:16-alpine"
    yield image
    try:
        docker_client.images.remove(image)
    except docker.errors.ImageNotFound:
        pass


@pytest.fixture
def docker_config(tmp_path: Path) -> Path:
    """A DOCKER_CONFIG folder whose config.json names a credential helper that does not exist."""
    folder = tmp_path / "docker-config"
    write(
        folder,
        "config.json",
        json.dumps({"credsStore": "airlock-missing-helper", "auths": {}}),
    )
    return folder


def _f03_bundle(tmp_path: Path, listener: _Listener, image: str, platform: str, keys: Path) -> Path:
    spec_dir = tmp_path / "spec"
    write(
        spec_dir,
        "compose.yml",
        f"services:\n  app:\n    image: {image}\n    pull_policy: always\n"
        f"    platform: {platform}\n"
        '    entrypoint: ["sleep", "3600"]\n',
    )
    write(
        spec_dir,
        "bundle.yaml",
        "name: f03-demo\nversion: 1.4.2\nsequence: 1\nplatform: linux/amd64\n"
        "compose:\n  files: [compose.yml]\n",
    )
    output = tmp_path / "f03.airlock"
    built = run(
        "airlock-bundle",
        "build",
        str(spec_dir / "bundle.yaml"),
        "--key",
        str(keys / "release.key"),
        "--output",
        str(output),
        "--mirror",
        f"127.0.0.1:{listener.port}=127.0.0.1:5000",
    )
    assert built.returncode == 0, built.stderr
    return output


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("keys")
    result = run("airlock-bundle", "keygen", "--out", str(folder), "--name", "release")
    assert result.returncode == 0, result.stderr
    return folder


def _f03_install(
    bundle: Path, keys: Path, target: Path, docker_config: Path
) -> subprocess.CompletedProcess[str]:
    return run(
        "airlock-install",
        "install",
        str(bundle),
        "--target",
        str(target),
        "--key",
        str(keys / "release.pub"),
        "--timeout",
        "60",
        env={"DOCKER_CONFIG": str(docker_config)},
    )


def test_f03_pull_always_runs_offline_from_loaded_image(
    standins: dict[str, str],
    keys: Path,
    tmp_path: Path,
    listener: _Listener,
    offline_registry_image: str,
    docker_config: Path,
    compose_project_name: str,
    docker_client: docker.DockerClient,
) -> None:
    bundle = _f03_bundle(tmp_path, listener, offline_registry_image, "linux/amd64", keys)
    connections_after_build = listener.connections
    target = tmp_path / "target"
    target.mkdir()
    (target / ".env").write_text(f"COMPOSE_PROJECT_NAME={compose_project_name}\n")

    result = _f03_install(bundle, keys, target, docker_config)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "app: running" in result.stdout
    assert (
        "service app (pull_policy: always) would make Compose pull or build inside the "
        "enclave; overriding with pull_policy: never"
    ) in result.stderr
    # The bundler pulled through the mirror, so nothing ever reached the listener.
    assert connections_after_build == 0
    assert listener.connections == 0
    [container] = docker_client.containers.list(
        filters={"label": f"com.docker.compose.project={compose_project_name}"}
    )
    assert container.attrs["Config"]["Image"] == offline_registry_image


def test_f03_wrong_platform_stops_before_up(
    standins: dict[str, str],
    keys: Path,
    tmp_path: Path,
    listener: _Listener,
    offline_registry_image: str,
    docker_config: Path,
    compose_project_name: str,
    docker_client: docker.DockerClient,
) -> None:
    bundle = _f03_bundle(tmp_path, listener, offline_registry_image, "linux/arm64", keys)
    target = tmp_path / "target"
    target.mkdir()
    env_text = f"COMPOSE_PROJECT_NAME={compose_project_name}\n"
    (target / ".env").write_text(env_text)

    result = _f03_install(bundle, keys, target, docker_config)

    assert result.returncode == 1, result.stdout + result.stderr
    assert error_line(result.stderr) == (
        f"error: wrong image platform: service app needs linux/arm64, "
        f"image {offline_registry_image} is linux/amd64"
    )
    assert listener.connections == 0
    assert (target / ".env").read_text() == env_text
    assert not (target / "compose.yml").exists()
    assert not docker_client.containers.list(
        all=True, filters={"label": f"com.docker.compose.project={compose_project_name}"}
    )
