"""The host's trust store: which public keys may sign which bundles.

The store is a folder (default `/etc/airlock/trust`):

    trust.json          the index: each key's name, allowed bundle names, times
    <key id>.pub        each trusted key, PEM, as `airlock-bundle keygen` wrote it
    revoked/<key id>.pub  keys removed with `trust remove`

A removed key is kept as revoked rather than forgotten, so a bundle signed
only by it is rejected with "revoked" instead of "unknown key". Its file
moves to `revoked/`, which `--trust DIR` pointed at the store does not
read. Every change takes an exclusive lock and replaces the
index atomically.

TODO: accept a trust update carried in a bundle (keys to add and to
revoke, signed by a key the store already trusts) and apply it after the
bundle installs, so a key can be rotated without a `trust add` on every
host. Until then the store changes only through `trust add` and `trust
remove`.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from installer.errors import UsageError
from installer.signing import (
    PUBLIC_KEY_SUFFIX,
    TrustedKey,
    load_public_key,
    load_trusted_keys,
)
from installer.state import write_atomic

logger = logging.getLogger(__name__)

DEFAULT_TRUST_STORE = Path("/etc/airlock/trust")
TRUST_STORE_ENV = "AIRLOCK_TRUST_STORE"
INDEX_FILE = "trust.json"
REVOKED_DIR = "revoked"
LOCK_FILE = ".lock"
INDEX_VERSION = 1
# Key names appear in messages and file listings; bundle names follow the
# manifest schema's pattern for `name`.
_KEY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_BUNDLE_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_KEY_ID = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class TrustEntry:
    """One key in the store's index."""

    key_id: str
    name: str
    bundles: tuple[str, ...]
    added_at: str
    revoked_at: str | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "key_id": self.key_id,
            "name": self.name,
            "bundles": list(self.bundles),
            "added_at": self.added_at,
        }
        if self.revoked_at is not None:
            data["revoked_at"] = self.revoked_at
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TrustEntry:
        return cls(
            key_id=str(data["key_id"]),
            name=str(data["name"]),
            bundles=tuple(str(name) for name in data.get("bundles", ())),
            added_at=str(data["added_at"]),
            revoked_at=data.get("revoked_at"),
        )


@dataclass(frozen=True)
class TrustChange:
    """The outcome of `add` or `remove`, for the CLI and the audit log."""

    action: str
    entry: TrustEntry
    previous: TrustEntry | None = None


def resolve_store_path(option: Path | None, environ: Mapping[str, str]) -> Path:
    """Return the trust store folder: `--trust-store`, else $AIRLOCK_TRUST_STORE, else the default."""
    if option is not None:
        return option
    from_env = environ.get(TRUST_STORE_ENV)
    return Path(from_env) if from_env else DEFAULT_TRUST_STORE


