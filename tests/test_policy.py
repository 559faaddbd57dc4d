"""Which verified bundles may be installed: expiry, host record, target state, signers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from bundle_factory import make_bundle, trusted_key
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from installer import policy
from installer.archive import BundleFacts, VerifiedBundle, verify_file
from installer.errors import DowngradeError, SignatureError
from installer.state import InstallState, Release

NOW = datetime(2026, 6, 1, 12, 0, 0, tzinfo=UTC)
KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))


def _verified(tmp_path: Path, **manifest: Any) -> VerifiedBundle:
    folder = tmp_path / f"bundle-{len(list(tmp_path.iterdir()))}"
    folder.mkdir()
    bundle = make_bundle(folder, key=KEY, **manifest)
    return verify_file(bundle.path, [bundle.trusted])


def _state(verified: VerifiedBundle, *, highest: int | None = None) -> InstallState:
    manifest = verified.manifest
    release = Release(
        version=manifest.version,
        sequence=manifest.sequence,
        manifest_digest=verified.manifest_digest,
        installed_at="2026-01-01T00:00:00Z",
        project_name="demo",
        compose_files=["compose.yml"],
        signers=verified.signer_ids,
    )
    return InstallState(manifest.name, release, [], highest or manifest.sequence)


# Expiry.


def test_unexpired_bundle_passes(tmp_path: Path) -> None:
    verified = _verified(tmp_path, expires="2026-07-01T00:00:00Z")
    policy.check_expiry(verified, now=NOW)


def test_expired_bundle_shows_both_times(tmp_path: Path) -> None:
    verified = _verified(tmp_path, expires="2026-05-01T00:00:00Z")
    with pytest.raises(policy.ExpiredBundleError) as caught:
        policy.check_expiry(verified, now=NOW)
    assert caught.value.message == (
        "bundle demo 1.0.0 expired at 2026-05-01T00:00:00Z; it is now 2026-06-01T12:00:00Z"
    )
    assert caught.value.hint == (
        "ask the publisher for a current bundle; check this host's clock; "
        "or pass --ignore-expiry to use it anyway"
    )
    assert caught.value.exit_code == 3


def test_expiry_with_offset_is_compared_in_utc(tmp_path: Path) -> None:
    verified = _verified(tmp_path, expires="2026-06-01T13:30:00+02:00")
    with pytest.raises(policy.ExpiredBundleError) as caught:
        policy.check_expiry(verified, now=NOW)
    assert caught.value.message.startswith("bundle demo 1.0.0 expired at 2026-06-01T11:30:00Z;")


def test_ignore_expiry_lets_expired_bundle_pass(tmp_path: Path) -> None:
    verified = _verified(tmp_path, expires="2026-05-01T00:00:00Z")
    policy.check_expiry(verified, now=NOW, ignore_expiry=True)


def test_expired_bundle_rejected_by_check_release(tmp_path: Path) -> None:
    verified = _verified(tmp_path, expires="2026-05-01T00:00:00Z")
    with pytest.raises(policy.ExpiredBundleError):
        policy.check_release(None, verified, False, now=NOW)


# Target state.


def test_fresh_target_accepts_any_sequence(tmp_path: Path) -> None:
    assert policy.check_release(None, _verified(tmp_path), False) is False


def test_same_bundle_again_is_installed_release(tmp_path: Path) -> None:
    verified = _verified(tmp_path)
    assert policy.check_release(_state(verified), verified, False) is True


def test_older_sequence_is_rejected(tmp_path: Path) -> None:
    newer = _verified(tmp_path, sequence=17, version="2.3.0")
    older = _verified(tmp_path, sequence=12, version="2.1.0")
    with pytest.raises(DowngradeError) as caught:
        policy.check_release(_state(newer), older, False)
    assert (
        caught.value.message == "bundle sequence 12 (2.1.0) < installed 17; downgrade not allowed"
    )


def test_allow_downgrade_accepts_older_sequence(tmp_path: Path) -> None:
    newer = _verified(tmp_path, sequence=17, version="2.3.0")
    older = _verified(tmp_path, sequence=12, version="2.1.0")
    assert policy.check_release(_state(newer), older, True) is False


def test_other_bundle_with_same_sequence_is_rejected(tmp_path: Path) -> None:
    genuine = _verified(tmp_path, sequence=5)
    other = _verified(tmp_path, sequence=5, version="5.0.0-other")
    with pytest.raises(DowngradeError) as caught:
        policy.check_release(_state(genuine), other, False)
    assert caught.value.message == (
        f"bundle sequence 5 is installed with manifest {genuine.manifest_digest}, "
        f"this bundle has {other.manifest_digest}"
    )


def test_other_bundle_name_is_rejected(tmp_path: Path) -> None:
    verified = _verified(tmp_path)
    state = _state(verified)
    state.name = "auth"
    with pytest.raises(DowngradeError) as caught:
        policy.check_release(state, verified, False)
    assert caught.value.message == "target holds bundle auth, this bundle is demo"


# Host record.


def test_host_record_keeps_highest_sequence(tmp_path: Path) -> None:
    record = tmp_path / "etc" / "installed.json"
    newer = _verified(tmp_path, sequence=3, version="3.0.0")
    older = _verified(tmp_path, sequence=2, version="2.0.0")

    policy.record_installed(record, policy.facts_of_verified(newer), tmp_path / "a", now=NOW)
    policy.record_installed(record, policy.facts_of_verified(older), tmp_path / "b", now=NOW)

    data = json.loads(record.read_text())
    assert data == {
        "version": 1,
        "bundles": {
            "demo": {
                "sequence": 3,
                "version": "3.0.0",
                "manifest_digest": newer.manifest_digest,
                "installed_at": "2026-06-01T12:00:00Z",
                "target": str(tmp_path / "a"),
            }
        },
    }


def test_host_record_catches_fresh_target_replay(tmp_path: Path) -> None:
    record = tmp_path / "installed.json"
    newer = _verified(tmp_path, sequence=17, version="2.3.0")
    policy.record_installed(record, policy.facts_of_verified(newer), tmp_path / "prod")
    older = _verified(tmp_path, sequence=12, version="2.1.0")

    with pytest.raises(DowngradeError) as caught:
        policy.check_release(None, older, False, host_record=record)
    assert caught.value.message == (
        f"bundle sequence 12 (2.1.0) < 17 (2.3.0) installed on this host in {tmp_path / 'prod'}; "
        "downgrade not allowed"
    )
    assert policy.check_release(None, older, True, host_record=record) is False


def test_same_sequence_in_another_target_passes_host_record(tmp_path: Path) -> None:
    record = tmp_path / "installed.json"
    verified = _verified(tmp_path)
    policy.record_installed(record, policy.facts_of_verified(verified), tmp_path / "a")
    assert policy.check_release(None, verified, False, host_record=record) is False


def test_unreadable_host_record_is_reported(tmp_path: Path) -> None:
    record = tmp_path / "installed.json"
    record.write_text("{not json")
    with pytest.raises(Exception) as caught:
        policy.check_release(None, _verified(tmp_path), False, host_record=record)
    assert str(caught.value).startswith(f"host record {record} is unreadable: ")


def test_host_record_path_follows_trust_store(tmp_path: Path) -> None:
    store = tmp_path / "etc" / "trust"
    assert policy.resolve_host_record_path(None, {}, store) == tmp_path / "etc" / "installed.json"
    assert policy.resolve_host_record_path(None, {"AIRLOCK_HOST_RECORD": "/r.json"}, store) == Path(
        "/r.json"
    )
    assert policy.resolve_host_record_path(None, {}) == Path("/etc/airlock/installed.json")


# Signers and facts.


def test_check_release_enforces_threshold(tmp_path: Path) -> None:
    with pytest.raises(SignatureError) as caught:
        policy.check_release(None, _verified(tmp_path), False, threshold=2)
    assert (
        caught.value.message
        == "bundle demo has 1 valid signature by keys trusted for it, 2 required"
    )


def test_check_release_fills_facts(tmp_path: Path) -> None:
    verified = _verified(tmp_path, sequence=4, version="4.0.0")
    facts = BundleFacts()
    policy.check_release(None, verified, False, facts=facts)
    assert facts == BundleFacts(
        verified.manifest_digest, [trusted_key(KEY).key_id], "demo", "4.0.0", 4
    )


# The command.


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "installer.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        stdin=subprocess.DEVNULL,
        timeout=120,
    )


def test_verify_command_rejects_expired_bundle_and_audits_override(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path, key=KEY, expires="2020-01-01T00:00:00Z")
    pub = tmp_path / "release.pub"
    pub.write_bytes(KEY.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    log = tmp_path / "audit.log"
    env = {"AIRLOCK_AUDIT_LOG": str(log)}

    rejected = _cli("verify", str(bundle.path), "--key", str(pub), env=env)
    accepted = _cli("verify", str(bundle.path), "--key", str(pub), "--ignore-expiry", env=env)

    assert rejected.returncode == 3
    error = rejected.stderr.splitlines()[-2]
    assert error.startswith("error: bundle demo 1.0.0 expired at 2020-01-01T00:00:00Z; it is now ")
    assert accepted.returncode == 0, accepted.stderr
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(r["result"], r["flags"]["ignore_expiry"]) for r in records] == [
        ("rejected", False),
        ("ok", True),
    ]
    assert records[0]["error"]["class"] == "ExpiredBundleError"
