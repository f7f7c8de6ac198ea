"""Structure-aware fuzz of the bundle loader: hostile bundles through ``load_bundle`` and every accessor.

    .venv/bin/python bench/fuzz_bundles.py [--cases 12000] [--seed 0] [--timeout 10]

Builds N hostile bundles from a few pristine ones (plain, zstd, renamed data file, encrypted), in
six families: valid JSON manifests with wrong types, ranges and cross-field lies; lying files
tables; valid Arrow IPC files with inconsistent dtype/shape/module/schema; symlinks and special
files (``/proc/self/pagemap``, ``/dev/zero``, fifos, sockets, directories, loops); hostile ``.tar`` /
``.tar.zst`` archives (traversal, links, devices, bombs, trailing garbage, truncation, bit flips);
encrypted bundles with tampered ids, keys and ciphertexts. Each goes through ``load_bundle`` and
every ``Bundle`` accessor, then through what the replayer reads from a loaded manifest (the failure
spec, the decision step within the generated ids, the top-k row, strict JSON re-encoding).

Prints the cases per family and the outcomes by type. Goal: 0 outcomes other than ``loaded`` and
``BundleError``, 0 hangs (a case still running after ``--timeout`` seconds), no temp dir left behind.
A test runs a seeded few hundred (``tests/test_fuzz_hostile.py``).
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import io
import json
import os
import random
import shutil
import signal
import socket
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from forensics.bundle import ACTIVATION_SCHEMA, load_bundle, write_bundle  # noqa: E402
from forensics.errors import BundleError  # noqa: E402

KEY = bytes(range(40, 72))
OTHER_KEY = bytes(range(1, 33))
MODULES = ["model.layers.0", "model.layers.0.self_attn", "model.layers.1"]
MANIFEST = {
    "kind": "incident",
    "model": {"ref": "tiny-llama", "sha256": "ab" * 32, "family": "llama", "dtype": "float32", "vocab_size": 256},
    "tokenizer": {"ref": "tiny-llama"},
    "inputs": {"prompt": "The capital of Australia is", "input_ids": [1, 17, 5, 9]},
    "generation": {"greedy": True, "max_new_tokens": 3, "seed": 0},
    "outputs": {
        "generated_ids": [9, 4, 2],
        "text": " Sydney.",
        "decision_step": 1,
        "is_failure": True,
        "observed_id": 4,
        "target_id": 12,
        "top_k": [
            {"ids": [9, 12], "logits": [3.5, 2.0]},
            {"ids": [4, 12], "logits": [1.0, 0.5]},
            {"ids": [2, 3], "logits": [0.25, -1.0]},
        ],
    },
    "failure": {"type": "expected", "text": " Canberra", "token_ids": [9, 12], "regex": False},
    "recorded": {"sites": dict.fromkeys(MODULES, "resid"), "positions": 6, "dtype": "float32"},
    "external_calls": [
        {
            "name": "search",
            "args": ["q"],
            "kwargs": {"k": 1},
            "result": {"docs": ["a"]},
            "error": None,
            "started_at": 1.5,
            "duration_s": 0.25,
        }
    ],
    "environment": {"python": "3.11", "torch": "2.4", "device": "cpu"},
}
HOSTILE_VALUES: list[Any] = [
    None,
    True,
    False,
    0,
    -1,
    -100,
    1,
    7,
    10**6,
    2**31,
    2**53 + 1,
    2**63 - 1,
    1.5,
    -0.0,
    1.0,
    "",
    "abc",
    "0",
    "\u202e",
    "a/b",
    "../x",
    [],
    [-1],
    [None],
    [1.5],
    [True],
    ["1"],
    [2**40],
    {},
    {"type": "expected"},
    [[1]],
    {"ids": [1]},
    "x" * 5000,
    [0] * 300,
]
RAW_VALUES = [
    "1e400",
    "-1e400",
    "NaN",
    "Infinity",
    "-Infinity",
    '"\\ud800"',
    '"a\\udfffb"',
    "1" + "0" * 25,
    "[" * 600 + "]" * 600,
    '{"a":' * 70 + "1" + "}" * 70,
    "-" + "9" * 5000,
]


@dataclass(frozen=True)
class Pristine:
    """The clean bundles hostile ones are made from (built once)."""

    plain: Path
    zstd: Path
    renamed: Path
    encrypted: Path
    outside: Path  # a directory beside them: where symlinks lead out to


def build_pristine(work: Path) -> Pristine:
    rng = np.random.default_rng(0)
    acts = [(m, rng.standard_normal((6, 8)).astype(np.float32)) for m in MODULES]
    write_bundle(work / "plain", MANIFEST, acts)
    write_bundle(work / "zstd", MANIFEST, acts, compression="zstd")
    write_bundle(work / "renamed", MANIFEST, acts, compression="zstd")
    _rename_data(work / "renamed", "activations.zstd.arrow")
    write_bundle(work / "encrypted", MANIFEST, acts, encryption_key=KEY)
    (work / "outside").mkdir()
    return Pristine(work / "plain", work / "zstd", work / "renamed", work / "encrypted", work / "outside")


def _rename_data(bundle: Path, name: str) -> None:
    os.rename(bundle / "activations.arrow", bundle / name)
    manifest = read_manifest(bundle)
    manifest["files"][name] = manifest["files"].pop("activations.arrow")
    manifest["activations_file"] = name
    write_manifest(bundle, manifest)


def read_manifest(bundle: Path) -> dict[str, Any]:
    return json.loads((bundle / "manifest.json").read_bytes())


def write_manifest(bundle: Path, manifest: Any, raw: dict[str, str] | None = None) -> None:
    text = json.dumps(manifest)
    for placeholder, literal in (raw or {}).items():
        text = text.replace(json.dumps(placeholder), literal, 1)
    (bundle / "manifest.json").write_text(text)


def data_name(bundle: Path) -> str:
    return str(read_manifest(bundle).get("activations_file", "activations.arrow"))


def rehash(bundle: Path, name: str | None = None) -> None:
    """Make the files table agree with ``name`` (default: the data file) as it now is."""
    manifest = read_manifest(bundle)
    name = name or str(manifest.get("activations_file", "activations.arrow"))
    data = (bundle / name).read_bytes()
    manifest["files"][name] = {
        **manifest["files"].get(name, {}),
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    write_manifest(bundle, manifest)


# --- family 1: manifests (valid JSON, wrong types, ranges and cross-field lies) ---------------------


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _paths(item, (*prefix, index))


def _parent(root: Any, path: tuple[Any, ...]) -> Any:
    node = root
    for key in path[:-1]:
        node = node[key]
    return node


def _hostile(rng: random.Random) -> Any:
    return json.loads(json.dumps(rng.choice(HOSTILE_VALUES)))  # a fresh copy: never shared, never cyclic


def mutate_manifest(rng: random.Random, bundle: Path, _: Pristine) -> None:
    manifest = read_manifest(bundle)
    raw: dict[str, str] = {}
    for _round in range(rng.choice([1, 1, 1, 2, 3])):
        paths = [p for p in _paths(manifest) if p]
        path = rng.choice(paths)
        parent, key = _parent(manifest, path), path[-1]
        action = rng.random()
        if action < 0.15 and isinstance(parent, dict):
            parent.pop(key)
        elif action < 0.35:
            placeholder = f"@RAW{len(raw)}@"
            raw[placeholder] = rng.choice(RAW_VALUES)
            parent[key] = placeholder
        elif action < 0.45 and isinstance(parent, dict):
            parent[rng.choice(["zz", "", "\x00", "a" * 300, "generated_ids", "token_ids"])] = _hostile(rng)
        else:
            parent[key] = _hostile(rng)
    write_manifest(bundle, manifest, raw)


def cross_field_lie(rng: random.Random, bundle: Path, _: Pristine) -> None:
    """Values of the right type that contradict each other."""
    m = read_manifest(bundle)
    outputs, n = m["outputs"], len(m["outputs"]["generated_ids"])
    lies: list[Callable[[], None]] = [
        lambda: outputs.update(decision_step=n + rng.randrange(0, 10**6)),
        lambda: outputs.update(observed_id=(outputs["generated_ids"][outputs["decision_step"]] + 1) % 256),
        lambda: outputs.update(top_k=outputs["top_k"][: rng.randrange(0, 2)]),
        lambda: outputs["top_k"][rng.randrange(3)].update(logits=[1.0] * rng.choice([0, 1, 3])),
        lambda: m["model"].update(vocab_size=rng.randrange(1, 18)),
        lambda: outputs.update(generated_ids=[rng.randrange(256, 2**31)]),
        lambda: m["failure"].update(type=rng.choice(["label", "forbidden"]), token_ids=[], text=""),
        lambda: m["failure"].update(token_ids=[rng.randrange(256, 10**5)]),
        lambda: m.update(failure=None, outputs={"decision_step": rng.randrange(0, 5)}),
        lambda: m["recorded"].update(modules=rng.choice([MODULES[::-1], MODULES[:2], [*MODULES, "extra"], []])),
        lambda: m["recorded"].update(modules=[MODULES[0]] * 3),
        lambda: m.update(created_at=rng.choice(["yesterday", "2025-13-01", "", "2025-01-01T25:00"])),
        lambda: m.update(bundle_id=rng.choice(["", ".", "..", "a/b", "a\\b", "x\ny", "\u0000", "é" * 300])),
        lambda: m.update(kind=rng.choice(["Incident", "", "benign ", "incident\x00"])),
        lambda: m.update(schema=rng.choice(["model-forensics/bundle@2", "", None, 1])),
    ]
    rng.choice(lies)()
    write_manifest(bundle, m)


def lying_files_table(rng: random.Random, bundle: Path, _: Pristine) -> None:
    m = read_manifest(bundle)
    data = str(m.get("activations_file", "activations.arrow"))
    entry = m["files"][data]
    lies: list[Callable[[], None]] = [
        lambda: entry.update(bytes=entry["bytes"] + rng.choice([-1, 1, -entry["bytes"], 2**40])),
        lambda: entry.update(bytes=rng.choice([-1, 1.5, "12", None, 2**64, True])),
        lambda: entry.update(sha256=rng.choice(["0" * 64, entry["sha256"].upper(), entry["sha256"][:-1], ""])),
        lambda: entry.update(compression=rng.choice(["lz4", "", None, 1])),
        lambda: m["files"].update({rng.choice(["extra", "x.arrow", "README"]): {"bytes": 1, "sha256": "0" * 64}}),
        lambda: m["files"].update(
            {
                rng.choice(["../x", "/etc/passwd", ".hidden", "a/b", "manifest.json", "", "c:\\x", "n\x00"]): {
                    "bytes": 0,
                    "sha256": "0" * 64,
                }
            }
        ),
        lambda: m["files"].update({f"f{i}": {"bytes": 0, "sha256": "0" * 64} for i in range(rng.choice([65, 500]))}),
        lambda: m["files"].pop(data),
        lambda: m.update(files=rng.choice([[], None, {}, "activations.arrow"])),
        lambda: m.update(
            activations_file=rng.choice(["manifest.json", "nope.arrow", "../activations.arrow", "", ".arrow", 3, None])
        ),
        lambda: m.update(encryption={"algorithm": "AES-256-GCM", "key_id": "0" * 16, "files": [data]}),
        lambda: m.update(encryption=rng.choice([{}, [], None, {"algorithm": "ROT13", "key_id": "x", "files": []}])),
    ]
    rng.choice(lies)()
    write_manifest(bundle, m)


# --- family 2: valid Arrow IPC files that lie about their tensors -----------------------------------


def _hostile_row(rng: random.Random, module: str) -> dict[str, Any]:
    dtype = rng.choice(
        [
            "float32",
            "float16",
            "float64",
            "int32",
            "int64",
            "object",
            "float8",
            "",
            "<f4",
            "int8",
            "bool",
            "complex64",
            "V8",
        ]
    )
    shape = rng.choice(
        [
            [6, 8],
            [0, 2**62, 2**62],
            [-1, 8],
            [2**40, 2**40],
            [1] * 65,
            [],
            [0],
            [48],
            [2**63 - 1],
            [6, 8, 0],
            [3, -3],
            [1, 1, 1, 1, 1, 1, 1, 1, 1, 192],
        ]
    )
    size = rng.choice([0, 1, 4, 191, 192, 193, 384, 1536])
    return {"module": module, "dtype": dtype, "shape": shape, "data": rng.randbytes(size)}


def lying_arrow(rng: random.Random, bundle: Path, _: Pristine) -> None:
    """Rewrite the data file as valid Arrow IPC whose rows contradict the manifest or themselves."""
    m = read_manifest(bundle)
    data = str(m.get("activations_file", "activations.arrow"))
    modules = list(m["recorded"]["modules"])
    rows: list[list[dict[str, Any]]] = [[_hostile_row(rng, name)] for name in modules]
    twist = rng.random()
    if twist < 0.15:
        rows = rows[: rng.randrange(len(rows))]
    elif twist < 0.25:
        rows[0] = [rows[0][0], rows[0][0]]
    elif twist < 0.35:
        rows[rng.randrange(len(rows))][0]["module"] = rng.choice(["", "other", modules[0], "\u00e9" * 2000])
    schema = ACTIVATION_SCHEMA
    if rng.random() < 0.15:
        schema = rng.choice(
            [
                ACTIVATION_SCHEMA.append(pa.field("x", pa.int8())),
                pa.schema(
                    [
                        pa.field("module", pa.string()),
                        pa.field("dtype", pa.string()),
                        pa.field("shape", pa.list_(pa.int32())),
                        pa.field("data", pa.binary()),
                    ]
                ),
                pa.schema([f.with_nullable(True) for f in ACTIVATION_SCHEMA]),
            ]
        )
    if twist > 0.9 and schema is not ACTIVATION_SCHEMA:
        rows[0][0]["module"] = None
    _write_arrow(bundle / data, schema, rows, rng.choice([None, None, "zstd", "lz4"]), rng)
    if rng.random() < 0.9:
        rehash(bundle)


def _write_arrow(
    path: Path, schema: Any, rows: list[list[dict[str, Any]]], compression: str | None, rng: random.Random
) -> None:
    options = pa.ipc.IpcWriteOptions(compression=compression)
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, schema, options=options) as writer:
        for batch_rows in rows:
            if "x" in schema.names:
                batch_rows = [{**r, "x": 1} for r in batch_rows]
            try:
                writer.write_batch(pa.RecordBatch.from_pylist(batch_rows, schema=schema))
            except (pa.ArrowException, OverflowError, TypeError, ValueError):
                writer.write_batch(pa.RecordBatch.from_pylist([{**batch_rows[0], "shape": [1]}], schema=schema))
    if rng.random() < 0.1:  # and a flipped byte in the footer or a buffer, checksums fixed after
        blob = bytearray(path.read_bytes())
        blob[rng.randrange(len(blob))] ^= 1 << rng.randrange(8)
        path.write_bytes(bytes(blob))


# --- family 3: symlinks and special files --------------------------------------------------------------


def special_files(rng: random.Random, bundle: Path, pristine: Pristine) -> None:
    name = rng.choice([data_name(bundle), data_name(bundle), "manifest.json", "extra"])
    target = bundle / name
    if name == "extra":
        m = read_manifest(bundle)
        m["files"]["extra"] = {"bytes": 0, "sha256": hashlib.sha256(b"").hexdigest()}
        write_manifest(bundle, m)
    elif name == "manifest.json" and rng.random() < 0.5:
        outside = pristine.outside / f"m{rng.randrange(10**9)}.json"
        shutil.copy(target, outside)
        target.unlink()
        target.symlink_to(outside)
        return
    elif target.exists():
        copy = pristine.outside / f"d{rng.randrange(10**9)}"
        shutil.copy(target, copy)  # same bytes: the checksums still match through a link
        target.unlink()
        if rng.random() < 0.3:
            target.symlink_to(copy)
            return
    kind = rng.choice(
        ["pagemap", "mem", "zero", "urandom", "null", "fifo", "dir", "dangling", "loop", "socket", "proc-dir", "parent"]
    )
    _make_special(kind, target, pristine)


def _make_special(kind: str, target: Path, pristine: Pristine) -> None:
    links = {
        "pagemap": "/proc/self/pagemap",
        "mem": "/proc/self/mem",
        "zero": "/dev/zero",
        "urandom": "/dev/urandom",
        "null": "/dev/null",
        "dangling": str(target) + ".gone",
        "loop": str(target),
        "proc-dir": "/proc/self",
        "parent": "..",
    }
    if kind in links:
        target.symlink_to(links[kind])
    elif kind == "fifo":
        os.mkfifo(target)
    elif kind == "dir":
        target.mkdir()
    else:
        short = Path(tempfile.mkdtemp(prefix="fz", dir="/tmp"))
        sock = socket.socket(socket.AF_UNIX)
        try:
            sock.bind(str(short / "s"))
            target.symlink_to(short / "s")
        finally:
            sock.close()
            shutil.rmtree(short, ignore_errors=True)


# --- family 4: hostile archives --------------------------------------------------------------------------


def _member(name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, link: str = "") -> tuple[Any, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, link, len(data) if kind == tarfile.REGTYPE else 0
    return info, data


def hostile_archive(rng: random.Random, bundle: Path, _: Pristine) -> Path:
    """A tar (or tar.zst) of ``bundle`` plus one hostile twist; returns the archive's path."""
    twist = rng.choice(
        [
            "dotdot",
            "absolute",
            "symlink",
            "hardlink",
            "fifo",
            "chardev",
            "blockdev",
            "bomb",
            "truncated-member",
            "trailing",
            "second-archive",
            "cut",
            "flip",
            "pax",
            "longname",
            "control-name",
            "backslash",
            "two-roots",
            "no-manifest",
            "junk",
            "many",
            "empty-names",
        ]
    )
    extras, before = _extras(rng, twist), rng.random() < 0.5
    arcname = rng.choice([".", bundle.name])
    for fmt in (rng.choice([tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT]), tarfile.GNU_FORMAT):
        buffer = io.BytesIO()
        try:
            with tarfile.open(fileobj=buffer, mode="w", format=fmt) as tar:
                for info, data in extras if before else ():
                    _add(tar, info, data)
                if twist not in ("no-manifest", "junk"):
                    tar.add(bundle, arcname=arcname, filter=lambda i: _member_filter(i, twist))
                for info, data in () if before else extras:
                    _add(tar, info, data)
            break
        except ValueError:  # a header this format cannot hold (long name, huge size): GNU can
            continue
    blob = _twist_bytes(rng, twist, buffer.getvalue())
    zstd = rng.random() < 0.5
    dest = bundle.parent / (bundle.name + (".tar.zst" if zstd else ".tar"))
    if zstd:
        blob = _zstd(blob)
        if rng.random() < 0.1:
            blob = blob[: rng.randrange(len(blob))]
    dest.write_bytes(blob)
    return dest


