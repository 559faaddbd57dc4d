"""Helm charts in bundles: packaging, vendored dependencies, Chart.lock, install placement.

helm is not installed here and no Kubernetes cluster can run, so nothing
renders or deploys a chart: the tests check the archive the bundle carries
(what `helm install` would read offline) and where the installer puts it.
Remote chart repositories are never contacted; their charts are stood in
for by archives built in the test.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

from bundler.chart import chart_images, package_chart
from bundler.spec import load_spec
from installer.errors import SpecError

FIXTURES = Path("/work/shared/fixtures/authentik/helm")
MIRROR = ["--mirror", "docker.io=127.0.0.1:5000"]
IMAGE = "docker.io/library/postgres:16-alpine"


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def run(*args: str) -> subprocess.CompletedProcess[str]:
    program, *rest = args
    module = {"airlock-bundle": "bundler.cli", "airlock-install": "installer.cli"}[program]
    return subprocess.run(
        [sys.executable, "-m", module, *rest],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        stdin=subprocess.DEVNULL,
        timeout=600,
    )


def error_line(stderr: str) -> str:
    return next(line for line in stderr.splitlines() if line.startswith("error: "))


def chart_archive(name: str, version: str, extra: dict[str, bytes] | None = None) -> bytes:
    """Build a minimal chart archive `<name>-<version>.tgz` as a chart repository serves it."""
    files = {"Chart.yaml": f"apiVersion: v2\nname: {name}\nversion: {version}\n".encode()}
    files.update(extra or {})
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for relative, data in sorted(files.items()):
            info = tarfile.TarInfo(f"{name}/{relative}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def folder_archive(folder: Path) -> bytes:
    """Package a chart folder the way `helm package` lays it out, for a vendored stand-in."""
    name = yaml.safe_load((folder / "Chart.yaml").read_text())["name"]
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.add(path, f"{name}/{path.relative_to(folder).as_posix()}")
    return buffer.getvalue()


def make_spec(folder: Path, chart: str, *, chart_images: bool = False) -> Path:
    write(
        folder,
        "compose.yml",
        f'services:\n  app:\n    image: {IMAGE}\n    entrypoint: ["sleep", "3600"]\n',
    )
    text = (
        "name: chart-demo\nversion: '1.0'\nsequence: 1\n"
        f"compose:\n  files: [compose.yml]\nchart: {chart}\n"
    )
    if chart_images:
        text += "chart_images: true\n"
    return write(folder, "bundle.yaml", text)


@pytest.fixture
def authentik_chart(tmp_path: Path) -> Path:
    """A copy of authentik's real chart folder; its remote dependencies are not vendored."""
    chart = tmp_path / "spec" / "authentik"
    shutil.copytree(FIXTURES / "authentik", chart)
    return chart


def vendor_authentik_dependencies(chart: Path) -> dict[str, bytes]:
    """Put stand-ins for the two remote dependencies into the chart's charts/ folder."""
    archives = {
        "authentik-remote-cluster-2.1.0.tgz": folder_archive(FIXTURES / "authentik-remote-cluster"),
        "postgresql-18.8.12.tgz": chart_archive("postgresql", "18.8.12"),
    }
    (chart / "charts").mkdir(exist_ok=True)
    for name, data in archives.items():
        (chart / "charts" / name).write_bytes(data)
    return archives


def members_of(data: bytes) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
        return archive.getmembers()


# ---------------------------------------------------------------------------
# Packaging without a registry
# ---------------------------------------------------------------------------


def test_authentik_chart_without_vendored_dependencies_is_rejected(
    authentik_chart: Path, tmp_path: Path
) -> None:
    spec = load_spec(make_spec(authentik_chart.parent, "authentik"))

    with pytest.raises(SpecError) as caught:
        package_chart(spec, tmp_path / "out")

    assert caught.value.message == (
        f"{authentik_chart}: dependency postgresql 18.8.12 from "
        "oci://registry-1.docker.io/bitnamicharts is not vendored "
        "(charts/postgresql-18.8.12.tgz not found)"
    )
    assert caught.value.hint == (
        "run `helm dependency build` in the chart folder on the connected side; "
        "it downloads the archive into charts/"
    )
    assert not (tmp_path / "out").exists()


