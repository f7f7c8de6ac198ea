"""Greedy recording of one prompt or chat: generate under the recorder, locate the decision step, save.

    run = record_greedy(loaded, "The capital of Australia is", "bundles/australia",
                        FailureSpec.expected(" Canberra", loaded.tokenizer))
    run.failed, run.text, run.bundle.outputs["decision_step"]

A list of ``{role, content}`` messages is rendered with the model's own chat template and the
generation prompt (``forensics.record.spans.render_chat``); the rendered text is the bundle's
``inputs.prompt`` and each message a span. External calls made through a ``CallLog`` (``calls=``)
before recording are saved with the bundle and linked to the input text their results became.

The CLI's ``record``, the demo, the self-test, fault evaluation, the benches and the tests all record
through this one function. Besides a ``FailureSpec``, ``spec`` may name a spec made from the run itself:
``"runner-up"`` expects the second most likely first token (the model fails it: an incident of any
model), ``"as-generated"`` expects what the model said (a benign run).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from forensics.bundle import Bundle, check_failure_family
from forensics.failure import FailureSpec
from forensics.models.placement import input_device
from forensics.models.registry import LoadedModel
from forensics.record.recorder import CallLog, record
from forensics.record.spans import check_messages, render_chat
from forensics.vocab import BundleKind

__all__ = ["GreedyRun", "PromptOrMessages", "SpecChoice", "record_greedy"]

SpecChoice = FailureSpec | Literal["runner-up", "as-generated"]
PromptOrMessages = str | Sequence[Mapping[str, str]]


@dataclass(frozen=True)
class GreedyRun:
    """What one greedy recording produced: the saved bundle, its generated text, whether it failed."""

    bundle: Bundle
    text: str
    failed: bool


def record_greedy(
    loaded: LoadedModel,
    prompt: PromptOrMessages,
    out: str | os.PathLike[str],
    spec: SpecChoice = "runner-up",
    *,
    kind: BundleKind | None = None,
    max_new_tokens: int = 8,
    seed: int = 0,
    encryption_key: bytes | None = None,
    streaming: bool = False,
    calls: CallLog | None = None,
    failure_family: str | None = None,
) -> GreedyRun:
    """Generate greedily from ``prompt`` (a text, or a list of chat messages) under the recorder and save
    the bundle at ``out``.

    ``kind`` defaults to ``incident`` when the spec is violated, else ``benign``; ``encryption_key``
    (32 bytes) encrypts the bundle's activations; ``streaming`` spills activations to a temporary
    directory next to ``out`` while generating (``streaming_enabled``), so memory stays flat; ``calls``
    holds the external calls whose results went into the input; ``failure_family`` labels the incident's
    failure mode (checked before anything runs: ``check_failure_family``).
    """
    if failure_family is not None:
        check_failure_family(failure_family)
    model: Any = loaded.model
    tok, info = loaded.tokenizer, loaded.info
    messages = None if isinstance(prompt, str) else check_messages(list(prompt))
    text = prompt if isinstance(prompt, str) else render_chat(tok, messages or [])
    # a rendered chat carries its own special tokens (as apply_chat_template(tokenize=True) does)
    enc = tok(text, return_tensors="pt", add_special_tokens=messages is None).to(input_device(model))
    torch.manual_seed(seed)
    ref = info.ref if info.kind in ("embedded", "hf_cache") else str(Path(info.path).resolve())
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    stream_dir = _spill_parent(out) if streaming else None
    rec = record(model, tok, model_ref=ref, model_sha256=info.sha256, stream_dir=stream_dir, calls=calls)
    with rec, torch.inference_mode():
        model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad)
    try:
        chosen_spec = _spec_for(spec, rec.generated_ids, rec.steps)
        step = chosen_spec.decision_step(rec.generated_ids, tok)
        chosen_kind = kind or ("incident" if step is not None else "benign")
        generation = {"greedy": True, "do_sample": False, "max_new_tokens": max_new_tokens, "seed": seed}
        bundle = rec.save(
            out,
            failure=chosen_spec,
            kind=chosen_kind,
            prompt=text,
            generation=generation,
            encryption_key=encryption_key,
            messages=messages,
            failure_family=failure_family,
        )
    finally:
        rec.discard()  # a spec error must not leave spill files behind either
    return GreedyRun(bundle, tok.decode(rec.generated_ids), step is not None)


def _spill_parent(out: str | os.PathLike[str]) -> Path:
    """The directory that will hold ``out`` (created, as the bundle writer would): spill files go on the
    bundle's own disk rather than a possibly RAM-backed ``/tmp``."""
    parent = Path(out).resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    return parent


def _spec_for(spec: SpecChoice, generated: list[int], steps: list[tuple[list[int], list[float]]]) -> FailureSpec:
    if isinstance(spec, FailureSpec):
        return spec
    if spec == "as-generated":
        return FailureSpec("expected", "", (generated[0],))
    return FailureSpec("expected", "", (steps[0][0][1],))  # top-k ids of the first step, runner-up
