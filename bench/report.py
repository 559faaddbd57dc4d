"""Describe the machine and turn a benchmark run into JSON and a Markdown table."""

from __future__ import annotations

import os
import platform
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import docker

# Each generated part of docs/benchmarks.md is between two such lines: one
# pair for plain runs, one for `--experimental` runs. The rest of the page is
# written by hand, and a run keeps it.
MARK = "<!-- bench/run.py: {variant} results {edge} -->"

# A ratio above this, in time or memory, is flagged in the table.
FLAG_RATIO = 1.5


def machine_facts(client: docker.DockerClient) -> dict[str, Any]:
    """Return the CPU model, cores, RAM, Docker server, Python and tool versions."""
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "ram_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
        "docker_server": str(client.version().get("Version", "")),
        "docker_storage_driver": str(client.info().get("Driver", "")),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "skopeo": _first_line(["skopeo", "--version"]),
        "openssl": _first_line(["openssl", "version"]),
        "sha256sum": _first_line(["sha256sum", "--version"]),
    }


def tree_under_test() -> str:
    """Describe the airlock tree the commands import: its git commit, or its folder."""
    import installer

    root = Path(installer.__file__).resolve().parent.parent
    commit = subprocess.run(
        ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    )
    if commit.returncode != 0:
        return f"{root} (not a git checkout)"
    changes = subprocess.run(
        ["git", "-C", str(root), "status", "--porcelain", "--", "bundler", "installer", "schemas"],
        capture_output=True,
        text=True,
        check=False,
    )
    dirty = " with uncommitted changes" if changes.stdout.strip() else ""
    return f"commit {commit.stdout.strip()}{dirty}"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _first_line(argv: list[str]) -> str:
    try:
        output = subprocess.run(argv, capture_output=True, text=True, check=False).stdout
    except OSError:
        return "not found"
    return output.splitlines()[0] if output else "unknown"


def results_json(run: Any, machine: dict[str, Any]) -> dict[str, Any]:
    """Return the raw results of `run` with the machine and the date."""
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "tree": tree_under_test(),
        "machine": machine,
        "options": run.options,
        "image": run.image,
        "comparisons": [
            {
                "step": c.step,
                "peer": c.peer_name,
                "airlock": c.airlock.as_json(),
                "peer_result": c.peer.as_json(),
                "time_ratio": c.airlock.seconds / c.peer.seconds,
                "rss_ratio": c.airlock.peak_rss_bytes / c.peer.peak_rss_bytes,
            }
            for c in run.comparisons
        ],
        "extra": run.extra,
    }


def _timing(result: dict[str, Any]) -> str:
    rate = result["mb_per_second"]
    text = f"{result['seconds']:.2f} s"
    return f"{text} ({rate:.0f} MB/s)" if rate else text


def _mib(value: int) -> str:
    return f"{value / 2**20:.0f} MiB"


def _ratio(value: float, worse: str) -> str:
    flag = f" **{worse}**" if value > FLAG_RATIO else ""
    return f"{value:.2f}×{flag}"


def markdown_table(document: dict[str, Any]) -> str:
    """Return the results as a Markdown table: measure, airlock, peer, ratio."""
    names = {"pull": "pull", "verify": "verify", "load": "load"}
    rows = ["| measure | airlock | peer | ratio (airlock ÷ peer) |", "|---|---|---|---|"]
    for comparison in document["comparisons"]:
        step = names[comparison["step"]]
        peer = comparison["peer"]
        mine = comparison["airlock"]
        theirs = comparison["peer_result"]
        rows.append(
            f"| {step}: wall time vs `{peer}` | {_timing(mine)} | {_timing(theirs)} "
            f"| {_ratio(comparison['time_ratio'], 'slower')} |"
        )
        rows.append(
            f"| {step}: peak RSS vs `{peer}` | {_mib(mine['peak_rss_bytes'])} "
            f"| {_mib(theirs['peak_rss_bytes'])} | {_ratio(comparison['rss_ratio'], 'more memory')} |"
        )
    return "\n".join(rows)


def markdown_section(document: dict[str, Any]) -> str:
    """Return the generated section: machine, date, image, table and progress check."""
    machine = document["machine"]
    options = document["options"]
    image = document["image"]
    lines = [
        MARK.format(variant=variant(document), edge="begin"),
        "",
        f"Measured on {document['date']} by `bench/run.py"
        + (" --experimental" if options["experimental"] else "")
        + f" --size {options['size'] / 2**20:g}MiB --layers {options['layers']} --repeat {options['repeat']}`"
        + f" on the airlock tree at {document['tree']}.",
        "",
        f"- machine: {machine['cpu']}, {machine['cores']} cores, "
        f"{machine['ram_bytes'] / 2**30:.0f} GiB RAM, Linux {machine['kernel']}",
        f"- Docker Engine {machine['docker_server']} (storage driver "
        f"{machine['docker_storage_driver']}), Python {machine['python']}",
        f"- 1-minute load average: {document['extra']['load_average_start']:.1f} at the start, "
        f"{document['extra']['load_average_end']:.1f} at the end (other work on the machine "
        "slows airlock and its peers alike, so each ratio compares figures from the same run)",
        f"- peers: {machine['skopeo']}; {machine['openssl']}; {machine['sha256sum']}",
        f"- image: {options['layers']} gzip layers of random data, "
        f"{image['layer_bytes'] / 1e6:.0f} MB compressed; bundle "
        f"{document['extra'].get('bundle_bytes', 0) / 1e6:.0f} MB",
        f"- a Python process that only imports airlock's commands peaks at "
        f"{_mib(document['extra']['import_baseline']['peak_rss_bytes'])}; airlock's "
        "peak RSS figures include it",
        "",
        "Each figure is the fastest of the repeated runs; peak RSS is the largest seen. "
        "MB/s is 10^6 bytes per second of the bytes each tool handles: the "
        "compressed layers for a pull, the bundle file for verify, the tar "
        "stream sent to the engine for load. A ratio above "
        f"{FLAG_RATIO} is marked **slower** or **more memory**.",
        "",
        markdown_table(document),
        "",
    ]
    progress = document["extra"].get("progress")
    if progress:
        lines += ["Progress output seen in this run:", ""]
        lines += ["| step | on a pty (`script -q -c`) | on a pipe |", "|---|---|---|"]
        for step, seen in progress.items():
            lines.append(f"| {step} | {seen['terminal']} | {seen['pipe']} |")
        lines.append("")
    lines.append(MARK.format(variant=variant(document), edge="end"))
    return "\n".join(lines)


def variant(document: dict[str, Any]) -> str:
    """Return which generated section a run belongs to: `plain` or `experimental`."""
    return "experimental" if document["options"]["experimental"] else "plain"


def update_markdown(path: Path, section: str, name: str) -> None:
    """Replace the generated section `name` of `path`, or append it when the page has none."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    begin_mark = MARK.format(variant=name, edge="begin")
    end_mark = MARK.format(variant=name, edge="end")
    start = text.find(begin_mark)
    end = text.find(end_mark)
    if start != -1 and end > start:
        text = text[:start] + section + text[end + len(end_mark) :]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
