"""The bundle reader rejects every tampered or malicious archive and names the member."""

from __future__ import annotations

import copy
import hashlib
import json
import tarfile
from pathlib import Path

import pytest
from bundle_factory import make_bundle, rewrite_tar, trusted_key
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from installer.archive import read_bundle, verify_file
from installer.errors import (
    DigestMismatchError,
    ManifestError,
    SignatureError,
    UnsafeMemberError,
)
from installer.manifest import canonical_json


def _flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def _member_offset(path: Path, name: str) -> int:
    with tarfile.open(path) as tar:
        return tar.getmember(name).offset_data


def test_valid_bundle_verifies_and_names_signer(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path)
    verified = verify_file(bundle.path, [bundle.trusted])
    assert verified.manifest.name == "demo"
    assert [key.key_id for key in verified.signers] == [bundle.trusted.key_id]


def test_staging_writes_verified_members(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path, {"compose/compose.yml": b"a", "images/x": b"bb"})
    stage = tmp_path / "stage"
    with bundle.path.open("rb") as stream:
        read_bundle(stream, [bundle.trusted], stage_to=stage)
    assert (stage / "images/x").read_bytes() == b"bb"
    assert (stage / "compose/compose.yml").read_bytes() == b"a"


def test_flipped_payload_byte_names_member(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path)
    _flip_byte(bundle.path, _member_offset(bundle.path, "compose/compose.yml") + 3)
    with pytest.raises(DigestMismatchError) as caught:
        verify_file(bundle.path, [bundle.trusted])
    assert caught.value.message.startswith("member compose/compose.yml has sha256 ")


def test_flipped_manifest_byte_fails_signature(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path)
    _flip_byte(bundle.path, _member_offset(bundle.path, "airlock/manifest.json") + 10)
    with pytest.raises(SignatureError) as caught:
        verify_file(bundle.path, [bundle.trusted])
    assert "does not match the manifest" in caught.value.message


def test_flipped_signature_byte_fails(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path)
    name = f"airlock/signatures/{bundle.trusted.key_id}.sig"
    _flip_byte(bundle.path, _member_offset(bundle.path, name))
    with pytest.raises(SignatureError):
        verify_file(bundle.path, [bundle.trusted])


def test_untrusted_signer_is_rejected_with_key_id(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path)
    other = trusted_key(Ed25519PrivateKey.generate(), "other")
    with pytest.raises(SignatureError) as caught:
        verify_file(bundle.path, [other])
    assert caught.value.message == (
        f"bundle is signed by key id {bundle.trusted.key_id}, not in the trusted keys"
    )


def test_unsigned_bundle_is_rejected(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path)
    out = tmp_path / "unsigned.airlock"
    rewrite_tar(
        bundle.path,
        out,
        lambda info, data: [] if info.name.startswith("airlock/signatures/") else [(info, data)],
    )
    with pytest.raises(SignatureError) as caught:
        verify_file(out, [bundle.trusted])
    assert caught.value.message == "bundle is not signed"


def _resigned(bundle_path: Path, out: Path, key: Ed25519PrivateKey, change) -> None:  # type: ignore[no-untyped-def]
    """Rewrite the manifest with `change` and sign it again with a trusted key."""
    with tarfile.open(bundle_path) as tar:
        data = json.loads(tar.extractfile("airlock/manifest.json").read())  # type: ignore[union-attr]
    change(data)
    raw = canonical_json(data)
    signature = key.sign(raw)

    def edit(info: tarfile.TarInfo, member: bytes):  # type: ignore[no-untyped-def]
        if info.name == "airlock/manifest.json":
            info = copy.copy(info)
            info.size = len(raw)
            return [(info, raw)]
        if info.name.startswith("airlock/signatures/"):
            info = copy.copy(info)
            info.size = len(signature)
            return [(info, signature)]
        return [(info, member)]

    rewrite_tar(bundle_path, out, edit)


def test_member_missing_from_manifest_is_rejected(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path)
    out = tmp_path / "extra.airlock"
    extra = tarfile.TarInfo("compose/extra.yml")
    extra.size = 1
    rewrite_tar(
        bundle.path,
        out,
        lambda info, data: (
            [(info, data), (extra, b"x")] if info.name == "compose/compose.yml" else [(info, data)]
        ),
    )
    with pytest.raises(UnsafeMemberError) as caught:
        verify_file(out, [bundle.trusted])
    assert caught.value.message == "bundle member compose/extra.yml is not listed in the manifest"