def test_authentik_chart_packages_with_vendored_dependencies(
    authentik_chart: Path, tmp_path: Path
) -> None:
    archives = vendor_authentik_dependencies(authentik_chart)
    write(authentik_chart, "notes.tmp", "ignored by .helmignore")
    spec = load_spec(make_spec(authentik_chart.parent, "authentik"))

    record = package_chart(spec, tmp_path / "out", mtime=1700000000)

    assert record is not None
    data = (tmp_path / "out" / "charts" / "authentik-2026.8.0.tgz").read_bytes()
    assert record.name == "authentik"
    assert record.version == "2026.8.0"
    assert record.path == "charts/authentik-2026.8.0.tgz"
    assert record.sha256 == hashlib.sha256(data).hexdigest()
    assert [(d.name, d.version, d.repository, d.path, d.sha256) for d in record.dependencies] == [
        (
            "postgresql",
            "18.8.12",
            "oci://registry-1.docker.io/bitnamicharts",
            "authentik/charts/postgresql-18.8.12.tgz",
            hashlib.sha256(archives["postgresql-18.8.12.tgz"]).hexdigest(),
        ),
        (
            "authentik-remote-cluster",
            "2.1.0",
            "https://charts.goauthentik.io",
            "authentik/charts/authentik-remote-cluster-2.1.0.tgz",
            hashlib.sha256(archives["authentik-remote-cluster-2.1.0.tgz"]).hexdigest(),
        ),
    ]

    members = members_of(data)
    names = [member.name for member in members]
    assert names == sorted(names)
    assert "authentik/Chart.yaml" in names
    assert "authentik/templates/server/deployment.yaml" in names
    assert "authentik/charts/postgresql-18.8.12.tgz" in names
    assert "authentik/notes.tmp" not in names
    assert {(m.uid, m.gid, m.uname, m.gname, m.mtime, m.mode) for m in members} == {
        (0, 0, "", "", 1700000000, 0o644)
    }
    # gzip header: no modification time (bytes 4-7), no file name flag.
    assert data[4:8] == b"\0\0\0\0"
    assert data[3] & 0x08 == 0


def test_chart_packaging_is_byte_identical(authentik_chart: Path, tmp_path: Path) -> None:
    vendor_authentik_dependencies(authentik_chart)
    spec = load_spec(make_spec(authentik_chart.parent, "authentik"))

    first = package_chart(spec, tmp_path / "one")
    # Touching every file changes mtimes but must not change the archive.
    for path in authentik_chart.rglob("*"):
        os.utime(path, (1, 1))
    second = package_chart(spec, tmp_path / "two")

    assert first is not None and second is not None
    assert first.sha256 == second.sha256


def test_packaged_chart_is_carried_unchanged(authentik_chart: Path, tmp_path: Path) -> None:
    """A spec may name a chart archive made by `helm package` instead of a folder."""
    vendor_authentik_dependencies(authentik_chart)
    folder_record = package_chart(
        load_spec(make_spec(authentik_chart.parent, "authentik")), tmp_path / "one"
    )
    assert folder_record is not None
    archive = tmp_path / "spec" / "authentik-2026.8.0.tgz"
    shutil.copyfile(tmp_path / "one" / folder_record.path, archive)
    spec = load_spec(make_spec(tmp_path / "spec", "authentik-2026.8.0.tgz"))

    record = package_chart(spec, tmp_path / "two")

    assert record == folder_record
    assert (tmp_path / "two" / record.path).read_bytes() == archive.read_bytes()


