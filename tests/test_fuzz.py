"""Random damage to a small bundle is rejected cleanly or changes nothing that matters.

Each mutant is read with staging on. It must either raise a
`BundleRejectedError` (any other exception fails the test) or verify with
exactly the genuine member contents. Nothing may be written outside the
staging folder, and no read may hang: each example runs under a timer.
"""

from __future__ import annotations

import signal
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import pytest
from bundle_factory import make_bundle
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, event, given, seed, settings
from hypothesis import strategies as st

from installer.archive import read_bundle
from installer.errors import BundleRejectedError
from installer.signing import TrustedKey

# A fixed key makes the bundle, and so every generated example, the same on every run.
KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
FILES = {
    "compose/compose.yml": b"services:\n  app:\n    image: registry.example:5000/demo/app:1.0\n",
    "images/blob": bytes(range(256)) * 6,
    "images/oci-layout": b'{"imageLayoutVersion":"1.0.0"}',
}
# Seconds one example may take; reading a 5 KiB bundle takes milliseconds.
EXAMPLE_TIMEOUT = 10
# Header fields of a ustar block: (offset, length).
HEADER_FIELDS = {
    "name": (0, 100),
    "mode": (100, 8),
    "size": (124, 12),
    "chksum": (148, 8),
    "typeflag": (156, 1),
    "linkname": (157, 100),
    "magic": (257, 6),
    "prefix": (345, 155),
}


@dataclass(frozen=True)
class Genuine:
    """The bundle's bytes, its trusted key and the offset of every tar header."""

    data: bytes = field(repr=False)
    trusted: TrustedKey = field(repr=False)
    headers: tuple[int, ...]


@pytest.fixture(scope="module")
def genuine(tmp_path_factory: pytest.TempPathFactory) -> Genuine:
    folder = tmp_path_factory.mktemp("fuzz")
    bundle = make_bundle(folder, FILES, key=KEY)
    with tarfile.open(bundle.path) as tar:
        headers = tuple(member.offset for member in tar.getmembers())
    return Genuine(bundle.path.read_bytes(), bundle.trusted, headers)


class _Timeout(Exception):
    pass


@pytest.fixture
def alarm() -> Iterator[None]:
    def fire(_signum: int, _frame: FrameType | None) -> None:
        raise _Timeout(f"reading a mutant took more than {EXAMPLE_TIMEOUT} s")

    previous = signal.signal(signal.SIGALRM, fire)
    yield
    signal.signal(signal.SIGALRM, previous)


def _with_checksum(header: bytearray) -> bytearray:
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    return header


@st.composite
def mutants(draw: st.DrawFn, genuine: Genuine) -> bytes:
    out = bytearray(genuine.data)
    kind = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "header", "append"]))
    if kind == "flip":
        for _ in range(draw(st.integers(1, 4))):
            at = draw(st.integers(0, len(out) - 1))
            out[at] ^= draw(st.integers(1, 255))
    elif kind == "truncate":
        del out[draw(st.integers(0, len(out) - 1)) :]
    elif kind == "insert":
        at = draw(st.integers(0, len(out)))
        out[at:at] = draw(st.binary(min_size=1, max_size=1024))
    elif kind == "delete":
        at = draw(st.integers(0, len(out) - 1))
        del out[at : at + draw(st.integers(1, 1024))]
    elif kind == "header":
        # Rewrite one field of one header and fix the checksum, so the
        # header still parses and the reader has to judge its content.
        start = draw(st.sampled_from(genuine.headers))
        offset, length = HEADER_FIELDS[draw(st.sampled_from(sorted(HEADER_FIELDS)))]
        value = draw(
            st.one_of(
                st.binary(min_size=length, max_size=length),
                st.sampled_from([b"0", b"1", b"2", b"3", b"5", b"6", b"7", b"g", b"x", b"L", b"S"]),
                st.integers(0, 8**11 - 1).map(lambda n: b"%011o\0" % n),
            )
        )
        header = bytearray(out[start : start + 512])
        header[offset : offset + min(length, len(value))] = value[:length]
        out[start : start + 512] = _with_checksum(header)
    else:
        out += draw(st.binary(min_size=1, max_size=4096))
    return bytes(out)


def _outside(root: Path, stage: Path) -> set[Path]:
    """Every path below `root` except the staging folder and what is in it."""
    return {path for path in root.rglob("*") if path != stage and stage not in path.parents}


@seed(20261204)
@settings(
    max_examples=400,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_mutated_bundle_is_rejected_or_identical(
    data: st.DataObject,
    genuine: Genuine,
    tmp_path: Path,
    alarm: None,
) -> None:
    mutant = data.draw(mutants(genuine))
    trusted = genuine.trusted
    run_dir = tmp_path / f"run-{len(list(tmp_path.iterdir()))}"
    run_dir.mkdir()
    bundle = run_dir / "mutant.airlock"
    bundle.write_bytes(mutant)
    stage = run_dir / "stage"
    outside_before = _outside(tmp_path, stage)

    signal.alarm(EXAMPLE_TIMEOUT)
    try:
        with bundle.open("rb") as stream:
            verified = read_bundle(stream, [trusted], stage_to=stage)
    except BundleRejectedError as err:
        event(type(err).__name__)
        verified = None
    finally:
        signal.alarm(0)

    assert _outside(tmp_path, stage) == outside_before
    if verified is not None:
        event("verified")
        staged = {
            str(path.relative_to(stage)): path.read_bytes()
            for path in stage.rglob("*")
            if path.is_file()
        }
        assert staged == FILES
        assert [m.path for m in verified.manifest.members] == sorted(FILES)
