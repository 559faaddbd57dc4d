"""airlock-bundle: build a signed bundle of a Compose application on the connected side."""

from installer import __version__

__all__ = ["__version__"]
