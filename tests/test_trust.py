"""The trust store: adding, listing and revoking keys, and which signatures count."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from bundle_factory import COMPOSE_TEXT, make_manifest, trusted_key
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bundler.archive import write_archive
from bundler.keys import generate_key_pair, load_private_key, sign
from installer import policy
from installer.archive import read_bundle, verify_file
from installer.errors import SignatureError, UsageError
from installer.install import InstallOptions
from installer.manifest import Member
from installer.trust import (
    RevokedKeyInUpdateError,
    TrustStore,
    TrustUpdateError,
    TrustUpdateScopeError,
    load_keys,
    parse_bundle_names,
    parse_trust_update,
    resolve_store_path,
)


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "installer.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        stdin=subprocess.DEVNULL,
        timeout=120,
    )


@pytest.fixture
def store(tmp_path: Path) -> TrustStore:
    return TrustStore(tmp_path / "trust")


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    folder = tmp_path / "keys"
    for name in ("old", "new", "stranger", "limited"):
        generate_key_pair(folder, name)
    return folder


def write_signed(
    folder: Path,
    signers: list[Ed25519PrivateKey],
    *,
    name: str = "demo",
    sequence: int = 1,
    file_as: dict[int, str] | None = None,
    extra: dict[str, bytes] | None = None,
) -> Path:
    """Write a small bundle signed by every key in `signers`.

    `file_as` maps a signer's position to the key id its signature is filed
    under, to forge a signature that claims another key. `extra` adds
    members (path -> bytes) after the compose file.
    """
    folder.mkdir(parents=True, exist_ok=True)
    payload = folder / "payload"
    files = {"compose/compose.yml": COMPOSE_TEXT, **(extra or {})}
    members = []
    for path, data in sorted(files.items()):
        (payload / path).parent.mkdir(parents=True, exist_ok=True)
        (payload / path).write_bytes(data)
        members.append(
            Member(path, len(data), hashlib.sha256(data).hexdigest(), "application/json")
        )
    manifest_bytes = make_manifest(members, name=name, sequence=sequence).to_bytes()
    signatures = {}
    for position, private in enumerate(signers):
        signer_id, signature = sign(private, manifest_bytes)
        signatures[(file_as or {}).get(position, signer_id)] = signature
    output = folder / "bundle.airlock"
    write_archive(output, manifest_bytes, signatures, payload, members, mtime=0)
    return output


def _bundle(tmp_path: Path, keys: Path, *signers: str, name: str = "demo") -> Path:
    """A bundle named `name` signed by each key in `signers`."""
    private = [load_private_key(keys / f"{signer}.key") for signer in signers]
    return write_signed(tmp_path, private, name=name)


def test_add_stores_key_id_name_and_bundles(store: TrustStore, keys: Path) -> None:
    change = store.add(keys / "old.pub", name=None, bundles=("demo", "auth"))

    assert change.action == "added"
    (entry,) = store.entries()
    assert entry.name == "old"
    assert entry.bundles == ("auth", "demo")
    assert entry.key_id == trusted_key(load_private_key(keys / "old.key")).key_id
    assert (store.folder / f"{entry.key_id}.pub").read_bytes() == (keys / "old.pub").read_bytes()


def test_add_same_key_again_is_unchanged(store: TrustStore, keys: Path) -> None:
    store.add(keys / "old.pub", name="release", bundles=())
    index = store.index_path.read_bytes()

    change = store.add(keys / "old.pub", name="release", bundles=())

    assert change.action == "unchanged"
    assert store.index_path.read_bytes() == index


def test_add_rejects_second_key_with_same_name(store: TrustStore, keys: Path) -> None:
    first = store.add(keys / "old.pub", name="release", bundles=())
    with pytest.raises(UsageError) as caught:
        store.add(keys / "new.pub", name="release", bundles=())
    assert caught.value.message == (
        f"a different key named release is already trusted ({first.entry.key_id})"
    )


def test_remove_by_name_revokes_and_moves_key(store: TrustStore, keys: Path) -> None:
    added = store.add(keys / "old.pub", name=None, bundles=())

    change = store.remove("old")

    assert change.action == "revoked"
    assert change.entry.revoked_at is not None
    assert not (store.folder / f"{added.entry.key_id}.pub").exists()
    assert (store.folder / "revoked" / f"{added.entry.key_id}.pub").is_file()
    (entry,) = store.entries()
    assert entry.revoked_at == change.entry.revoked_at


def test_remove_by_key_id_prefix(store: TrustStore, keys: Path) -> None:
    added = store.add(keys / "old.pub", name=None, bundles=())
    change = store.remove(added.entry.key_id[:12])
    assert change.entry.key_id == added.entry.key_id


def test_remove_unknown_key_names_next_step(store: TrustStore, keys: Path) -> None:
    store.add(keys / "old.pub", name=None, bundles=())
    with pytest.raises(UsageError) as caught:
        store.remove("nobody")
    assert caught.value.message == f"no trusted key has the id or name 'nobody' in {store.folder}"
    assert caught.value.hint == "list the keys with airlock-install trust list"


def test_remove_twice_says_already_revoked(store: TrustStore, keys: Path) -> None:
    store.add(keys / "old.pub", name=None, bundles=())
    first = store.remove("old")
    with pytest.raises(UsageError) as caught:
        store.remove("old")
    assert caught.value.message == (
        f"key old ({first.entry.key_id}) was already revoked at {first.entry.revoked_at}"
    )


def test_empty_store_asks_for_a_key(store: TrustStore) -> None:
    with pytest.raises(UsageError) as caught:
        load_keys(store=store)
    assert caught.value.message == f"no trusted public key: the trust store {store.folder} is empty"


def test_explicit_keys_replace_the_store(store: TrustStore, keys: Path) -> None:
    store.add(keys / "old.pub", name=None, bundles=())
    loaded = load_keys(key_files=[keys / "new.pub"], store=store)
    assert [key.name for key in loaded] == ["new"]


def test_index_edited_by_hand_is_reported(store: TrustStore, keys: Path) -> None:
    store.add(keys / "old.pub", name=None, bundles=())
    store.index_path.write_text('{"version": 1, "keys": [{"name": "x"}]}')
    with pytest.raises(UsageError) as caught:
        store.entries()
    assert caught.value.message.startswith(f"trust store index {store.index_path} is invalid: ")


def test_swapped_key_file_is_reported(store: TrustStore, keys: Path) -> None:
    added = store.add(keys / "old.pub", name=None, bundles=())
    key_file = store.folder / f"{added.entry.key_id}.pub"
    key_file.write_bytes((keys / "new.pub").read_bytes())
    with pytest.raises(UsageError) as caught:
        store.trusted_keys()
    assert caught.value.message.startswith(f"trust store file {key_file} contains key ")


def test_bundle_names_are_checked() -> None:
    assert parse_bundle_names("demo, auth,demo") == ("auth", "demo")
    assert parse_bundle_names("") == ()
    with pytest.raises(UsageError) as caught:
        parse_bundle_names("Demo")
    assert caught.value.message == "--bundles: 'Demo' is not a bundle name"


def test_store_path_option_over_environment_over_default(tmp_path: Path) -> None:
    assert resolve_store_path(tmp_path / "a", {"AIRLOCK_TRUST_STORE": "/x"}) == tmp_path / "a"
    assert resolve_store_path(None, {"AIRLOCK_TRUST_STORE": "/x"}) == Path("/x")
    assert resolve_store_path(None, {}) == Path("/etc/airlock/trust")


# Which signatures count.


def test_rotation_old_and_new_signatures_both_verify(
    store: TrustStore, keys: Path, tmp_path: Path
) -> None:
    """During a change-over a bundle signed by the old and the new key passes either store."""
    bundle = _bundle(tmp_path, keys, "old", "new")
    store.add(keys / "old.pub", name=None, bundles=())
    assert [k.name for k in verify_file(bundle, store.trusted_keys()).signers] == ["old"]

    store.add(keys / "new.pub", name=None, bundles=())
    store.remove("old")
    assert [k.name for k in verify_file(bundle, store.trusted_keys()).signers] == ["new"]


def test_bundle_signed_only_by_revoked_key_is_rejected(
    store: TrustStore, keys: Path, tmp_path: Path
) -> None:
    bundle = _bundle(tmp_path, keys, "old")
    store.add(keys / "old.pub", name=None, bundles=())
    revoked = store.remove("old").entry

    with pytest.raises(SignatureError) as caught:
        verify_file(bundle, store.trusted_keys())
    assert caught.value.message == (
        f"bundle is signed by key old ({revoked.key_id}), which was revoked at {revoked.revoked_at}"
    )


def test_untrusted_new_key_named_by_id(store: TrustStore, keys: Path, tmp_path: Path) -> None:
    bundle = _bundle(tmp_path, keys, "new")
    store.add(keys / "old.pub", name=None, bundles=())
    new_id = trusted_key(load_private_key(keys / "new.key")).key_id

    with pytest.raises(SignatureError) as caught:
        verify_file(bundle, store.trusted_keys())
    assert caught.value.message == f"bundle is signed by key id {new_id}, not in the trusted keys"


def test_key_restricted_to_other_bundles_does_not_count(
    store: TrustStore, keys: Path, tmp_path: Path
) -> None:
    bundle = _bundle(tmp_path, keys, "old")
    added = store.add(keys / "old.pub", name=None, bundles=("auth",)).entry

    with pytest.raises(SignatureError) as caught:
        verify_file(bundle, store.trusted_keys())
    assert caught.value.message == (
        f"bundle demo is signed by key old ({added.key_id}), which may sign only bundles auth"
    )
    assert caught.value.hint == (
        "if that key may sign demo, add it again with "
        "airlock-install trust add KEYFILE --bundles auth,demo"
    )


def test_key_restricted_to_this_bundle_counts(
    store: TrustStore, keys: Path, tmp_path: Path
) -> None:
    bundle = _bundle(tmp_path, keys, "old")
    store.add(keys / "old.pub", name=None, bundles=("demo",))
    assert [k.name for k in verify_file(bundle, store.trusted_keys()).signers] == ["old"]


def test_threshold_needs_distinct_trusted_keys(
    store: TrustStore, keys: Path, tmp_path: Path
) -> None:
    store.add(keys / "old.pub", name=None, bundles=())
    store.add(keys / "new.pub", name=None, bundles=())
    one = _bundle(tmp_path / "one", keys, "old", "stranger")
    two = _bundle(tmp_path / "two", keys, "old", "new")

    with pytest.raises(SignatureError) as caught:
        verify_file(one, store.trusted_keys(), threshold=2)
    assert caught.value.message == "bundle has 1 valid signature by trusted keys, 2 required"
    assert len(verify_file(two, store.trusted_keys(), threshold=2).signers) == 2


def test_threshold_counts_only_keys_allowed_for_the_bundle(
    store: TrustStore, keys: Path, tmp_path: Path
) -> None:
    store.add(keys / "old.pub", name=None, bundles=())
    store.add(keys / "new.pub", name=None, bundles=("auth",))
    bundle = _bundle(tmp_path, keys, "old", "new")

    with pytest.raises(SignatureError) as caught:
        verify_file(bundle, store.trusted_keys(), threshold=2)
    assert caught.value.message == (
        "bundle demo has 1 valid signature by keys trusted for it, 2 required"
    )


def test_forged_signature_under_trusted_key_id_is_fatal(
    store: TrustStore, keys: Path, tmp_path: Path
) -> None:
    """A stranger's signature filed under a trusted key's id does not verify."""
    old = trusted_key(load_private_key(keys / "old.key"))
    stranger = load_private_key(keys / "stranger.key")
    bundle = write_signed(tmp_path, [stranger], name="demo", file_as={0: old.key_id})
    store.add(keys / "old.pub", name=None, bundles=())

    with pytest.raises(SignatureError) as caught:
        verify_file(bundle, store.trusted_keys())
    assert caught.value.message == (
        f"signature airlock/signatures/{old.key_id}.sig does not match the manifest"
    )


# The commands.


def test_trust_commands_add_list_remove(keys: Path, tmp_path: Path) -> None:
    env = {
        "AIRLOCK_TRUST_STORE": str(tmp_path / "store"),
        "AIRLOCK_AUDIT_LOG": str(tmp_path / "audit.log"),
    }
    key_id = trusted_key(load_private_key(keys / "old.key")).key_id

    added = _cli(
        "trust", "add", str(keys / "old.pub"), "--name", "release", "--bundles", "demo", env=env
    )
    assert added.returncode == 0, added.stderr
    assert added.stdout == f"added key release ({key_id}) for demo in {tmp_path / 'store'}\n"

    listed = _cli("trust", "list", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    (entry,) = json.loads(listed.stdout)
    assert (entry["key_id"], entry["name"], entry["bundles"], entry["status"]) == (
        key_id,
        "release",
        ["demo"],
        "trusted",
    )

    removed = _cli("trust", "remove", "release", env=env)
    assert removed.returncode == 0, removed.stderr
    assert removed.stdout.startswith(f"revoked key release ({key_id}) at ")

    text = _cli("trust", "list", env=env)
    assert text.stdout.startswith(f"{key_id}  release  bundles: demo  revoked ")

    actions = [
        json.loads(line)["action"] for line in (tmp_path / "audit.log").read_text().splitlines()
    ]
    assert actions == ["trust-add", "trust-remove"]


def test_verify_uses_store_and_names_signer(keys: Path, tmp_path: Path) -> None:
    env = {
        "AIRLOCK_TRUST_STORE": str(tmp_path / "store"),
        "AIRLOCK_AUDIT_LOG": str(tmp_path / "audit.log"),
    }
    bundle = _bundle(tmp_path, keys, "old")
    assert _cli("trust", "add", str(keys / "old.pub"), env=env).returncode == 0
    key_id = trusted_key(load_private_key(keys / "old.key")).key_id

    result = _cli("verify", str(bundle), env=env)

    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        f"OK demo 1.0.0 (sequence 1): 1 members verified, signed by old ({key_id[:16]})\n"
    )


def test_verify_with_empty_store_is_usage_error(keys: Path, tmp_path: Path) -> None:
    env = {
        "AIRLOCK_TRUST_STORE": str(tmp_path / "store"),
        "AIRLOCK_AUDIT_LOG": str(tmp_path / "audit.log"),
    }
    bundle = _bundle(tmp_path, keys, "old")
    result = _cli("verify", str(bundle), env=env)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"error: no trusted public key: the trust store {tmp_path / 'store'} is empty",
        "hint: add the publisher's key with airlock-install trust add KEYFILE, "
        "or pass --key PUBFILE for this run",
    ]


# Trust updates carried in a bundle: rotating a key on every host.


def _update(
    keys: Path,
    *,
    add: tuple[str, ...] = (),
    revoke: tuple[str, ...] = (),
    bundles: tuple[str, ...] = ("demo",),
) -> bytes:
    """A trust update adding each key in `add` for `bundles` (empty: any) and revoking `revoke`."""
    data = {
        "version": 1,
        "add": [
            {
                "name": name,
                "public_key": (keys / f"{name}.pub").read_text(),
                "bundles": list(bundles),
            }
            for name in add
        ],
        "revoke": [trusted_key(load_private_key(keys / f"{name}.key")).key_id for name in revoke],
    }
    return json.dumps(data).encode()


def _install_records(
    bundle: Path, store: TrustStore, tmp_path: Path, *, threshold: int = 1
) -> InstallOptions:
    """Run the release checks and the end-of-install records as install() does, without Docker."""
    options = InstallOptions(
        bundle=bundle,
        target=tmp_path / "target",
        trusted=tuple(store.trusted_keys()),
        threshold=threshold,
        audit_log=tmp_path / "audit.log",
        host_record=tmp_path / "installed.json",
        trust_store=store.folder,
    )
    stage = tmp_path / f"stage-{bundle.parent.name}"
    with bundle.open("rb") as stream:
        verified = read_bundle(stream, options.trusted, stage_to=stage)
    policy.check_release(None, verified, False, **policy.release_checks(options))
    policy.record_install(options, options.target, environ={})
    return options


def test_transition_bundle_rotates_key(store: TrustStore, keys: Path, tmp_path: Path) -> None:
    """A signed by old adds new; B signed by new then verifies; a later update revokes old."""
    store.add(keys / "old.pub", name=None, bundles=())
    old_key = load_private_key(keys / "old.key")
    new_key = load_private_key(keys / "new.key")
    new_id = trusted_key(new_key).key_id
    transition = write_signed(
        tmp_path / "a",
        [old_key],
        extra={"airlock/trust-update.json": _update(keys, add=("new",), bundles=())},
    )
    signed_by_new = write_signed(tmp_path / "b", [new_key], sequence=2)

    with pytest.raises(SignatureError) as early:
        verify_file(signed_by_new, store.trusted_keys())
    assert early.value.message == f"bundle is signed by key id {new_id}, not in the trusted keys"

    options = _install_records(transition, store, tmp_path)

    assert [(e.name, e.bundles, e.revoked_at) for e in store.entries()] == [
        ("new", (), None),
        ("old", (), None),
    ]
    assert [k.name for k in verify_file(signed_by_new, store.trusted_keys()).signers] == ["new"]
    actions = [json.loads(line)["action"] for line in options.audit_log.read_text().splitlines()]  # type: ignore[union-attr]
    assert actions == ["trust-update", "install"]

    retire = write_signed(
        tmp_path / "c",
        [new_key],
        sequence=3,
        extra={"airlock/trust-update.json": _update(keys, revoke=("old",))},
    )
    _install_records(retire, store, tmp_path)
    signed_by_old = write_signed(tmp_path / "d", [old_key], sequence=4)

    with pytest.raises(SignatureError) as revoked:
        verify_file(signed_by_old, store.trusted_keys())
    assert revoked.value.message.startswith(
        f"bundle is signed by key old ({trusted_key(old_key).key_id}), which was revoked at "
    )


def test_trust_update_from_key_outside_store_is_rejected(
    store: TrustStore, keys: Path, tmp_path: Path
) -> None:
    store.add(keys / "old.pub", name=None, bundles=())
    stranger = load_private_key(keys / "stranger.key")
    bundle = write_signed(
        tmp_path / "a",
        [stranger],
        extra={"airlock/trust-update.json": _update(keys, add=("stranger",))},
    )
    stage = tmp_path / "stage"
    with bundle.open("rb") as stream:
        verified = read_bundle(stream, [trusted_key(stranger, "stranger")], stage_to=stage)
    index = store.index_path.read_bytes()

    with pytest.raises(TrustUpdateError) as caught:
        policy.check_release(None, verified, False, trust_store=store.folder)
    assert caught.value.message == (
        f"bundle carries a trust update (adds stranger ({trusted_key(stranger).key_id})) but is "
        f"signed by 0 keys of the trust store {store.folder}, 1 required"
    )
    assert caught.value.exit_code == 3
    assert store.index_path.read_bytes() == index


def test_trust_update_without_store_is_rejected(keys: Path, tmp_path: Path) -> None:
    old_key = load_private_key(keys / "old.key")
    bundle = write_signed(
        tmp_path / "a", [old_key], extra={"airlock/trust-update.json": _update(keys, add=("new",))}
    )
    with bundle.open("rb") as stream:
        verified = read_bundle(stream, [trusted_key(old_key)], stage_to=tmp_path / "stage")
    with pytest.raises(TrustUpdateError) as caught:
        policy.check_release(None, verified, False)
    assert caught.value.message == "bundle carries a trust update, but this run uses no trust store"


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (b"[]", "expected a JSON object with version 1"),
        (b'{"version": 1}', "it neither adds nor revokes a key"),
        (b'{"version": 1, "revoke": ["abc"]}', "revoke entry 'abc' is not a 64-digit hex key id"),
        (b'{"version": 1, "add": [{"name": "x"}]}', "add[0] needs a public_key (PEM text)"),
        (
            b'{"version": 1, "add": [{"name": "x", "public_key": "nope"}]}',
            "add[0].public_key is not a PEM public key",
        ),
        (b'{"version": 1, "revoke": [], "extra": 1}', "unknown fields extra"),
        (b"\xff", "not UTF-8 JSON ("),
    ],
)
def test_invalid_trust_update_is_rejected(raw: bytes, problem: str) -> None:
    with pytest.raises(TrustUpdateError) as caught:
        parse_trust_update(raw)
    assert caught.value.message.startswith(
        f"trust update airlock/trust-update.json is invalid: {problem}"
    )


def test_trust_update_cannot_add_and_revoke_same_key(keys: Path) -> None:
    raw = json.loads(_update(keys, add=("new",)))
    raw["revoke"] = [trusted_key(load_private_key(keys / "new.key")).key_id]
    with pytest.raises(TrustUpdateError) as caught:
        parse_trust_update(json.dumps(raw).encode())
    assert caught.value.message.endswith(f"it both adds and revokes {raw['revoke'][0]}")


# A trust update grants or removes only what its signers hold.

TRUST_UPDATE = "airlock/trust-update.json"
SCOPE_HINT = (
    "an update may grant or remove only the bundle names its signers may sign; "
    "ask the publisher for one signed by keys trusted for {requested}, "
    "or change key {key_id} with airlock-install trust add or trust remove"
)


def _key_id(keys: Path, name: str) -> str:
    return trusted_key(load_private_key(keys / f"{name}.key")).key_id


def _update_bundle(
    folder: Path, keys: Path, *signers: str, update: bytes, sequence: int = 2
) -> Path:
    """A bundle named trialapp, signed by each key in `signers`, carrying `update`."""
    private = [load_private_key(keys / f"{signer}.key") for signer in signers]
    return write_signed(
        folder, private, name="trialapp", sequence=sequence, extra={TRUST_UPDATE: update}
    )


def _host_files(store: TrustStore, tmp_path: Path) -> dict[str, bytes]:
    """Every file in the trust store, and the host record, by path."""
    files = {str(path): path.read_bytes() for path in store.folder.rglob("*") if path.is_file()}
    record = tmp_path / "installed.json"
    files[str(record)] = record.read_bytes()
    return files


def _reject_update(
    bundle: Path, store: TrustStore, keys: Path, tmp_path: Path, *signers: str, threshold: int = 1
) -> TrustUpdateError:
    """Install trialapp sequence 1, then offer `bundle`; return its rejection.

    Asserts that the rejection has exit code 3 and left the trust store and
    the host record byte for byte as the first install left them.
    """
    private = [load_private_key(keys / f"{signer}.key") for signer in signers]
    first = write_signed(tmp_path / "first", private, name="trialapp", sequence=1)
    _install_records(first, store, tmp_path, threshold=threshold)
    before = _host_files(store, tmp_path)

    with pytest.raises(TrustUpdateError) as caught:
        _install_records(bundle, store, tmp_path, threshold=threshold)

    assert caught.value.exit_code == 3
    assert _host_files(store, tmp_path) == before
    return caught.value


def test_scoped_signer_cannot_add_unrestricted_key(
    store: TrustStore, keys: Path, tmp_path: Path
) -> None:
    store.add(keys / "limited.pub", name=None, bundles=("trialapp",))
    update = _update(keys, add=("new",), bundles=())
    bundle = _update_bundle(tmp_path / "b", keys, "limited", update=update)

    error = _reject_update(bundle, store, keys, tmp_path, "limited")

    new_id, limited_id = _key_id(keys, "new"), _key_id(keys, "limited")
    assert isinstance(error, TrustUpdateScopeError)
    assert error.message == (
        f"trust update adds key new ({new_id}) for any bundle, beyond what its signers "
        f"may sign: limited ({limited_id}) may sign only trialapp"
    )
    assert error.hint == SCOPE_HINT.format(requested="any bundle", key_id=new_id)


def test_scoped_signer_cannot_add_key_for_other_bundle(
    store: TrustStore, keys: Path, tmp_path: Path
) -> None:
    store.add(keys / "limited.pub", name=None, bundles=("trialapp",))
    update = _update(keys, add=("new",), bundles=("trialapp", "other"))
    bundle = _update_bundle(tmp_path / "b", keys, "limited", update=update)

    error = _reject_update(bundle, store, keys, tmp_path, "limited")

    assert isinstance(error, TrustUpdateScopeError)
    assert error.message == (
        f"trust update adds key new ({_key_id(keys, 'new')}) for bundles other, trialapp, "
        f"beyond what its signers may sign: limited ({_key_id(keys, 'limited')}) may sign "
        "only trialapp"
    )


def test_scoped_signer_cannot_revoke_unrestricted_key(
    store: TrustStore, keys: Path, tmp_path: Path
) -> None:
    store.add(keys / "old.pub", name=None, bundles=())
    store.add(keys / "limited.pub", name=None, bundles=("trialapp",))
    bundle = _update_bundle(tmp_path / "b", keys, "limited", update=_update(keys, revoke=("old",)))

    error = _reject_update(bundle, store, keys, tmp_path, "limited")

    old_id = _key_id(keys, "old")
    assert isinstance(error, TrustUpdateScopeError)
    assert error.message == (
        f"trust update revokes key old ({old_id}), which may sign any bundle, beyond what "
        f"its signers may sign: limited ({_key_id(keys, 'limited')}) may sign only trialapp"
    )
    assert error.hint == SCOPE_HINT.format(requested="any bundle", key_id=old_id)


def test_scoped_signer_cannot_narrow_unrestricted_key(
    store: TrustStore, keys: Path, tmp_path: Path
) -> None:
    """Re-adding a trusted key with fewer bundle names removes the rest, which the signer lacks."""
    store.add(keys / "old.pub", name=None, bundles=())
    store.add(keys / "limited.pub", name=None, bundles=("trialapp",))
    update = _update(keys, add=("old",), bundles=("trialapp",))
    bundle = _update_bundle(tmp_path / "b", keys, "limited", update=update)

    error = _reject_update(bundle, store, keys, tmp_path, "limited")

    assert isinstance(error, TrustUpdateScopeError)
    assert error.message == (
        f"trust update changes key old ({_key_id(keys, 'old')}) from any bundle to bundles "
        f"trialapp, beyond what its signers may sign: limited ({_key_id(keys, 'limited')}) "
        "may sign only trialapp"
    )


def test_threshold_counts_only_signers_holding_scope(
    store: TrustStore, keys: Path, tmp_path: Path
) -> None:
    store.add(keys / "old.pub", name=None, bundles=())
    store.add(keys / "limited.pub", name=None, bundles=("trialapp",))
    update = _update(keys, add=("new",), bundles=())
    bundle = _update_bundle(tmp_path / "b", keys, "old", "limited", update=update)

    error = _reject_update(bundle, store, keys, tmp_path, "old", "limited", threshold=2)

    assert isinstance(error, TrustUpdateScopeError)
    assert error.message == (
        f"trust update adds key new ({_key_id(keys, 'new')}) for any bundle, which only 1 of "
        f"its signers may grant, 2 required: limited ({_key_id(keys, 'limited')}) may sign "
        f"only trialapp; old ({_key_id(keys, 'old')}) may sign any bundle"
    )


def test_update_signers_must_be_allowed_for_bundle(store: TrustStore, keys: Path) -> None:
    """The store's scope decides, even when the keys a run verified with said otherwise.

    `check_release` rejects such a signer earlier, with the keys it verified
    with; this is the check when the store narrowed the key since then.
    """
    store.add(keys / "limited.pub", name=None, bundles=("trialapp",))
    update = parse_trust_update(_update(keys, add=("new",), bundles=("trialapp",)))
    index = store.index_path.read_bytes()

    with pytest.raises(TrustUpdateScopeError) as caught:
        store.authorize_update(update, [_key_id(keys, "limited")], bundle_name="demo")

    assert caught.value.message == (
        f"bundle demo carries a trust update (adds new ({_key_id(keys, 'new')})) but is signed "
        f"by 0 keys of the trust store {store.folder} allowed to sign demo, 1 required"
    )
    assert caught.value.exit_code == 3
    assert store.index_path.read_bytes() == index


def test_update_cannot_restore_revoked_key(store: TrustStore, keys: Path, tmp_path: Path) -> None:
    store.add(keys / "old.pub", name=None, bundles=())
    store.add(keys / "new.pub", name=None, bundles=())
    revoked = store.remove("new").entry
    update = _update(keys, add=("new",), bundles=())
    bundle = _update_bundle(tmp_path / "b", keys, "old", update=update)

    error = _reject_update(bundle, store, keys, tmp_path, "old")

    assert isinstance(error, RevokedKeyInUpdateError)
    assert error.message == (
        f"trust update adds key new ({revoked.key_id}), which this trust store revoked at "
        f"{revoked.revoked_at}"
    )
    assert error.hint == (
        "a revoked key does not return through a bundle; an operator may restore it with "
        "airlock-install trust add KEYFILE, or the publisher may rebuild the bundle without "
        "it in airlock/trust-update.json"
    )
    assert (store.folder / "revoked" / f"{revoked.key_id}.pub").is_file()


def test_apply_rejects_key_revoked_during_install(
    store: TrustStore, keys: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A key revoked after the checks passed but before the update applies stays revoked."""
    store.add(keys / "old.pub", name=None, bundles=())
    store.add(keys / "new.pub", name=None, bundles=())
    update = _update(keys, add=("new",), bundles=("trialapp",))
    bundle = _update_bundle(tmp_path / "b", keys, "old", update=update, sequence=1)
    options = InstallOptions(
        bundle=bundle,
        target=tmp_path / "target",
        trusted=tuple(store.trusted_keys()),
        host_record=tmp_path / "installed.json",
        trust_store=store.folder,
    )
    with bundle.open("rb") as stream:
        verified = read_bundle(stream, options.trusted, stage_to=tmp_path / "stage")
    policy.check_release(None, verified, False, **policy.release_checks(options))
    revoked = store.remove("new").entry
    index = store.index_path.read_bytes()

    with caplog.at_level(logging.ERROR, logger="installer.policy"):
        policy.record_install(options, options.target, environ={})

    assert store.index_path.read_bytes() == index
    # Other loggers may pass INFO records through when an earlier test set up
    # the CLI's logging, so only the error records count here.
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [r.getMessage() for r in errors] == [
        f"could not apply the bundle's trust update to {store.folder}: trust update adds key "
        f"new ({revoked.key_id}), which this trust store revoked at {revoked.revoked_at}; "
        "a revoked key does not return through a bundle; an operator may restore it with "
        "airlock-install trust add KEYFILE, or the publisher may rebuild the bundle without "
        "it in airlock/trust-update.json"
    ]


