"""Measure airlock's pull, verify and load against named peers, in one run.

    python bench/run.py [--size 1GiB] [--layers 4] [--repeat 3] [--experimental]

Steps, each measured as a child process (wall time, MB/s, peak RSS):

1. Push a synthetic image of incompressible gzip layers to the local
   registry under a throwaway repository.
2. Pull: `airlock-bundle build` of a spec naming that image (through
   `--mirror`) against `skopeo copy` to `docker-archive:` and to `oci:`.
3. Verify: `airlock-install verify` of the bundle against `sha256sum` and
   `openssl dgst -sha256` over the same file.
4. Load: the installer's streaming `docker load` of the staged image store
   against `docker load -i` of a `docker save` tarball of the same image
   and of a plain tar of the same store.
5. Check the progress output on a pseudo-terminal and on a pipe.

It writes `bench/results.json` and the generated part of
`docs/benchmarks.md`, then deletes the image from the registry and the engine.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors
import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))

import progress_check  # noqa: E402
import report  # noqa: E402
import synthetic  # noqa: E402
from measure import GNU_TIME, Measurement, run_measured  # noqa: E402

from installer.archive import read_bundle  # noqa: E402
from installer.signing import load_trusted_keys  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
BENCH_DIR = REPO / "bench"
DEFAULT_REGISTRY = "127.0.0.1:5000"
# Image references in the spec name this registry; `--mirror` sends them to the local one.
SOURCE_REGISTRY = "bench.airlock.invalid"

_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([KMGT]?i?B?)?$", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}


def parse_size(text: str) -> int:
    """Parse `512MiB`, `1GiB`, `2G` or a plain byte count into bytes."""
    match = _SIZE.match(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"invalid size {text!r}; use e.g. 512MiB or 1GiB")
    number, unit = float(match.group(1)), (match.group(2) or "").upper()
    prefix = unit[:1] if unit[:1] in "KMGT" else ""
    factor = 1024 ** ("KMGT".index(prefix) + 1) if prefix and "I" in unit else _UNITS[prefix]
    return int(number * factor)


@dataclass
class Comparison:
    """One measure: airlock's figure and its peer's, from the same run."""

    step: str
    peer_name: str
    airlock: Measurement
    peer: Measurement


@dataclass
class Run:
    """Everything one benchmark run measured, for the JSON file and the Markdown table."""

    options: dict[str, Any]
    image: dict[str, Any]
    comparisons: list[Comparison] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


def best(measurements: Sequence[Measurement]) -> Measurement:
    """Return the fastest of repeated measurements, with the largest peak RSS seen."""
    fastest = min(measurements, key=lambda m: m.seconds)
    peak = max(m.peak_rss_bytes for m in measurements)
    return Measurement(fastest.command, fastest.seconds, peak, fastest.payload_bytes)


def repeat(
    times: int, run: Callable[[], Measurement], before: Callable[[], None] | None = None
) -> Measurement:
    """Call `before()` then `run()` `times` times and return the best measurement."""
    results = []
    for _ in range(times):
        if before is not None:
            before()
        results.append(run())
    return best(results)


def airlock_command(name: str, experimental: bool) -> list[str]:
    """Return the argv prefix that runs airlock command `name`, patched when asked.

    The commands run as `python -m`, so PYTHONPATH picks the airlock tree
    under test the same way for the commands and for this script.
    """
    if experimental:
        return [sys.executable, str(BENCH_DIR / "experimental.py"), name]
    module = {"airlock-bundle": "bundler.cli", "airlock-install": "installer.cli"}[name]
    return [sys.executable, "-m", module]


def write_spec(folder: Path, image: synthetic.SyntheticImage) -> Path:
    """Write a compose file and a bundle spec with one service using `image`."""
    reference = f"{SOURCE_REGISTRY}/{image.repository}:{image.tag}"
    (folder / "compose.yml").write_text(f"services:\n  bench:\n    image: {reference}\n")
    spec = folder / "bundle.yaml"
    spec.write_text(
        "name: airlock-bench\nversion: '1'\nsequence: 1\nplatform: linux/amd64\n"
        "compose:\n  files: [compose.yml]\n"
    )
    return spec


def measure_pull(
    run: Run, work: Path, image: synthetic.SyntheticImage, times: int, experimental: bool
) -> tuple[Path, Path]:
    """Compare `airlock-bundle build` with `skopeo copy` to docker-archive and OCI layouts."""
    keys = work / "keys"
    subprocess.run(
        [
            *airlock_command("airlock-bundle", False),
            "keygen",
            "--out",
            str(keys),
            "--name",
            "bench",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    spec = write_spec(work, image)
    bundle = work / "bench.airlock"
    source = f"docker://{image.registry}/{image.repository}:{image.tag}"
    archive = work / "skopeo-archive.tar"
    layout = work / "skopeo-oci"

    airlock = repeat(
        times,
        lambda: run_measured(
            [
                *airlock_command("airlock-bundle", experimental),
                "build",
                str(spec),
                "--key",
                str(keys / "bench.key"),
                "--output",
                str(bundle),
                "--mirror",
                f"{SOURCE_REGISTRY}={image.registry}",
            ],
            payload_bytes=image.layer_bytes,
            label="airlock-bundle build",
        ),
        before=lambda: bundle.unlink(missing_ok=True),
    )
    for peer_name, destination, target in (
        ("skopeo copy docker-archive:", f"docker-archive:{archive}:bench:1", archive),
        ("skopeo copy oci:", f"oci:{layout}:bench", layout),
    ):
        peer = repeat(
            times,
            functools.partial(
                run_measured,
                ["skopeo", "copy", "--quiet", "--src-tls-verify=false", source, destination],
                payload_bytes=image.layer_bytes,
                label=peer_name,
            ),
            before=functools.partial(_remove, target),
        )
        run.comparisons.append(Comparison("pull", peer_name, airlock, peer))
    _remove(archive)
    _remove(layout)
    return bundle, keys / "bench.pub"


def measure_verify(
    run: Run, bundle: Path, public_key: Path, times: int, experimental: bool
) -> None:
    """Compare `airlock-install verify` with sha256sum and openssl over the bundle file."""
    size = bundle.stat().st_size
    airlock = repeat(
        times,
        lambda: run_measured(
            [
                *airlock_command("airlock-install", experimental),
                "verify",
                str(bundle),
                "--key",
                str(public_key),
            ],
            payload_bytes=size,
            label="airlock-install verify",
        ),
    )
    for peer_name, argv in (
        ("sha256sum", ["sha256sum", str(bundle)]),
        ("openssl dgst -sha256", ["openssl", "dgst", "-sha256", str(bundle)]),
    ):
        peer = repeat(
            times,
            functools.partial(run_measured, argv, payload_bytes=size, label=peer_name),
        )
        run.comparisons.append(Comparison("verify", peer_name, airlock, peer))


def stage_store(
    bundle: Path, public_key: Path, work: Path
) -> tuple[Path, list[str], list[str], list[str]]:
    """Verify and stage the bundle as `install` does; return the store, its files, ids and tags."""
    staging = work / "staged"
    _remove(staging)
    trusted = load_trusted_keys((public_key,), ())
    with bundle.open("rb") as stream:
        verified = read_bundle(stream, trusted, stage_to=staging)
    prefix = "images/"
    names = [m.path[len(prefix) :] for m in verified.manifest.members if m.path.startswith(prefix)]
    ids = [image.image_id for image in verified.manifest.images]
    tags = [image.load_tag for image in verified.manifest.images]
    return staging / "images", names, ids, tags


def measure_load(
    run: Run,
    work: Path,
    bundle: Path,
    public_key: Path,
    image: synthetic.SyntheticImage,
    times: int,
) -> None:
    """Compare the installer's streaming load with `docker load -i` of a `docker save` tarball."""
    client = docker.from_env()
    store, names, ids, tags = stage_store(bundle, public_key, work)
    job = work / "load-job.json"
    job.write_text(json.dumps({"store": str(store), "names": names, "expected_ids": ids}))
    store_bytes = sum((store / name).stat().st_size for name in names)

    def remove_image() -> None:
        _remove_image(client, image.image_id)

    # No patch in experimental.py touches the load path, so both variants run it unpatched.
    argv = [sys.executable, str(BENCH_DIR / "load_store.py"), str(job)]
    airlock = repeat(
        times,
        lambda: run_measured(argv, payload_bytes=store_bytes, label="installer load_images"),
        before=remove_image,
    )

    # Two peers. Operators load `docker save` output by hand, but its layers
    # are uncompressed. A plain tar of the staged store contains the same gzip
    # layers airlock streams, so it isolates airlock's own overhead.
    saved = work / "docker-save.tar"
    subprocess.run(["docker", "save", "-o", str(saved), *tags], check=True)
    store_tar = work / "store.tar"
    subprocess.run(["tar", "-cf", str(store_tar), "-C", str(store), *names], check=True)
    for peer_name, tarball in (
        ("docker load -i (docker save tarball)", saved),
        ("docker load -i (tar of the same store)", store_tar),
    ):
        peer = repeat(
            times,
            functools.partial(
                run_measured,
                ["docker", "load", "-q", "-i", str(tarball)],
                payload_bytes=tarball.stat().st_size,
                label=peer_name,
            ),
            before=remove_image,
        )
        run.comparisons.append(Comparison("load", peer_name, airlock, peer))
    remove_image()
    saved.unlink()
    store_tar.unlink()
    _remove(store.parent)
    run.extra["load_store_bytes"] = store_bytes


