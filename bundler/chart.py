"""Package a spec's Helm chart with every dependency vendored, byte for byte reproducibly.

Inside the enclave nothing may run `helm dependency build`, so the archive
the bundle carries (`charts/<name>-<version>.tgz`) must already hold each
subchart in its own `charts/` folder:

- a `file://` dependency is packaged from its folder, recursively;
- a remote one (`https://`, `oci://`, a repository alias) must already be
  vendored as `charts/<name>-<version>.tgz` in the chart folder, as
  `helm dependency build` leaves it on the connected side;
- when `Chart.lock` exists, each entry must match a vendored archive.

The archive is written like `helm package` lays it out (every path under
`<name>/`, `.helmignore` applied), with sorted members, a fixed mtime,
uid/gid 0 and a gzip header without time or file name, so the same chart
gives the same bytes. helm itself is never run.
"""

from __future__ import annotations

import fnmatch
import gzip
import hashlib
import io
import logging
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from bundler.spec import BundleSpec
from installer.constants import CHARTS_DIR
from installer.errors import SpecError
from installer.manifest import ChartDependency, ChartRecord

logger = logging.getLogger(__name__)

__all__ = ["chart_images", "package_chart", "PackagedChart"]

CHART_FILE = "Chart.yaml"
LOCK_FILE = "Chart.lock"
VALUES_FILE = "values.yaml"
IGNORE_FILE = ".helmignore"
# A version constraint (`~1.2`, `>=1.0 <2`, `1.x`) rather than one exact version.
_CONSTRAINT = re.compile(r"[\s~^<>=*|,]|(^|\.)[xX](\.|$)")
_VENDOR_HINT = (
    "run `helm dependency build` in the chart folder on the connected side; "
    "it downloads the archive into charts/"
)


@dataclass(frozen=True)
class _Dependency:
    name: str
    version: str
    repository: str


@dataclass(frozen=True)
class PackagedChart:
    """A chart archive ready to be written into the bundle, with its manifest record."""

    name: str
    version: str
    data: bytes
    dependencies: tuple[ChartDependency, ...]

    @property
    def member_path(self) -> str:
        return f"{CHARTS_DIR}{self.name}-{self.version}.tgz"

    def record(self) -> ChartRecord:
        return ChartRecord(
            name=self.name,
            version=self.version,
            path=self.member_path,
            sha256=hashlib.sha256(self.data).hexdigest(),
            dependencies=self.dependencies,
        )