def test_trust_add_says_it_restores_revoked_key(keys: Path, tmp_path: Path) -> None:
    env = {
        "AIRLOCK_TRUST_STORE": str(tmp_path / "store"),
        "AIRLOCK_AUDIT_LOG": str(tmp_path / "audit.log"),
    }
    key_id = _key_id(keys, "new")
    assert _cli("trust", "add", str(keys / "new.pub"), env=env).returncode == 0
    removed = _cli("trust", "remove", "new", env=env)
    assert removed.returncode == 0, removed.stderr

    restored = _cli("trust", "add", str(keys / "new.pub"), env=env)

    assert restored.returncode == 0, restored.stderr
    assert restored.stdout == (
        f"restored key new ({key_id}) for any bundle in {tmp_path / 'store'}\n"
    )
    last = json.loads((tmp_path / "audit.log").read_text().splitlines()[-1])
    assert last["action"] == "trust-add"
    assert last["flags"]["change"] == "restored"
    assert "previously_revoked_at" in last["flags"]


@pytest.mark.parametrize("added", [(), ("trialapp",), ("other",)])
def test_unrestricted_signer_adds_key_for_any_scope(
    store: TrustStore, keys: Path, tmp_path: Path, added: tuple[str, ...]
) -> None:
    store.add(keys / "old.pub", name=None, bundles=())
    bundle = _update_bundle(
        tmp_path / "b", keys, "old", update=_update(keys, add=("new",), bundles=added)
    )

    _install_records(bundle, store, tmp_path)

    assert [(e.name, e.bundles, e.revoked_at) for e in store.entries()] == [
        ("new", added, None),
        ("old", (), None),
    ]


