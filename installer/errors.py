"""The exception tree shared by both programs.

Two branches matter to scripts, and each has its own exit code:
`BundleRejectedError` for a bundle that must not be used (bad signature,
digest, schema, unsafe member, downgrade) and `EnvironmentNotReadyError`
for a host that cannot take the install (no Docker engine, no Compose,
registry unreachable, no disk space). Everything else is `AirlockError`.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_BUNDLE_REJECTED = 3
EXIT_ENVIRONMENT = 4


class AirlockError(Exception):
    """Base of every error airlock raises on purpose.

    `hint` is the next step for the user; the CLI prints it after the message.
    """

    exit_code = EXIT_FAILURE

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}; {self.hint}"
        return self.message


class UsageError(AirlockError):
    """The command line or a spec file requests something invalid."""

    exit_code = EXIT_USAGE


class SpecError(AirlockError):
    """A bundle spec is invalid or names inputs that cannot be used."""


class InterpolationError(AirlockError):
    """A `${...}` expression is malformed or a required variable is missing."""


class DotenvError(AirlockError):
    """A `.env` file cannot be parsed the way Compose parses it."""


class InvalidReferenceError(AirlockError):
    """An image reference breaks Docker's reference grammar."""


class RegistryError(AirlockError):
    """A registry on the connected side failed, or an image is missing there."""


class ComposeError(AirlockError):
    """A compose file cannot be carried or started."""


class InstallError(AirlockError):
    """An install step failed after verification passed."""


class NotInstalledError(AirlockError):
    """A command needs an installed release and the target has none."""

    def __init__(self, target: object) -> None:
        super().__init__(
            f"nothing is installed in {target}",
            hint="check the --target folder, or install a bundle there with airlock-install install",
        )


class HealthCheckError(InstallError):
    """Services did not become healthy within the timeout."""


# Bundle rejected: the archive must not be used.


class BundleRejectedError(AirlockError):
    """The bundle failed a check and nothing from it was used."""

    exit_code = EXIT_BUNDLE_REJECTED


class SignatureError(BundleRejectedError):
    """No trusted key signed the manifest, or a signature is invalid."""


class DigestMismatchError(BundleRejectedError):
    """A member's bytes differ from the size or sha256 the manifest records."""


class ManifestError(BundleRejectedError):
    """The manifest is not valid JSON or breaks the manifest schema."""


class UnsafeMemberError(BundleRejectedError):
    """A tar member is not a plain file at a safe relative path, or is unexpected."""


class DowngradeError(BundleRejectedError):
    """The bundle's release sequence is older than the one installed."""


# Environment not ready: the host cannot take the install as it is.


class EnvironmentNotReadyError(AirlockError):
    """The host lacks something the install needs."""

    exit_code = EXIT_ENVIRONMENT


class DockerUnavailableError(EnvironmentNotReadyError):
    """The Docker engine does not respond."""


class ComposeUnavailableError(EnvironmentNotReadyError):
    """Neither `docker compose` (v2) nor `docker-compose` (v1) is installed."""


class RegistryUnavailableError(EnvironmentNotReadyError):
    """The enclave registry does not respond."""


class DiskSpaceError(EnvironmentNotReadyError):
    """Not enough free space for what the install writes."""
