"""The manifest of an incident bundle: parse, validate, prepare and write ``manifest.json``.

JSON only, parsed with ``json.loads`` under a size bound; nothing executable ever is.

    >>> m = parse_manifest(Site("b"), encode_manifest(example_manifest()))
    >>> m["schema"] == SCHEMA_ID
    True
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from forensics.bundle._guard import Site
from forensics.bundle.crypto import validate_encryption
from forensics.durable import write_atomic

__all__ = [
    "ACTIVATIONS",
    "KINDS",
    "MANIFEST",
    "MAX_MANIFEST_BYTES",
    "SCHEMA_ID",
    "check_bundle_id",
    "data_file",
    "encode_manifest",
    "example_manifest",
    "parse_manifest",
    "prepare_manifest",
    "validate_manifest",
    "write_atomic",
]

SCHEMA_ID = "model-forensics/bundle@1"
MANIFEST = "manifest.json"
ACTIVATIONS = "activations.arrow"
KINDS = ("incident", "benign")
MAX_MANIFEST_BYTES = 64 * 1024 * 1024

_HEX64 = re.compile(r"[0-9a-f]{64}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_TOP_LEVEL: tuple[tuple[str, type | tuple[type, ...], str], ...] = (
    ("bundle_id", str, "a string"),
    ("created_at", str, "a string"),
    ("kind", str, "a string"),
    ("model", dict, "an object"),
    ("inputs", dict, "an object"),
    ("outputs", dict, "an object"),
    ("failure", (dict, type(None)), "an object or null"),
    ("recorded", dict, "an object"),
    ("files", dict, "an object"),
)


def parse_manifest(site: Site, data: bytes) -> dict[str, Any]:
    """Decode and validate manifest bytes; any problem is a ``BundleError`` naming manifest.json."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise site.error(MANIFEST, f"{len(data)} bytes, more than the limit {MAX_MANIFEST_BYTES}")
    with site.guard(MANIFEST, "not valid UTF-8 JSON"):
        value = json.loads(
            data.decode("utf-8"),
            object_pairs_hook=_no_duplicate_keys,
            parse_constant=_no_constants,
        )
    if not isinstance(value, dict):
        raise site.error(MANIFEST, f"must be a JSON object, got {_json_type(value)}")
    validate_manifest(site, value)
    return value


def validate_manifest(site: Site, manifest: Mapping[str, Any]) -> None:
    """Check the schema id first, then every required key and its type."""
    found = manifest.get("schema")
    if found != SCHEMA_ID:
        raise site.error(MANIFEST, f"unsupported schema id {found!r}; this reader supports {SCHEMA_ID!r}")
    for key, kind, words in _TOP_LEVEL:
        if key not in manifest:
            raise site.error(MANIFEST, f"missing required key {key!r}")
        if not isinstance(manifest[key], kind):
            got = _json_type(manifest[key])
            raise site.error(MANIFEST, f"key {key!r} must be {words}, got {got}")
    check_bundle_id(site, manifest["bundle_id"])
    _check_created_at(site, manifest["created_at"])
    if manifest["kind"] not in KINDS:
        raise site.error(MANIFEST, f"kind must be one of {KINDS}, got {manifest['kind']!r}")
    _check_nested(site, manifest)
    _check_files(site, manifest["files"], data_file(site, manifest))
    if "encryption" in manifest:
        validate_encryption(site, MANIFEST, manifest["encryption"], manifest["files"])


def data_file(site: Site, manifest: Mapping[str, Any]) -> str:
    """The name of the Arrow data file: ``activations_file`` if set, else ``activations.arrow``.

    Encrypted bundles (``activations.arrow.enc``) and bundles rewritten by ``compress-bundles``
    name another file here, so a new data file can be swapped in by replacing the manifest alone.
    """
    name = manifest.get("activations_file", ACTIVATIONS)
    if not isinstance(name, str) or not _is_plain_name(name) or name == MANIFEST:
        raise site.error(MANIFEST, f"activations_file {name!r} must be a plain file name of the bundle")
    return name


def check_bundle_id(site: Site, value: str) -> None:
    """A bundle id is a non-empty name without path separators or control characters."""
    if not value or value in (".", "..") or "/" in value or "\\" in value or _CONTROL.search(value):
        raise site.error(
            MANIFEST, f"bundle_id {value!r} must be a non-empty name without separators or control characters"
        )


