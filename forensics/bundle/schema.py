"""The one declarative schema of ``manifest.json`` (JSON Schema 2020-12, checked with ``jsonschema``).

``MANIFEST_SCHEMA`` gives every field the replayer, fidelity check, failure metric and RCA read its
type and range, and each a ``title`` that error messages quote as what was expected; the rules JSON
Schema cannot say and the check itself live in ``forensics.bundle.checks``.

    >>> MANIFEST_SCHEMA["$id"], MANIFEST_SCHEMA["properties"]["kind"]["enum"]
    ('model-forensics/bundle@1', ['incident', 'benign'])
"""

from __future__ import annotations

from typing import Any

SEALED_KEYS = ("external_calls", "failure", "inputs", "outputs")  # forensics.bundle.seal moves these
FAILURE_FAMILY_CHARS = "A-Za-z0-9._-"  # a failure-family label: these characters only, a letter or digit first
MAX_FAILURE_FAMILY = 64

__all__ = ["FAILURE_FAMILY_CHARS", "MANIFEST_SCHEMA", "MAX_FAILURE_FAMILY", "SEALED_KEYS"]

_MANIFEST = "manifest.json"
_INT32 = 2**31 - 1
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_MAX_TOKENS = 1 << 24
_MAX_MODULES = 100_000
_CONTROL = "\\x00-\\x1f\\x7f"
_PLAIN_NAME = f"^[^./\\\\{_CONTROL}][^/\\\\{_CONTROL}]*$"


def _str(title: str, max_length: int = 4096, **more: Any) -> dict[str, Any]:
    return {"type": "string", "maxLength": max_length, "title": title, **more}


def _int(title: str, low: int = 0, high: int = _INT32) -> dict[str, Any]:
    return {"type": "integer", "minimum": low, "maximum": high, "title": title}


def _nullable(schema: dict[str, Any], title: str) -> dict[str, Any]:
    return {**schema, "type": [schema["type"], "null"], "title": title}


TOKEN = _int("a token id (an integer from 0 to 2147483647)")
TOKENS = {"type": "array", "items": TOKEN, "maxItems": _MAX_TOKENS, "title": "a list of token ids"}
NUMBER = {"type": "number", "title": "a finite number"}
PLAIN_NAME = _str(
    "a plain file name of the bundle (no separators, no leading dot, not manifest.json)",
    255,
    pattern=_PLAIN_NAME,
    minLength=1,
    **{"not": {"const": _MANIFEST}},
)
SHA256 = _str("64 lowercase hex digits", 64, pattern="^[0-9a-f]{64}$")
MODULE = _str("a non-empty module name of at most 1024 characters", 1024, minLength=1)

_FILE_ENTRY = {
    "type": "object",
    "title": 'a files-table entry {"bytes": int, "sha256": hex}',
    "required": ["bytes", "sha256"],
    "properties": {
        "bytes": _int("a byte size (an integer from 0 to 2**53)", 0, 2**53),
        "sha256": SHA256,
        "compression": {"enum": ["zstd"], "title": 'the compression "zstd"'},
    },
}

_TOP_K_STEP = {
    "type": "object",
    "title": 'a top-k entry {"ids": [token ids], "logits": [numbers]}',
    "required": ["ids", "logits"],
    "properties": {
        "ids": {**TOKENS, "maxItems": 1 << 16},
        "logits": {"type": "array", "items": NUMBER, "maxItems": 1 << 16, "title": "a list of finite numbers"},
    },
}


def _requires(field: str, when: str, kind: str) -> dict[str, Any]:
    """``field`` must be present once ``when`` holds a value of JSON type ``kind``."""
    return {
        "if": {"properties": {when: {"type": kind}}, "required": [when]},
        "then": {"required": [field], "reason": f"{when} is set"},
    }


_OUTPUTS = {
    "type": "object",
    "title": "an object",
    "properties": {
        "generated_ids": {**TOKENS, "minItems": 1, "title": "a non-empty list of token ids"},
        "text": _nullable(_str("a string", 1 << 24), "a string or null"),
        "top_k": {
            "type": "array",
            "items": _TOP_K_STEP,
            "maxItems": _MAX_TOKENS,
            "title": "a list of top-k entries, one per generated token",
        },
        "decision_step": _nullable(_int("an integer"), "a decision step (an integer from 0 to 2147483647, or null)"),
        "is_failure": {"type": "boolean", "title": "a boolean"},
        "observed_id": _nullable(TOKEN, "a token id or null"),
        "target_id": _nullable(TOKEN, "a token id or null"),
    },
    "allOf": [
        _requires("generated_ids", "decision_step", "integer"),
        _requires("generated_ids", "observed_id", "integer"),
    ],
}


