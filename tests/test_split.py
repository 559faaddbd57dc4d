"""Split bundles for removable media: parts, the signed parts index, verify and join.

Sizes are tiny (300 KiB parts) so the tests run fast; the code paths are the
same for 4 GiB parts.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import pytest

from bundler.keys import load_private_key
from bundler.split import FAT32_MAX_FILE_SIZE, parse_size, split_bundle
from installer.archive import verify_file
from installer.errors import UsageError
from installer.inspect import describe_bundle
from installer.signing import load_public_key
from tests.bundle_factory import COMPOSE_TEXT, make_bundle
from tests.format_helpers import flip_byte, make_keys, run_cli, write_spec
from tests.registry_push import push_image, unique_repository

PART_SIZE = 300 * 1024


def _payload(size: int, seed: int) -> bytes:
    # Random bytes, so no part is accidentally equal to another.
    return random.Random(seed).randbytes(size)


@pytest.fixture
def signed_bundle(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A bundle of about 1 MiB and its key pair: (bundle, private key, public key)."""
    keys = make_keys(tmp_path / "keys")
    files = {
        "compose/compose.yml": COMPOSE_TEXT,
        "images/blobs/sha256/" + "a" * 64: _payload(700 * 1024, 1),
        "images/blobs/sha256/" + "b" * 64: _payload(300 * 1024, 2),
    }
    made = make_bundle(
        tmp_path / "dist",
        files,
        key=load_private_key(keys.private_path),
        name="demo.airlock",
    )
    return made.path, keys.private_path, keys.public_path


def _error_line(stderr: str) -> str:
    """Return the one `error:` line the CLI prints, skipping progress lines."""
    return next(line for line in stderr.splitlines() if line.startswith("error: "))


def _split(bundle: Path, key: Path | None = None) -> list[Path]:
    args = ["airlock-bundle", "split", str(bundle), "--size", "300K"]
    if key is not None:
        args += ["--key", str(key)]
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    return sorted(bundle.parent.glob(f"{bundle.name}.[0-9][0-9][0-9]"))


def test_parse_size_units_and_fat32_limit() -> None:
    assert parse_size("300K") == 300 * 1024
    assert parse_size("700M") == 700 * 1024**2
    assert parse_size("4G") == FAT32_MAX_FILE_SIZE
    assert parse_size("4GiB") == 4 * 1024**3 - 1
    assert parse_size("8G") == 8 * 1024**3
    assert parse_size("1048576") == 1048576


def test_parse_size_rejects_nonsense() -> None:
    with pytest.raises(UsageError) as raised:
        parse_size("four gigabytes")
    assert raised.value.message == "part size 'four gigabytes' is invalid"


def test_split_writes_numbered_parts_and_signed_index(
    signed_bundle: tuple[Path, Path, Path],
) -> None:
    bundle, key, _ = signed_bundle
    whole = bundle.read_bytes()

    parts = _split(bundle, key)

    assert [part.name for part in parts] == [
        "demo.airlock.001",
        "demo.airlock.002",
        "demo.airlock.003",
        "demo.airlock.004",
    ]
    assert all(part.stat().st_size <= PART_SIZE for part in parts)
    assert b"".join(part.read_bytes() for part in parts) == whole
    index = json.loads((bundle.parent / "demo.airlock.parts.json").read_text())
    assert index["signed"]["sha256"] == hashlib.sha256(whole).hexdigest()
    assert index["signed"]["part_size"] == PART_SIZE
    assert [p["name"] for p in index["signed"]["parts"]] == [p.name for p in parts]
    assert len(index["signatures"]) == 1


def test_verify_reads_parts_as_one_stream(signed_bundle: tuple[Path, Path, Path]) -> None:
    bundle, key, public = signed_bundle
    parts = _split(bundle, key)
    bundle.unlink()

    result = run_cli("airlock-install", "verify", str(parts[0]), "--key", str(public))

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("OK demo 1.0.0 (sequence 1): 3 members verified")


