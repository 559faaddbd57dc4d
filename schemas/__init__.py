"""JSON Schemas shared by the bundler and the installer, shipped as package data."""

import json
from functools import cache
from importlib import resources
from typing import Any

BUNDLE_SPEC = "bundle-spec.schema.json"
MANIFEST = "manifest.schema.json"
INSTALLER_STATE = "installer-state.schema.json"


@cache
def load(name: str) -> dict[str, Any]:
    """Load one schema by file name from this package."""
    text = resources.files(__name__).joinpath(name).read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema
