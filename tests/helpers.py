"""Test helpers: record a tiny incident through the real recorder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from forensics.failure import FailureSpec
from forensics.models import LoadedModel
from forensics.record import record


def greedy_ids(loaded: LoadedModel, prompt: str, n: int = 4) -> list[int]:
    model, tok, _ = loaded
    enc = tok(prompt, return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=n, do_sample=False, pad_token_id=tok.pad_token_id)
    return out[0, enc.input_ids.shape[1]:].tolist()


def record_tiny(loaded: LoadedModel, prompt: str, dest: Path, *, expected: str | None = None,
                kind: str = "incident", n: int = 4, **kw: Any) -> Any:
    """Record greedy generation; by default the spec expects a token the model does NOT produce."""
    model, tok, info = loaded
    enc = tok(prompt, return_tensors="pt")
    with record(model, tok, model_ref=info.path, model_sha256=info.sha256, **kw) as rec, torch.inference_mode():
        model.generate(**enc, max_new_tokens=n, do_sample=False, pad_token_id=tok.pad_token_id)
    gen = rec.generated_ids
    if expected is None:  # make the first generated token wrong: expect the 2nd-best token instead
        first = rec.steps[0][0]
        spec = FailureSpec("expected", "", (first[1],))
    else:
        spec = FailureSpec.expected(expected, tok)
    if kind == "benign":
        spec = FailureSpec("expected", "", (gen[0],))
    return rec.save(dest, failure=spec, kind=kind, prompt=prompt)  # type: ignore[arg-type]
