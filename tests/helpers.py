"""Test helpers (recording itself goes through ``forensics.record.record_greedy``)."""

from __future__ import annotations

import torch

from forensics.models import LoadedModel


def greedy_ids(loaded: LoadedModel, prompt: str, n: int = 4) -> list[int]:
    model, tok, _ = loaded
    enc = tok(prompt, return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=n, do_sample=False, pad_token_id=tok.pad_token_id)
    return out[0, enc.input_ids.shape[1] :].tolist()
