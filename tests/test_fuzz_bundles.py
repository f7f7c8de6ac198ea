"""Hostile bundles: thousands of mutated bundles give a loaded bundle or a BundleError, never anything else."""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from forensics.bundle import load_bundle, write_bundle
from forensics.errors import BundleError

MANIFEST = {
    "kind": "incident",
    "model": {"ref": "tiny", "sha256": "0" * 64},
    "inputs": {"input_ids": [1, 2, 3]},
    "outputs": {"generated_ids": [4]},
    "failure": None,
    "recorded": {"modules": []},
}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pristine") / "b"
    rng = np.random.default_rng(0)
    acts = [(f"model.layers.{i}", rng.normal(size=(3, 8)).astype(np.float32)) for i in range(3)]
    write_bundle(root, MANIFEST, acts)
    return root


def _refresh_checksum(bundle: Path) -> None:
    manifest = json.loads((bundle / "manifest.json").read_text())
    data = (bundle / "activations.arrow").read_bytes()
    manifest["files"]["activations.arrow"] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (bundle / "manifest.json").write_text(json.dumps(manifest))


mutation = st.tuples(
    st.sampled_from(["manifest.json", "activations.arrow"]),
    st.sampled_from(["flip", "truncate", "insert", "replace"]),
    st.integers(min_value=0, max_value=10**6),
    st.binary(min_size=1, max_size=16),
    st.booleans(),
)


@settings(
    max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(mutation)
def test_mutated_bundles_load_or_raise_bundle_error(pristine: Path, m: tuple[str, str, int, bytes, bool]) -> None:
    target, op, at, payload, fix_checksum = m
    with tempfile.TemporaryDirectory() as tmp:
        bundle = Path(tmp) / "b"
        shutil.copytree(pristine, bundle)
        before = {p for p in Path(tmp).rglob("*")}
        path = bundle / target
        data = bytearray(path.read_bytes())
        i = at % max(1, len(data))
        if op == "flip":
            data[i] ^= payload[0] or 1
        elif op == "truncate":
            data = data[:i]
        elif op == "insert":
            data[i:i] = payload
        else:
            data[i : i + len(payload)] = payload
        path.write_bytes(bytes(data))
        if fix_checksum and target == "activations.arrow":  # the manifest is intact: make the sha check pass
            _refresh_checksum(bundle)
        try:
            loaded = load_bundle(bundle)
            for _name, arr in loaded.iter_activations():
                assert isinstance(arr, np.ndarray)
        except BundleError as exc:
            assert str(exc).startswith("bundle b: "), str(exc)
        assert {p for p in Path(tmp).rglob("*")} == before  # nothing written beside the bundle
