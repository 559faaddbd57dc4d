"""airlock-install: verify a bundle and install its Compose application inside the enclave.

This package holds everything both sides of the air gap must agree on (the
manifest model, canonical serialisation, signature verification, Compose
interpolation, `.env` parsing, image references), so it never imports the
bundler.
"""

__version__ = "0.1.0"