def _member_filter(info: Any, twist: str) -> Any:
    """Fixed metadata, so the same seed builds the same bytes; "two-roots" drops the real manifest."""
    info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
    return None if twist == "two-roots" and info.name.endswith("json") else info


def _add(tar: tarfile.TarFile, info: Any, data: bytes) -> None:
    """Add a member; one declaring more bytes than it has gets its header only (a lying header)."""
    tar.addfile(info, io.BytesIO(data) if len(data) >= info.size else None)


def _extras(rng: random.Random, twist: str) -> list[tuple[Any, bytes]]:
    if twist in ("dotdot", "absolute", "control-name", "backslash", "empty-names"):
        name = {
            "dotdot": "../../escaped",
            "absolute": "/tmp/escaped-abs",
            "control-name": "a\x1bb",
            "backslash": "..\\x",
            "empty-names": "./",
        }[twist]
        return [_member(name, b"x")]
    if twist in ("symlink", "hardlink", "fifo", "chardev", "blockdev"):
        kind = {
            "symlink": tarfile.SYMTYPE,
            "hardlink": tarfile.LNKTYPE,
            "fifo": tarfile.FIFOTYPE,
            "chardev": tarfile.CHRTYPE,
            "blockdev": tarfile.BLKTYPE,
        }[twist]
        return [
            _member(
                rng.choice(["activations.arrow", "link", "manifest.json"]),
                kind=kind,
                link=rng.choice(["/etc/passwd", "/proc/self/pagemap", "../x"]),
            )
        ]
    if twist == "bomb":
        info, _ = _member("pad")
        info.size = rng.choice([2**30, 2**40, 64 << 20])
        return [(info, b"")]  # declared, never supplied: refused on its header
    if twist == "truncated-member":
        info, _ = _member("pad")
        info.size = 4096
        return [(info, b"")]
    if twist == "pax":
        info, data = _member("p", b"")
        info.pax_headers = {"comment": "z" * rng.choice([10, 1 << 16]), "size": rng.choice(["-1", "x", "1e9"])}
        return [(info, data)]
    if twist == "longname":
        return [_member("d/" * 200 + "f", b"x")]
    if twist == "two-roots":
        return [_member("other/manifest.json", b"{}")]
    if twist == "junk":
        return [_member("readme.txt", b"hi")]
    if twist == "many":
        return [_member(f"m{i}", b"") for i in range(10_001)] if rng.random() < 0.05 else [_member("m", b"")]
    return []


