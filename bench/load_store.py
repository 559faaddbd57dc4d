"""Stream a staged image store into `docker load`, as `airlock-install install` does.

Runs as its own process so the benchmark can measure its peak memory alone:

    python bench/load_store.py JOB.json

JOB.json contains `store` (the staged `images/` folder), `names` (the store's
files in manifest order) and `expected_ids` (image ids that must be present
afterwards).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from installer import engine
from installer._cli_common import configure_logging
from installer._tarstream import iter_tar, tar_size
from installer.progress import make_reporter


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "job", type=Path, help="JSON file naming the store, its files and image ids"
    )
    options = parser.parse_args(argv)

    # The same logging and progress output as `airlock-install install`.
    configure_logging(verbose=0, quiet=False)
    job = json.loads(options.job.read_text())
    store = Path(job["store"])
    names = list(job["names"])
    client = engine.connect()
    engine.load_images(
        client,
        iter_tar(store, names),
        expected_ids=job["expected_ids"],
        progress=make_reporter(),
        total=tar_size(store, names),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
