"""The manifest of an incident bundle: parse, validate, prepare and write ``manifest.json``.

JSON only, parsed under size, depth and number bounds (``strictjson``) and checked against the one
declarative schema (``schema.MANIFEST_SCHEMA``, by ``checks.check_manifest``); nothing executable ever is.

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
from forensics.bundle.checks import check_manifest
from forensics.bundle.schema import FAILURE_FAMILY_CHARS, MAX_FAILURE_FAMILY
from forensics.bundle.strictjson import LimitError, check_value, loads_strict
from forensics.durable import write_atomic
from forensics.errors import BundleError, ConfigError

__all__ = [
    "ACTIVATIONS",
    "KINDS",
    "MANIFEST",
    "MAX_MANIFEST_BYTES",
    "SCHEMA_ID",
    "check_bundle_id",
    "check_failure_family",
    "data_file",
    "encode_manifest",
    "example_manifest",
    "family_key",
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

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_FAILURE_FAMILY = re.compile(f"[A-Za-z0-9][{FAILURE_FAMILY_CHARS}]{{0,{MAX_FAILURE_FAMILY - 1}}}")


def parse_manifest(site: Site, data: bytes) -> dict[str, Any]:
    """Decode and validate manifest bytes; any problem is a ``BundleError`` naming manifest.json."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise site.error(MANIFEST, f"{len(data)} bytes, more than the limit {MAX_MANIFEST_BYTES}")
    try:
        with site.guard(MANIFEST, "not valid UTF-8 JSON"):
            value = loads_strict(data)
    except BundleError as exc:
        if isinstance(exc.__cause__, LimitError):  # valid JSON, but over a limit: the path says where
            raise site.error(MANIFEST, str(exc.__cause__)) from None
        raise
    if not isinstance(value, dict):
        raise site.error(MANIFEST, f"must be a JSON object, got {_json_type(value)}")
    validate_manifest(site, value)
    return value


def validate_manifest(site: Site, manifest: Mapping[str, Any]) -> None:
    """Check the schema id first, then ``MANIFEST_SCHEMA`` and its cross-field rules, then the data file."""
    found = manifest.get("schema")
    if found != SCHEMA_ID:
        raise site.error(MANIFEST, f"unsupported schema id {found!r}; this reader supports {SCHEMA_ID!r}")
    try:
        check_value(manifest)  # before anything recursive meets it (a caller's dict may be deep or cyclic)
    except LimitError as exc:
        raise site.error(MANIFEST, str(exc)) from None
    check_manifest(site, manifest)
    data = data_file(site, manifest)
    if data not in manifest["files"]:
        raise site.error(MANIFEST, f"files: expected an entry for the data file {data}, got none")


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


def check_failure_family(label: object) -> str:
    """``label`` when it is a failure-family label (the manifest's ``failure_family``): 1-64 letters, digits,
    ``.``, ``_`` or ``-``, a letter or digit first; ``ConfigError`` naming the field otherwise. It names
    report files (``family-<label>.json``), so nothing that could be a path or a control character passes.

    >>> check_failure_family("australia-capital")
    'australia-capital'
    >>> check_failure_family("../etc")
    Traceback (most recent call last):
    forensics.errors.ConfigError: failure_family: expected 1-64 letters, digits, '.', '_' or '-' (a letter or digit first), got '../etc'
    """
    if not isinstance(label, str) or not _FAILURE_FAMILY.fullmatch(label):
        raise ConfigError(
            f"failure_family: expected 1-{MAX_FAILURE_FAMILY} letters, digits, '.', '_' or '-' "
            f"(a letter or digit first), got {str(label)[:80]!r}"
        )
    return label


def family_key(manifest: Mapping[str, Any]) -> tuple[Any, ...] | None:
    """Which failure family an incident's manifest puts it in: ``("label", <failure_family>)``, else its
    failure spec, ``("spec", "expected" | "label", <token ids>)`` or ``("spec", "forbidden", <text>, <regex>)``;
    None when it has neither (or the spec is sealed). Incidents with equal keys are one family (``batch``).

    >>> family_key({**example_manifest(), "failure_family": "au"})
    ('label', 'au')
    >>> family_key({**example_manifest(), "failure": {"type": "expected", "text": " Canberra", "token_ids": [9]}})
    ('spec', 'expected', (9,))
    """
    label = manifest.get("failure_family")
    if label is not None:
        return ("label", str(label))
    failure = manifest.get("failure")
    if not isinstance(failure, Mapping):
        return None
    kind = failure.get("type")
    if kind == "forbidden":
        return ("spec", kind, str(failure.get("text", "")), bool(failure.get("regex", False)))
    return ("spec", kind, tuple(int(t) for t in failure.get("token_ids") or ()))


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


def _is_plain_name(name: str) -> bool:
    bad = name in ("", ".", "..") or name.startswith(".")
    return not (bad or "/" in name or "\\" in name or _CONTROL.search(name))


def _json_type(value: object) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    for kind, word in names.items():
        if isinstance(value, kind):
            return word
    return "number" if isinstance(value, int | float) else type(value).__name__