def _twist_bytes(rng: random.Random, twist: str, blob: bytes) -> bytes:
    if twist == "trailing":
        return blob.rstrip(b"\0") + b"\0" * 1024 + rng.choice([b"x" * 512, rng.randbytes(700), b"\0" * 4096 + b"!"])
    if twist == "second-archive":
        return blob.rstrip(b"\0") + b"\0" * 1024 + blob
    if twist == "cut":
        return blob[: rng.randrange(len(blob))]
    if twist == "flip":
        out = bytearray(blob)
        for _ in range(rng.randrange(1, 4)):
            out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
        return bytes(out)
    if twist == "junk" and rng.random() < 0.5:
        return rng.randbytes(rng.choice([0, 10, 512, 2048]))
    return blob


def _zstd(blob: bytes) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.CompressedOutputStream(sink, "zstd") as out:
        out.write(blob)
    return bytes(sink.getvalue().to_pybytes())


# --- family 5: encrypted bundles ------------------------------------------------------------------------


def tamper_encrypted(rng: random.Random, bundle: Path, _: Pristine) -> None:
    m = read_manifest(bundle)
    data = str(m.get("activations_file"))
    choice = rng.randrange(7)
    if choice == 0:
        write_manifest(bundle, {**m, "bundle_id": "@ID@"}, {"@ID@": rng.choice(['"\\ud800"', '"b\\udc00"'])})
    elif choice == 1:
        write_manifest(bundle, {**m, "bundle_id": rng.choice(["other", "é", "x" * 255])})
    elif choice == 2:
        m["encryption"]["key_id"] = rng.choice(["0" * 16, "F" * 16, "", 7])
        write_manifest(bundle, m)
    elif choice == 3:
        m["encryption"]["files"] = rng.choice([[], ["nope"], [data, data], "x"])
        write_manifest(bundle, m)
    else:
        blob = bytearray((bundle / data).read_bytes())
        if choice == 4:
            blob[rng.randrange(len(blob))] ^= 1
        elif choice == 5:
            blob = blob[: rng.randrange(0, 40)]
        else:
            blob = bytearray(b"MFGCMv1\n" + rng.randbytes(rng.randrange(0, 64)))
        (bundle / data).write_bytes(bytes(blob))
        rehash(bundle)


