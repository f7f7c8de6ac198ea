"""The manifest schema: every field a consumer reads is typed, ranged and cross-checked on load.

Each bad manifest must be a ``BundleError`` naming the field's JSON path, what was expected and what
arrived; nothing may reach the replayer, the fidelity check or the failure metric unchecked.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import re
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from forensics.bundle import ACTIVATION_SCHEMA, load_bundle, write_bundle
from forensics.bundle.manifest import encode_manifest
from forensics.bundle.schema import MANIFEST_SCHEMA
from forensics.bundle.strictjson import MAX_DEPTH
from forensics.errors import BundleError
from forensics.failure import FailureSpec

KEY = bytes(range(7, 39))


def recorded_manifest() -> dict[str, Any]:
    """What the Recorder writes for an incident (the writer adds schema, id, time and files)."""
    return {
        "kind": "incident",
        "model": {"ref": "tiny-llama", "sha256": "ab" * 32, "family": "llama", "dtype": "float32"},
        "tokenizer": {"ref": "tiny-llama"},
        "inputs": {"prompt": "The capital of Australia is", "input_ids": [1, 17, 5]},
        "generation": {"greedy": True, "max_new_tokens": 3, "seed": 0},
        "outputs": {
            "generated_ids": [9, 4, 2],
            "text": " Sydney.",
            "top_k": [
                {"ids": [9, 12], "logits": [3.5, 2.0]},
                {"ids": [4, 1], "logits": [1.0, 0.5]},
                {"ids": [2, 3], "logits": [0.25, -1.0]},
            ],
            "decision_step": 0,
            "is_failure": True,
            "observed_id": 9,
            "target_id": 12,
        },
        "failure": {"type": "expected", "text": " Canberra", "token_ids": [12], "regex": False},
        "recorded": {
            "sites": {"model.layers.0": "resid", "model.layers.1": "resid"},
            "positions": 5,
            "dtype": "float32",
        },
        "external_calls": [
            {
                "name": "search",
                "args": ["q"],
                "kwargs": {},
                "result": "r",
                "error": None,
                "started_at": 1.0,
                "duration_s": 0.5,
            }
        ],
        "environment": {"python": "3.11", "torch": "2.4"},
    }


ACTS = [("model.layers.0", np.ones((5, 4), np.float32)), ("model.layers.1", np.zeros((5, 4), np.float32))]


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    write_bundle(tmp_path / "inc", recorded_manifest(), ACTS)
    return tmp_path / "inc"


def rewrite(bundle: Path, change: Callable[[dict[str, Any]], None], raw: dict[str, str] | None = None) -> None:
    """Edit the manifest; ``raw`` replaces quoted placeholders by literal JSON text (1e400, "\\ud800")."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    change(manifest)
    text = json.dumps(manifest)
    for placeholder, literal in (raw or {}).items():
        text = text.replace(json.dumps(placeholder), literal)
    (bundle / "manifest.json").write_text(text)


def refused(path: Path, **kw: Any) -> str:
    with pytest.raises(BundleError) as info:
        load_bundle(path, **kw)
    return str(info.value)


def test_the_schema_is_valid_json_schema_and_a_recorded_manifest_passes(bundle: Path) -> None:
    from jsonschema import Draft202012Validator

    Draft202012Validator.check_schema(MANIFEST_SCHEMA)
    loaded = load_bundle(bundle)
    assert loaded.outputs["decision_step"] == 0 and loaded.manifest["recorded"]["sites"]["model.layers.0"] == "resid"
    spec = FailureSpec.from_dict(loaded.failure or {})
    assert spec.target_id(0) == 12


def _set(path: tuple[str, ...], value: Any) -> Callable[[dict[str, Any]], None]:
    def change(m: dict[str, Any]) -> None:
        node = m
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return change


def _drop(path: tuple[str, ...]) -> Callable[[dict[str, Any]], None]:
    def change(m: dict[str, Any]) -> None:
        node = m
        for key in path[:-1]:
            node = node[key]
        node.pop(path[-1])

    return change


