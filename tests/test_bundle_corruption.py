"""Hostile and corrupt bundles: every one must raise BundleError naming the file and the problem."""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import re
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

import forensics.bundle.manifest as manifest_module
from forensics.bundle import ACTIVATION_SCHEMA, load_bundle, write_bundle
from forensics.errors import BundleError

MARKER = "unpickled.marker"


def make_manifest() -> dict[str, Any]:
    return {
        "kind": "incident",
        "model": {"ref": "tiny", "sha256": "cd" * 32},
        "inputs": {"input_ids": [1, 2, 3]},
        "outputs": {"generated_ids": [7], "text": "no"},
        "failure": {"type": "forbidden", "text": "no"},
        "recorded": {},
    }


def good_bundle(tmp_path: Path, name: str = "incident_7") -> Path:
    items = [("layer.0", np.arange(12, dtype=np.float32).reshape(3, 4)), ("layer.1", np.ones((2, 2), np.int64))]
    write_bundle(tmp_path / name, make_manifest(), items)
    return tmp_path / name


def arrow_path(bundle: Path) -> Path:
    return bundle / "activations.arrow"


def edit_manifest(bundle: Path, change: Callable[[dict[str, Any]], None]) -> None:
    manifest = json.loads((bundle / "manifest.json").read_text())
    change(manifest)
    (bundle / "manifest.json").write_text(json.dumps(manifest))


def rehash(bundle: Path) -> None:
    """Make the manifest's files table agree with activations.arrow as it now is."""
    data = arrow_path(bundle).read_bytes()
    entry = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    edit_manifest(bundle, lambda m: m["files"].update({"activations.arrow": entry}))