# --- running one case -----------------------------------------------------------------------------------

Mutation = Callable[[random.Random, Path, Pristine], Any]
FAMILIES: list[tuple[str, float, Mutation]] = [
    ("manifest-json", 0.30, mutate_manifest),
    ("manifest-cross-field", 0.12, cross_field_lie),
    ("files-table", 0.12, lying_files_table),
    ("arrow", 0.18, lying_arrow),
    ("special-files", 0.10, special_files),
    ("archive", 0.12, hostile_archive),
    ("encrypted", 0.06, tamper_encrypted),
]


class Hang(BaseException):
    """A case ran past its deadline (a BaseException, so no ``except Exception`` in the loader can hide it)."""


@contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Raise ``Hang`` in the block after ``seconds``; an outer timer (pytest-timeout) is restored."""

    def expired(*_: object) -> None:
        raise Hang(f"still running after {seconds} s")

    outer_delay, _interval = signal.getitimer(signal.ITIMER_REAL)
    previous = signal.signal(signal.SIGALRM, expired)
    start = time.monotonic()
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer_delay:
            signal.setitimer(signal.ITIMER_REAL, max(0.001, outer_delay - (time.monotonic() - start)))


def make_case(rng: random.Random, work: Path, pristine: Pristine, index: int) -> tuple[str, Path, dict[str, Any]]:
    """Build case ``index``: (family, path to load, load_bundle keyword arguments)."""
    family, _weight, mutate = rng.choices(FAMILIES, weights=[w for _, w, _ in FAMILIES])[0]
    plain = [pristine.plain, pristine.zstd, pristine.renamed]
    # an encrypted bundle seals inputs/outputs/failure inside the manifest: cross-field lies need them in clear
    sources = (
        [pristine.encrypted]
        if family == "encrypted"
        else plain
        if family == "manifest-cross-field"
        else [*plain, pristine.encrypted]
    )
    source = rng.choice(sources)
    bundle = work / f"case{index}" / "b"
    shutil.copytree(source, bundle)
    made = mutate(rng, bundle, pristine)
    kwargs: dict[str, Any] = {"verify": rng.random() < 0.7}
    if source == pristine.encrypted:
        kwargs["encryption_key"] = rng.choice([KEY, KEY, KEY, OTHER_KEY, KEY[:16], None])
    return family, made if isinstance(made, Path) else bundle, kwargs


def exercise(path: Path, kwargs: dict[str, Any]) -> str:
    """Load and touch everything; ``loaded`` or the exception's type name (``BundleError`` is fine)."""
    try:
        bundle = load_bundle(path, **kwargs)
        _touch(bundle)
        consumer_reads(bundle)
    except BundleError as exc:
        if not str(exc).startswith("bundle "):
            return "BundleError-unnamed"
        return "BundleError"
    except Hang:
        return "hang"
    except Exception as exc:  # the finding: anything else escaping is what this campaign counts
        return f"{type(exc).__module__}.{type(exc).__name__}: {str(exc)[:120]}"
    return "loaded"