CASES = [
    # (change, raw literals, expected message fragment); each from the issue or what a consumer reads
    pytest.param(
        _set(("outputs", "decision_step"), 10**6),
        None,
        r"outputs.decision_step: expected a step within outputs.generated_ids \(< 3\), got 1000000",
        id="decision-step-1e6",
    ),
    pytest.param(
        _set(("outputs", "decision_step"), -100),
        None,
        r"outputs.decision_step: expected a decision step .*, got number -100",
        id="decision-step-neg",
    ),
    pytest.param(
        _set(("outputs", "decision_step"), "@INF@"),
        {"@INF@": "1e400"},
        r"outputs.decision_step: expected a finite number, got 1e400",
        id="decision-step-1e400",
    ),
    pytest.param(
        _set(("outputs", "decision_step"), "abc"),
        None,
        r"outputs.decision_step: expected a decision step .*, got string 'abc'",
        id="decision-step-str",
    ),
    pytest.param(
        _set(("outputs", "decision_step"), 1.0),
        None,
        r"outputs.decision_step: expected a decision step .*, got number 1.0",
        id="decision-step-float",
    ),
    pytest.param(
        _drop(("outputs", "generated_ids")),
        None,
        r"outputs: missing required key 'generated_ids'",
        id="generated-missing",
    ),
    pytest.param(
        _set(("outputs", "generated_ids"), None),
        None,
        r"outputs.generated_ids: expected a non-empty list of token ids, got null",
        id="generated-null",
    ),
    pytest.param(
        _set(("outputs", "generated_ids"), [-1]),
        None,
        r"outputs.generated_ids\[0\]: expected a token id .*, got number -1",
        id="generated-neg",
    ),
    pytest.param(
        _set(("outputs", "generated_ids"), []),
        None,
        r"outputs.generated_ids: expected a non-empty list",
        id="generated-empty",
    ),
    pytest.param(
        _set(("failure", "token_ids"), "12"),
        None,
        r"failure.token_ids: expected a list of token ids, got string '12'",
        id="token-ids-str",
    ),
    pytest.param(
        _set(("failure", "token_ids"), [12, None]),
        None,
        r"failure.token_ids\[1\]: expected a token id .*, got null",
        id="token-ids-null-item",
    ),
    pytest.param(
        _set(("failure", "token_ids"), []),
        None,
        r"failure.token_ids: expected a non-empty list of token ids, got array of 0 items",
        id="expected-without-tokens",
    ),
    pytest.param(_drop(("failure", "type")), None, r"failure: missing required key 'type'", id="failure-no-type"),
    pytest.param(
        _set(("failure", "type"), "wrong"), None, r"failure.type: expected one of 'expected'", id="failure-bad-type"
    ),
    pytest.param(
        _set(("failure",), 7),
        None,
        r"failure: expected a failure spec object or null, got number 7",
        id="failure-number",
    ),
    pytest.param(
        _set(("recorded", "sites"), None),
        None,
        r"recorded.sites: expected an object mapping module names to site names, got null",
        id="sites-null",
    ),
    pytest.param(
        _set(("recorded", "sites"), {"model.layers.0": 3}),
        None,
        r'recorded.sites\["model.layers.0"\]: expected a site name',
        id="site-not-string",
    ),
    pytest.param(
        _set(("outputs", "top_k"), [{"ids": [1], "logits": []}] * 3),
        None,
        r"outputs.top_k\[0\].logits: expected 1 logits \(one per id\), got 0",
        id="top-k-lengths",
    ),
    pytest.param(
        _set(("outputs", "top_k"), [{"ids": [1], "logits": [1.0]}]), None, None, id="top-k-shorter-is-fine-at-step-0"
    ),
    pytest.param(
        _set(("outputs", "decision_step"), 2),
        None,
        r"outputs.observed_id: expected generated_ids\[2\] = 2 \(the token at decision_step\), got 9",
        id="observed-id-mismatch",
    ),
    pytest.param(
        _set(("model", "vocab_size"), 10),
        None,
        r"inputs.input_ids\[1\]: expected a token id below model.vocab_size 10, got 17",
        id="vocab",
    ),
    pytest.param(_set(("model", "dtype"), "float8"), None, r"model.dtype: expected one of 'float32'", id="model-dtype"),
    pytest.param(
        _set(("inputs", "input_ids"), []), None, r"inputs.input_ids: expected a non-empty list", id="input-ids-empty"
    ),
    pytest.param(
        _set(("environment", "x"), "@NAN@"),
        {"@NAN@": "NaN"},
        r"environment.x: expected a finite number \(NaN is not strict JSON\), got NaN",
        id="nan-anywhere",
    ),
    pytest.param(
        _set(("environment", "x"), "@BIG@"),
        {"@BIG@": "1" + "0" * 30},
        r"environment.x: expected an integer of magnitude below 2\*\*63",
        id="huge-int",
    ),
    pytest.param(
        _set(("environment", "x"), "@SUR@"),
        {"@SUR@": '"\\udc00z"'},
        r"environment.x: expected a string of valid Unicode, got a lone surrogate",
        id="surrogate",
    ),
    pytest.param(
        _set(("environment", "deep"), "@DEEP@"),
        {"@DEEP@": "[" * 600 + "]" * 600},
        rf"expected objects and arrays nested at most {MAX_DEPTH} levels deep",
        id="deep-600",
    ),
    pytest.param(
        _set(("external_calls",), [{"args": []}]),
        None,
        r"external_calls\[0\]: missing required key 'name'",
        id="external-call-name",
    ),
    pytest.param(
        _set(("files", "activations.arrow", "bytes"), -1),
        None,
        r'files\["activations.arrow"\].bytes: expected a byte size',
        id="files-bytes-neg",
    ),
    pytest.param(
        _set(("files", "manifest.json"), {"bytes": 1, "sha256": "0" * 64}),
        None,
        r"files: expected a plain file name .*, got string 'manifest.json'",
        id="files-manifest",
    ),
]


