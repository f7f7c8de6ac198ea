"""What a recorder observed during one recorded call, as one immutable value the manifest is built from.

    obs = rec.observation()                                   # after the with block
    obs.prompt_ids, obs.generated_ids, obs.prompt_text        # the input, the answer, the input as text
    manifest = build_manifest(dataclasses.replace(obs, sites=incident_sites), failure=spec, kind="benign")

A snapshot holds plain values copied out of the recorder (token ids, top-k steps, recorded sites, the
external calls and explicit spans, facts about the model and its environment) plus the tokenizer that
decodes them; changing the recorder afterwards never changes a snapshot, and a caller that needs another
view (a reference run keeps the incident's site names) builds a new one with ``dataclasses.replace``.
"""

from __future__ import annotations

import platform
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from forensics.models.placement import input_device

__all__ = ["CallRecord", "ExplicitSpan", "Observation", "TopK", "environment"]

TopK = tuple[tuple[int, ...], tuple[float, ...]]  # (ids, logits) of one generation step, best first
ExplicitSpan = tuple[str, str | tuple[int, int]]  # (call name, the text or character range it became)
CallRecord = Mapping[str, Any]  # one external call: name, args, kwargs, result, error, timing


@dataclass(frozen=True)
class Observation:
    """Everything ``build_manifest`` needs from a recording.

    ``prompt_text`` is the input recovered from ``prompt_ids`` by the tokenizer
    (``forensics.record.spans.input_text``), None without a tokenizer or when decoding does not give the
    ids back; ``positions`` counts every token fed (prompt + generated prefix)."""

    model_ref: str
    model_sha256: str
    family: str
    environment: Mapping[str, Any]
    tokenizer: Any
    prompt_ids: tuple[int, ...]
    generated_ids: tuple[int, ...]
    positions: int
    steps: tuple[TopK, ...]
    sites: Mapping[str, str]
    external_calls: tuple[CallRecord, ...] = ()
    explicit_spans: tuple[ExplicitSpan, ...] = ()
    prompt_text: str | None = None


def environment(model: torch.nn.Module) -> dict[str, Any]:
    """Python, platform, torch and transformers versions, and the model's device and dtype."""
    import transformers

    param = next(model.parameters(), None)
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "device": str(input_device(model)),  # where it ran (offloaded weights sit on "meta")
        "dtype": str(param.dtype).removeprefix("torch.") if param is not None else "float32",
    }
