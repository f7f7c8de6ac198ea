"""Turn what a Recorder saw into the bundle manifest (JSON only, nothing executable)."""

from __future__ import annotations

import copy
import json
import platform
import sys
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from forensics.failure import FailureSpec
from forensics.record.spans import build_spans

if TYPE_CHECKING:
    from forensics.record.recorder import Recorder

__all__ = ["build_manifest", "environment", "external_call", "jsonable"]


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


def environment(model: torch.nn.Module) -> dict[str, Any]:
    import transformers

    param = next(model.parameters(), None)
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "device": str(param.device) if param is not None else "cpu",
        "dtype": str(param.dtype).removeprefix("torch.") if param is not None else "float32",
    }


def build_manifest(
    rec: Recorder,
    *,
    failure: FailureSpec | None,
    kind: str,
    prompt: str | None,
    generation: dict[str, Any] | None,
    messages: Sequence[Mapping[str, str]] | None = None,
) -> dict[str, Any]:
    """The manifest fields a bundle needs (the writer adds schema, id, time and the file table).

    With the input text (``prompt``, the rendered ``messages`` for a chat) ``inputs.spans`` lists its
    spans and each external call gets ``span``: the index of the span its result became, or null."""
    from forensics.models.arch import arch_for
    from forensics.models.registry import weights_sha256

    generated = rec.generated_ids
    step = failure.decision_step(generated, rec.tokenizer) if failure is not None else None
    env = environment(rec.model)
    text = rec.tokenizer.decode(generated) if rec.tokenizer is not None else None
    calls = copy.deepcopy(rec.external_calls)
    inputs: dict[str, Any] = {"prompt": prompt, "input_ids": rec.prompt_ids}
    if prompt is not None and rec.tokenizer is not None:
        inputs["spans"] = build_spans(
            rec.tokenizer, prompt, rec.prompt_ids, messages=messages, calls=calls, explicit=rec.calls.spans
        )
    return {
        "kind": kind,
        "model": {
            "ref": rec.model_ref,
            "sha256": rec.model_sha256 or weights_sha256(rec.model),
            "family": arch_for(rec.model).family,
            "dtype": env["dtype"],
        },
        "tokenizer": {"ref": rec.model_ref},
        "inputs": inputs,
        "generation": generation or {"greedy": True},
        "outputs": {
            "generated_ids": generated,
            "text": text,
            "top_k": [{"ids": ids, "logits": vals} for ids, vals in rec.steps],
            "decision_step": step,
            "is_failure": step is not None,
            "observed_id": generated[step] if step is not None else None,
            "target_id": failure.target_id(step) if (failure is not None and step is not None) else None,
        },
        "failure": failure.to_dict() if failure is not None else None,
        "recorded": {"sites": dict(rec.sites), "positions": len(rec.fed_ids), "dtype": "float32"},
        "external_calls": calls,
        "environment": env,
    }
