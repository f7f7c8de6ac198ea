"""Provenance: which input spans (messages, tool results, retrieved documents, sentences) cause a failure.

    result = provenance_for(rp)             # rp: a faithful Replayer of an incident with inputs.spans
    result["cause"]["statement"]            # "removing retriever result #1 ('…') turns ' Lyon' into ' Paris' …"
    result["spans"][0]["removed"]["fixed"]

Three steps, cheapest first. Gradient × embedding (one forward and one backward pass) estimates each
span's share of the decision metric; the top spans are then measured exactly by replay — the input
re-rendered without the span (its characters cut, re-tokenised) and the span's positions ablated (the
embedding output zeroed there); the cause, a span whose removal fixes the failure, is validated by a
hybrid regeneration of the whole answer without it. A message is removed by emptying its content (its
role markers stay, as a chat with an empty turn); no tool is ever called.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from forensics.errors import ReplayError
from forensics.failure import FailureSpec
from forensics.hooks import HookSet, primary, with_primary
from forensics.models.arch import arch_for
from forensics.replay.hybrid import regenerate, rewrite_input
from forensics.replay.interventions import Intervention
from forensics.replay.replayer import Replayer

__all__ = ["TOP_SPANS", "attribution", "describe", "provenance_for", "token_attribution"]

TOP_SPANS = 3  # spans measured exactly by replay after the gradient pre-filter
KIND_ORDER = {"external": 0, "message": 1, "sentence": 2}  # a report names calls first, then messages
PREVIEW = 60  # characters of a span's text quoted in a statement


def provenance_for(rp: Replayer, *, top: int = TOP_SPANS, max_new_tokens: int | None = None) -> dict[str, Any]:
    """The provenance section of a report (see docs/report-schema.md); ``note`` says why it is empty."""
    spans = [s for s in rp.bundle.inputs.get("spans") or () if "tokens" in s]
    if rp.spec is None or not spans:
        why = "no failure spec" if rp.spec is None else "the bundle records no input spans"
        return {"spans": [], "cause": None, "summary": f"provenance skipped: {why}"}
    t0, passes = time.perf_counter(), rp.forward_passes
    scores = attribution(rp, spans)
    order = sorted(range(len(spans)), key=lambda i: -abs(scores[i]))[:top]
    incident = rp.run(())
    rows = [_measure(rp, spans[i], scores[i]) for i in order]
    cause = _cause(rp, rows, incident.metric, max_new_tokens)
    return {
        "method": "gradient x embedding pre-filter; removal and ablation by replay; cause by hybrid regeneration",
        "incident": {"metric": incident.metric, "argmax_token": incident.argmax_token},
        "spans": [{k: v for k, v in row.items() if not k.startswith("_")} for row in rows],
        "evaluated": len(rows),
        "total_spans": len(spans),
        "cause": cause,
        "summary": _summary(rp, rows, cause, incident.metric),
        "forward_passes": rp.forward_passes - passes,
        "seconds": time.perf_counter() - t0,
    }


def attribution(rp: Replayer, spans: Sequence[Mapping[str, Any]]) -> list[float]:
    """Gradient × embedding of the decision metric summed over each span's tokens: about how much the
    metric would move if the span's embeddings were zero (first order)."""
    per_token = token_attribution(rp)
    return [float(sum(per_token[s["tokens"][0] : s["tokens"][1]])) for s in spans]


def token_attribution(rp: Replayer) -> list[float]:
    """Per position of ``rp.input_ids``: gradient of the decision metric with respect to the embedding
    output, times that output (one forward and one backward pass)."""
    embed = arch_for(rp.model).embed
    spec = _spec(rp)
    held: list[torch.Tensor] = []

    def leaf(module: torch.nn.Module, args: Any, output: Any) -> Any:
        emb = primary(output).detach().requires_grad_(True)  # [1, T, d]
        held.append(emb)
        return with_primary(output, emb)

    with torch.enable_grad(), HookSet(rp.model) as hooks:
        hooks.forward(embed, leaf)
        logits = rp.model(input_ids=rp.input_ids, use_cache=False).logits[:, -1].float()
        metric = spec.metric(logits, observed_id=rp.observed_id, target_id=rp.target_id)
        (grad,) = torch.autograd.grad(metric.sum(), held[0])
    rp.forward_passes += 1
    return [float(v) for v in (grad * held[0].detach()).sum(-1)[0].float()]