@pytest.mark.parametrize(("change", "raw", "problem"), CASES)
def test_bad_field_is_a_bundle_error_naming_it(
    bundle: Path, change: Callable[[dict[str, Any]], None], raw: dict[str, str] | None, problem: str | None
) -> None:
    rewrite(bundle, change, raw)
    if problem is None:
        load_bundle(bundle)
        return
    message = refused(bundle, verify=False)  # checked on load, whatever verify says
    assert message.startswith("bundle inc: manifest.json: "), message
    assert re.search(problem, message), message


def test_deep_nesting_never_reaches_anything_recursive(bundle: Path) -> None:
    original = (bundle / "manifest.json").read_text()
    rewrite(bundle, _set(("environment", "deep"), "@DEEP@"), {"@DEEP@": "[" * 100_000 + "]" * 100_000})
    assert "nested at most 64 levels" in refused(bundle)
    (bundle / "manifest.json").write_text(original)
    ok = "[" * (MAX_DEPTH - 2) + "]" * (MAX_DEPTH - 2)  # manifest -> environment -> 62 more levels
    rewrite(bundle, _set(("environment", "deep"), "@OK@"), {"@OK@": ok})
    assert len(json.dumps(copy.deepcopy(load_bundle(bundle).manifest))) > MAX_DEPTH


def test_writer_refuses_what_the_loader_refuses(tmp_path: Path) -> None:
    deep: Any = []
    for _ in range(200):
        deep = [deep]
    bad = [
        recorded_manifest() | {"environment": {"deep": deep}},
        recorded_manifest() | {"outputs": {**recorded_manifest()["outputs"], "decision_step": 9}},
        recorded_manifest() | {"inputs": {"input_ids": [1], "prompt": "\ud800"}},
    ]
    for i, manifest in enumerate(bad):
        with pytest.raises(BundleError, match="manifest.json"):
            write_bundle(tmp_path / f"b{i}", manifest, ACTS)
        assert not (tmp_path / f"b{i}").exists()


