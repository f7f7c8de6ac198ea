"""Round trips of the incident bundle format v1 (forensics.bundle)."""

from __future__ import annotations

import gc
import hashlib
import io
import json
import os
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import forensics.bundle as fb
from forensics.bundle import ALLOWED_DTYPES, SCHEMA_ID, load_bundle, write_bundle
from forensics.errors import BundleError


def make_manifest(**overrides: Any) -> dict[str, Any]:
    manifest: dict[str, Any] = {
        "kind": "incident",
        "model": {"ref": "tiny-llama", "sha256": "ab" * 32},
        "tokenizer": {"ref": "tiny-llama"},
        "inputs": {"prompt": "2+2=", "input_ids": [1, 17, 5]},
        "generation": {"greedy": True, "max_new_tokens": 4, "seed": 0},
        "outputs": {"generated_ids": [9], "text": "5"},
        "failure": {"type": "expected", "text": "4", "token_ids": [4]},
        "recorded": {"positions": "all"},
        "external_calls": [],
        "environment": {"python": "3.11"},
    }
    manifest.update(overrides)
    return manifest


def sample_activations() -> list[tuple[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    return [
        ("model.embed_tokens", rng.standard_normal((1, 3, 8)).astype(np.float32)),
        ("model.layers.0", rng.standard_normal((1, 3, 8)).astype(np.float16)),
        ("model.layers.1", rng.standard_normal((1, 3, 8))),
        ("lm_head.argmax", np.array([[4, 5, 6]], dtype=np.int64)),
        ("scalar", np.array(7, dtype=np.int32)),
    ]


def assert_bit_exact(got: np.ndarray, want: np.ndarray) -> None:
    assert got.dtype == want.dtype.newbyteorder("<") or got.dtype == want.dtype
    assert got.dtype.name == want.dtype.name
    assert got.shape == want.shape
    assert got.tobytes() == np.ascontiguousarray(want).astype(got.dtype).tobytes()


def tar_dir(src: Path, dest: Path, *, zstd: bool, nested: bool) -> Path:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(src, arcname=src.name if nested else ".")
    data = buffer.getvalue()
    if not zstd:
        dest.write_bytes(data)
        return dest
    with pa.OSFile(str(dest), "wb") as raw, pa.CompressedOutputStream(raw, "zstd") as out:
        out.write(data)
    return dest


def test_public_api_is_pinned() -> None:
    assert fb.__all__ == [
        "ACTIVATIONS",
        "ACTIVATION_SCHEMA",
        "ALLOWED_DTYPES",
        "MANIFEST",
        "SCHEMA_ID",
        "Bundle",
        "check_failure_family",
        "family_key",
        "load_bundle",
        "read_manifest",
        "write_bundle",
    ]
    assert SCHEMA_ID == "model-forensics/bundle@1"
    assert (fb.MANIFEST, fb.ACTIVATIONS) == ("manifest.json", "activations.arrow")


@pytest.mark.parametrize("compression", [None, "zstd"])
def test_round_trip_sample(tmp_path: Path, compression: Any) -> None:
    acts = sample_activations()
    bundle = write_bundle(tmp_path / "incident_7", make_manifest(), acts, compression=compression)
    assert bundle.modules == [name for name, _ in acts]
    for name, want in acts:
        got = bundle.activation(name)
        assert_bit_exact(got, want)
        assert not got.flags.writeable
    reloaded = load_bundle(tmp_path / "incident_7")
    assert reloaded.file_sha256() == bundle.file_sha256()


@pytest.mark.parametrize("compression", [None, "zstd"])
@pytest.mark.parametrize("dtype", ALLOWED_DTYPES)
@pytest.mark.parametrize("shape", [(), (0,), (3, 0, 2), (1,), (2, 3, 5)])
def test_round_trip_each_dtype_and_shape(tmp_path: Path, dtype: str, shape: tuple[int, ...], compression: Any) -> None:
    rng = np.random.default_rng(1)
    want = (rng.standard_normal(shape) * 1000).astype(dtype)
    bundle = write_bundle(tmp_path / "b", make_manifest(), [("m", want)], compression=compression)
    assert_bit_exact(bundle.activation("m"), want)


def test_special_float_values_and_big_endian_input(tmp_path: Path) -> None:
    special = np.array([np.nan, -np.inf, np.inf, -0.0, 1e-45], dtype=np.float32)
    big = np.arange(10, dtype=">f8").reshape(2, 5)
    bundle = write_bundle(tmp_path / "b", make_manifest(), [("s", special), ("big", big)])
    assert bundle.activation("s").tobytes() == special.tobytes()
    got = bundle.activation("big")
    assert got.dtype == np.dtype("<f8")
    np.testing.assert_array_equal(got, big)


def test_non_contiguous_input_is_written_in_c_order(tmp_path: Path) -> None:
    base = np.arange(24, dtype=np.int64).reshape(4, 6)
    view = base.T[::2]
    bundle = write_bundle(tmp_path / "b", make_manifest(), [("v", view)])
    np.testing.assert_array_equal(bundle.activation("v"), view)


@pytest.mark.parametrize("compression", [None, "zstd"])
def test_large_activation(tmp_path: Path, compression: Any) -> None:
    want = np.random.default_rng(2).standard_normal((4, 1024, 1024)).astype(np.float32)  # 16 MiB
    bundle = write_bundle(tmp_path / "big", make_manifest(), [("big", want)], compression=compression)
    np.testing.assert_array_equal(bundle.activation("big"), want)
    assert bundle.nbytes > want.nbytes // 2


_ARRAYS = hnp.arrays(
    dtype=st.sampled_from([np.dtype(name) for name in ALLOWED_DTYPES]),
    shape=hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=6),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(arrays=st.lists(_ARRAYS, min_size=1, max_size=4), zstd=st.booleans())
def test_round_trip_property(tmp_path_factory: pytest.TempPathFactory, arrays: list[np.ndarray], zstd: bool) -> None:
    dest = tmp_path_factory.mktemp("prop") / "b"
    items = [(f"m{i}", array) for i, array in enumerate(arrays)]
    bundle = write_bundle(dest, make_manifest(), items, compression="zstd" if zstd else None)
    for (name, want), (got_name, got) in zip(items, bundle.iter_activations(), strict=True):
        assert got_name == name
        assert_bit_exact(got, want)


def test_manifest_fields(tmp_path: Path) -> None:
    bundle = write_bundle(tmp_path / "incident_7", make_manifest(), sample_activations())
    on_disk = json.loads((tmp_path / "incident_7" / "manifest.json").read_bytes())
    assert on_disk["schema"] == SCHEMA_ID
    assert on_disk["bundle_id"] == bundle.id == "incident_7"
    assert on_disk["recorded"] == {"positions": "all", "modules": bundle.modules}
    arrow = (tmp_path / "incident_7" / "activations.arrow").read_bytes()
    assert on_disk["files"] == {"activations.arrow": {"bytes": len(arrow), "sha256": hashlib.sha256(arrow).hexdigest()}}
    assert on_disk["created_at"].endswith("+00:00")
    assert on_disk["environment"] == {"python": "3.11"}  # unknown keys pass through
    assert (bundle.kind, bundle.failure, bundle.inputs["input_ids"]) == (
        "incident",
        {"type": "expected", "text": "4", "token_ids": [4]},
        [1, 17, 5],
    )
    assert bundle.model["ref"] == "tiny-llama" and bundle.outputs["text"] == "5"
    manifest_bytes = (tmp_path / "incident_7" / "manifest.json").read_bytes()
    assert bundle.file_sha256() == hashlib.sha256(manifest_bytes).hexdigest()
    assert bundle.nbytes == len(arrow) + len(manifest_bytes)
    assert bundle.path == str(tmp_path / "incident_7")


def test_manifest_views_are_copies(tmp_path: Path) -> None:
    bundle = write_bundle(tmp_path / "b", make_manifest(), sample_activations())
    bundle.manifest["kind"] = "benign"
    bundle.inputs["input_ids"].append(99)
    bundle.modules.clear()
    assert bundle.kind == "incident" and bundle.inputs["input_ids"] == [1, 17, 5] and len(bundle.modules) == 5


def test_writer_options_and_given_values(tmp_path: Path) -> None:
    manifest = make_manifest(created_at="2024-05-01T12:00:00Z", kind="benign", failure=None)
    bundle = write_bundle(tmp_path / "dir", manifest, [("m", np.ones(2))], bundle_id="given")
    assert (bundle.id, bundle.kind, bundle.failure) == ("given", "benign", None)
    assert bundle.manifest["created_at"] == "2024-05-01T12:00:00Z"
    assert "bundle_id" not in manifest  # caller's dict untouched


@pytest.mark.parametrize("bad_id", ["a/b", "a\\b", "x\ny", "..", ""])
def test_writer_rejects_bad_bundle_ids(tmp_path: Path, bad_id: str) -> None:
    with pytest.raises(BundleError, match="bundle_id"):
        write_bundle(tmp_path / "b", make_manifest(bundle_id=bad_id), [("m", np.ones(1))])


def test_writer_refuses_non_empty_destination(tmp_path: Path) -> None:
    write_bundle(tmp_path / "b", make_manifest(), [("m", np.ones(1))])
    with pytest.raises(BundleError, match="refusing to overwrite"):
        write_bundle(tmp_path / "b", make_manifest(), [("m", np.zeros(1))])
    (tmp_path / "empty").mkdir()
    assert write_bundle(tmp_path / "empty", make_manifest(), [("m", np.ones(1))]).modules == ["m"]


@pytest.mark.parametrize(
    ("items", "problem"),
    [
        ([("m", np.ones(1)), ("m", np.ones(1))], "given twice"),
        ([("m", np.ones(1, dtype=np.complex64))], "complex64"),
        ([("m", np.array(["a"], dtype=object))], "object"),
        ([("", np.ones(1))], "non-empty"),
    ],
)
def test_writer_rejects_bad_items_and_cleans_up(tmp_path: Path, items: Any, problem: str) -> None:
    with pytest.raises(BundleError, match=problem):
        write_bundle(tmp_path / "b", make_manifest(), items)
    assert not (tmp_path / "b").exists()


def test_writer_validates_manifest_before_streaming(tmp_path: Path) -> None:
    def never() -> Any:
        raise AssertionError("activations consumed before the manifest was validated")
        yield

    with pytest.raises(BundleError, match="kind"):
        write_bundle(tmp_path / "b", make_manifest(kind="weird"), never())
    with pytest.raises(BundleError, match="strict JSON"):
        write_bundle(tmp_path / "c", make_manifest(outputs={"x": float("nan")}), never())


def test_iter_activations_streams_in_order(tmp_path: Path) -> None:
    acts = sample_activations()
    bundle = write_bundle(tmp_path / "b", make_manifest(), iter(acts))
    stream = bundle.iter_activations()
    assert next(stream)[0] == acts[0][0]  # lazy: one batch at a time
    assert [name for name, _ in stream] == [name for name, _ in acts[1:]]
    subset = ["scalar", "model.layers.0"]
    assert [name for name, _ in bundle.iter_activations(subset)] == subset


def test_unknown_module_lists_known_ones(tmp_path: Path) -> None:
    bundle = write_bundle(tmp_path / "b", make_manifest(), sample_activations())
    with pytest.raises(BundleError, match=r"activations.arrow: unknown module 'nope'; known: 'model.embed_tokens'"):
        bundle.activation("nope")
    with pytest.raises(BundleError, match="unknown module"):
        list(bundle.iter_activations(["model.layers.0", "nope"]))


def test_activation_reading_is_zero_copy_from_memory_map(tmp_path: Path) -> None:
    bundle = write_bundle(tmp_path / "b", make_manifest(), [("m", np.ones((64, 64)))])
    got = bundle.activation("m")
    with pytest.raises(ValueError, match="read-only"):
        got[0, 0] = 2.0
    assert got.base is not None  # a view onto the mapped buffer, not an owned copy


def test_load_through_file_uri(tmp_path: Path) -> None:
    acts = sample_activations()
    write_bundle(tmp_path / "b", make_manifest(), acts, compression="zstd")
    bundle = load_bundle((tmp_path / "b").as_uri())
    assert bundle.path == (tmp_path / "b").as_uri()
    for name, want in acts:
        assert_bit_exact(bundle.activation(name), want)


@pytest.mark.parametrize("kind", ["local", "subtree"])
def test_load_through_pyarrow_filesystem(tmp_path: Path, kind: str) -> None:
    acts = sample_activations()
    write_bundle(tmp_path / "store" / "b", make_manifest(), acts)
    if kind == "local":
        fs, path = pafs.LocalFileSystem(), str(tmp_path / "store" / "b")
    else:
        fs, path = pafs.SubTreeFileSystem(str(tmp_path / "store"), pafs.LocalFileSystem()), "b"
    bundle = load_bundle(path, filesystem=fs)
    assert bundle.id == "b"
    for name, got in bundle.iter_activations():
        assert_bit_exact(got, dict(acts)[name])


@pytest.mark.parametrize("zstd", [False, True])
@pytest.mark.parametrize("nested", [False, True])
def test_load_from_tar_archives(tmp_path: Path, zstd: bool, nested: bool) -> None:
    acts = sample_activations()
    write_bundle(tmp_path / "incident_7", make_manifest(), acts, compression="zstd")
    archive = tar_dir(
        tmp_path / "incident_7", tmp_path / ("incident_7.tar" + (".zst" if zstd else "")), zstd=zstd, nested=nested
    )
    bundle = load_bundle(archive)
    assert bundle.id == "incident_7"
    for name, want in acts:
        assert_bit_exact(bundle.activation(name), want)
    assert load_bundle(archive.as_uri()).modules == bundle.modules


def test_extracted_archive_is_removed_with_the_bundle(tmp_path: Path) -> None:
    write_bundle(tmp_path / "b", make_manifest(), sample_activations())
    bundle = load_bundle(tar_dir(tmp_path / "b", tmp_path / "b.tar", zstd=False, nested=False))
    root = bundle._location.root
    kept = bundle.activation("model.layers.1")
    assert os.path.isdir(root)
    del bundle
    gc.collect()
    assert not os.path.exists(root)
    assert kept.shape == (1, 3, 8)  # mapped arrays outlive the bundle


def test_verify_false_skips_checksums_but_checks_batches_on_read(tmp_path: Path) -> None:
    write_bundle(tmp_path / "b", make_manifest(), sample_activations())
    path = tmp_path / "b" / "activations.arrow"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # inside tensor data: sha changes, structure does not
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256 mismatch"):
        load_bundle(tmp_path / "b")
    assert load_bundle(tmp_path / "b", verify=False).modules[0] == "model.embed_tokens"
