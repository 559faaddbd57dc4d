"""The README's hand check, run line for line with the real tar, openssl and sha256sum.

The commands are read from the README itself, so the documented lines are
the tested ones. They pass on a real bundle built from an image in the local
registry, and fail after a one-byte change to the payload, the checksum
list, the manifest or the signature.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from bundler.archive import CHECKSUMS_PATH
from bundler.build import BuildOptions, build
from bundler.split import split_bundle
from installer.archive import verify_file
from installer.errors import DigestMismatchError
from installer.signing import load_public_key
from tests.format_helpers import flip_byte, make_keys, member_offset, write_spec
from tests.registry_push import push_image, tar_layer, unique_repository

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
# The names the README's commands use.
BUNDLE_NAME = "authentik-2026.2.2.airlock"
KEY_NAME = "release.pub"

pytestmark = pytest.mark.skipif(
    any(shutil.which(tool) is None for tool in ("tar", "openssl", "sha256sum", "grep")),
    reason="needs tar, openssl, sha256sum and grep",
)


def readme_commands() -> str:
    """Return the shell block of the README's "Checking a bundle by hand" section."""
    text = README.read_text(encoding="utf-8")
    section = text.split("### Checking a bundle by hand", 1)[1]
    match = re.search(r"```sh\n(.*?)```", section, re.DOTALL)
    assert match is not None, "README has no ```sh block under 'Checking a bundle by hand'"
    return match.group(1)


@pytest.fixture(scope="module")
def built(registry: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A real bundle and its public key: (bundle, release.pub)."""
    folder = tmp_path_factory.mktemp("hand-check")
    image = push_image(
        registry,
        unique_repository(),
        [tar_layer({"etc/app.conf": b"mode=offline\n"}), tar_layer({"app/run": b"#!/bin/sh\n"})],
        tag="1",
    )
    spec = write_spec(folder / "spec", {"app": image.by_tag})
    keys = make_keys(folder / "keys", "release")
    output = folder / BUNDLE_NAME
    build(BuildOptions(spec, (keys.private_path,), output), environ={})
    return output, keys.public_path


def run_hand_check(
    bundle: Path, public_key: Path, folder: Path
) -> subprocess.CompletedProcess[str]:
    folder.mkdir()
    shutil.copyfile(bundle, folder / BUNDLE_NAME)
    shutil.copyfile(public_key, folder / KEY_NAME)
    return subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", readme_commands()],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_hand_check_passes_on_real_bundle(built: tuple[Path, Path], tmp_path: Path) -> None:
    bundle, public_key = built

    result = run_hand_check(bundle, public_key, tmp_path / "good")

    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "Signature Verified Successfully"
    assert lines[1] == "airlock/SHA256SUMS: OK"
    assert "compose/compose.yml: OK" in lines
    assert lines[-1] == "member count: OK"
    checked = [line for line in lines if line.endswith(": OK") and line.startswith("images/")]
    assert any(line.startswith("images/blobs/sha256/") for line in checked)
    assert "images/manifest.json: OK" in checked


def test_hand_check_key_id_matches_installer(built: tuple[Path, Path], tmp_path: Path) -> None:
    _, public_key = built
    computed = subprocess.run(
        f"openssl pkey -pubin -in {public_key} -outform DER | tail -c 32 | sha256sum | cut -c1-64",
        shell=True,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()

    assert computed == load_public_key(public_key).key_id


def _damaged_copy(bundle: Path, folder: Path, member: str, offset_in_member: int = 0) -> Path:
    folder.mkdir()
    copy = folder / bundle.name
    shutil.copyfile(bundle, copy)
    flip_byte(copy, member_offset(copy, member) + offset_in_member)
    return copy


def test_hand_check_fails_after_payload_byte_change(
    built: tuple[Path, Path], tmp_path: Path
) -> None:
    bundle, public_key = built
    damaged = _damaged_copy(bundle, tmp_path / "damaged", "compose/compose.yml", 3)

    result = run_hand_check(damaged, public_key, tmp_path / "check")

    assert result.returncode != 0
    assert "compose/compose.yml: FAILED" in result.stdout.splitlines()
    assert "member count: OK" not in result.stdout


def test_hand_check_fails_after_checksum_list_byte_change(
    built: tuple[Path, Path], tmp_path: Path
) -> None:
    bundle, public_key = built
    # The first byte is a hex digit of the first checksum; flipping its low bit keeps it hex.
    damaged = _damaged_copy(bundle, tmp_path / "damaged", CHECKSUMS_PATH, 0)

    result = run_hand_check(damaged, public_key, tmp_path / "check")

    lines = result.stdout.splitlines()
    assert lines[0] == "Signature Verified Successfully"
    assert lines[1] == "airlock/SHA256SUMS: FAILED"
    assert result.returncode != 0


def test_hand_check_fails_after_manifest_byte_change(
    built: tuple[Path, Path], tmp_path: Path
) -> None:
    bundle, public_key = built
    damaged = _damaged_copy(bundle, tmp_path / "damaged", "airlock/manifest.json", 40)

    result = run_hand_check(damaged, public_key, tmp_path / "check")

    assert result.returncode != 0
    assert "Signature Verification Failure" in result.stdout + result.stderr
    assert "airlock/SHA256SUMS: OK" not in result.stdout


def test_hand_check_fails_after_signature_byte_change(
    built: tuple[Path, Path], tmp_path: Path
) -> None:
    bundle, public_key = built
    key_id = load_public_key(public_key).key_id
    damaged = _damaged_copy(bundle, tmp_path / "damaged", f"airlock/signatures/{key_id}.sig", 5)

    result = run_hand_check(damaged, public_key, tmp_path / "check")

    assert result.returncode != 0
    assert "Signature Verification Failure" in result.stdout + result.stderr


def test_installer_rejects_changed_checksum_list(built: tuple[Path, Path], tmp_path: Path) -> None:
    bundle, public_key = built
    damaged = _damaged_copy(bundle, tmp_path / "damaged", CHECKSUMS_PATH, 0)

    with pytest.raises(DigestMismatchError) as raised:
        verify_file(damaged, [load_public_key(public_key)])

    assert raised.value.message.startswith(f"member {CHECKSUMS_PATH} has sha256 ")


def test_hand_check_passes_on_joined_parts(built: tuple[Path, Path], tmp_path: Path) -> None:
    """The README joins a split bundle with `cat NAME.[0-9]* > NAME` before checking it."""
    bundle, public_key = built
    parts_folder = tmp_path / "medium"
    parts_folder.mkdir()
    copy = parts_folder / BUNDLE_NAME
    shutil.copyfile(bundle, copy)
    split_bundle(copy, 1024, remove_source=True)
    assert len(list(parts_folder.glob(f"{BUNDLE_NAME}.[0-9]*"))) > 9

    subprocess.run(
        f"cat {BUNDLE_NAME}.[0-9]* > {BUNDLE_NAME}", shell=True, cwd=parts_folder, check=True
    )
    result = run_hand_check(parts_folder / BUNDLE_NAME, public_key, tmp_path / "check")

    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1] == "member count: OK"