def test_encrypted_bundle_with_a_surrogate_id_is_refused_before_decryption(tmp_path: Path) -> None:
    write_bundle(tmp_path / "enc", recorded_manifest(), ACTS, encryption_key=KEY)
    rewrite(tmp_path / "enc", _set(("bundle_id",), "@ID@"), {"@ID@": '"\\ud800"'})
    message = refused(tmp_path / "enc", encryption_key=KEY)
    assert re.search(r"manifest.json: bundle_id: expected a string of valid Unicode, got a lone surrogate", message)


def _raw_arrow(path: Path, rows: list[dict[str, Any]], compression: str | None = None) -> None:
    options = pa.ipc.IpcWriteOptions(compression=compression)
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, ACTIVATION_SCHEMA, options=options) as writer:
        for row in rows:
            writer.write_batch(pa.RecordBatch.from_pylist([row], schema=ACTIVATION_SCHEMA))


def _point_manifest_at(bundle: Path, name: str, modules: list[str]) -> None:
    data = (bundle / name).read_bytes()

    def change(m: dict[str, Any]) -> None:
        m["files"] = {name: {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}}
        m["recorded"]["modules"] = modules
        if name != "activations.arrow":
            m["activations_file"] = name

    rewrite(bundle, change)


def test_empty_huge_shape_is_a_bundle_error_even_unverified(bundle: Path) -> None:
    _raw_arrow(
        bundle / "activations.arrow", [{"module": "m", "dtype": "float32", "shape": [0, 2**62, 2**62], "data": b""}]
    )
    _point_manifest_at(bundle, "activations.arrow", ["m"])
    view = load_bundle(bundle, verify=False)
    with pytest.raises(BundleError, match=r"activations.arrow: batch 0 \('m'\): shape \[0, 4611686018427387904"):
        view.activation("m")
    with pytest.raises(BundleError, match="spans"):
        load_bundle(bundle)


def test_byte_length_error_names_the_real_data_file(bundle: Path) -> None:
    (bundle / "activations.arrow").unlink()
    _raw_arrow(
        bundle / "activations.zstd.arrow",
        [{"module": "m", "dtype": "float32", "shape": [3], "data": b"\0" * 8}],
        compression="zstd",
    )
    _point_manifest_at(bundle, "activations.zstd.arrow", ["m"])
    assert "bundle inc: activations.zstd.arrow: batch 0 ('m'): shape [3] x float32 needs 12 bytes" in refused(bundle)


def _tar(bundle: Path, tail: bytes) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        tar.add(bundle, arcname="inc")
    return buffer.getvalue().rstrip(b"\0") + b"\0" * 1024 + tail


@pytest.mark.parametrize(
    "tail",
    [
        pytest.param(b"x" * 512, id="garbage-block"),
        pytest.param(b"not a header".ljust(512, b"\1"), id="malformed-header"),
        pytest.param(b"\0" * 4096 + b"late", id="garbage-after-padding"),
    ],
)
def test_tar_with_a_malformed_header_after_the_bundle_is_refused(bundle: Path, tmp_path: Path, tail: bytes) -> None:
    (tmp_path / "inc.tar").write_bytes(_tar(bundle, tail))
    message = refused(tmp_path / "inc.tar")
    assert re.search(r"inc.tar: malformed tar header or trailing data at offset \d+", message), message


def test_tar_followed_by_a_second_archive_is_refused(bundle: Path, tmp_path: Path) -> None:
    second = io.BytesIO()
    with tarfile.open(fileobj=second, mode="w") as tar:
        info = tarfile.TarInfo("extra")
        tar.addfile(info, io.BytesIO(b""))
    (tmp_path / "inc.tar").write_bytes(_tar(bundle, second.getvalue()))
    assert "malformed tar header or trailing data" in refused(tmp_path / "inc.tar")


def test_zero_padded_tar_loads(bundle: Path, tmp_path: Path) -> None:
    (tmp_path / "inc.tar").write_bytes(_tar(bundle, b"\0" * 20480))
    assert load_bundle(tmp_path / "inc.tar").modules == [name for name, _ in ACTS]


def test_encode_round_trip_is_stable() -> None:
    manifest = recorded_manifest()
    assert json.loads(encode_manifest(manifest)) == manifest
