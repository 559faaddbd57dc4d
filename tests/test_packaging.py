"""The wheel carries the JSON Schemas, because the installer validates with them inside the enclave."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_wheel_ships_schemas_and_entry_points(tmp_path: Path) -> None:
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--wheel-dir",
            str(tmp_path),
            str(REPO),
        ],
        capture_output=True,
        stdin=subprocess.DEVNULL,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr.decode() + built.stdout.decode()
    (wheel,) = tmp_path.glob("airlock-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(n for n in names if n.endswith("entry_points.txt"))
        scripts = archive.read(entry_points).decode()
    for schema in (
        "manifest.schema.json",
        "bundle-spec.schema.json",
        "installer-state.schema.json",
    ):
        assert f"schemas/{schema}" in names
    assert "installer/py.typed" in names
    assert "airlock-install = installer.cli:main" in scripts
    assert "airlock-bundle = bundler.cli:main" in scripts
