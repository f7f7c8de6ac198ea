"""Checking a manifest: ``MANIFEST_SCHEMA`` first, then ``CROSS_CHECKS``, the few rules JSON Schema cannot
say (the decision step lies within the generated ids, token ids within the recorded vocabulary, ...).
``check_manifest`` raises one ``BundleError`` naming the field's JSON path, what was expected and what
arrived.

    >>> from forensics.bundle.manifest import example_manifest
    >>> check_manifest(Site("b"), example_manifest())
    >>> check_manifest(Site("b"), {**example_manifest(), "outputs": {"decision_step": "abc"}})
    Traceback (most recent call last):
    forensics.errors.BundleError: bundle b: manifest.json: outputs.decision_step: expected a decision step (an integer from 0 to 2147483647, or null), got string 'abc'
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from functools import cache
from typing import Any

from forensics.bundle._guard import Site
from forensics.bundle.schema import MANIFEST_SCHEMA
from forensics.bundle.strictjson import json_path

__all__ = ["CROSS_CHECKS", "CrossCheck", "check_manifest", "describe"]

_MANIFEST = "manifest.json"  # the file every message names (forensics.bundle.manifest.MANIFEST)

#: A cross-field rule: yields (JSON path, what was expected, what arrived) for each violation.
CrossCheck = Callable[[Mapping[str, Any]], Iterator[tuple[tuple[str | int, ...], str, str]]]


def _decision_step(m: Mapping[str, Any]) -> Iterator[tuple[tuple[str | int, ...], str, str]]:
    if "sealed" in m:  # checked once unsealed
        return
    outputs = m["outputs"]
    step = outputs.get("decision_step")
    if step is None:
        return
    generated = outputs["generated_ids"]
    if step >= len(generated):
        yield ("outputs", "decision_step"), f"a step within outputs.generated_ids (< {len(generated)})", str(step)
    elif "top_k" in outputs and step >= len(outputs["top_k"]):
        yield ("outputs", "decision_step"), f"a step within outputs.top_k (< {len(outputs['top_k'])})", str(step)
    elif outputs.get("observed_id") is not None and outputs["observed_id"] != generated[step]:
        yield (
            ("outputs", "observed_id"),
            f"generated_ids[{step}] = {generated[step]} (the token at decision_step)",
            str(outputs["observed_id"]),
        )


def _top_k_lengths(m: Mapping[str, Any]) -> Iterator[tuple[tuple[str | int, ...], str, str]]:
    if "sealed" in m:
        return
    for index, entry in enumerate(m["outputs"].get("top_k", ())):
        if len(entry["ids"]) != len(entry["logits"]):
            yield (
                ("outputs", "top_k", index, "logits"),
                f"{len(entry['ids'])} logits (one per id)",
                f"{len(entry['logits'])}",
            )


def _token_ids(m: Mapping[str, Any]) -> Iterator[tuple[tuple[str | int, ...], list[Any]]]:
    outputs, failure = m["outputs"], m["failure"]
    yield ("inputs", "input_ids"), m["inputs"]["input_ids"]
    yield ("outputs", "generated_ids"), outputs.get("generated_ids", [])
    for index, entry in enumerate(outputs.get("top_k", ())):
        yield ("outputs", "top_k", index, "ids"), entry["ids"]
    for key in ("observed_id", "target_id"):
        if outputs.get(key) is not None:
            yield ("outputs", key), [outputs[key]]
    if failure is not None:
        yield ("failure", "token_ids"), failure.get("token_ids", [])


def _vocabulary(m: Mapping[str, Any]) -> Iterator[tuple[tuple[str | int, ...], str, str]]:
    vocab = m["model"].get("vocab_size")
    if vocab is None or "sealed" in m:
        return
    for path, ids in _token_ids(m):
        bad = next((i for i, token in enumerate(ids) if token >= vocab), None)
        if bad is not None:
            where = path if len(ids) == 1 and path[-1] in ("observed_id", "target_id") else (*path, bad)
            yield where, f"a token id below model.vocab_size {vocab}", str(ids[bad])


def _span_ranges(m: Mapping[str, Any]) -> Iterator[tuple[tuple[str | int, ...], str, str]]:
    if "sealed" in m:
        return
    inputs = m["inputs"]
    length, calls = len(inputs["input_ids"]), len(m.get("external_calls", ()))
    for index, span in enumerate(inputs.get("spans", ())):
        start, end = span["tokens"]
        if not start <= end <= length:
            where = ("inputs", "spans", index, "tokens")
            yield where, f"a range within inputs.input_ids (0 <= start <= end <= {length})", f"[{start}, {end}]"
        if span.get("call") is not None and span["call"] >= calls:
            yield ("inputs", "spans", index, "call"), f"an index into external_calls (< {calls})", str(span["call"])
    spans = len(inputs.get("spans", ()))
    for index, call in enumerate(m.get("external_calls", ())):
        if call.get("span") is not None and call["span"] >= spans:
            yield ("external_calls", index, "span"), f"an index into inputs.spans (< {spans})", str(call["span"])


def _created_at(m: Mapping[str, Any]) -> Iterator[tuple[tuple[str | int, ...], str, str]]:
    try:
        datetime.fromisoformat(m["created_at"])
    except ValueError:
        yield ("created_at",), "an ISO-8601 timestamp", describe(m["created_at"])


def _encrypted_files(m: Mapping[str, Any]) -> Iterator[tuple[tuple[str | int, ...], str, str]]:
    for index, name in enumerate(m.get("encryption", {}).get("files", ())):
        if name not in m["files"]:
            yield ("encryption", "files", index), "a name from the files table", describe(name)


CROSS_CHECKS: tuple[CrossCheck, ...] = (
    _created_at,
    _decision_step,
    _top_k_lengths,
    _vocabulary,
    _encrypted_files,
    _span_ranges,
)


def check_manifest(site: Site, manifest: Mapping[str, Any]) -> None:
    """Validate against ``MANIFEST_SCHEMA`` then ``CROSS_CHECKS``; the first problem is a ``BundleError``."""
    from jsonschema.exceptions import best_match

    error = best_match(_validator().iter_errors(manifest))
    if error is not None:
        raise site.error(_MANIFEST, _message(error))
    for rule in CROSS_CHECKS:
        for path, expected, got in rule(manifest):
            raise site.error(_MANIFEST, f"{json_path(path)}: expected {expected}, got {got}")


@cache
def _validator() -> Any:
    """Draft 2020-12, except that an "integer" is a JSON integer literal: never 1.0, never true."""
    from jsonschema import Draft202012Validator, validators

    strict = Draft202012Validator.TYPE_CHECKER.redefine(
        "integer", lambda _checker, value: isinstance(value, int) and not isinstance(value, bool)
    )
    Draft202012Validator.check_schema(MANIFEST_SCHEMA)
    return validators.extend(Draft202012Validator, type_checker=strict)(MANIFEST_SCHEMA)


def _message(error: Any) -> str:
    path = json_path(list(error.absolute_path))
    title = error.schema.get("title") if isinstance(error.schema, dict) else None
    if error.validator == "required":
        missing = next((k for k in error.validator_value if k not in error.instance), error.validator_value[0])
        where = "" if path == "(top level)" else f"{path}: "
        reason = error.schema.get("reason")
        return f"{where}missing required key {missing!r}" + (f" (required because {reason})" if reason else "")
    if error.validator == "uniqueItems":
        return f"{path}: expected {title or 'unique items'}, got an item listed twice"
    return f"{path}: expected {title or error.message}, got {describe(error.instance)}"


def describe(value: object, limit: int = 60) -> str:
    """A value as a message shows it: its JSON type and a short rendering."""
    names = {bool: "boolean", dict: "object", list: "array", str: "string", type(None): "null"}
    kind = next((word for t, word in names.items() if isinstance(value, t)), None)
    if kind is None:
        kind = "number" if isinstance(value, int | float) else type(value).__name__
    if isinstance(value, dict | list):
        return f"{kind} of {len(value)} {'keys' if isinstance(value, dict) else 'items'}"
    if value is None:
        return "null"
    text = repr(value) if isinstance(value, str) else json.dumps(value)
    return f"{kind} {text if len(text) <= limit else text[: limit - 1] + '…'}"
