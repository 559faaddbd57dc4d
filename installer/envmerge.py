"""Merge a bundle's `.env` values into the target's `.env` without losing the operator's."""

from __future__ import annotations

import secrets
import string
from dataclasses import dataclass, field

from installer import dotenv
from installer.manifest import Manifest

SECRET_ALPHABET = string.ascii_letters + string.digits
PROJECT_NAME_KEY = "COMPOSE_PROJECT_NAME"


@dataclass
class EnvChange:
    """What an install does to `.env`, by key only: values may be secrets."""

    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    generated: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    normalised: bool = False


def generate_secret(length: int) -> str:
    """Return a random value of letters and digits, safe unquoted in `.env` and URLs."""
    return "".join(secrets.choice(SECRET_ALPHABET) for _ in range(length))


def merge_env(existing_text: str, manifest: Manifest) -> tuple[str, EnvChange]:
    """Merge the bundle's `.env` values into the target's file.

    Values the operator set and secrets generated earlier are kept; keys
    the bundle sets are updated; secrets absent from the file are generated.
    """
    document = dotenv.DotenvFile.from_text(existing_text)
    present = set(document.keys())
    change = EnvChange()

    for key, value in sorted(manifest.env_set.items()):
        if key not in present:
            document.set(key, value)
            change.added.append(key)
        elif document.values().get(key) != value:
            document.set(key, value)
            change.changed.append(key)
    for secret in manifest.env_generate:
        if secret.name in present:
            change.kept.append(secret.name)
            continue
        document.set(secret.name, generate_secret(secret.length))
        change.generated.append(secret.name)
    if PROJECT_NAME_KEY not in present:
        document.set(PROJECT_NAME_KEY, manifest.project_name)
        change.added.append(PROJECT_NAME_KEY)

    text = document.to_text()
    change.normalised = document.normalised
    return text, change