def _failure_kind(kind: str, then: dict[str, Any]) -> dict[str, Any]:
    return {"if": {"properties": {"type": {"const": kind}}, "required": ["type"]}, "then": then}


_FAILURE = {
    "type": ["object", "null"],
    "title": "a failure spec object or null",
    "required": ["type"],
    "properties": {
        "type": {"enum": ["expected", "forbidden", "label"], "title": "one of 'expected', 'forbidden', 'label'"},
        "text": _str("a string", 1 << 20),
        "token_ids": {**TOKENS, "maxItems": 1 << 20},
        "regex": {"type": "boolean", "title": "a boolean"},
    },
    "allOf": [
        _failure_kind(
            "expected",
            {
                "required": ["token_ids"],
                "reason": "the spec is of type 'expected'",
                "properties": {"token_ids": {"minItems": 1, "title": "a non-empty list of token ids"}},
            },
        ),
        _failure_kind(
            "label",
            {
                "required": ["token_ids"],
                "reason": "the spec is of type 'label'",
                "properties": {"token_ids": {"minItems": 1, "maxItems": 1, "title": "exactly one label token id"}},
            },
        ),
        _failure_kind(
            "forbidden",
            {
                "required": ["text"],
                "reason": "the spec is of type 'forbidden'",
                "properties": {"text": {"minLength": 1, "title": "a non-empty text or regex"}},
            },
        ),
    ],
}

_RECORDED = {
    "type": "object",
    "title": "an object",
    "required": ["modules"],
    "properties": {
        "modules": {
            "type": "array",
            "items": MODULE,
            "uniqueItems": True,
            "maxItems": _MAX_MODULES,
            "title": "a list of unique module names (batch order)",
        },
        "sites": {
            "type": "object",
            "maxProperties": _MAX_MODULES,
            "additionalProperties": _str("a site name (a string)", 64),
            "propertyNames": {"maxLength": 1024},
            "title": "an object mapping module names to site names",
        },
        "positions": {
            "type": ["integer", "string"],
            "minimum": 0,
            "maximum": _INT32,
            "maxLength": 64,
            "title": "a position count (an integer >= 0) or a name",
        },
        "dtype": _str("a dtype name", 32),
    },
}

_EXTERNAL_CALL = {
    "type": "object",
    "title": "an external call object",
    "required": ["name"],
    "properties": {
        "name": _str("a call name", 1024),
        "args": {"type": "array", "title": "a list"},
        "kwargs": {"type": "object", "title": "an object"},
        "error": _nullable(_str("a string", 1 << 20), "a string or null"),
        "started_at": NUMBER,
        "duration_s": {**NUMBER, "minimum": 0, "title": "a non-negative number"},
        "span": _nullable(_int("an index into inputs.spans"), "an index into inputs.spans, or null"),
    },
}

FAILURE_FAMILY = _str(  # "not" a character outside the set: a "$" would let a trailing newline through
    f"a failure-family label: 1-{MAX_FAILURE_FAMILY} letters, digits, '.', '_' or '-', a letter or digit first",
    MAX_FAILURE_FAMILY,
    minLength=1,
    pattern="^[A-Za-z0-9]",
    **{"not": {"type": "string", "pattern": f"[^{FAILURE_FAMILY_CHARS}]"}},
)

_RANGE = {
    "type": "array",
    "items": _int("an offset (an integer from 0 to 2147483647)"),
    "minItems": 2,
    "maxItems": 2,
    "title": "a range [start, end)",
}

_SPAN = {  # token (and character) ranges and roles only: no text (forensics.record.spans)
    "type": "object",
    "title": "a span object",
    "required": ["kind", "tokens"],
    "properties": {
        "kind": {"enum": ["message", "external", "sentence"], "title": "one of 'message', 'external', 'sentence'"},
        "index": _int("a message or sentence index"),
        "role": {"enum": ["system", "user", "assistant", "tool"], "title": "a chat role"},
        "call": _nullable(_int("an index into external_calls"), "an index into external_calls, or null"),
        "name": _str("a call name", 1024),
        "part": _int("an item index of the call's result"),
        "tokens": _RANGE,
        "chars": _RANGE,
    },
}