def _read_chart_yaml(text: str, where: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise SpecError(f"{where} is not valid YAML: {err}") from err
    if not isinstance(data, dict) or not data.get("name") or data.get("version") is None:
        raise SpecError(f"{where} needs a `name` and a `version`")
    return data


def _dependencies(chart: dict[str, Any], where: str) -> list[_Dependency]:
    entries = chart.get("dependencies") or []
    if not isinstance(entries, list):
        raise SpecError(f"{where}: `dependencies` must be a list")
    result = []
    for entry in entries:
        if not isinstance(entry, dict) or not entry.get("name"):
            raise SpecError(f"{where}: each dependency needs a `name`")
        result.append(
            _Dependency(
                str(entry["name"]),
                str(entry.get("version") or ""),
                str(entry.get("repository") or ""),
            )
        )
    return result


def _is_exact(version: str) -> bool:
    return bool(version) and not _CONSTRAINT.search(version)


# ---------------------------------------------------------------------------
# Reading a chart archive
# ---------------------------------------------------------------------------


def _archive_chart(data: bytes, where: str) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Return the Chart.yaml and every file (path below the chart's top folder) of an archive."""
    files: dict[str, bytes] = {}
    top: str | None = None
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
            for info in archive:
                if not info.isfile():
                    continue
                parts = PurePosixPath(info.name).parts
                if len(parts) < 2 or ".." in parts or info.name.startswith("/"):
                    raise SpecError(f"{where}: member {info.name} is not inside one chart folder")
                top = top or parts[0]
                if parts[0] != top:
                    raise SpecError(f"{where}: contains more than one chart ({top}, {parts[0]})")
                handle = archive.extractfile(info)
                assert handle is not None  # a regular file always has content
                files["/".join(parts[1:])] = handle.read()
    except (tarfile.TarError, OSError, EOFError) as err:
        raise SpecError(f"{where} is not a gzip-compressed chart archive: {err}") from err
    if CHART_FILE not in files:
        raise SpecError(f"{where} has no {CHART_FILE} in its chart folder")
    chart = _read_chart_yaml(files[CHART_FILE].decode("utf-8"), f"{where}: {CHART_FILE}")
    return chart, files


# ---------------------------------------------------------------------------
# .helmignore
# ---------------------------------------------------------------------------


def _ignore_rules(folder: Path) -> list[tuple[str, bool]]:
    path = folder / IGNORE_FILE
    if not path.is_file():
        return []
    rules = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        rules.append((line[1:] if negated else line, negated))
    return rules


def _ignored(relative: PurePosixPath, is_dir: bool, rules: list[tuple[str, bool]]) -> bool:
    """Apply `.helmignore` rules: shell globs on the path or the name, last match wins.

    NOTE: this covers the patterns charts use (`*.tmp`, `.git/`, `ci/`,
    `!keep.txt`); Helm's own matcher also anchors patterns with a leading
    `/` and matches `**`, which are read here as plain globs.
    """
    ignored = False
    for pattern, negated in rules:
        directory_only = pattern.endswith("/")
        pattern = pattern.rstrip("/").lstrip("/")
        if directory_only and not is_dir:
            continue
        if fnmatch.fnmatchcase(relative.as_posix(), pattern) or fnmatch.fnmatchcase(
            relative.name, pattern
        ):
            ignored = not negated
    return ignored


def _chart_files(folder: Path) -> Iterator[tuple[PurePosixPath, Path]]:
    """Yield each file of a chart folder that `helm package` would include."""
    rules = _ignore_rules(folder)
    pending = [folder]
    while pending:
        current = pending.pop()
        for entry in sorted(current.iterdir()):
            relative = PurePosixPath(entry.relative_to(folder).as_posix())
            if entry.is_symlink():
                raise SpecError(
                    f"chart file {entry} is a symbolic link",
                    hint="replace it with a copy of the file it points to",
                )
            if _ignored(relative, entry.is_dir(), rules):
                continue
            if entry.is_dir():
                pending.append(entry)
            elif entry.is_file():
                yield relative, entry


# ---------------------------------------------------------------------------
# Packaging
# ---------------------------------------------------------------------------


def _tar_gz(name: str, files: dict[str, bytes], mtime: int) -> bytes:
    """Write `files` (path below the chart folder to bytes) as a reproducible chart archive."""
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0) as compressed:
        with tarfile.open(fileobj=compressed, mode="w", format=tarfile.PAX_FORMAT) as archive:
            for relative in sorted(files):
                data = files[relative]
                info = tarfile.TarInfo(f"{name}/{relative}")
                info.size = len(data)
                info.mode = 0o644
                info.mtime = mtime
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _vendored(
    dependency: _Dependency, archives: dict[str, bytes], where: str
) -> tuple[str, str, bytes]:
    """Find the archive in `charts/` that satisfies a remote dependency.

    Returns its path below the chart folder, its chart version and its bytes.
    """
    candidates = []
    for relative, data in sorted(archives.items()):
        file_name = PurePosixPath(relative).name
        if not file_name.startswith(f"{dependency.name}-"):
            continue
        chart, _ = _archive_chart(data, f"{where}: {relative}")
        if str(chart["name"]) == dependency.name:
            candidates.append((relative, str(chart["version"]), data))
    if _is_exact(dependency.version):
        candidates = [item for item in candidates if item[1] == dependency.version]
    if not candidates:
        expected = f"{CHARTS_DIR}{dependency.name}-{dependency.version or '<version>'}.tgz"
        raise SpecError(
            f"{where}: dependency {dependency.name} {dependency.version} from "
            f"{dependency.repository or 'no repository'} is not vendored ({expected} not found)",
            hint=_VENDOR_HINT,
        )
    if len(candidates) > 1:
        names = ", ".join(item[0] for item in candidates)
        raise SpecError(
            f"{where}: dependency {dependency.name} {dependency.version} matches several "
            f"archives: {names}",
            hint="keep only the archive of the version Chart.lock pins",
        )
    # NOTE: a version range is not evaluated; the one archive of that name is taken.
    return candidates[0]


def _check_lock(lock_text: str, resolved: dict[str, tuple[_Dependency, str]], where: str) -> None:
    """Check that Chart.lock pins exactly the dependencies and versions that are vendored."""
    try:
        lock = yaml.safe_load(lock_text) or {}
    except yaml.YAMLError as err:
        raise SpecError(f"{where}: {LOCK_FILE} is not valid YAML: {err}") from err
    entries = lock.get("dependencies") or [] if isinstance(lock, dict) else []
    locked = {str(entry.get("name")): str(entry.get("version")) for entry in entries}
    problems = []
    for name, (_, version) in sorted(resolved.items()):
        if name not in locked:
            problems.append(f"{name} is missing from {LOCK_FILE}")
        elif locked[name] != version:
            problems.append(f"{LOCK_FILE} pins {name} {locked[name]} but {version} is vendored")
    for name in sorted(set(locked) - set(resolved)):
        problems.append(f"{LOCK_FILE} lists {name}, which Chart.yaml does not depend on")
    if problems:
        raise SpecError(f"{where}: " + "; ".join(problems), hint=_VENDOR_HINT)


def _package_folder(folder: Path, mtime: int, chain: tuple[Path, ...] = ()) -> PackagedChart:
    where = str(folder)
    if folder.resolve() in chain:
        raise SpecError(f"{where}: file:// dependencies form a cycle")
    chart_path = folder / CHART_FILE
    if not chart_path.is_file():
        raise SpecError(f"chart folder {folder} has no {CHART_FILE}")
    chart = _read_chart_yaml(chart_path.read_text(encoding="utf-8"), str(chart_path))
    name, version = str(chart["name"]), str(chart["version"])

    files = {relative.as_posix(): path.read_bytes() for relative, path in _chart_files(folder)}
    archives = {
        relative: data
        for relative, data in files.items()
        if relative.startswith(CHARTS_DIR) and relative.endswith(".tgz")
    }

    records: list[ChartDependency] = []
    resolved: dict[str, tuple[_Dependency, str]] = {}
    for dependency in _dependencies(chart, str(chart_path)):
        if dependency.repository.startswith("file://"):
            sub_folder = (folder / dependency.repository[len("file://") :]).resolve()
            sub = _package_folder(sub_folder, mtime, (*chain, folder.resolve()))
            if sub.name != dependency.name:
                raise SpecError(
                    f"{chart_path}: dependency {dependency.name} points at {sub_folder}, "
                    f"whose chart is named {sub.name}"
                )
            if _is_exact(dependency.version) and sub.version != dependency.version:
                raise SpecError(
                    f"{chart_path}: dependency {dependency.name} wants version "
                    f"{dependency.version}, {sub_folder} is {sub.version}"
                )
            # The path inside the parent chart matches the bundle member's path.
            relative, sub_version, data = sub.member_path, sub.version, sub.data
            # A stale copy of the same subchart would give Helm two charts of one name.
            for stale in [key for key in files if key.startswith(f"{CHARTS_DIR}{sub.name}-")]:
                del files[stale]
            files[relative] = data
        else:
            relative, sub_version, data = _vendored(dependency, archives, str(folder))
        resolved[dependency.name] = (dependency, sub_version)
        records.append(
            ChartDependency(
                name=dependency.name,
                version=sub_version,
                repository=dependency.repository,
                path=f"{name}/{relative}",
                sha256=hashlib.sha256(data).hexdigest(),
            )
        )
        logger.info("chart %s: dependency %s %s vendored", name, dependency.name, sub_version)

    lock_path = folder / LOCK_FILE
    if lock_path.is_file():
        _check_lock(lock_path.read_text(encoding="utf-8"), resolved, str(folder))

    return PackagedChart(name, version, _tar_gz(name, files, mtime), tuple(records))


def _check_archive(path: Path) -> PackagedChart:
    """Check a packaged chart (.tgz) given in the spec, and carry its bytes unchanged."""
    data = path.read_bytes()
    chart, files = _archive_chart(data, str(path))
    name, version = str(chart["name"]), str(chart["version"])
    archives = {
        relative: content
        for relative, content in files.items()
        if relative.startswith(CHARTS_DIR) and relative.endswith(".tgz")
    }
    records = []
    resolved: dict[str, tuple[_Dependency, str]] = {}
    for dependency in _dependencies(chart, f"{path}: {CHART_FILE}"):
        relative, sub_version, content = _vendored(dependency, archives, str(path))
        resolved[dependency.name] = (dependency, sub_version)
        records.append(
            ChartDependency(
                dependency.name,
                sub_version,
                dependency.repository,
                f"{name}/{relative}",
                hashlib.sha256(content).hexdigest(),
            )
        )
    if LOCK_FILE in files:
        _check_lock(files[LOCK_FILE].decode("utf-8"), resolved, str(path))
    return PackagedChart(name, version, data, tuple(records))


def package_chart(spec: BundleSpec, root: Path, *, mtime: int = 0) -> ChartRecord | None:
    """Write the spec's chart into `root/charts/` and return its manifest record.

    Returns None when the spec names no chart. Raises SpecError naming the
    chart and dependency when a dependency is not vendored or Chart.lock
    disagrees with what is.
    """
    if spec.chart is None:
        return None
    packaged = (
        _check_archive(spec.chart) if spec.chart.is_file() else _package_folder(spec.chart, mtime)
    )
    destination = root / packaged.member_path
    destination.parent.mkdir(parents=True, exist_ok=True)
    destination.write_bytes(packaged.data)
    record = packaged.record()
    logger.info(
        "chart %s %s packaged as %s (sha256 %s, %d dependencies)",
        record.name,
        record.version,
        record.path,
        record.sha256,
        len(record.dependencies),
    )
    return record


# ---------------------------------------------------------------------------
# Images named in values.yaml
# ---------------------------------------------------------------------------


def _images_in(values: Any, app_version: str) -> Iterator[str]:
    if isinstance(values, dict):
        image = values.get("image")
        if isinstance(image, dict) and isinstance(image.get("repository"), str):
            repository = image["repository"].strip()
            if repository:
                registry = str(image.get("registry") or "").strip()
                reference = f"{registry}/{repository}" if registry else repository
                tag = str(image.get("tag") or "").strip() or app_version
                digest = str(image.get("digest") or "").strip()
                if tag:
                    reference += f":{tag}"
                if digest:
                    reference += f"@{digest}"
                yield reference
        for value in values.values():
            yield from _images_in(value, app_version)
    elif isinstance(values, list):
        for item in values:
            yield from _images_in(item, app_version)


def chart_images(spec: BundleSpec) -> list[str]:
    """Return the images the chart's values.yaml names, when the spec sets `chart_images: true`.

    An `image` mapping with a non-empty `repository` gives
    `[registry/]repository:tag[@digest]`; an empty `tag` means the chart's
    appVersion, as authentik's `global.image` does.
    NOTE: every such mapping counts, including those of components the
    values disable, and subcharts' own values.yaml files are not read.
    """
    if spec.chart is None or spec.raw.get("chart_images") is not True:
        return []
    if spec.chart.is_file():
        chart, files = _archive_chart(spec.chart.read_bytes(), str(spec.chart))
        values_text = files.get(VALUES_FILE, b"").decode("utf-8")
    else:
        chart = _read_chart_yaml(
            (spec.chart / CHART_FILE).read_text(encoding="utf-8"), str(spec.chart / CHART_FILE)
        )
        values_path = spec.chart / VALUES_FILE
        values_text = values_path.read_text(encoding="utf-8") if values_path.is_file() else ""
    try:
        values = yaml.safe_load(values_text) or {}
    except yaml.YAMLError as err:
        raise SpecError(f"{spec.chart}: {VALUES_FILE} is not valid YAML: {err}") from err
    images = list(dict.fromkeys(_images_in(values, str(chart.get("appVersion") or ""))))
    for image in images:
        logger.info("chart %s names image %s", chart["name"], image)
    return images
