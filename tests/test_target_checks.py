"""The target folder's own safety: a linked .env, a folder others can write."""

from __future__ import annotations

import os
from pathlib import Path

from installer.ownership import check_target_folder
from installer.preflight import ERROR, WARNING


def test_symlinked_env_is_an_error(tmp_path: Path) -> None:
    real = tmp_path / "shared.env"
    real.write_text("A=1\n")
    target = tmp_path / "target"
    target.mkdir(mode=0o755)
    os.chmod(target, 0o755)
    (target / ".env").symlink_to(real)
    findings = check_target_folder(target)
    assert [(f.level, f.message) for f in findings] == [
        (
            ERROR,
            f"{target / '.env'} is a symbolic link to {real}; the installer replaces .env "
            "atomically, which would turn the link into a regular file",
        )
    ]


def test_world_writable_target_is_a_warning(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.mkdir()
    os.chmod(target, 0o777)
    findings = check_target_folder(target)
    assert [(f.level, f.hint) for f in findings] == [(WARNING, f"chmod go-w {target}")]
    assert "mode 0777" in findings[0].message


def test_private_target_passes(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.mkdir()
    os.chmod(target, 0o750)
    (target / ".env").write_text("A=1\n")
    assert check_target_folder(target) == []


def test_missing_target_passes(tmp_path: Path) -> None:
    assert check_target_folder(tmp_path / "absent") == []