def test_packaged_chart_without_dependency_is_rejected(tmp_path: Path) -> None:
    chart = chart_archive(
        "demo",
        "1.0.0",
        {
            "Chart.yaml": b"apiVersion: v2\nname: demo\nversion: 1.0.0\ndependencies:\n"
            b"  - name: redis\n    version: 18.0.0\n    repository: https://charts.example.invalid\n"
        },
    )
    archive = tmp_path / "spec" / "demo-1.0.0.tgz"
    archive.parent.mkdir()
    archive.write_bytes(chart)
    spec = load_spec(make_spec(tmp_path / "spec", "demo-1.0.0.tgz"))

    with pytest.raises(SpecError) as caught:
        package_chart(spec, tmp_path / "out")

    assert caught.value.message == (
        f"{archive}: dependency redis 18.0.0 from https://charts.example.invalid is not "
        "vendored (charts/redis-18.0.0.tgz not found)"
    )


def test_chart_lock_disagreeing_with_vendored_archive_is_rejected(
    authentik_chart: Path, tmp_path: Path
) -> None:
    vendor_authentik_dependencies(authentik_chart)
    write(
        authentik_chart,
        "Chart.lock",
        "dependencies:\n"
        "- name: postgresql\n  repository: oci://registry-1.docker.io/bitnamicharts\n"
        "  version: 18.8.11\n"
        "- name: authentik-remote-cluster\n  repository: https://charts.goauthentik.io\n"
        "  version: 2.1.0\n"
        "digest: sha256:0000\ngenerated: '2026-01-01T00:00:00Z'\n",
    )
    spec = load_spec(make_spec(authentik_chart.parent, "authentik"))

    with pytest.raises(SpecError) as caught:
        package_chart(spec, tmp_path / "out")

    assert caught.value.message == (
        f"{authentik_chart}: Chart.lock pins postgresql 18.8.11 but 18.8.12 is vendored"
    )


def _umbrella(spec_dir: Path) -> Path:
    """The umbrella chart of the F-01 case: one file:// and one vendored remote dependency."""
    chart = spec_dir / "chart"
    write(
        chart,
        "Chart.yaml",
        "apiVersion: v2\nname: demo\nversion: 1.4.0\ndependencies:\n"
        "  - name: common\n    version: 0.1.0\n    repository: file://../common\n"
        "  - name: redis\n    version: 18.0.0\n"
        "    repository: https://charts.example.invalid/repo\n",
    )
    write(
        chart, "values.yaml", "image:\n  repository: docker.io/library/postgres\n  tag: 16-alpine\n"
    )
    write(
        chart,
        "Chart.lock",
        "dependencies:\n"
        "- name: common\n  repository: file://../common\n  version: 0.1.0\n"
        "- name: redis\n  repository: https://charts.example.invalid/repo\n  version: 18.0.0\n",
    )
    (chart / "charts").mkdir()
    (chart / "charts" / "redis-18.0.0.tgz").write_bytes(chart_archive("redis", "18.0.0"))
    write(spec_dir / "common", "Chart.yaml", "apiVersion: v2\nname: common\nversion: 0.1.0\n")
    write(
        spec_dir / "common", "templates/_helpers.tpl", '{{- define "common.name" -}}x{{- end -}}\n'
    )
    return chart


def test_file_dependency_is_packaged_into_charts(tmp_path: Path) -> None:
    spec_dir = tmp_path / "spec"
    _umbrella(spec_dir)
    spec = load_spec(make_spec(spec_dir, "chart"))

    record = package_chart(spec, tmp_path / "out")

    assert record is not None
    data = (tmp_path / "out" / record.path).read_bytes()
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
        handle = archive.extractfile("demo/charts/common-0.1.0.tgz")
        assert handle is not None
        common = handle.read()
    assert [member.name for member in members_of(common)] == [
        "common/Chart.yaml",
        "common/templates/_helpers.tpl",
    ]
    assert [(d.name, d.version, d.path) for d in record.dependencies] == [
        ("common", "0.1.0", "demo/charts/common-0.1.0.tgz"),
        ("redis", "18.0.0", "demo/charts/redis-18.0.0.tgz"),
    ]
    assert record.dependencies[0].sha256 == hashlib.sha256(common).hexdigest()