def _check_created_at(site: Site, value: str) -> None:
    try:
        datetime.fromisoformat(value)
    except ValueError:
        raise site.error(MANIFEST, f"created_at {value!r} is not an ISO-8601 timestamp") from None


def _check_nested(site: Site, manifest: Mapping[str, Any]) -> None:
    model = manifest["model"]
    for key in ("ref", "sha256"):
        if not isinstance(model.get(key), str):
            raise site.error(MANIFEST, f"model.{key} must be a string, got {_json_type(model.get(key))}")
    ids = manifest["inputs"].get("input_ids")
    if not isinstance(ids, list) or not all(_is_int(i) for i in ids):
        raise site.error(MANIFEST, "inputs.input_ids must be a list of integers")
    modules = manifest["recorded"].get("modules")
    if not isinstance(modules, list) or not all(isinstance(m, str) and m for m in modules):
        raise site.error(MANIFEST, "recorded.modules must be a list of non-empty strings")
    if len(set(modules)) != len(modules):
        raise site.error(MANIFEST, "recorded.modules lists a module twice")


def _check_files(site: Site, files: Mapping[str, Any], data: str) -> None:
    if data not in files:
        raise site.error(MANIFEST, f"files table has no entry for {data}")
    for name, entry in files.items():
        if name == MANIFEST or not _is_plain_name(name):
            raise site.error(MANIFEST, f"files table names {name!r}, not a plain file of the bundle")
        if not isinstance(entry, dict):
            raise site.error(MANIFEST, f"files[{name!r}] must be an object")
        size, digest = entry.get("bytes"), entry.get("sha256")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise site.error(MANIFEST, f"files[{name!r}].bytes must be a non-negative integer")
        if not isinstance(digest, str) or not _HEX64.fullmatch(digest):
            raise site.error(MANIFEST, f"files[{name!r}].sha256 must be 64 lowercase hex digits")


def prepare_manifest(
    manifest: Mapping[str, Any],
    bundle_id: str,
    modules: list[str],
    files: dict[str, Any],
    *,
    activations_file: str = ACTIVATIONS,
    encryption: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A deep copy of ``manifest`` with the writer-owned keys filled in.

    ``activations_file`` and ``encryption`` are written only when they differ from a plain
    bundle's, so plaintext manifests look exactly as before.
    """
    out = copy.deepcopy(dict(manifest))
    out.pop("activations_file", None)
    out.pop("encryption", None)
    if activations_file != ACTIVATIONS:
        out["activations_file"] = activations_file
    if encryption is not None:
        out["encryption"] = encryption
    out["schema"] = SCHEMA_ID
    out["bundle_id"] = bundle_id
    out.setdefault("created_at", datetime.now(UTC).isoformat(timespec="milliseconds"))
    recorded = out.get("recorded")
    out["recorded"] = {**(recorded if isinstance(recorded, dict) else {}), "modules": list(modules)}
    out["files"] = files
    return out


def encode_manifest(manifest: Mapping[str, Any]) -> bytes:
    """Strict JSON (no NaN/Infinity), sorted keys, so equal manifests have equal bytes."""
    text = json.dumps(manifest, indent=2, sort_keys=True, allow_nan=False, ensure_ascii=False)
    return (text + "\n").encode("utf-8")


def example_manifest() -> dict[str, Any]:
    """A minimal valid manifest (for docs and tests)."""
    zero = "0" * 64
    return {
        "schema": SCHEMA_ID,
        "bundle_id": "example",
        "created_at": "2025-01-01T00:00:00+00:00",
        "kind": "incident",
        "model": {"ref": "tiny", "sha256": zero},
        "inputs": {"input_ids": [1]},
        "outputs": {},
        "failure": None,
        "recorded": {"modules": []},
        "files": {ACTIVATIONS: {"bytes": 0, "sha256": zero}},
    }


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_plain_name(name: str) -> bool:
    bad = name in ("", ".", "..") or name.startswith(".")
    return not (bad or "/" in name or "\\" in name or _CONTROL.search(name))


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not strict JSON")


def _json_type(value: object) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    for kind, word in names.items():
        if isinstance(value, kind):
            return word
    return "number" if isinstance(value, int | float) else type(value).__name__
