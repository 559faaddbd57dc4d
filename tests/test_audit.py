"""The audit log: one appended JSON line per action, mode 0600, never a secret."""

from __future__ import annotations

import json
import os
import pwd
import stat
import tarfile
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
from bundle_factory import make_bundle, trusted_key
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from installer import audit, policy
from installer.archive import verify_file
from installer.errors import DigestMismatchError, EnvironmentNotReadyError, SignatureError

NOW = datetime(2026, 6, 1, 12, 0, 0, 123456, tzinfo=UTC)


def _lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_append_creates_log_with_mode_0600(tmp_path: Path) -> None:
    log = tmp_path / "var" / "log" / "airlock" / "audit.log"
    audit.append(log, audit.AuditRecord("verify", audit.RESULT_OK), now=NOW, environ={})

    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    (record,) = _lines(log)
    assert record["time"] == "2026-06-01T12:00:00.123456Z"
    assert record["action"] == "verify"
    assert record["result"] == "ok"
    assert record["operator"] == pwd.getpwuid(os.getuid()).pw_name
    assert "sudo_user" not in record


def test_append_keeps_earlier_lines(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    log.write_text('{"earlier": true}\n')
    os.chmod(log, 0o600)
    audit.append(
        log, audit.AuditRecord("install", audit.RESULT_FAILED), environ={"SUDO_USER": "ops"}
    )

    lines = _lines(log)
    assert lines[0] == {"earlier": True}
    assert lines[1]["sudo_user"] == "ops"
    assert len(lines) == 2


def test_concurrent_appends_never_interleave(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    record = audit.AuditRecord("verify", audit.RESULT_OK, flags={"padding": "x" * 2000})

    def write_many() -> None:
        for _ in range(50):
            audit.append(log, record, environ={})

    threads = [threading.Thread(target=write_many) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(_lines(log)) == 200


def test_unwritable_log_is_environment_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(EnvironmentNotReadyError) as caught:
        audit.check_writable(blocker / "audit.log")
    assert caught.value.message.startswith(f"cannot open audit log {blocker / 'audit.log'}: ")


def test_symlinked_log_is_refused(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").write_text("")
    (tmp_path / "audit.log").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(EnvironmentNotReadyError):
        audit.check_writable(tmp_path / "audit.log")


def test_log_path_option_over_environment_over_default(tmp_path: Path) -> None:
    assert audit.resolve_log_path(tmp_path / "a", {"AIRLOCK_AUDIT_LOG": "/x"}) == tmp_path / "a"
    assert audit.resolve_log_path(None, {"AIRLOCK_AUDIT_LOG": "/x"}) == Path("/x")
    assert audit.resolve_log_path(None, {}) == Path("/var/log/airlock/audit.log")


def test_rejected_bundle_record_has_what_reader_learnt(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path, {"compose/compose.yml": b"a", "images/x": b"bb"})
    with tarfile.open(bundle.path) as tar:
        offset = tar.getmember("images/x").offset_data
    data = bytearray(bundle.path.read_bytes())
    data[offset] ^= 0x01
    damaged = tmp_path / "damaged.airlock"
    damaged.write_bytes(bytes(data))

    with pytest.raises(DigestMismatchError) as caught:
        verify_file(damaged, [bundle.trusted])
    record = audit.bundle_record("verify", error=caught.value, bundle_file=damaged)

    assert record.result == "rejected"
    assert record.bundle == "demo"
    assert record.sequence == 1
    assert record.signers == (bundle.trusted.key_id,)
    assert record.manifest_digest is not None
    assert record.error_class == "DigestMismatchError"
    assert record.error_message == caught.value.message
    assert record.bundle_file == str(damaged)


def test_untrusted_bundle_record_has_digest_but_no_name(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path)
    other = trusted_key(Ed25519PrivateKey.generate(), "other")
    with pytest.raises(SignatureError) as caught:
        verify_file(bundle.path, [other])
    record = audit.bundle_record("verify", error=caught.value)

    assert record.manifest_digest is not None
    assert record.bundle is None
    assert record.signers == ()


def test_verify_bundle_records_ok_with_signers(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path)
    log = tmp_path / "audit.log"
    options = policy.VerifyOptions(bundle.path, (bundle.trusted,), audit_log=log)

    verified = policy.verify_bundle(options, environ={})

    (record,) = _lines(log)
    assert record["action"] == "verify"
    assert record["result"] == "ok"
    assert record["bundle"] == "demo"
    assert record["version"] == "1.0.0"
    assert record["manifest_digest"] == verified.manifest_digest
    assert record["signers"] == [bundle.trusted.key_id]
    assert record["error"] is None
    assert record["flags"] == {"ignore_expiry": False, "threshold": 1}


def test_secret_values_never_reach_the_log(tmp_path: Path) -> None:
    """A value the bundle sets in `.env` and any private key stay out of the record."""
    bundle = make_bundle(tmp_path, env_set={"DB_PASSWORD": "hunter2-not-in-log"})
    log = tmp_path / "audit.log"
    policy.verify_bundle(policy.VerifyOptions(bundle.path, (bundle.trusted,), audit_log=log))

    text = log.read_text()
    assert "hunter2-not-in-log" not in text
    assert "PRIVATE KEY" not in text
