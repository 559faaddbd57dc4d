"""Sources of the values a compose project interpolates.

`airlock-bundle build` logs one line per variable, and `airlock-install
plan` can list the same. A value is shown only when it cannot be a secret:
a value the spec sets, or a default written in a compose file. Generated
secrets, variables the operator must provide and values already in the
operator's `.env` are named, never shown.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from installer import compose
from installer.manifest import Manifest

__all__ = [
    "COMPOSE_DEFAULT",
    "GENERATED",
    "OPERATOR_DOTENV",
    "OPERATOR_REQUIRED",
    "SPEC_SET",
    "UNSET",
    "VariableSource",
    "describe_manifest_sources",
    "describe_sources",
]

SPEC_SET = "spec env.set"
GENERATED = "generated secret"
OPERATOR_REQUIRED = "operator-provided (required)"
OPERATOR_DOTENV = "operator's .env"
COMPOSE_DEFAULT = "compose file default"
UNSET = "unset (empty string)"


@dataclass(frozen=True)
class VariableSource:
    """The source of one variable's value and where the compose files use it."""

    name: str
    # One of the module's source constants, e.g. SPEC_SET.
    source: str
    # The value when it is safe to show (spec-set values, compose defaults), else None.
    shown_value: str | None
    # Each use as `file: key.path`, in document order.
    locations: tuple[str, ...]

    def describe(self) -> str:
        """Format as `NAME: source = "value" (first location and N more)`."""
        value = "" if self.shown_value is None else f' = "{self.shown_value}"'
        where = ""
        if self.locations:
            more = len(self.locations) - 1
            where = f" ({self.locations[0]}" + (f" and {more} more" if more else "") + ")"
        return f"{self.name}: {self.source}{value}{where}"


def describe_sources(
    uses: Sequence[compose.VariableUse],
    *,
    env_set: Mapping[str, str],
    generated: Iterable[str],
    required: Iterable[str] = (),
    dotenv_values: Mapping[str, str] | None = None,
) -> list[VariableSource]:
    """Name the source of every variable in `uses`, sorted by name.

    The first source that applies wins, in this order: the spec's
    `env.set`, a generated secret, the operator's `.env` (`dotenv_values`,
    when given), a required variable the operator must provide, a default
    written in the compose file, and otherwise unset.
    """
    generated_names = set(generated)
    required_names = set(required)
    dotenv_names = set(dotenv_values or {})

    by_name: dict[str, list[compose.VariableUse]] = {}
    for use in uses:
        by_name.setdefault(use.name, []).append(use)

    sources = []
    for name in sorted(by_name):
        name_uses = by_name[name]
        locations = tuple(
            dict.fromkeys(
                f"{use.source}: {use.key_path}" if use.source else use.key_path for use in name_uses
            )
        )
        default = next((use.default for use in name_uses if use.has_default), None)
        if name in env_set:
            source, shown = SPEC_SET, env_set[name]
        elif name in generated_names:
            source, shown = GENERATED, None
        elif name in dotenv_names:
            source, shown = OPERATOR_DOTENV, None
        elif name in required_names or any(use.required for use in name_uses):
            source, shown = OPERATOR_REQUIRED, None
        elif default is not None:
            source, shown = COMPOSE_DEFAULT, default
        else:
            source, shown = UNSET, None
        sources.append(VariableSource(name, source, shown, locations))
    return sources


def describe_manifest_sources(
    manifest: Manifest,
    compose_files: Sequence[Path],
    dotenv_values: Mapping[str, str] | None = None,
) -> list[VariableSource]:
    """Name the source of every variable in `compose_files` for a verified bundle.

    `compose_files` are the staged or installed copies of every compose
    file the project loads; `dotenv_values` is the target's current `.env`.
    """
    uses: list[compose.VariableUse] = []
    for path in compose_files:
        uses.extend(compose.variable_uses(compose.read_document(path), source=path.name))
    return describe_sources(
        uses,
        env_set=manifest.env_set,
        generated=[secret.name for secret in manifest.env_generate],
        required=manifest.env_required,
        dotenv_values=dotenv_values,
    )