def test_removed_member_is_rejected(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path, {"compose/compose.yml": b"a", "images/x": b"b"})
    out = tmp_path / "removed.airlock"
    rewrite_tar(
        bundle.path, out, lambda info, data: [] if info.name == "images/x" else [(info, data)]
    )
    with pytest.raises(DigestMismatchError) as caught:
        verify_file(out, [bundle.trusted])
    assert caught.value.message == "bundle ends before member images/x"


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        (tarfile.SYMTYPE, "bundle member compose/compose.yml is a link to /etc/passwd"),
        (tarfile.LNKTYPE, "bundle member compose/compose.yml is a link to /etc/passwd"),
        (tarfile.FIFOTYPE, "bundle member compose/compose.yml is a device or FIFO"),
        (tarfile.CHRTYPE, "bundle member compose/compose.yml is a device or FIFO"),
        (tarfile.DIRTYPE, "bundle member compose/compose.yml is not a regular file"),
    ],
)
def test_special_member_types_are_rejected(tmp_path: Path, kind: bytes, expected: str) -> None:
    bundle = make_bundle(tmp_path)
    out = tmp_path / "special.airlock"

    def edit(info: tarfile.TarInfo, data: bytes):  # type: ignore[no-untyped-def]
        if info.name == "compose/compose.yml":
            info = copy.copy(info)
            info.type = kind
            info.linkname = "/etc/passwd"
            info.size = 0
            return [(info, b"")]
        return [(info, data)]

    rewrite_tar(bundle.path, out, edit)
    with pytest.raises(UnsafeMemberError) as caught:
        verify_file(out, [bundle.trusted])
    assert caught.value.message == expected


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("/etc/cron.d/x", "bundle member /etc/cron.d/x has an absolute path"),
        (
            "compose/../../x",
            "bundle member compose/../../x has an empty, '.' or '..' path component",
        ),
    ],
)
def test_unsafe_member_paths_are_rejected(tmp_path: Path, name: str, expected: str) -> None:
    bundle = make_bundle(tmp_path)
    out = tmp_path / "traversal.airlock"

    def edit(info: tarfile.TarInfo, data: bytes):  # type: ignore[no-untyped-def]
        if info.name == "compose/compose.yml":
            info = copy.copy(info)
            info.name = name
        return [(info, data)]

    rewrite_tar(bundle.path, out, edit)
    stage = tmp_path / "stage"
    with pytest.raises(UnsafeMemberError) as caught, bundle.path.open("rb"):
        with out.open("rb") as stream:
            read_bundle(stream, [bundle.trusted], stage_to=stage)
    assert caught.value.message == expected
    assert not any(p.is_file() for p in stage.rglob("*"))


def test_truncated_bundle_names_member(tmp_path: Path) -> None:
    payload = b"x" * 100_000
    bundle = make_bundle(tmp_path, {"images/blob": payload})
    cut = _member_offset(bundle.path, "images/blob") + 50_000
    bundle.path.write_bytes(bundle.path.read_bytes()[:cut])
    with pytest.raises(DigestMismatchError) as caught:
        verify_file(bundle.path, [bundle.trusted])
    assert "images/blob" in caught.value.message