def test_verify_parts_only_checks_index_and_digests(
    signed_bundle: tuple[Path, Path, Path],
) -> None:
    bundle, key, public = signed_bundle
    parts = _split(bundle, key)

    result = run_cli(
        "airlock-install", "verify", str(parts[0]), "--key", str(public), "--parts-only"
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("OK demo.airlock: 4 parts verified, signed by release (")


def test_damaged_part_is_named_by_full_verify(signed_bundle: tuple[Path, Path, Path]) -> None:
    bundle, key, public = signed_bundle
    parts = _split(bundle, key)
    flip_byte(parts[1], 1000)

    result = run_cli("airlock-install", "verify", str(parts[0]), "--key", str(public))

    assert result.returncode == 3
    first = _error_line(result.stderr)
    assert first.startswith("error: damaged parts of demo.airlock: demo.airlock.002: sha256 ")
    assert "demo.airlock.001" not in first
    assert "demo.airlock.003" not in first


def test_damaged_part_is_named_by_parts_only(signed_bundle: tuple[Path, Path, Path]) -> None:
    bundle, key, public = signed_bundle
    parts = _split(bundle, key)
    flip_byte(parts[2], 10)

    result = run_cli(
        "airlock-install", "verify", str(parts[0]), "--key", str(public), "--parts-only"
    )

    assert result.returncode == 3
    assert _error_line(result.stderr).startswith(
        "error: 1 of 4 parts of demo.airlock are damaged: demo.airlock.003: sha256 "
    )


def test_missing_and_short_parts_reported_together(
    signed_bundle: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    bundle, key, public = signed_bundle
    parts = _split(bundle, key)
    parts[3].unlink()
    with parts[1].open("r+b") as handle:
        handle.truncate(1234)
    # A file the index does not list, as an operator's notes on the medium.
    (bundle.parent / "notes.txt").write_text("copied on Tuesday\n")

    result = run_cli(
        "airlock-install", "verify", str(parts[0]), "--key", str(public), "--parts-only"
    )

    assert result.returncode == 3
    assert _error_line(result.stderr) == (
        "error: 2 of 4 parts of demo.airlock are damaged: "
        f"demo.airlock.002: size 1234 ≠ {PART_SIZE}; demo.airlock.004: missing"
    )

    full = run_cli("airlock-install", "verify", str(parts[0]), "--key", str(public))
    assert full.returncode == 3
    assert _error_line(full.stderr) == _error_line(result.stderr)


def test_parts_only_rejects_unsigned_index(signed_bundle: tuple[Path, Path, Path]) -> None:
    bundle, _, public = signed_bundle
    parts = _split(bundle)

    result = run_cli(
        "airlock-install", "verify", str(parts[0]), "--key", str(public), "--parts-only"
    )

    assert result.returncode == 3
    assert _error_line(result.stderr) == "error: parts index of demo.airlock is not signed"


def test_parts_only_rejects_altered_index(signed_bundle: tuple[Path, Path, Path]) -> None:
    bundle, key, public = signed_bundle
    parts = _split(bundle, key)
    index_path = bundle.parent / "demo.airlock.parts.json"
    index = json.loads(index_path.read_text())
    index["signed"]["parts"][0]["sha256"] = "0" * 64
    index_path.write_text(json.dumps(index))

    result = run_cli(
        "airlock-install", "verify", str(parts[0]), "--key", str(public), "--parts-only"
    )

    assert result.returncode == 3
    assert "does not match parts index of demo.airlock" in _error_line(result.stderr)


def test_verify_of_second_part_names_first(signed_bundle: tuple[Path, Path, Path]) -> None:
    bundle, key, public = signed_bundle
    parts = _split(bundle, key)

    result = run_cli("airlock-install", "verify", str(parts[1]), "--key", str(public))

    assert result.returncode == 2
    assert _error_line(result.stderr) == (
        "error: demo.airlock.002 is not the first part of demo.airlock; pass demo.airlock.001"
    )


def test_join_restores_identical_bundle(
    signed_bundle: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    bundle, key, _ = signed_bundle
    original = hashlib.sha256(bundle.read_bytes()).hexdigest()
    parts = _split(bundle, key)
    output = tmp_path / "joined.airlock"

    result = run_cli("airlock-bundle", "join", *map(str, parts), "--output", str(output))

    assert result.returncode == 0, result.stderr
    assert hashlib.sha256(output.read_bytes()).hexdigest() == original


def test_join_refuses_damaged_part_and_leaves_nothing(
    signed_bundle: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    bundle, key, _ = signed_bundle
    parts = _split(bundle, key)
    flip_byte(parts[0], 700)
    output = tmp_path / "joined.airlock"

    result = run_cli("airlock-bundle", "join", *map(str, parts), "--output", str(output))

    assert result.returncode == 3
    assert _error_line(result.stderr).startswith("error: part demo.airlock.001 has sha256 ")
    assert not output.exists()
    assert not list(tmp_path.glob("joined.airlock*"))


def test_join_refuses_parts_out_of_order(
    signed_bundle: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    bundle, key, _ = signed_bundle
    parts = _split(bundle, key)
    shuffled = [parts[1], parts[0], *parts[2:]]

    result = run_cli(
        "airlock-bundle", "join", *map(str, shuffled), "--output", str(tmp_path / "j.airlock")
    )

    assert result.returncode == 2
    assert "pass every part, in order" in result.stderr


def test_split_refuses_to_overwrite_parts(signed_bundle: tuple[Path, Path, Path]) -> None:
    bundle, key, _ = signed_bundle
    _split(bundle, key)

    result = run_cli("airlock-bundle", "split", str(bundle), "--size", "300K")

    assert result.returncode == 2
    assert _error_line(result.stderr) == f"error: {bundle}.parts.json already exists"


def test_inspect_reads_first_part(signed_bundle: tuple[Path, Path, Path]) -> None:
    bundle, key, _ = signed_bundle
    size = bundle.stat().st_size
    parts = _split(bundle, key)

    description = describe_bundle(parts[0])

    assert description["name"] == "demo"
    assert description["parts"] == 4
    assert description["file_bytes"] == size


def test_unsigned_parts_verify_by_bundle_signature(
    signed_bundle: tuple[Path, Path, Path],
) -> None:
    bundle, _, public = signed_bundle

    result = split_bundle(bundle, PART_SIZE)

    assert result.signed_by == ()
    assert len(result.parts) == 4
    assert bundle.exists()
    verified = verify_file(result.parts[0], [load_public_key(public)])
    assert verified.manifest.name == "demo"


def test_build_split_writes_parts_that_verify(registry: str, tmp_path: Path) -> None:
    image = push_image(
        registry,
        unique_repository(),
        [random.Random(7).randbytes(700 * 1024)],
        tag="1",
    )
    keys = make_keys(tmp_path / "keys")
    spec = write_spec(tmp_path / "spec", {"app": image.by_tag})
    output = tmp_path / "dist" / "demo.airlock"

    built = run_cli(
        "airlock-bundle",
        "build",
        str(spec),
        "--key",
        str(keys.private_path),
        "--output",
        str(output),
        "--split",
        "300K",
    )

    assert built.returncode == 0, built.stderr
    assert built.stdout.startswith(
        f"wrote {output}.001 ... demo.airlock.003 and demo.airlock.parts.json ("
    )
    assert " in 3 parts): demo 1.0.0, 1 images, " in built.stdout
    assert not output.exists()
    first = output.with_name("demo.airlock.001")
    parts_only = run_cli(
        "airlock-install", "verify", str(first), "--key", str(keys.public_path), "--parts-only"
    )
    assert parts_only.returncode == 0, parts_only.stderr
    full = run_cli("airlock-install", "verify", str(first), "--key", str(keys.public_path))
    assert full.returncode == 0, full.stderr
    assert full.stdout.startswith("OK demo 1.0.0 (sequence 1): ")
    target = tmp_path / "target"
    dry_run = run_cli(
        "airlock-install",
        "install",
        str(first),
        "--target",
        str(target),
        "--key",
        str(keys.public_path),
        "--dry-run",
    )
    assert dry_run.returncode == 0, dry_run.stderr
    assert "dry run: nothing changed" in dry_run.stdout
