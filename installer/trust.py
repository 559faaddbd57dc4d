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

A bundle may carry a trust update, `airlock/trust-update.json`, listed
in its manifest like any member and so signed with it:

    {"version": 1,
     "add": [{"name": "release-2027", "public_key": "-----BEGIN PUBLIC KEY-----...",
              "bundles": ["authentik"]}],
     "revoke": ["<key id>"]}

It is applied after the bundle installs, and only when keys already in
this store signed the bundle (as many as the install's threshold). That is
how a key is rotated on every host: a transition release signed with the
old key adds the new one, and a later one revokes the old key.

An update grants or removes only bundle names its signers may sign. The
signers that count are store keys allowed to sign the carrying bundle's
name. Each key the update adds, changes or revokes needs `threshold` of
them whose own bundle names cover that key's. So a signer for any bundle
may add or revoke any key, and a signer for `trialapp` only keys limited
to `trialapp`. A revoked key never returns through an update, only
through `trust add`.
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

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from installer.errors import BundleRejectedError, UsageError
from installer.signing import (
    PUBLIC_KEY_SUFFIX,
    TrustedKey,
    key_id,
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
TRUST_UPDATE_PATH = "airlock/trust-update.json"
TRUST_UPDATE_VERSION = 1
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


class TrustUpdateError(BundleRejectedError):
    """A bundle's trust update is malformed or not signed by a key this store trusts."""


class TrustUpdateScopeError(TrustUpdateError):
    """A trust update changes a key beyond the bundle names its signers may sign."""


class RevokedKeyInUpdateError(TrustUpdateError):
    """A trust update adds a key this store revoked, which only `trust add` may restore."""


@dataclass(frozen=True)
class KeyToAdd:
    """A public key a trust update adds, as PEM text with its key id."""

    key_id: str
    name: str
    bundles: tuple[str, ...]
    pem: bytes


@dataclass(frozen=True)
class TrustUpdate:
    """The keys a bundle's trust update adds and the key ids it revokes."""

    add: tuple[KeyToAdd, ...]
    revoke: tuple[str, ...]


def _update_error(problem: str) -> TrustUpdateError:
    return TrustUpdateError(
        f"trust update {TRUST_UPDATE_PATH} is invalid: {problem}",
        hint="the publisher must rebuild the bundle with a valid trust update",
    )


def _parse_key_to_add(item: Any, position: int) -> KeyToAdd:
    where = f"add[{position}]"
    if not isinstance(item, dict) or not isinstance(item.get("public_key"), str):
        raise _update_error(f"{where} needs a public_key (PEM text)")
    name = item.get("name")
    if not isinstance(name, str) or not _KEY_NAME.match(name):
        raise _update_error(f"{where}.name {name!r} is not a key name")
    bundles = item.get("bundles", [])
    if not isinstance(bundles, list) or not all(
        isinstance(b, str) and _BUNDLE_NAME.match(b) for b in bundles
    ):
        raise _update_error(f"{where}.bundles must be a list of bundle names")
    pem = item["public_key"].encode("ascii", "replace")
    try:
        public_key = serialization.load_pem_public_key(pem)
    except ValueError as err:
        raise _update_error(f"{where}.public_key is not a PEM public key") from err
    if not isinstance(public_key, Ed25519PublicKey):
        raise _update_error(f"{where}.public_key is a {type(public_key).__name__}, not Ed25519")
    return KeyToAdd(key_id(public_key), name, tuple(sorted(set(bundles))), pem)


def parse_trust_update(raw: bytes) -> TrustUpdate:
    """Parse and check a trust update's bytes, whose digest the signed manifest covers."""
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise _update_error(f"not UTF-8 JSON ({err})") from err
    if not isinstance(data, dict) or data.get("version") != TRUST_UPDATE_VERSION:
        raise _update_error(f"expected a JSON object with version {TRUST_UPDATE_VERSION}")
    unknown = sorted(set(data) - {"version", "add", "revoke"})
    if unknown:
        raise _update_error(f"unknown fields {', '.join(unknown)}")
    adds = data.get("add", [])
    revokes = data.get("revoke", [])
    if not isinstance(adds, list) or not isinstance(revokes, list):
        raise _update_error("add and revoke must be lists")
    add = tuple(_parse_key_to_add(item, i) for i, item in enumerate(adds))
    for item in revokes:
        if not isinstance(item, str) or not _KEY_ID.match(item):
            raise _update_error(f"revoke entry {item!r} is not a 64-digit hex key id")
    if not add and not revokes:
        raise _update_error("it neither adds nor revokes a key")
    overlap = {key.key_id for key in add} & set(revokes)
    if overlap:
        raise _update_error(f"it both adds and revokes {', '.join(sorted(overlap))}")
    return TrustUpdate(add, tuple(sorted(set(revokes))))


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
        for entry in revoked.values():
            moved = self.folder / REVOKED_DIR / f"{entry.key_id}{PUBLIC_KEY_SUFFIX}"
            keys.append(self._load(entry, moved.parent if moved.exists() else self.folder))
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

    def authorize_update(
        self,
        update: TrustUpdate,
        signer_ids: Iterable[str],
        *,
        bundle_name: str,
        threshold: int = 1,
    ) -> None:
        """Raise unless the bundle's signers may make every change in `update`.

        Reads the store afresh and changes nothing, so the install runs it
        before touching the host. `apply_update` runs it again under the lock.
        """
        active, revoked = self._read_index()
        _authorize(update, active, revoked, signer_ids, bundle_name, threshold, self.folder)

    def apply_update(
        self,
        update: TrustUpdate,
        signer_ids: Iterable[str],
        *,
        bundle_name: str,
        threshold: int = 1,
    ) -> list[TrustChange]:
        """Add and revoke the update's keys under one lock, replacing the index once.

        The authorization `authorize_update` does is repeated under the lock,
        so a key revoked since the install began is not added back. New key
        files are written before the index and revoked ones moved after it,
        so a crash in between leaves only files the index does not trust.
        """
        changes: list[TrustChange] = []
        with self._locked():
            active, revoked = self._read_index()
            _authorize(update, active, revoked, signer_ids, bundle_name, threshold, self.folder)
            now = _now()
            for key in update.add:
                previous = active.get(key.key_id)
                entry = TrustEntry(key.key_id, key.name, key.bundles, now)
                write_atomic(self.folder / f"{key.key_id}{PUBLIC_KEY_SUFFIX}", key.pem)
                active[key.key_id] = entry
                changes.append(
                    TrustChange("added" if previous is None else "updated", entry, previous)
                )
            for revoked_id in update.revoke:
                current = active.pop(revoked_id, None)
                if current is None:
                    continue
                removed = TrustEntry(
                    current.key_id, current.name, current.bundles, current.added_at, now
                )
                revoked[revoked_id] = removed
                changes.append(TrustChange("revoked", removed, current))
            self._write_index(active, revoked)
            (self.folder / REVOKED_DIR).mkdir(mode=0o755, exist_ok=True)
            for change in changes:
                if change.action == "revoked":
                    source = self.folder / f"{change.entry.key_id}{PUBLIC_KEY_SUFFIX}"
                    if source.exists():
                        os.replace(source, self.folder / REVOKED_DIR / source.name)
        for change in changes:
            logger.info(
                "trust store %s: %s key %s from a bundle's trust update",
                self.folder,
                change.action,
                change.entry.key_id,
            )
        return changes

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


def _may_sign(entry: TrustEntry, bundle_name: str) -> bool:
    return not entry.bundles or bundle_name in entry.bundles


def _covers(signer_bundles: tuple[str, ...], requested: tuple[str, ...]) -> bool:
    """Return True when a signer for `signer_bundles` may grant or remove a key for `requested`.

    An empty tuple means any bundle on both sides.
    """
    if not signer_bundles:
        return True
    return bool(requested) and set(requested) <= set(signer_bundles)


def _scope(bundles: tuple[str, ...]) -> str:
    return f"bundles {', '.join(bundles)}" if bundles else "any bundle"


def _authorize(
    update: TrustUpdate,
    active: Mapping[str, TrustEntry],
    revoked: Mapping[str, TrustEntry],
    signer_ids: Iterable[str],
    bundle_name: str,
    threshold: int,
    folder: Path,
) -> None:
    """Raise unless `threshold` signers allowed for `bundle_name` may make each change in `update`.

    The signers' bundle names come from this store's index, not from the
    keys a run verified with, because the store decides what its keys hold.
    """
    required = max(threshold, 1)
    counted = _counted_signers(update, active, signer_ids, bundle_name, required, folder)
    for key in update.add:
        revoked_entry = revoked.get(key.key_id)
        if revoked_entry is not None:
            raise RevokedKeyInUpdateError(
                f"trust update adds key {key.name} ({key.key_id}), which this trust store "
                f"revoked at {revoked_entry.revoked_at}",
                hint=(
                    "a revoked key does not return through a bundle; an operator may restore "
                    "it with airlock-install trust add KEYFILE, or the publisher may rebuild "
                    f"the bundle without it in {TRUST_UPDATE_PATH}"
                ),
            )
        _check_scope(
            f"adds key {key.name} ({key.key_id}) for {_scope(key.bundles)}",
            key.bundles,
            key.key_id,
            counted,
            required,
        )
        current = active.get(key.key_id)
        if current is not None and current.bundles != key.bundles:
            # Changing a trusted key's bundle names removes its old scope, so
            # the signers must hold that too.
            _check_scope(
                f"changes key {current.name} ({key.key_id}) from {_scope(current.bundles)} "
                f"to {_scope(key.bundles)}",
                current.bundles,
                key.key_id,
                counted,
                required,
            )
    for revoked_id in update.revoke:
        current = active.get(revoked_id)
        if current is None:
            # Already revoked or never trusted: applying it changes nothing.
            continue
        _check_scope(
            f"revokes key {current.name} ({revoked_id}), which may sign {_scope(current.bundles)}",
            current.bundles,
            revoked_id,
            counted,
            required,
        )


def _counted_signers(
    update: TrustUpdate,
    active: Mapping[str, TrustEntry],
    signer_ids: Iterable[str],
    bundle_name: str,
    required: int,
    folder: Path,
) -> list[TrustEntry]:
    """Return the signers' store entries that may sign `bundle_name`, or raise below `required`."""
    in_store = sorted(
        (active[key_id] for key_id in set(signer_ids) if key_id in active), key=lambda e: e.name
    )
    if len(in_store) < required:
        raise TrustUpdateError(
            f"bundle carries a trust update ({_describe_update(update)}) but is signed by "
            f"{len(in_store)} keys of the trust store {folder}, {required} required",
            hint=(
                "a trust update must be signed by keys this host already trusts; "
                "install with those keys in the trust store rather than only --key or --trust"
            ),
        )
    counted = [entry for entry in in_store if _may_sign(entry, bundle_name)]
    if len(counted) < required:
        raise TrustUpdateScopeError(
            f"bundle {bundle_name} carries a trust update ({_describe_update(update)}) but is "
            f"signed by {len(counted)} keys of the trust store {folder} allowed to sign "
            f"{bundle_name}, {required} required",
            hint=f"a trust update must be signed by keys this host trusts for {bundle_name}",
        )
    return counted


def _check_scope(
    change: str,
    requested: tuple[str, ...],
    key_id: str,
    counted: list[TrustEntry],
    required: int,
) -> None:
    """Raise unless `required` of the `counted` signers may sign every bundle name in `requested`.

    `change` describes the change for the message, for example
    "adds key new (<key id>) for any bundle".
    """
    holders = [entry for entry in counted if _covers(entry.bundles, requested)]
    if len(holders) >= required:
        return
    signers = "; ".join(
        f"{entry.name} ({entry.key_id}) may sign "
        + (f"only {', '.join(entry.bundles)}" if entry.bundles else "any bundle")
        for entry in counted
    )
    if holders:
        beyond = f"which only {len(holders)} of its signers may grant, {required} required"
    else:
        beyond = "beyond what its signers may sign"
    raise TrustUpdateScopeError(
        f"trust update {change}, {beyond}: {signers}",
        hint=(
            "an update may grant or remove only the bundle names its signers may sign; "
            f"ask the publisher for one signed by keys trusted for {_scope(requested)}, "
            f"or change key {key_id} with airlock-install trust add or trust remove"
        ),
    )


def _describe_update(update: TrustUpdate) -> str:
    parts = [f"adds {key.name} ({key.key_id})" for key in update.add]
    parts += [f"revokes {revoked_id}" for revoked_id in update.revoke]
    return ", ".join(parts)


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