MANIFEST_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "model-forensics/bundle@1",
    "type": "object",
    "title": "a JSON object",
    "required": ["schema", "bundle_id", "created_at", "kind", "model", "recorded", "files"],
    "properties": {
        "schema": {"const": "model-forensics/bundle@1", "title": "'model-forensics/bundle@1'"},
        "bundle_id": _str(
            "a non-empty name without separators or control characters",
            255,
            minLength=1,
            pattern=f"^[^/\\\\{_CONTROL}]+$",
            **{"not": {"enum": [".", ".."]}},
        ),
        "created_at": _str("an ISO-8601 timestamp", 64),
        "kind": {"enum": ["incident", "benign"], "title": "one of 'incident', 'benign'"},
        "failure_family": FAILURE_FAMILY,  # optional: which failure mode the incident belongs to (batch groups by it)
        "model": {
            "type": "object",
            "title": "an object",
            "required": ["ref", "sha256"],
            "properties": {
                "ref": _str("a model reference (a string)"),
                "sha256": _str("a weights digest (a string)", 128),
                "family": _str("an architecture family name", 64),
                "dtype": {
                    "enum": ["float32", "float16", "bfloat16"],
                    "title": "one of 'float32', 'float16', 'bfloat16'",
                },
                "vocab_size": _int("a vocabulary size (an integer from 1 to 2147483647)", 1),
            },
        },
        "tokenizer": {"type": "object", "title": "an object", "properties": {"ref": _str("a tokenizer reference")}},
        "inputs": {
            "type": "object",
            "title": "an object",
            "required": ["input_ids"],
            "properties": {
                "input_ids": {**TOKENS, "minItems": 1, "title": "a non-empty list of token ids"},
                "prompt": _nullable(_str("a string", 1 << 24), "a string or null"),
                "spans": {"type": "array", "items": _SPAN, "maxItems": 1 << 16, "title": "a list of spans"},
            },
        },
        "generation": {
            "type": "object",
            "title": "an object",
            "properties": {
                "greedy": {"type": "boolean", "title": "a boolean"},
                "max_new_tokens": _int("an integer from 0 to 2147483647"),
                "seed": _nullable(_int("an int64", _INT64_MIN, _INT64_MAX), "an int64 or null"),
            },
        },
        "outputs": _OUTPUTS,
        "failure": _FAILURE,
        "recorded": _RECORDED,
        "external_calls": {"type": "array", "items": _EXTERNAL_CALL, "title": "a list of external calls"},
        "environment": {"type": "object", "title": "an object"},
        "files": {
            "type": "object",
            "title": "an object mapping file names to entries",
            "minProperties": 1,
            "maxProperties": 64,
            "propertyNames": PLAIN_NAME,
            "additionalProperties": _FILE_ENTRY,
        },
        "activations_file": PLAIN_NAME,
        "encryption": {
            "type": "object",
            "title": "an encryption object",
            "required": ["algorithm", "key_id", "files"],
            "properties": {
                "algorithm": {"const": "AES-256-GCM", "title": "'AES-256-GCM'"},
                "key_id": _str("16 lowercase hex digits", 16, pattern="^[0-9a-f]{16}$"),
                "files": {
                    "type": "array",
                    "items": PLAIN_NAME,
                    "uniqueItems": True,
                    "maxItems": 64,
                    "title": "a list of file names from the files table",
                },
            },
        },
        "sealed": {
            "type": "object",
            "title": "a sealed object (see forensics.bundle.seal)",
            "required": ["algorithm", "keys", "nonce", "ciphertext"],
            "additionalProperties": False,
            "properties": {
                "algorithm": {"const": "AES-256-GCM", "title": "'AES-256-GCM'"},
                "keys": {
                    "type": "array",
                    "items": {"enum": list(SEALED_KEYS)},
                    "uniqueItems": True,
                    "title": f"a list of section names from {list(SEALED_KEYS)}",
                },
                "nonce": _str("base64 of a 12-byte nonce", 16, minLength=16),
                "ciphertext": _str("base64 ciphertext", 1 << 26, minLength=24),
            },
        },
    },
    "allOf": [
        {  # a plain manifest holds its content sections; a sealed one holds them only inside ``sealed``
            "if": {"not": {"required": ["sealed"]}},
            "then": {"required": ["inputs", "outputs", "failure"]},
            "else": {
                "required": ["encryption"],
                "reason": "the manifest has a sealed section",
                "not": {"anyOf": [{"required": [k]} for k in SEALED_KEYS]},
                "title": f"no {', '.join(SEALED_KEYS)} beside sealed (they live inside it)",
            },
        },
        {
            "if": {"properties": {"failure": {"type": "object"}}, "required": ["failure"]},
            "then": {
                "properties": {"outputs": {"required": ["generated_ids"], "reason": "the bundle has a failure spec"}}
            },
        },
    ],
}