def describe(span: Mapping[str, Any], text: str = "") -> str:
    """A span as the report names it: 'retriever result #1', 'tool message #2', 'sentence #1'."""
    quote = f" ({_preview(text)!r})" if text else ""
    if span.get("kind") == "external":
        part = f", document {span['part'] + 1}" if isinstance(span.get("part"), int) else ""
        call = span.get("call")
        number = f" #{call + 1}" if isinstance(call, int) else ""
        return f"{span.get('name')} result{number}{part}{quote}"
    if span.get("kind") == "message":
        return f"{span.get('role')} message #{span.get('index', 0) + 1}{quote}"
    return f"{span.get('kind', 'span')} #{span.get('index', 0) + 1}{quote}"


# -- steps -------------------------------------------------------------------------------------
def _measure(rp: Replayer, span: Mapping[str, Any], score: float) -> dict[str, Any]:
    """One span: attribution, and removal and ablation each measured at the decision step by replay."""
    text = _text(rp, span)
    removed_ids = _without(rp, span)
    row: dict[str, Any] = {
        "kind": span.get("kind"),
        **{k: span[k] for k in ("name", "call", "part", "role", "index") if span.get(k) is not None},
        "label": describe(span, text),
        "text": _preview(text),
        "tokens": list(span["tokens"]),
        "attribution": score,
        "removed": _decide(rp, removed_ids),
        "ablated": _ablate(rp, span),
        "_removed_ids": removed_ids,
    }
    return row


def _decide(rp: Replayer, prompt_ids: list[int]) -> dict[str, Any] | None:
    """Metric and argmax at the decision step for another prompt (the generated prefix kept): one full
    forward pass, since the recording's prefix and cache belong to the old input. None: nothing is left
    to run: the span was the whole input, and an answer from the generated prefix alone says nothing
    about the input (it could not be regenerated either)."""
    spec = _spec(rp)
    prefix = list(rp.bundle.outputs["generated_ids"])[: rp.step]
    if not prompt_ids:
        return None
    ids = torch.tensor([prompt_ids + prefix], device=rp.device)
    with torch.inference_mode():
        logits = rp.model(input_ids=ids, use_cache=False).logits[:, -1].float()
    rp.forward_passes += 1
    metric = float(spec.metric(logits, observed_id=rp.observed_id, target_id=rp.target_id)[0])
    fixed = bool(spec.fixed(logits, observed_id=rp.observed_id, target_id=rp.target_id)[0])
    top = int(logits[0].argmax())
    token = rp.tokenizer.decode([top])
    return {"metric": metric, "argmax_id": top, "argmax_token": token, "fixed": fixed, "input_length": len(ids[0])}


def _ablate(rp: Replayer, span: Mapping[str, Any]) -> dict[str, Any] | None:
    """The span's positions zeroed at the embedding output (an Intervention, by the replay driver)."""
    start, end = span["tokens"]
    if end <= start:
        return None
    iv = Intervention(arch_for(rp.model).embed, "zero", tuple(range(start, end)))
    out = rp.run((iv,))
    return {
        "metric": out.metric,
        "argmax_id": out.argmax_id,
        "argmax_token": out.argmax_token,
        "fixed": out.fixed,
        "module": iv.module,
    }


def _cause(rp: Replayer, rows: list[dict[str, Any]], m_incident: float, budget: int | None) -> dict[str, Any] | None:
    """The measured span whose removal fixes the failure (a call before a message before a sentence, then
    the larger margin), validated by regenerating the whole answer without it; None if no removal fixes."""
    fixing = [r for r in rows if r["removed"] and r["removed"]["fixed"]]
    if not fixing:
        return None
    best = min(fixing, key=lambda r: (KIND_ORDER.get(str(r["kind"]), len(KIND_ORDER)), -r["removed"]["metric"]))
    generated = list(rp.bundle.outputs["generated_ids"])
    new = regenerate(rp, best["_removed_ids"], (), budget or max(1, len(generated)))
    answer = rp.tokenizer.decode(new)
    keep = ("kind", "name", "call", "part", "role", "index", "label", "text")
    return {
        **{k: best[k] for k in keep if k in best},
        "removed": best["removed"],
        "regenerated": {"text": answer, "ids": new},
        "validated": _judged(rp, answer),
        "statement": f"{_change(rp, best, m_incident)}; regenerated without it: {answer!r}",
    }