def measure_import_baseline(run: Run) -> None:
    """Record the peak RSS of a Python process that only imports airlock's commands.

    Peak RSS figures of airlock's commands include this interpreter and
    library baseline, which does not grow with the image size.
    """
    baseline = run_measured(
        [sys.executable, "-c", "import bundler.cli, installer.cli"], label="python imports only"
    )
    run.extra["import_baseline"] = baseline.as_json()


def _remove_image(client: docker.DockerClient, image_id: str) -> None:
    """Remove the benchmark's image by id, with every tag; absent is fine."""
    try:
        client.api.remove_image(image_id, force=True)
    except docker.errors.NotFound:
        pass


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def check_environment(registry: str) -> str | None:
    """Return what is missing to run the benchmark (a tool, the engine, the registry), or None."""
    for tool in ("skopeo", "sha256sum", "openssl", "docker", "script", "tar", GNU_TIME):
        if shutil.which(tool) is None:
            return f"{tool} not found"
    try:
        docker.from_env().ping()
    except docker.errors.DockerException as err:
        return f"the Docker engine does not respond: {err}"
    try:
        requests.get(f"http://{registry}/v2/", timeout=5).raise_for_status()
    except requests.RequestException as err:
        return f"the registry at {registry} does not respond: {err}"
    return None


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark airlock against skopeo, coreutils, openssl and docker."
    )
    parser.add_argument(
        "--size",
        type=parse_size,
        default=parse_size("1GiB"),
        help="image size, e.g. 256MiB or 4GiB (default: 1GiB)",
    )
    parser.add_argument(
        "--layers", type=int, default=4, help="number of layers the size is split into (default: 4)"
    )
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs per command; the fastest counts (default: 3)"
    )
    parser.add_argument(
        "--registry",
        default=DEFAULT_REGISTRY,
        help=f"registry to push to (default: {DEFAULT_REGISTRY})",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=REPO / ".work" / "bench",
        help="folder for layers, bundles and tarballs (default: .work/bench)",
    )
    parser.add_argument(
        "--seed", type=int, default=1, help="seed of the random layer content (default: 1)"
    )
    parser.add_argument(
        "--experimental",
        action="store_true",
        help="run airlock with bench/experimental.py's patches",
    )
    parser.add_argument(
        "--json",
        type=Path,
        help="raw results file (default: bench/results.json, or bench/results-experimental.json with --experimental)",
    )
    parser.add_argument(
        "--markdown",
        type=Path,
        default=REPO / "docs" / "benchmarks.md",
        help="Markdown page whose generated section is replaced (default: docs/benchmarks.md)",
    )
    parser.add_argument(
        "--no-progress-check",
        action="store_true",
        help="skip the check of progress output on a pty and on a pipe",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    if options.json is None:
        name = "results-experimental.json" if options.experimental else "results.json"
        options.json = BENCH_DIR / name
    if options.layers < 1 or options.repeat < 1:
        print("--layers and --repeat must be at least 1", file=sys.stderr)
        return 2
    problem = check_environment(options.registry)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        print("hint: scripts/services.sh start installs the tools and starts both", file=sys.stderr)
        return 4

    options.workdir.mkdir(parents=True, exist_ok=True)
    layers_dir = options.workdir / "layers"
    print(
        f"making {options.layers} layers of {options.size / 2**20:.0f} MiB in all", file=sys.stderr
    )
    layers = synthetic.make_layers(layers_dir, options.size, options.layers, options.seed)
    image = synthetic.push_image(options.registry, layers)
    print(f"pushed {image.registry}/{image.repository}:{image.tag}", file=sys.stderr)

    run = Run(
        options={
            "size": options.size,
            "layers": options.layers,
            "repeat": options.repeat,
            "experimental": options.experimental,
        },
        image={
            "repository": image.repository,
            "layer_bytes": image.layer_bytes,
            "image_id": image.image_id,
        },
    )
    client = docker.from_env()
    run.extra["load_average_start"] = os.getloadavg()[0]
    try:
        with tempfile.TemporaryDirectory(prefix="run-", dir=options.workdir) as tmp:
            work = Path(tmp)
            measure_import_baseline(run)
            print("measuring pull", file=sys.stderr)
            bundle, public_key = measure_pull(
                run, work, image, options.repeat, options.experimental
            )
            run.extra["bundle_bytes"] = bundle.stat().st_size
            print("measuring verify", file=sys.stderr)
            measure_verify(run, bundle, public_key, options.repeat, options.experimental)
            print("measuring load", file=sys.stderr)
            measure_load(run, work, bundle, public_key, image, options.repeat)
            if not options.no_progress_check:
                print("checking progress output", file=sys.stderr)
                run.extra["progress"] = progress_check.check(work, options.registry, client)
    finally:
        _remove_image(client, image.image_id)
        synthetic.delete_image(image)

    run.extra["load_average_end"] = os.getloadavg()[0]
    machine = report.machine_facts(client)
    document = report.results_json(run, machine)
    options.json.write_text(json.dumps(document, indent=2) + "\n")
    report.update_markdown(
        options.markdown, report.markdown_section(document), report.variant(document)
    )
    print(report.markdown_table(document))
    return 0


if __name__ == "__main__":
    sys.exit(main())
