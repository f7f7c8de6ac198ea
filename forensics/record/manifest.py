"""Turn what a recorder observed (an ``Observation``) into the bundle manifest (JSON only, nothing executable)."""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

from forensics.bundle import check_failure_family
from forensics.failure import FailureSpec
from forensics.record.observation import Observation
from forensics.record.spans import build_spans

__all__ = ["build_manifest", "external_call", "jsonable"]


def jsonable(value: Any) -> Any:
    """``value`` if JSON can hold it, else its ``repr`` (results of tools are user objects)."""
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return repr(value)


def external_call(
    name: str, args: tuple[Any, ...], kwargs: dict[str, Any], result: Any, start: float, error: BaseException | None
) -> dict[str, Any]:
    return {
        "name": name,
        "args": [jsonable(a) for a in args],
        "kwargs": {k: jsonable(v) for k, v in kwargs.items()},
        "result": jsonable(result),
        "error": None if error is None else f"{type(error).__name__}: {error}",
        "started_at": start,
        "duration_s": time.time() - start,
    }


def build_manifest(
    obs: Observation,
    *,
    failure: FailureSpec | None,
    kind: str,
    prompt: str | None,
    generation: dict[str, Any] | None,
    messages: Sequence[Mapping[str, str]] | None = None,
    failure_family: str | None = None,
) -> dict[str, Any]:
    """The manifest fields a bundle needs (the writer adds schema, id, time and the file table).

    ``failure_family`` labels the incident's failure mode (``check_failure_family``); the key is written only
    when given, so unlabelled manifests look exactly as before.

    The input text is ``prompt`` (for a chat, the rendered ``messages``), else the text the observation
    recovered from the prompt's token ids; with it ``inputs.spans`` lists its spans and each external call
    gets ``span``: the index of the span its result became, or null."""
    generated = list(obs.generated_ids)
    step = failure.decision_step(generated, obs.tokenizer) if failure is not None else None
    calls = [copy.deepcopy(dict(c)) for c in obs.external_calls]
    text = prompt if prompt is not None else obs.prompt_text
    inputs: dict[str, Any] = {"prompt": text, "input_ids": list(obs.prompt_ids)}
    if text is not None and obs.tokenizer is not None:
        inputs["spans"] = build_spans(
            obs.tokenizer, text, obs.prompt_ids, messages=messages, calls=calls, explicit=obs.explicit_spans
        )
    manifest: dict[str, Any] = {
        "kind": kind,
        "model": {
            "ref": obs.model_ref,
            "sha256": obs.model_sha256,
            "family": obs.family,
            "dtype": obs.environment["dtype"],
        },
        "tokenizer": {"ref": obs.model_ref},
        "inputs": inputs,
        "generation": generation or {"greedy": True},
        "outputs": _outputs(obs, failure, step),
        "failure": failure.to_dict() if failure is not None else None,
        "recorded": {"sites": dict(obs.sites), "positions": obs.positions, "dtype": "float32"},
        "external_calls": calls,
        "environment": dict(obs.environment),
    }
    if failure_family is not None:
        manifest["failure_family"] = check_failure_family(failure_family)
    return manifest


def _outputs(obs: Observation, failure: FailureSpec | None, step: int | None) -> dict[str, Any]:
    generated = list(obs.generated_ids)
    return {
        "generated_ids": generated,
        "text": obs.tokenizer.decode(generated) if obs.tokenizer is not None else None,
        "top_k": [{"ids": list(ids), "logits": list(vals)} for ids, vals in obs.steps],
        "decision_step": step,
        "is_failure": step is not None,
        "observed_id": generated[step] if step is not None else None,
        "target_id": failure.target_id(step) if (failure is not None and step is not None) else None,
    }