@pytest.mark.parametrize(
    ("signer_bundles", "added"),
    [
        (("trialapp",), ("trialapp",)),
        (("other", "trialapp"), ("other", "trialapp")),
        (("other", "trialapp"), ("trialapp",)),
        (("other", "trialapp"), ("other",)),
    ],
)
def test_scoped_signer_adds_key_within_its_scope(
    store: TrustStore,
    keys: Path,
    tmp_path: Path,
    signer_bundles: tuple[str, ...],
    added: tuple[str, ...],
) -> None:
    store.add(keys / "limited.pub", name=None, bundles=signer_bundles)
    bundle = _update_bundle(
        tmp_path / "b", keys, "limited", update=_update(keys, add=("new",), bundles=added)
    )

    _install_records(bundle, store, tmp_path)

    assert [(e.name, e.bundles, e.revoked_at) for e in store.entries()] == [
        ("limited", signer_bundles, None),
        ("new", added, None),
    ]


def test_scoped_signer_revokes_key_within_its_scope(
    store: TrustStore, keys: Path, tmp_path: Path
) -> None:
    store.add(keys / "limited.pub", name=None, bundles=("trialapp",))
    new_id = store.add(keys / "new.pub", name=None, bundles=("trialapp",)).entry.key_id
    bundle = _update_bundle(tmp_path / "b", keys, "limited", update=_update(keys, revoke=("new",)))

    _install_records(bundle, store, tmp_path)

    active, revoked = store.entries()
    assert (active.name, active.revoked_at) == ("limited", None)
    assert revoked.name == "new"
    assert revoked.revoked_at is not None
    assert (store.folder / "revoked" / f"{new_id}.pub").is_file()