def _touch(bundle: Any) -> None:
    values = (
        bundle.manifest,
        bundle.id,
        bundle.kind,
        bundle.failure,
        bundle.model,
        bundle.inputs,
        bundle.outputs,
        bundle.modules,
        bundle.nbytes,
        bundle.file_sha256(),
        bundle.encrypted,
        bundle.path,
        repr(bundle),
    )
    assert isinstance(values[8], int) and len(values[9]) == 64
    for name in bundle.modules:
        bundle.activation(name)
    for _name, array in bundle.iter_activations():
        assert isinstance(array, np.ndarray)
    try:
        bundle.activation("no.such.module")
    except BundleError:
        pass
    else:
        raise AssertionError("an unknown module name did not raise BundleError")


def consumer_reads(bundle: Any) -> None:
    """What the replayer, the fidelity check and the report read from a loaded manifest, without a model."""
    from forensics.failure import FailureSpec

    spec = FailureSpec.from_dict(bundle.failure) if bundle.failure else None
    outputs = bundle.outputs
    if spec is not None or "generated_ids" in outputs:
        step = int(outputs.get("decision_step") or 0)
        generated = list(outputs["generated_ids"])
        observed = int(generated[step])
        if spec is not None:
            spec.target_id(step)
        if "top_k" in outputs:
            top = outputs["top_k"][step]
            np.asarray(top["logits"], dtype=np.float32)[: len(top["ids"])]
        vocab = bundle.model.get("vocab_size")
        assert vocab is None or observed < vocab
    bundle.inputs["input_ids"][0].bit_length()
    json.dumps(bundle.manifest, allow_nan=False, ensure_ascii=False).encode("utf-8")  # a report can hold it