def test_manifest_schema_violation_names_json_path(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    bundle = make_bundle(tmp_path, key=key)
    out = tmp_path / "badschema.airlock"
    _resigned(bundle.path, out, key, lambda data: data.update(sequence=-1))
    with pytest.raises(ManifestError) as caught:
        verify_file(out, [bundle.trusted])
    assert caught.value.message.startswith("manifest is invalid at $.sequence:")


def test_member_size_lie_is_rejected_before_reading(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    bundle = make_bundle(tmp_path, {"images/blob": b"12345"}, key=key)
    out = tmp_path / "biggerheader.airlock"

    def edit(info: tarfile.TarInfo, data: bytes):  # type: ignore[no-untyped-def]
        if info.name == "images/blob":
            info = copy.copy(info)
            info.size = 10_000_000
            return [(info, b"0" * 10_000_000)]
        return [(info, data)]

    rewrite_tar(bundle.path, out, edit)
    with pytest.raises(DigestMismatchError) as caught:
        verify_file(out, [bundle.trusted])
    assert caught.value.message == "member images/blob is 10000000 bytes, the manifest records 5"


def test_build_is_byte_identical(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = make_bundle(tmp_path / "a", key=key)
    second = make_bundle(tmp_path / "b", key=key)
    assert (
        hashlib.sha256(first.path.read_bytes()).digest()
        == hashlib.sha256(second.path.read_bytes()).digest()
    )


REDO_HINT = "the copy is damaged or was altered; copy the bundle again from the source"


def _member_end(path: Path, name: str) -> int:
    """Return the offset of the first padding byte after member `name`'s data."""
    with tarfile.open(path) as tar:
        member = tar.getmember(name)
        return member.offset_data + member.size


def _archive_end(path: Path) -> int:
    """Return the offset of the first end-of-archive block."""
    with tarfile.open(path) as tar:
        last = tar.getmembers()[-1]
        return last.offset_data + -(-last.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE


@pytest.mark.parametrize("member", ["manifest", "signature", "payload"])
@pytest.mark.parametrize("position", ["first", "last"])
def test_flipped_padding_byte_names_member(tmp_path: Path, member: str, position: str) -> None:
    bundle = make_bundle(tmp_path, {"compose/compose.yml": b"a" * 700, "images/x": b"bb"})
    name = {
        "manifest": "airlock/manifest.json",
        "signature": f"airlock/signatures/{bundle.trusted.key_id}.sig",
        "payload": "compose/compose.yml",
    }[member]
    end = _member_end(bundle.path, name)
    offset = end if position == "first" else end + (-end % tarfile.BLOCKSIZE) - 1
    assert bundle.path.read_bytes()[offset] == 0
    _flip_byte(bundle.path, offset)
    stage = tmp_path / "stage"

    with pytest.raises(DigestMismatchError) as caught, bundle.path.open("rb") as stream:
        read_bundle(stream, [bundle.trusted], stage_to=stage)

    assert caught.value.message == (
        f"member {name} is followed by a non-zero tar padding byte at byte {offset}"
    )
    assert caught.value.hint == REDO_HINT
    assert not (stage / "images/x").exists()


def test_flipped_padding_byte_after_last_member(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path, {"compose/compose.yml": b"a", "images/x": b"bb"})
    offset = _member_end(bundle.path, "images/x") + 100
    _flip_byte(bundle.path, offset)

    with pytest.raises(DigestMismatchError) as caught:
        verify_file(bundle.path, [bundle.trusted])

    assert caught.value.message == (
        f"member images/x is followed by a non-zero tar padding byte at byte {offset}"
    )


def test_member_ending_on_block_boundary_verifies(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path, {"images/x": b"x" * tarfile.BLOCKSIZE * 3})

    verified = verify_file(bundle.path, [bundle.trusted])

    assert [member.path for member in verified.manifest.members] == ["images/x"]


@pytest.mark.parametrize("trimmed", [1, 1024])
def test_bundle_missing_record_padding_verifies(tmp_path: Path, trimmed: int) -> None:
    bundle = make_bundle(tmp_path)
    data = bundle.path.read_bytes()
    assert len(data) % 10240 == 0
    assert len(data) - trimmed >= _archive_end(bundle.path) + 2 * tarfile.BLOCKSIZE
    bundle.path.write_bytes(data[:-trimmed])

    verified = verify_file(bundle.path, [bundle.trusted])

    assert verified.manifest.name == "demo"


def test_bundle_with_exact_end_blocks_verifies(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path)
    end = _archive_end(bundle.path) + 2 * tarfile.BLOCKSIZE
    bundle.path.write_bytes(bundle.path.read_bytes()[:end])

    verified = verify_file(bundle.path, [bundle.trusted])

    assert verified.manifest.name == "demo"


@pytest.mark.parametrize("kept", [0, tarfile.BLOCKSIZE, 2 * tarfile.BLOCKSIZE - 1])
def test_bundle_missing_end_block_is_rejected(tmp_path: Path, kept: int) -> None:
    bundle = make_bundle(tmp_path)
    end = _archive_end(bundle.path) + kept
    bundle.path.write_bytes(bundle.path.read_bytes()[:end])

    with pytest.raises(DigestMismatchError) as caught:
        verify_file(bundle.path, [bundle.trusted])

    expected = (
        "bundle ends without the tar end-of-archive marker"
        if kept == 0
        else "bundle ends inside the tar end-of-archive marker, after member compose/compose.yml"
    )
    assert caught.value.message == expected
    assert caught.value.hint == REDO_HINT


def test_bundle_cut_inside_padding_names_member(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path, {"compose/compose.yml": b"a", "images/x": b"bb"})
    end = _member_end(bundle.path, "compose/compose.yml") + 10
    bundle.path.write_bytes(bundle.path.read_bytes()[:end])

    with pytest.raises(DigestMismatchError) as caught:
        verify_file(bundle.path, [bundle.trusted])

    assert caught.value.message == (
        "bundle ends early inside the padding after member compose/compose.yml"
    )