def write_raw_arrow(bundle: Path, rows: list[dict[str, Any]], schema: Any = ACTIVATION_SCHEMA) -> None:
    """Write rows bypassing the writer's checks, then fix the files table and module list."""
    with pa.OSFile(str(arrow_path(bundle)), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
        for row in rows:
            writer.write_batch(pa.RecordBatch.from_pylist(row.get("rows", [row]), schema=schema))
    modules = [row.get("rows", [row])[0]["module"] for row in rows]
    edit_manifest(bundle, lambda m: m["recorded"].update({"modules": modules}))
    rehash(bundle)


def flip(path: Path, positions: list[int]) -> None:
    data = bytearray(path.read_bytes())
    for position in positions:
        data[position] ^= 0xFF
    path.write_bytes(bytes(data))


class Boom:
    """Unpickling this would create a marker file: proof if it ever happened."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.marker, "w"))


# --- corruptions: each takes a good bundle dir and breaks it ---------------------------------


def truncate(b: Path) -> None:
    data = arrow_path(b).read_bytes()
    arrow_path(b).write_bytes(data[: len(data) // 2])


def truncate_rehashed(b: Path) -> None:
    truncate(b)
    rehash(b)


def flip_data_bytes(b: Path) -> None:
    size = arrow_path(b).stat().st_size
    flip(arrow_path(b), [size // 3, size // 2])


def flip_footer_rehashed(b: Path) -> None:
    size = arrow_path(b).stat().st_size
    flip(arrow_path(b), list(range(size - 10, size)))  # footer length + "ARROW1" magic
    rehash(b)


def same_size_other_content(b: Path) -> None:
    data = bytearray(arrow_path(b).read_bytes())
    data[-200:-100] = bytes(100)
    arrow_path(b).write_bytes(bytes(data))


def pickle_as_arrow(b: Path) -> None:
    arrow_path(b).write_bytes(pickle.dumps({"weights": Boom(str(b.parent / MARKER))}))


def pickle_as_arrow_rehashed(b: Path) -> None:
    pickle_as_arrow(b)
    rehash(b)


def absurd_shape(b: Path) -> None:
    row = {"module": "layer.0", "dtype": "float32", "shape": [10**6, 10**6], "data": b"\0" * 16}
    write_raw_arrow(b, [row])


def row(module: str = "layer.0", dtype: str = "float32", shape: Any = (2,), data: bytes = b"\0" * 8) -> dict[str, Any]:
    return {"module": module, "dtype": dtype, "shape": list(shape), "data": data}


CASES = [
    pytest.param(truncate, "activations.arrow", "size mismatch", id="truncated-arrow"),
    pytest.param(truncate_rehashed, "activations.arrow", "not a valid Arrow IPC file", id="truncated-arrow-rehashed"),
    pytest.param(flip_data_bytes, "activations.arrow", "sha256 mismatch", id="flipped-bytes"),
    pytest.param(flip_footer_rehashed, "activations.arrow", "not a valid Arrow IPC file", id="flipped-footer-rehashed"),
    pytest.param(
        same_size_other_content,
        "activations.arrow",
        r"sha256 mismatch \(manifest [0-9a-f]{12}…, file [0-9a-f]{12}…\)",
        id="checksum-mismatch-same-size",
    ),
    pytest.param(lambda b: (b / "manifest.json").unlink(), "manifest.json", "missing", id="missing-manifest"),
    pytest.param(lambda b: arrow_path(b).unlink(), "activations.arrow", "missing", id="missing-activations"),
    pytest.param(
        lambda b: edit_manifest(b, lambda m: m.update(schema="model-forensics/bundle@0")),
        "manifest.json",
        r"unsupported schema id 'model-forensics/bundle@0'; this reader supports 'model-forensics/bundle@1'",
        id="wrong-schema-id",
    ),
    pytest.param(
        lambda b: edit_manifest(b, lambda m: m.pop("schema")),
        "manifest.json",
        "unsupported schema id None",
        id="no-schema-id",
    ),
    pytest.param(
        lambda b: (b / "manifest.json").write_text("{not json"),
        "manifest.json",
        "not valid UTF-8 JSON",
        id="manifest-not-json",
    ),
    pytest.param(
        lambda b: (b / "manifest.json").write_bytes(b"\xff\xfe{}"),
        "manifest.json",
        "not valid UTF-8 JSON",
        id="manifest-not-utf8",
    ),
    pytest.param(
        lambda b: (b / "manifest.json").write_text("[1, 2]"),
        "manifest.json",
        "must be a JSON object, got array",
        id="manifest-is-list",
    ),
    pytest.param(
        lambda b: (b / "manifest.json").write_text('{"schema": 1, "schema": 2}'),
        "manifest.json",
        "duplicate key",
        id="manifest-duplicate-key",
    ),
    pytest.param(
        lambda b: (b / "manifest.json").write_text('{"x": NaN}'),
        "manifest.json",
        "NaN is not strict JSON",
        id="manifest-nan",
    ),
    pytest.param(
        lambda b: edit_manifest(b, lambda m: m.pop("model")),
        "manifest.json",
        "missing required key 'model'",
        id="missing-key",
    ),
    pytest.param(
        lambda b: edit_manifest(b, lambda m: m.update(kind="weird")),
        "manifest.json",
        "kind: expected one of 'incident', 'benign', got string 'weird'",
        id="bad-kind",
    ),
    pytest.param(
        lambda b: edit_manifest(b, lambda m: m.update(model=[1])),
        "manifest.json",
        "model: expected an object, got array",
        id="model-not-object",
    ),
    pytest.param(
        lambda b: edit_manifest(b, lambda m: m["model"].pop("sha256")),
        "manifest.json",
        "model: missing required key 'sha256'",
        id="model-no-sha",
    ),
    pytest.param(
        lambda b: edit_manifest(b, lambda m: m["inputs"].update(input_ids=[1, True])),
        "manifest.json",
        r"inputs.input_ids\[1\]: expected a token id .*, got boolean true",
        id="input-ids-bool",
    ),
    pytest.param(
        lambda b: edit_manifest(b, lambda m: m.update(created_at="yesterday")),
        "manifest.json",
        "created_at: expected an ISO-8601 timestamp, got string 'yesterday'",
        id="bad-created-at",
    ),
    pytest.param(
        lambda b: edit_manifest(b, lambda m: m.update(bundle_id="../etc")),
        "manifest.json",
        "bundle_id: expected a non-empty name without separators .*, got string '../etc'",
        id="bundle-id-separator",
    ),
    pytest.param(
        lambda b: edit_manifest(b, lambda m: m.update(bundle_id="a\x00b")),
        "manifest.json",
        "control",
        id="bundle-id-control-char",
    ),
    pytest.param(
        lambda b: edit_manifest(b, lambda m: m["files"].update({"../../etc/passwd": {"bytes": 1, "sha256": "0" * 64}})),
        "manifest.json",
        "files: expected a plain file name of the bundle .*, got string '../../etc/passwd'",
        id="files-table-escape",
    ),
    pytest.param(
        lambda b: edit_manifest(b, lambda m: m["files"]["activations.arrow"].update(sha256="XYZ")),
        "manifest.json",
        "64 lowercase hex",
        id="files-table-bad-sha",
    ),
    pytest.param(
        lambda b: edit_manifest(b, lambda m: m["files"].update(extra={"bytes": 1, "sha256": "0" * 64})),
        "extra",
        "missing",
        id="listed-file-missing",
    ),
    pytest.param(pickle_as_arrow, "activations.arrow", "size mismatch", id="pickle-as-arrow"),
    pytest.param(
        pickle_as_arrow_rehashed, "activations.arrow", "not a valid Arrow IPC file", id="pickle-as-arrow-rehashed"
    ),
    pytest.param(
        absurd_shape,
        "activations.arrow",
        r"shape \[1000000, 1000000\] has 1000000000000 elements, limit 17179869184",
        id="absurd-shape",
    ),
    pytest.param(
        lambda b: write_raw_arrow(b, [row(shape=(-1, -8))]),
        "activations.arrow",
        "negative dimension",
        id="negative-shape",
    ),
    pytest.param(
        lambda b: write_raw_arrow(b, [row(shape=(3,))]),
        "activations.arrow",
        "needs 12 bytes, data has 8",
        id="shape-data-length-mismatch",
    ),
    pytest.param(
        lambda b: write_raw_arrow(b, [row(shape=[1] * 65, data=b"\0" * 4)]),
        "activations.arrow",
        "65 dims",
        id="too-many-dims",
    ),
    pytest.param(
        lambda b: write_raw_arrow(b, [row(dtype="object")]),
        "activations.arrow",
        "dtype 'object' not in allowed",
        id="bad-dtype",
    ),
    pytest.param(
        lambda b: write_raw_arrow(b, [{"rows": [row(), row()]}]),
        "activations.arrow",
        "has 2 rows, expected exactly 1",
        id="two-rows",
    ),
    pytest.param(
        lambda b: write_raw_arrow(b, [row()], schema=ACTIVATION_SCHEMA.append(pa.field("x", pa.int8()))),
        "activations.arrow",
        "is not the bundle schema",
        id="extra-column",
    ),
    pytest.param(
        lambda b: edit_manifest(b, lambda m: m["recorded"].update(modules=["layer.1", "layer.0"])),
        "activations.arrow",
        "batch 0 \\('layer.0'\\): manifest lists module 'layer.1'",
        id="module-order-mismatch",
    ),
    pytest.param(
        lambda b: edit_manifest(b, lambda m: m["recorded"].update(modules=["layer.0"])),
        "activations.arrow",
        "has 2 record batches, manifest.json recorded.modules lists 1",
        id="module-count-mismatch",
    ),
    pytest.param(
        lambda b: edit_manifest(b, lambda m: m["recorded"].update(modules=["a", "a"])),
        "manifest.json",
        "twice",
        id="duplicate-modules",
    ),
]


@pytest.mark.parametrize(("corrupt", "file", "problem"), CASES)
def test_corrupt_bundle_is_refused(tmp_path: Path, corrupt: Callable[[Path], None], file: str, problem: str) -> None:
    bundle = good_bundle(tmp_path)
    load_bundle(bundle)  # sane before the corruption
    corrupt(bundle)
    with pytest.raises(BundleError) as info:
        load_bundle(bundle)
    message = str(info.value)
    assert message.startswith(f"bundle incident_7: {file}: "), message
    assert re.search(problem, message), message
    assert not (tmp_path / MARKER).exists()


def test_pickle_is_never_unpickled(tmp_path: Path) -> None:
    bundle = good_bundle(tmp_path)
    pickle_as_arrow_rehashed(bundle)
    for verify in (True, False):
        with pytest.raises(BundleError, match="activations.arrow"):
            load_bundle(bundle, verify=verify)
    assert not (tmp_path / MARKER).exists()


def test_corruption_after_unverified_load_is_caught_on_read(tmp_path: Path) -> None:
    bundle = good_bundle(tmp_path)
    absurd_shape(bundle)
    view = load_bundle(bundle, verify=False)
    with pytest.raises(BundleError, match="1000000000000 elements"):
        view.activation("layer.0")


def test_oversized_manifest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bundle = good_bundle(tmp_path)
    monkeypatch.setattr(manifest_module, "MAX_MANIFEST_BYTES", 64)
    monkeypatch.setattr("forensics.bundle.bundle.MAX_MANIFEST_BYTES", 64)
    with pytest.raises(BundleError, match=r"manifest.json: \d+ bytes, more than the limit 64"):
        load_bundle(bundle)


def test_missing_bundle_directory(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="no such bundle directory"):
        load_bundle(tmp_path / "nowhere")
    with pytest.raises(BundleError, match="cannot resolve"):
        load_bundle("nosuchscheme://x/y")


# --- hostile archives ------------------------------------------------------------------------


def add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def add_special(tar: tarfile.TarFile, name: str, kind: bytes, target: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    tar.addfile(info)


def hostile_tar(tmp_path: Path, extra: Callable[[tarfile.TarFile], None], zstd: bool) -> Path:
    bundle = good_bundle(tmp_path, "src")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        extra(tar)
        tar.add(bundle, arcname=".")
    dest = tmp_path / ("evil.tar.zst" if zstd else "evil.tar")
    if zstd:
        with pa.OSFile(str(dest), "wb") as raw, pa.CompressedOutputStream(raw, "zstd") as out:
            out.write(buffer.getvalue())
    else:
        dest.write_bytes(buffer.getvalue())
    return dest


TAR_CASES = [
    pytest.param(lambda t: add_bytes(t, "../escaped", b"x"), r"member '../escaped' has a '..' component", id="dotdot"),
    pytest.param(lambda t: add_bytes(t, "a/../../escaped", b"x"), r"'..' component", id="nested-dotdot"),
    pytest.param(lambda t: add_bytes(t, "/tmp/escaped-absolute", b"x"), "absolute", id="absolute"),
    pytest.param(
        lambda t: add_special(t, "link", tarfile.SYMTYPE, "/etc/passwd"), "member 'link' is a symlink", id="symlink"
    ),
    pytest.param(lambda t: add_special(t, "hard", tarfile.LNKTYPE, "/etc/passwd"), "is a hard link", id="hardlink"),
    pytest.param(lambda t: add_special(t, "dev", tarfile.CHRTYPE), "is a character device", id="device"),
    pytest.param(lambda t: add_special(t, "fifo", tarfile.FIFOTYPE), "is a fifo", id="fifo"),
    pytest.param(
        lambda t: add_special(t, "evil", tarfile.GNUTYPE_SPARSE),
        r"member 'evil' is a GNU sparse file \(tar type 'S'\); only regular files and directories",
        id="gnu-sparse",
    ),
    pytest.param(
        lambda t: add_special(t, "old", tarfile.CONTTYPE),
        r"member 'old' is a contiguous file \(tar type '7'\)",
        id="contiguous",
    ),
]


@pytest.mark.parametrize("zstd", [False, True])
@pytest.mark.parametrize(("extra", "problem"), TAR_CASES)
def test_hostile_archive_is_refused(
    tmp_path: Path, extra: Callable[[tarfile.TarFile], None], problem: str, zstd: bool
) -> None:
    archive = hostile_tar(tmp_path, extra, zstd)
    with pytest.raises(BundleError) as info:
        load_bundle(archive)
    message = str(info.value)
    assert message.startswith(f"bundle evil: {archive.name}: "), message
    assert re.search(problem, message), message
    assert not (tmp_path / "escaped").exists() and not (tmp_path.parent / "escaped").exists()
    assert not Path("/tmp/escaped-absolute").exists()


def test_archive_size_limit(tmp_path: Path) -> None:
    archive = hostile_tar(tmp_path, lambda t: add_bytes(t, "pad", b"\0" * 4096), zstd=False)
    with pytest.raises(BundleError, match="evil.tar: .*size limit of 1000 bytes"):
        load_bundle(archive, max_archive_bytes=1000)


@pytest.mark.parametrize("content", [b"not a tar at all" * 100, b""])
def test_garbage_archive(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "junk.tar.zst").write_bytes(content)
    with pytest.raises(BundleError, match="bundle junk: junk.tar.zst: "):
        load_bundle(tmp_path / "junk.tar.zst")


def test_failed_archive_loads_leave_no_temp_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(scratch))
    archive = hostile_tar(tmp_path, lambda t: add_bytes(t, "../escaped", b"x"), zstd=True)
    with pytest.raises(BundleError):
        load_bundle(archive)
    bundle = good_bundle(tmp_path, "ok")
    flip_data_bytes(bundle)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(bundle, arcname="ok")
    (tmp_path / "ok.tar").write_bytes(buffer.getvalue())
    with pytest.raises(BundleError, match="bundle ok: activations.arrow: sha256 mismatch"):
        load_bundle(tmp_path / "ok.tar")
    assert list(scratch.iterdir()) == []


def test_archive_without_manifest(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        add_bytes(tar, "readme.txt", b"hi")
    (tmp_path / "empty.tar").write_bytes(buffer.getvalue())
    with pytest.raises(BundleError, match="bundle empty: manifest.json: missing"):
        load_bundle(tmp_path / "empty.tar")


def test_zstd_bomb_is_refused_before_it_is_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A few KB of zstd declaring a 64 MB member: refused on its tar header, nothing extracted."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    monkeypatch.setattr(tempfile, "tempdir", None)
    archive = hostile_tar(tmp_path, lambda t: add_bytes(t, "pad", b"\0" * (64 << 20)), zstd=True)
    assert archive.stat().st_size < 100_000
    with pytest.raises(BundleError, match=r"evil.tar.zst: .*size limit of 1000000 bytes \(member .*pad"):
        load_bundle(archive, max_archive_bytes=1_000_000)
    written = sum(f.stat().st_size for f in scratch.rglob("*") if f.is_file())
    assert written < 1_000_000
