"""Strict JSON for manifests: bounded depth, finite numbers, bounded strings, no lone surrogates.

``loads_strict`` measures the nesting depth on the raw bytes *before* parsing, so nothing recursive
(the JSON parser, ``copy.deepcopy``, a validator) ever meets a 600-level document; then one
iterative walk refuses non-finite numbers, integers outside int64, oversized strings and strings
that are not valid Unicode (lone surrogates from ``\\ud800`` escapes), naming the JSON path.

    >>> loads_strict(b'{"a": [1, 2.5]}')
    {'a': [1, 2.5]}
    >>> loads_strict(b'{"a": {"b": 1e400}}')
    Traceback (most recent call last):
    forensics.bundle.strictjson.LimitError: a.b: expected a finite number, got 1e400
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import numpy as np

__all__ = ["MAX_DEPTH", "MAX_INT", "MAX_STRING", "LimitError", "check_value", "json_path", "loads_strict"]

MAX_DEPTH = 64
MAX_STRING = 16 * 1024 * 1024  # characters; the manifest itself is at most 64 MiB
MAX_INT = 2**63
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_SURROGATE = re.compile("[\ud800-\udfff]")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_CHUNK = 1 << 22
_INT_DIGITS = 40  # longer literals are out of range anyway; int() of 5,000 digits is an error


class LimitError(ValueError):
    """Valid JSON that breaks a limit: its message starts with the JSON path of the offending value."""


class _Refused:
    """A number literal JSON allows but a manifest may not hold (NaN, Infinity, 1e400, 10**50)."""

    def __init__(self, text: str, expected: str) -> None:
        self.text, self.expected = text, expected


def loads_strict(data: bytes) -> Any:
    """Parse UTF-8 JSON bytes under the limits above; a breach is a ``LimitError`` naming the path."""
    text = data.decode("utf-8")
    _check_depth(data)
    value = json.loads(
        text,
        object_pairs_hook=_no_duplicate_keys,
        parse_constant=lambda name: _Refused(name, f"a finite number ({name} is not strict JSON)"),
        parse_float=_float,
        parse_int=_int,
    )
    check_value(value)
    return value


def json_path(parts: tuple[str | int, ...] | list[str | int]) -> str:
    """``("files", "a.arrow", "bytes")`` -> ``files["a.arrow"].bytes``; the root is ``(top level)``."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _IDENTIFIER.fullmatch(part):
            out += f".{part}" if out else part
        else:
            out += f"[{json.dumps(part, ensure_ascii=True)}]"
    return out or "(top level)"


def _check_depth(data: bytes) -> None:
    """Deepest bracket nesting outside strings, computed in vectorised chunks (no recursion)."""
    stripped = _STRING.sub(b'""', data)
    depth = 0
    for start in range(0, len(stripped), _CHUNK):
        chunk = np.frombuffer(stripped, dtype=np.uint8, count=min(_CHUNK, len(stripped) - start), offset=start)
        steps = np.zeros(chunk.shape, dtype=np.int32)
        steps[(chunk == ord("[")) | (chunk == ord("{"))] = 1
        steps[(chunk == ord("]")) | (chunk == ord("}"))] = -1
        levels = np.cumsum(steps, dtype=np.int64) + depth
        if levels.size and int(levels.max()) > MAX_DEPTH:
            raise LimitError(
                f"expected objects and arrays nested at most {MAX_DEPTH} levels deep,"
                f" got {int(levels.max())} levels or more"
            )
        depth = int(levels[-1]) if levels.size else depth


def _float(text: str) -> float | _Refused:
    value = float(text)
    return value if math.isfinite(value) else _Refused(text, "a finite number")


def _int(text: str) -> int | _Refused:
    if len(text.lstrip("-")) > _INT_DIGITS:
        return _Refused(text[:20] + "…", f"an integer of magnitude below 2**63 ({len(text)} digits)")
    value = int(text)
    return value if -MAX_INT <= value < MAX_INT else _Refused(text, "an integer of magnitude below 2**63")


def check_value(root: Any) -> None:
    """Visit every value once, iteratively (parsed JSON or a caller's dict): depth, numbers, strings."""
    stack: list[tuple[tuple[str | int, ...], Any]] = [((), root)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, dict | list) and len(path) >= MAX_DEPTH:
            raise LimitError(
                f"{json_path(path)}: expected objects and arrays nested at most {MAX_DEPTH} levels deep, got more"
            )
        if isinstance(value, dict):
            for key, item in value.items():
                if isinstance(key, str):
                    _check_string(path, key, "key")
                stack.append(((*path, str(key)), item))
        elif isinstance(value, list | tuple):
            stack.extend(((*path, index), item) for index, item in enumerate(value))
        elif isinstance(value, _Refused):
            raise LimitError(f"{json_path(path)}: expected {value.expected}, got {value.text}")
        elif isinstance(value, str):
            _check_string(path, value, "string")
        elif isinstance(value, float) and not math.isfinite(value):
            raise LimitError(f"{json_path(path)}: expected a finite number, got {value}")
        elif isinstance(value, int) and not isinstance(value, bool) and not -MAX_INT <= value < MAX_INT:
            raise LimitError(f"{json_path(path)}: expected an integer of magnitude below 2**63, got {value}")


def _check_string(path: tuple[str | int, ...], value: str, what: str) -> None:
    if len(value) > MAX_STRING:
        raise LimitError(f"{json_path(path)}: expected a {what} of at most {MAX_STRING} characters, got {len(value)}")
    found = _SURROGATE.search(value)
    if found is not None:
        raise LimitError(
            f"{json_path(path)}: expected a {what} of valid Unicode, got a lone surrogate"
            f" {found.group()!r} at character {found.start()}"
        )


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out