def parse_bundle_names(text: str | None) -> tuple[str, ...]:
    """Parse `--bundles NAME,...` into sorted names; empty means any bundle."""
    if not text:
        return ()
    names = sorted({part.strip() for part in text.split(",") if part.strip()})
    for name in names:
        if not _BUNDLE_NAME.match(name):
            raise UsageError(
                f"--bundles: {name!r} is not a bundle name",
                hint="bundle names are lower-case letters, digits, '.', '_' and '-'",
            )
    return tuple(names)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class TrustStore:
    """The trust store folder; every method reads the index from disk afresh."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    @property
    def index_path(self) -> Path:
        return self.folder / INDEX_FILE

    def exists(self) -> bool:
        return self.index_path.is_file()

    def entries(self) -> list[TrustEntry]:
        """Return the trusted keys, then the revoked ones, each sorted by name."""
        active, revoked = self._read_index()
        return sorted(active.values(), key=lambda e: e.name) + sorted(
            revoked.values(), key=lambda e: e.name
        )

    def trusted_keys(self) -> list[TrustedKey]:
        """Load every key in the store, revoked ones marked, for signature checks."""
        active, revoked = self._read_index()
        keys = [self._load(entry, self.folder) for entry in active.values()]
        keys += [self._load(entry, self.folder / REVOKED_DIR) for entry in revoked.values()]
        return keys

    def add(self, key_file: Path, *, name: str | None, bundles: Iterable[str]) -> TrustChange:
        """Trust the public key in `key_file`, or update its name and bundle names."""
        loaded = load_public_key(key_file)
        name = name or loaded.name
        if not _KEY_NAME.match(name):
            raise UsageError(
                f"key name {name!r} is invalid",
                hint="use letters, digits, '.', '_' and '-', at most 64 characters (--name)",
            )
        bundles = tuple(sorted(set(bundles)))
        pem = key_file.read_bytes()

        with self._locked():
            active, revoked = self._read_index()
            for other in active.values():
                if other.name == name and other.key_id != loaded.key_id:
                    raise UsageError(
                        f"a different key named {name} is already trusted ({other.key_id})",
                        hint="choose another --name, or remove that key first",
                    )
            previous = active.get(loaded.key_id) or revoked.pop(loaded.key_id, None)
            if previous is not None and previous.revoked_at is None:
                if previous.name == name and previous.bundles == bundles:
                    return TrustChange("unchanged", previous, previous)
            added_at = previous.added_at if previous and previous.revoked_at is None else _now()
            entry = TrustEntry(loaded.key_id, name, bundles, added_at)
            active[entry.key_id] = entry
            write_atomic(self.folder / f"{entry.key_id}{PUBLIC_KEY_SUFFIX}", pem)
            (self.folder / REVOKED_DIR / f"{entry.key_id}{PUBLIC_KEY_SUFFIX}").unlink(
                missing_ok=True
            )
            self._write_index(active, revoked)

        if previous is None:
            action = "added"
        elif previous.revoked_at is not None:
            action = "restored"
        else:
            action = "updated"
        logger.info("trust store %s: %s key %s", self.folder, action, entry.key_id)
        return TrustChange(action, entry, previous)

    def remove(self, key_id_or_name: str) -> TrustChange:
        """Revoke a trusted key, named by key id (or a unique prefix of 8+ hex digits) or name."""
        with self._locked():
            active, revoked = self._read_index()
            entry = self._find(active, key_id_or_name)
            if entry is None:
                known = self._find(revoked, key_id_or_name)
                if known is not None:
                    raise UsageError(
                        f"key {known.name} ({known.key_id}) was already revoked at {known.revoked_at}"
                    )
                raise UsageError(
                    f"no trusted key has the id or name {key_id_or_name!r} in {self.folder}",
                    hint="list the keys with airlock-install trust list",
                )
            del active[entry.key_id]
            removed = TrustEntry(entry.key_id, entry.name, entry.bundles, entry.added_at, _now())
            revoked[entry.key_id] = removed
            source = self.folder / f"{entry.key_id}{PUBLIC_KEY_SUFFIX}"
            (self.folder / REVOKED_DIR).mkdir(mode=0o755, exist_ok=True)
            if source.exists():
                os.replace(source, self.folder / REVOKED_DIR / source.name)
            self._write_index(active, revoked)
        logger.info("trust store %s: revoked key %s", self.folder, entry.key_id)
        return TrustChange("revoked", removed, entry)

    @staticmethod
    def _find(entries: Mapping[str, TrustEntry], key_id_or_name: str) -> TrustEntry | None:
        wanted = key_id_or_name.strip().lower()
        by_name = [e for e in entries.values() if e.name == key_id_or_name]
        if by_name:
            return by_name[0]
        if len(wanted) >= 8 and all(c in "0123456789abcdef" for c in wanted):
            matches = [e for e in entries.values() if e.key_id.startswith(wanted)]
            if len(matches) > 1:
                raise UsageError(
                    f"key id prefix {wanted} matches {len(matches)} keys",
                    hint="give more digits of the key id",
                )
            if matches:
                return matches[0]
        return None

    def _load(self, entry: TrustEntry, folder: Path) -> TrustedKey:
        path = folder / f"{entry.key_id}{PUBLIC_KEY_SUFFIX}"
        if not path.is_file():
            raise UsageError(
                f"trust store {self.folder} lists key {entry.name} ({entry.key_id}), but {path} is missing",
                hint="add the key again with airlock-install trust add KEYFILE",
            )
        loaded = load_public_key(path)
        if loaded.key_id != entry.key_id:
            raise UsageError(
                f"trust store file {path} contains key {loaded.key_id}, not {entry.key_id}",
                hint="the store was edited by hand; add the key again with airlock-install trust add KEYFILE",
            )
        return TrustedKey(
            entry.key_id,
            entry.name,
            loaded.public_key,
            path,
            bundles=entry.bundles,
            revoked_at=entry.revoked_at,
        )

    def _read_index(self) -> tuple[dict[str, TrustEntry], dict[str, TrustEntry]]:
        try:
            data = json.loads(self.index_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}, {}
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise UsageError(
                f"trust store index {self.index_path} is unreadable: {err}",
                hint="restore it from a backup, or re-create the store with airlock-install trust add",
            ) from err
        try:
            if data.get("version") != INDEX_VERSION:
                raise ValueError(f"version {data.get('version')!r}, expected {INDEX_VERSION}")
            active = [TrustEntry.from_json(item) for item in data["keys"]]
            revoked = [TrustEntry.from_json(item) for item in data.get("revoked", [])]
            for entry in active + revoked:
                if not _KEY_ID.match(entry.key_id):
                    raise ValueError(f"key id {entry.key_id!r} is not 64 hex digits")
        except (AttributeError, KeyError, TypeError, ValueError) as err:
            raise UsageError(
                f"trust store index {self.index_path} is invalid: {err}",
                hint="restore it from a backup, or re-create the store with airlock-install trust add",
            ) from err
        return {e.key_id: e for e in active}, {e.key_id: e for e in revoked}

    def _write_index(
        self, active: Mapping[str, TrustEntry], revoked: Mapping[str, TrustEntry]
    ) -> None:
        data = {
            "version": INDEX_VERSION,
            "keys": [e.to_json() for e in sorted(active.values(), key=lambda e: e.key_id)],
            "revoked": [e.to_json() for e in sorted(revoked.values(), key=lambda e: e.key_id)],
        }
        text = json.dumps(data, indent=2, sort_keys=True) + "\n"
        write_atomic(self.index_path, text.encode("utf-8"))

    @contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            self.folder.mkdir(mode=0o755, parents=True, exist_ok=True)
            fd = os.open(self.folder / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as err:
            raise UsageError(
                f"cannot write trust store {self.folder}: {err.strerror}",
                hint="run as root, or pass --trust-store DIR",
            ) from err
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


def load_keys(
    *,
    key_files: Iterable[Path] = (),
    trust_dirs: Iterable[Path] = (),
    store: TrustStore,
) -> list[TrustedKey]:
    """Return the keys one run trusts: explicit `--key`/`--trust` files, else the store.

    Explicit keys replace the store for that run and may sign any bundle.
    """
    key_files, trust_dirs = list(key_files), list(trust_dirs)
    if key_files or trust_dirs:
        return load_trusted_keys(key_files, trust_dirs)
    keys = store.trusted_keys()
    if not any(key.revoked_at is None for key in keys):
        raise UsageError(
            f"no trusted public key: the trust store {store.folder} is empty",
            hint=(
                "add the publisher's key with airlock-install trust add KEYFILE, "
                "or pass --key PUBFILE for this run"
            ),
        )
    return keys
