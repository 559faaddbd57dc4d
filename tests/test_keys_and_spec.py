"""Key pairs, bundle spec validation and the CLI's usage errors."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from bundler.cli import main as bundle_main
from bundler.keys import generate_key_pair, load_private_key
from bundler.spec import load_spec
from installer.cli import main as install_main
from installer.errors import SpecError, UsageError
from installer.signing import load_public_key, load_trusted_keys

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "authentik" / "bundle.yaml"


def test_keygen_writes_private_key_0600_and_matching_public_key(tmp_path: Path) -> None:
    pair = generate_key_pair(tmp_path, "release")
    assert stat.S_IMODE(pair.private_path.stat().st_mode) == 0o600
    assert pair.private_path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert load_public_key(pair.public_path).key_id == pair.key_id
    assert load_private_key(pair.private_path) is not None


def test_keygen_refuses_to_overwrite_a_key(tmp_path: Path) -> None:
    generate_key_pair(tmp_path, "release")
    with pytest.raises(UsageError) as caught:
        generate_key_pair(tmp_path, "release")
    assert caught.value.message == f"{tmp_path / 'release.key'} already exists"


def test_public_key_file_that_is_not_pem_is_usage_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pub"
    bad.write_text("not a key\n")
    with pytest.raises(UsageError) as caught:
        load_public_key(bad)
    assert caught.value.message == f"{bad} is not a PEM public key"


def test_no_trusted_key_is_usage_error() -> None:
    with pytest.raises(UsageError) as caught:
        load_trusted_keys([], [])
    assert caught.value.message == "no trusted public key given"


def test_example_spec_loads_with_secrets_and_outposts() -> None:
    spec = load_spec(EXAMPLE)
    assert spec.name == "authentik"
    assert spec.version == "2026.2.2"
    assert spec.env_set["AUTHENTIK_ERROR_REPORTING__ENABLED"] == "false"
    assert [secret.name for secret in spec.env_generate] == ["PG_PASS", "AUTHENTIK_SECRET_KEY"]
    assert len(spec.extra_images) == 4


def test_spec_with_unknown_field_names_json_path(tmp_path: Path) -> None:
    (tmp_path / "compose.yml").write_text("services: {}\n")
    spec = tmp_path / "bundle.yaml"
    spec.write_text(
        "name: demo\nversion: '1'\nsequence: 1\ncompose: {files: [compose.yml]}\nimagez: []\n"
    )
    with pytest.raises(SpecError) as caught:
        load_spec(spec)
    assert caught.value.message.startswith(f"bundle spec {spec} is invalid at $: ")
    assert "'imagez'" in caught.value.message


def test_spec_naming_missing_compose_file_is_rejected(tmp_path: Path) -> None:
    spec = tmp_path / "bundle.yaml"
    spec.write_text("name: demo\nversion: '1'\nsequence: 1\ncompose: {files: [nope.yml]}\n")
    with pytest.raises(SpecError) as caught:
        load_spec(spec)
    assert "nope.yml" in caught.value.message
    assert "does not exist" in caught.value.message


def test_spec_that_sets_and_generates_one_key_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "compose.yml").write_text("services: {}\n")
    spec = tmp_path / "bundle.yaml"
    spec.write_text(
        "name: demo\nversion: '1'\nsequence: 1\ncompose: {files: [compose.yml]}\n"
        "env: {set: {PG_PASS: x}, generate: [PG_PASS]}\n"
    )
    with pytest.raises(SpecError) as caught:
        load_spec(spec)
    assert caught.value.message == f"bundle spec {spec} both sets and generates PG_PASS"


def test_cli_missing_required_option_exits_2() -> None:
    result = CliRunner().invoke(install_main, ["install", "x.airlock"])
    assert result.exit_code == 2
    assert "Missing option '--target'" in result.output


def test_cli_help_documents_exit_codes() -> None:
    for main in (install_main, bundle_main):
        result = CliRunner().invoke(main, ["--help"])
        assert result.exit_code == 0
        assert "3  bundle rejected" in result.output
        assert "4  environment not ready" in result.output


def test_cli_missing_bundle_file_is_one_line_error(tmp_path: Path) -> None:
    pair = generate_key_pair(tmp_path, "k")
    result = CliRunner().invoke(
        install_main, ["verify", str(tmp_path / "absent.airlock"), "--key", str(pair.public_path)]
    )
    assert result.exit_code == 2
    assert f"error: cannot open bundle {tmp_path / 'absent.airlock'}" in result.output


@pytest.mark.parametrize("command", ["status", "rollback", "doctor"])
def test_command_on_empty_target_says_nothing_installed(tmp_path: Path, command: str) -> None:
    result = CliRunner().invoke(install_main, [command, "--target", str(tmp_path)])
    assert result.exit_code == 1
    assert result.output.splitlines()[0] == f"error: nothing is installed in {tmp_path}"


def test_spec_that_already_expired_is_rejected(tmp_path: Path) -> None:
    from bundler.build import check_not_expired

    (tmp_path / "compose.yml").write_text("services: {}\n")
    spec = tmp_path / "bundle.yaml"
    spec.write_text(
        "name: demo\nversion: '1'\nsequence: 1\nexpires: '2020-01-01T00:00:00Z'\n"
        "compose: {files: [compose.yml]}\n"
    )
    with pytest.raises(SpecError) as caught:
        check_not_expired(load_spec(spec))
    assert caught.value.message.startswith(
        f"bundle spec {spec} expires at 2020-01-01T00:00:00Z, which is already past (now "
    )