def _change(rp: Replayer, row: Mapping[str, Any], m_incident: float) -> str:
    """'removing X turns ' Lyon' into ' Paris' (metric -2.10 -> +3.40)'."""
    observed, now = rp.tokenizer.decode([rp.observed_id]), row["removed"]["argmax_token"]
    moved = row["removed"]["argmax_id"] != rp.observed_id
    change = f"turns {observed!r} into {now!r}" if moved else f"leaves {observed!r}"
    return f"removing {row['label']} {change} (metric {m_incident:+.2f} -> {row['removed']['metric']:+.2f})"


def _summary(rp: Replayer, rows: list[dict[str, Any]], cause: Mapping[str, Any] | None, m_incident: float) -> str:
    if cause is not None:
        state = "validated" if cause["validated"] else "NOT validated by the regenerated answer"
        return f"{cause['statement']} ({state})"
    measured = [r for r in rows if r["removed"]]
    if not measured:
        return "no span could be removed and measured (a span was the whole input)"
    most = max(measured, key=lambda r: r["removed"]["metric"])
    return f"no measured span's removal fixes the failure; the largest move: {_change(rp, most, m_incident)}"


def _judged(rp: Replayer, answer: str) -> bool:
    """The regenerated answer is right: it begins with the expected text, or holds no forbidden text."""
    spec = rp.spec
    if spec is None:
        return False
    if spec.kind == "forbidden":
        return re.search(spec.text if spec.regex else re.escape(spec.text), answer) is None
    return not spec.text or answer.startswith(spec.text) or spec.text.startswith(answer)


def _spec(rp: Replayer) -> FailureSpec:
    if rp.spec is None:
        raise ReplayError(f"bundle {rp.bundle.id}: provenance needs a failure spec (expected or forbidden text)")
    return rp.spec


# -- input text --------------------------------------------------------------------------------
def _text(rp: Replayer, span: Mapping[str, Any]) -> str:
    prompt, chars = rp.bundle.inputs.get("prompt"), span.get("chars")
    return prompt[chars[0] : chars[1]] if isinstance(prompt, str) and chars else ""


def _without(rp: Replayer, span: Mapping[str, Any]) -> list[int]:
    """The recorded input re-rendered without ``span``: a call's result or a message's content replaced by
    "" through ``rewrite_input``; any other span's characters cut and the rest re-tokenised."""
    spans = rp.bundle.inputs.get("spans") or ()
    same_name = [s for s in spans if s.get("kind") == "external" and s.get("name") == span.get("name")]
    if span.get("kind") == "external" and len(same_name) == 1:
        return rewrite_input(rp.bundle, rp.tokenizer, {str(span["name"]): ""})
    if span.get("kind") == "message":
        return rewrite_input(rp.bundle, rp.tokenizer, {f"message:{span['index']}": ""})
    prompt, ids = rp.bundle.inputs.get("prompt"), list(rp.bundle.inputs["input_ids"])
    if not isinstance(prompt, str) or "chars" not in span:
        raise ReplayError(f"bundle {rp.bundle.id}: no inputs.prompt recorded, so a span cannot be removed")
    lo, hi = span["chars"]
    for special in (True, False):  # as the recording tokenised it: a plain prompt, or a rendered chat
        if list(rp.tokenizer(prompt, add_special_tokens=special)["input_ids"]) == ids:
            return list(rp.tokenizer(prompt[:lo] + prompt[hi:], add_special_tokens=special)["input_ids"])
    raise ReplayError(
        f"bundle {rp.bundle.id}: inputs.input_ids are not the tokenisation of inputs.prompt, so a span cannot be removed"
    )


def _preview(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= PREVIEW else flat[: PREVIEW - 1] + "…"
