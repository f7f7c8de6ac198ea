"""The Recorder: hooks around the user's own ``generate`` or forward call.

    with forensics.record(model, tokenizer, modules="auto") as rec:
        out = model.generate(**tokenizer(prompt, return_tensors="pt"), max_new_tokens=8, do_sample=False)
    rec.save("bundles/incident_1", failure=FailureSpec.expected(" Canberra", tokenizer))

Each hook copies its module's activation off the device as float32 the moment it fires (a later
layer may change the tensor in place). Forward calls of one generation are stitched along positions,
so the bundle holds what one teacher-forced pass over prompt + generated prefix computes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from types import TracebackType
from typing import Any, Literal, TypeVar

import numpy as np
import torch
from torch import nn

from forensics.bundle import Bundle, write_bundle
from forensics.errors import ForensicsError, ReplayError
from forensics.failure import FailureSpec
from forensics.hooks import HookSet, primary
from forensics.models.arch import Site, arch_for
from forensics.record.manifest import build_manifest, external_call
from forensics.vocab import BUNDLE_KINDS, BundleKind

__all__ = ["Recorder", "record"]

F = TypeVar("F", bound=Callable[..., Any])


class Recorder:
    """Records one generation (batch size 1) of ``model``; see the module docstring."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any = None,
        modules: Literal["auto"] | Sequence[str] = "auto",
        *,
        top_k: int = 20,
        model_ref: str | None = None,
        model_sha256: str | None = None,
    ) -> None:
        self.model, self.tokenizer, self.top_k = model, tokenizer, top_k
        self.sites: dict[str, Site | str] = (
            dict(arch_for(model).sites(model)) if modules == "auto" else {m: "custom" for m in modules}
        )
        self.model_ref = model_ref or str(getattr(getattr(model, "config", None), "_name_or_path", "") or "unknown")
        self.model_sha256 = model_sha256
        self.external_calls: list[dict[str, Any]] = []
        self._hooks = HookSet(model)
        self._acts: dict[str, list[torch.Tensor]] = {m: [] for m in self.sites}
        self._fed: list[int] = []
        self._steps: list[tuple[list[int], list[float]]] = []
        self._prompt_len = 0

    # -- hooks ---------------------------------------------------------------------------------
    def __enter__(self) -> Recorder:
        self._hooks.forward_pre(self.model, self._on_call)
        self._hooks.forward_on(self.model, self._on_logits)
        for name in self.sites:
            self._hooks.forward(name, self._capture(name))
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._hooks.remove()

    def _on_call(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        if not isinstance(ids, torch.Tensor):
            raise ReplayError("recorder needs input_ids (inputs_embeds-only calls cannot be replayed)")
        if ids.shape[0] != 1:
            raise ReplayError(f"recorder records batch size 1, got {ids.shape[0]}; record incidents one at a time")
        new = ids[0].tolist()
        if self._fed and len(new) > 1 and new[: len(self._fed)] == self._fed:
            self._fed, self._acts = [], {m: [] for m in self.sites}  # full recompute (use_cache=False)
        elif self._fed and len(new) > 1:
            raise ReplayError("recorder saw a second, unrelated sequence; save() after each generation")
        self._prompt_len = self._prompt_len or len(new)
        self._fed.extend(new)

    def _on_logits(self, module: nn.Module, args: Any, output: Any) -> None:
        logits = getattr(output, "logits", None)
        if logits is None and isinstance(output, tuple):
            logits = output[0]
        if isinstance(logits, torch.Tensor):
            values, ids = logits[0, -1].detach().float().topk(self.top_k)
            self._steps.append((ids.tolist(), values.tolist()))

    def _capture(self, name: str) -> Callable[[nn.Module, Any, Any], None]:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            self._acts[name].append(primary(output)[0].detach().to("cpu", torch.float32, copy=True))

        return hook

    # -- external calls ------------------------------------------------------------------------
    def external(self, name: str, fn: F | None = None) -> Any:
        """Wrap a tool / retriever / API callable so its args, result and timing are recorded."""

        def wrap(func: F) -> F:
            def wrapped(*args: Any, **kwargs: Any) -> Any:
                start = time.time()
                try:
                    result = func(*args, **kwargs)
                except Exception as exc:
                    self.external_calls.append(external_call(name, args, kwargs, None, start, exc))
                    raise
                self.external_calls.append(external_call(name, args, kwargs, result, start, None))
                return result

            return wrapped  # type: ignore[return-value]

        return wrap(fn) if fn is not None else wrap

    # -- results -------------------------------------------------------------------------------
    @property
    def steps(self) -> list[tuple[list[int], list[float]]]:
        """(top-k ids, top-k logits) of every generation step, in order."""
        return list(self._steps)

    @property
    def prompt_ids(self) -> list[int]:
        return self._fed[: self._prompt_len]

    @property
    def fed_ids(self) -> list[int]:
        """Every token fed to the model so far (prompt + generated prefix), a copy."""
        return list(self._fed)

    @property
    def generated_ids(self) -> list[int]:
        """Tokens fed back after the prompt, plus the greedy choice of the last step."""
        if not self._steps:
            raise ReplayError("recorder saw no forward call; wrap the generate/forward call in the with block")
        return [*self._fed[self._prompt_len:], self._steps[-1][0][0]]

    def activations(self) -> Iterator[tuple[str, np.ndarray]]:
        """(module, [positions, d]) in forward order, one module at a time."""
        for name, chunks in self._acts.items():
            if not chunks:
                raise ReplayError(f"module {name!r} never fired during the recorded call")
            yield name, torch.cat(chunks, dim=0).numpy()

    def save(
        self,
        path: str | os.PathLike[str],
        *,
        failure: FailureSpec | None = None,
        kind: BundleKind = "incident",
        prompt: str | None = None,
        generation: dict[str, Any] | None = None,
        bundle_id: str | None = None,
        encryption_key: bytes | None = None,
    ) -> Bundle:
        """Write the bundle (``forensics.bundle`` v1, encrypted with ``encryption_key`` if given) and return
        it loaded."""
        if kind not in BUNDLE_KINDS:
            raise ForensicsError(f"bundle kind {kind!r} not allowed; use incident or benign")
        manifest = build_manifest(self, failure=failure, kind=kind, prompt=prompt, generation=generation)
        return write_bundle(path, manifest, self.activations(), bundle_id=bundle_id, encryption_key=encryption_key)


def record(
    model: nn.Module, tokenizer: Any = None, modules: Literal["auto"] | Sequence[str] = "auto", **kwargs: Any
) -> Recorder:
    """``with record(model, tokenizer) as rec:`` — see ``Recorder``."""
    return Recorder(model, tokenizer, modules, **kwargs)
