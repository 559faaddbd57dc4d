"""Check that pulling, hashing and loading draw a bar on a terminal and log plain lines otherwise.

Each command runs twice on a small image of its own: under `script -q -c`,
which gives it a pseudo-terminal, and with stderr on a pipe.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import docker
import docker.errors
import synthetic

# Big enough for several progress updates, small enough to add only seconds.
CHECK_BYTES = 32 * 2**20
CHECK_SEED = 7


def _run_pty(argv: list[str]) -> str:
    """Run `argv` on a pseudo-terminal and return what it wrote there."""
    result = subprocess.run(
        ["script", "-q", "-e", "-c", shlex.join(argv), "/dev/null"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        check=True,
    )
    return result.stdout.decode(errors="replace")


def _run_pipe(argv: list[str]) -> str:
    """Run `argv` with stderr on a pipe and return its stderr."""
    result = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, check=True)
    return result.stderr.decode(errors="replace")


def _describe(output: str, *, terminal: bool) -> str:
    """Summarise the progress output: a bar redrawn with carriage returns, or plain lines."""
    text = output.replace("\r\n", "\n")
    redraws = text.count("\r")
    has_bar = redraws > 0 and "[" in text and "#" in text
    lines = [line for line in text.split("\n") if line.strip()]
    progress_lines = [
        line for line in lines if "started" in line or "finished" in line or "%" in line
    ]
    if terminal:
        return f"bar redrawn in place ({redraws} draws)" if has_bar else "no bar"
    if has_bar:
        return "bar characters on a pipe"
    return f"{len(progress_lines)} plain log lines (start, each tenth, finish), no carriage returns"


def check(work: Path, registry: str, client: docker.DockerClient) -> dict[str, dict[str, Any]]:
    """Run build, verify and load on a pty and on a pipe; return what each showed."""
    folder = work / "progress"
    folder.mkdir()
    layers = synthetic.make_layers(work.parent / "layers", CHECK_BYTES, 1, CHECK_SEED)
    image = synthetic.push_image(registry, layers)
    results: dict[str, dict[str, Any]] = {}
    try:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "bundler.cli",
                "keygen",
                "--out",
                str(folder),
                "--name",
                "check",
            ],
            check=True,
            capture_output=True,
        )
        source = "bench.airlock.invalid"
        (folder / "compose.yml").write_text(
            f"services:\n  check:\n    image: {source}/{image.repository}:{image.tag}\n"
        )
        spec = folder / "bundle.yaml"
        spec.write_text(
            "name: check\nversion: '1'\nsequence: 1\ncompose:\n  files: [compose.yml]\n"
        )
        bundle = folder / "check.airlock"

        def build() -> list[str]:
            bundle.unlink(missing_ok=True)
            return [
                sys.executable,
                "-m",
                "bundler.cli",
                "build",
                str(spec),
                "--key",
                str(folder / "check.key"),
                "--output",
                str(bundle),
                "--mirror",
                f"{source}={registry}",
            ]

        results["pull (`airlock-bundle build`)"] = {
            "terminal": _describe(_run_pty(build()), terminal=True),
            "pipe": _describe(_run_pipe(build()), terminal=False),
        }

        verify = [
            sys.executable,
            "-m",
            "installer.cli",
            "verify",
            str(bundle),
            "--key",
            str(folder / "check.pub"),
        ]
        results["hashing (`airlock-install verify`)"] = {
            "terminal": _describe(_run_pty(verify), terminal=True),
            "pipe": _describe(_run_pipe(verify), terminal=False),
        }

        store = folder / "images"
        store.mkdir()
        subprocess.run(["tar", "-xf", str(bundle), "-C", str(folder), "images"], check=True)
        names = sorted(str(p.relative_to(store)) for p in store.rglob("*") if p.is_file())
        job = folder / "job.json"
        job.write_text(
            json.dumps({"store": str(store), "names": names, "expected_ids": [image.image_id]})
        )
        load = [sys.executable, str(Path(__file__).with_name("load_store.py")), str(job)]
        _remove_image(client, image.image_id)
        terminal = _describe(_run_pty(load), terminal=True)
        _remove_image(client, image.image_id)
        pipe = _describe(_run_pipe(load), terminal=False)
        results["loading (`docker load` stream)"] = {"terminal": terminal, "pipe": pipe}
    finally:
        _remove_image(client, image.image_id)
        synthetic.delete_image(image)
    return results


def _remove_image(client: docker.DockerClient, image_id: str) -> None:
    try:
        client.api.remove_image(image_id, force=True)
    except docker.errors.NotFound:
        pass