def test_chart_images_only_when_spec_asks(authentik_chart: Path) -> None:
    without = load_spec(make_spec(authentik_chart.parent, "authentik"))
    with_images = load_spec(make_spec(authentik_chart.parent, "authentik", chart_images=True))

    assert chart_images(without) == []
    assert chart_images(with_images) == [
        "ghcr.io/goauthentik/server:2026.8.0",
        "ghcr.io/maxmind/geoipupdate:v7.1.1",
        "docker.io/library/postgres:17.11-bookworm",
        "debian:13-slim",
        "prometheuscommunity/postgres-exporter:v0.19.1",
    ]


# ---------------------------------------------------------------------------
# Real builds and installs
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("keys")
    result = run("airlock-bundle", "keygen", "--out", str(folder), "--name", "release")
    assert result.returncode == 0, result.stderr
    return folder


def _build(spec: Path, keys: Path, output: Path) -> subprocess.CompletedProcess[str]:
    return run(
        "airlock-bundle",
        "build",
        str(spec),
        "--key",
        str(keys / "release.key"),
        "--output",
        str(output),
        *MIRROR,
    )


def _manifest(bundle: Path) -> dict:
    with tarfile.open(bundle) as archive:
        handle = archive.extractfile("airlock/manifest.json")
        assert handle is not None
        return json.load(handle)


def test_build_of_authentik_chart_names_missing_dependency(
    authentik_chart: Path, keys: Path, tmp_path: Path
) -> None:
    spec = make_spec(authentik_chart.parent, "authentik")
    output = tmp_path / "x.airlock"

    built = _build(spec, keys, output)

    assert built.returncode == 1, built.stderr
    assert error_line(built.stderr) == (
        f"error: {authentik_chart}: dependency postgresql 18.8.12 from "
        "oci://registry-1.docker.io/bitnamicharts is not vendored "
        "(charts/postgresql-18.8.12.tgz not found)"
    )
    assert not output.exists()


def test_chart_bundle_installs_chart_into_target(
    standins: dict[str, str], keys: Path, tmp_path: Path, compose_project_name: str
) -> None:
    spec_dir = tmp_path / "spec"
    _umbrella(spec_dir)
    spec = make_spec(spec_dir, "chart", chart_images=True)
    output = tmp_path / "chart.airlock"
    target = tmp_path / "target"
    target.mkdir()
    (target / ".env").write_text(f"COMPOSE_PROJECT_NAME={compose_project_name}\n")

    built = _build(spec, keys, output)
    assert built.returncode == 0, built.stderr
    rebuilt = _build(spec, keys, tmp_path / "again.airlock")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert output.read_bytes() == (tmp_path / "again.airlock").read_bytes()

    manifest = _manifest(output)
    chart = manifest["chart"]
    assert chart["path"] == "charts/demo-1.4.0.tgz"
    assert [d["name"] for d in chart["dependencies"]] == ["common", "redis"]
    [member] = [m for m in manifest["members"] if m["path"] == chart["path"]]
    assert member["sha256"] == chart["sha256"]
    # values.yaml names the stand-in postgres image, which compose also uses.
    assert [image["reference"] for image in manifest["images"]] == [IMAGE]

    installed = run(
        "airlock-install",
        "install",
        str(output),
        "--target",
        str(target),
        "--key",
        str(keys / "release.pub"),
        "--timeout",
        "60",
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    carried = target / "charts" / "demo-1.4.0.tgz"
    assert hashlib.sha256(carried.read_bytes()).hexdigest() == chart["sha256"]
