"""Files inside a bundle are regular files inside the bundle; archives are validated and capped.

Symlinks (in or out), fifos, directories and /proc files named by a bundle are refused at once —
never followed, never read, never waited on — and an archive can extract to at most a small
multiple of its own size unless the caller says otherwise.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import socket
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pytest

from forensics.bundle import load_bundle, write_bundle
from forensics.bundle.archive import EXPANSION, MIN_EXTRACT_BYTES, extract_limit
from forensics.errors import BundleError
from tests.test_manifest_schema import ACTS, recorded_manifest


@contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Fail (instead of hanging the suite) if the block runs longer than ``seconds``."""

    def expired(*_: object) -> None:
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    write_bundle(tmp_path / "inc", recorded_manifest(), ACTS)
    return tmp_path / "inc"


def list_file(bundle: Path, name: str, data: bytes = b"") -> None:
    """Add ``name`` to the files table with the size and sha256 of ``data``."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"][name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (bundle / "manifest.json").write_text(json.dumps(manifest))


def refused(path: Path | str, **kw: object) -> str:
    with deadline(10), pytest.raises(BundleError) as info:
        load_bundle(path, **kw)  # type: ignore[arg-type]
    return str(info.value)


def test_data_file_symlinked_outside_is_refused_even_with_matching_checksums(bundle: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.arrow"
    shutil.move(bundle / "activations.arrow", outside)  # same bytes: size and sha256 still match
    (bundle / "activations.arrow").symlink_to(outside)
    for verify in (True, False):
        message = refused(bundle, verify=verify)
        assert message == (
            "bundle inc: activations.arrow: expected a regular file, got a symlink"
            " (bundle files are never followed or read unless regular)"
        ), message


def test_symlinked_manifest_is_refused(bundle: Path, tmp_path: Path) -> None:
    shutil.move(bundle / "manifest.json", tmp_path / "m.json")
    (bundle / "manifest.json").symlink_to(tmp_path / "m.json")
    assert "bundle inc: manifest.json: expected a regular file, got a symlink" in refused(bundle)


@pytest.mark.parametrize("target", ["/proc/self/pagemap", "/dev/zero", "/dev/urandom", "/proc/self/mem"])
def test_files_table_entry_reaching_proc_or_dev_is_refused_at_once(bundle: Path, target: str) -> None:
    (bundle / "extra").symlink_to(target)
    list_file(bundle, "extra")
    assert "bundle inc: extra: expected a regular file, got a symlink" in refused(bundle)


def test_fifo_is_refused_without_blocking(bundle: Path) -> None:
    os.mkfifo(bundle / "pipe")
    list_file(bundle, "pipe")
    assert "bundle inc: pipe: expected a regular file, got a fifo" in refused(bundle)
    (bundle / "activations.arrow").unlink()
    os.mkfifo(bundle / "activations.arrow")
    assert "activations.arrow: expected a regular file, got a fifo" in refused(bundle, verify=False)


def test_directory_is_refused(bundle: Path) -> None:
    (bundle / "sub").mkdir()
    list_file(bundle, "sub")
    assert "bundle inc: sub: expected a regular file, got a directory" in refused(bundle)


def test_socket_is_refused(bundle: Path) -> None:
    short = Path(tempfile.mkdtemp(prefix="s", dir="/tmp"))
    try:
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(short / "s"))
        os.symlink(short / "s", bundle / "sock")  # a symlink to it: refused as a symlink
        list_file(bundle, "sock")
        assert "sock: expected a regular file, got a symlink" in refused(bundle)
        sock.close()
    finally:
        shutil.rmtree(short)


def test_dangling_and_looping_symlinks_are_refused(bundle: Path) -> None:
    (bundle / "gone").symlink_to(bundle / "nowhere")
    list_file(bundle, "gone")
    assert "gone: expected a regular file, got a symlink" in refused(bundle)
    (bundle / "gone").unlink()
    (bundle / "gone").symlink_to(bundle / "gone")
    assert "gone: expected a regular file, got a symlink" in refused(bundle)


def test_symlinks_are_refused_through_a_local_subtree_filesystem(bundle: Path, tmp_path: Path) -> None:
    shutil.move(bundle / "activations.arrow", tmp_path / "outside.arrow")
    (bundle / "activations.arrow").symlink_to(tmp_path / "outside.arrow")
    fs = pafs.SubTreeFileSystem(str(tmp_path), pafs.LocalFileSystem())
    with deadline(10), pytest.raises(BundleError, match="got a symlink"):
        load_bundle("inc", filesystem=fs)


def test_file_changed_after_load_is_a_bundle_error(bundle: Path) -> None:
    loaded = load_bundle(bundle)
    with open(bundle / "activations.arrow", "ab") as handle:
        handle.write(b"tail")
    assert "activations.arrow: size mismatch (manifest" in refused(bundle)
    with deadline(10), pytest.raises(BundleError, match="activations.arrow"):
        loaded.activation("model.layers.0")


def test_mapped_arrays_stay_read_only_and_zero_copy(bundle: Path) -> None:
    got = load_bundle(bundle).activation("model.layers.0")
    assert not got.flags.writeable and got.base is not None
    np.testing.assert_array_equal(got, ACTS[0][1])


# --- archives ------------------------------------------------------------------------------------------


def _bomb(tmp_path: Path, declared: int) -> Path:
    """A valid bundle plus one member of ``declared`` zero bytes, as .tar.zst (streamed, small)."""
    write_bundle(tmp_path / "src", recorded_manifest(), ACTS)
    dest = tmp_path / "bomb.tar.zst"
    with (
        pa.OSFile(str(dest), "wb") as raw,
        pa.CompressedOutputStream(raw, "zstd") as out,
        tarfile.open(fileobj=out, mode="w|") as tar,
    ):
        tar.add(tmp_path / "src", arcname=".")
        info = tarfile.TarInfo("pad")
        info.size = declared
        tar.addfile(info, _Zeros(declared))
    return dest


class _Zeros(io.RawIOBase):
    def __init__(self, size: int) -> None:
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        n = min(len(buffer), self.left)
        buffer[:n] = bytes(n)
        self.left -= n
        return n


def test_default_cap_is_a_small_multiple_of_the_archive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    archive = _bomb(tmp_path, 1 << 30)  # 1 GiB of zeros: a few tens of KB of zstd
    size = archive.stat().st_size
    assert size < 200_000
    limit = extract_limit(size)
    assert limit == max(MIN_EXTRACT_BYTES, EXPANSION * size)
    message = refused(archive)
    assert f"bomb.tar.zst: members exceed the size limit of {limit} bytes (member 'pad' declares" in message
    assert sum(f.stat().st_size for f in scratch.rglob("*") if f.is_file()) == 0
    assert list(scratch.iterdir()) == []


def test_cap_is_configurable(tmp_path: Path) -> None:
    archive = _bomb(tmp_path, 32 << 20)
    assert "size limit" in refused(archive)
    bundle = load_bundle(archive, max_archive_bytes=64 << 20)  # the caller knows better
    assert bundle.modules == [name for name, _ in ACTS]


def test_extract_limit_bounds() -> None:
    assert extract_limit(0) == MIN_EXTRACT_BYTES
    assert extract_limit(10 << 20) == EXPANSION * (10 << 20)
    assert extract_limit(1 << 50) == 64 * 1024**3


def test_fifo_named_as_an_archive_is_refused(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "x.tar")
    assert refused(tmp_path / "x.tar").startswith("bundle x: ")  # at once: a fifo is never opened


def test_huge_pax_header_is_bounded(tmp_path: Path) -> None:
    """A pax header is read into memory by tarfile: the whole decompressed stream is bounded too."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("x")
        info.pax_headers = {"comment": "z" * (40 << 20)}
        tar.addfile(info, io.BytesIO(b""))
    (tmp_path / "pax.tar").write_bytes(buffer.getvalue())
    message = refused(tmp_path / "pax.tar", max_archive_bytes=1 << 20)
    assert "pax.tar: " in message
