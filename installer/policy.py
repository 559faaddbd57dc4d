"""Which bundles may replace what is installed: name, sequence and replay checks."""

from __future__ import annotations

from installer.archive import VerifiedBundle
from installer.errors import DowngradeError
from installer.state import InstallState


def check_release(state: InstallState | None, verified: VerifiedBundle, allow: bool) -> bool:
    """Refuse an older release; return True when this exact release is installed."""
    manifest = verified.manifest
    if state is None:
        return False
    if state.name != manifest.name:
        raise DowngradeError(
            f"target holds bundle {state.name}, this bundle is {manifest.name}",
            hint="install it into its own target folder",
        )
    current = state.current
    if manifest.sequence < state.highest_sequence and not allow:
        raise DowngradeError(
            f"bundle sequence {manifest.sequence} ({manifest.version}) < installed "
            f"{state.highest_sequence}; downgrade not allowed",
            hint="use a newer bundle, or pass --allow-downgrade to roll back on purpose",
        )
    if (
        manifest.sequence == current.sequence
        and verified.manifest_digest != current.manifest_digest
    ):
        if not allow:
            raise DowngradeError(
                f"bundle sequence {manifest.sequence} is installed with manifest "
                f"{current.manifest_digest}, this bundle has {verified.manifest_digest}",
                hint="two different bundles share a sequence number; ask the publisher which is genuine",
            )
    return verified.manifest_digest == current.manifest_digest