def run(
    cases: int, seed: int, timeout: float, work: Path
) -> tuple[collections.Counter[str], dict[str, collections.Counter[str]]]:
    """Run ``cases`` hostile bundles; (cases per family, outcomes per family)."""
    rng = random.Random(seed)
    scratch = work / "tmp"
    scratch.mkdir()
    previous, tempfile.tempdir = tempfile.tempdir, str(scratch)
    families: collections.Counter[str] = collections.Counter()
    outcomes: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    try:
        pristine = build_pristine(work)
        for index in range(cases):
            with deadline(timeout):
                try:
                    family, path, kwargs = make_case(rng, work, pristine, index)
                except Hang:
                    family, path, kwargs = "build-hang", work, {}
            families[family] += 1
            with deadline(timeout):
                outcome = exercise(path, kwargs)
            outcomes[family][outcome] += 1
            shutil.rmtree(work / f"case{index}", ignore_errors=True)
        import gc

        gc.collect()
        leftover = len(list(scratch.iterdir()))
        if leftover:
            outcomes["temp-dirs-left"][f"{leftover} dirs"] += 1
    finally:
        tempfile.tempdir = previous
    return families, outcomes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=12_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds before a case counts as a hang")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fuzz-bundles-"))
    start = time.perf_counter()
    try:
        families, outcomes = run(args.cases, args.seed, args.timeout, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    elapsed = time.perf_counter() - start
    total: collections.Counter[str] = collections.Counter()
    for counter in outcomes.values():
        total.update(counter)
    print(
        f"{sum(families.values())} hostile bundles, seed {args.seed}, {elapsed:.1f} s "
        f"({1000 * elapsed / max(1, args.cases):.1f} ms per case)"
    )
    for family, count in sorted(families.items()):
        shown = ", ".join(f"{k} {v}" for k, v in outcomes[family].most_common())
        print(f"  {family:22s} {count:6d}   {shown}")
    print("outcomes: " + ", ".join(f"{k} {v}" for k, v in total.most_common()))
    bad = {k: v for k, v in total.items() if k not in ("loaded", "BundleError")}
    print("FAIL: " + json.dumps(bad) if bad else "OK: 0 outcomes other than loaded / BundleError, 0 hangs")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
