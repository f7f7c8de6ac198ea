"""The Recorder: hooks around the user's own ``generate`` or forward call.

    with forensics.record(model, tokenizer, modules="auto") as rec:
        out = model.generate(**tokenizer(prompt, return_tensors="pt"), max_new_tokens=8, do_sample=False)
    rec.save("bundles/incident_1", failure=FailureSpec.expected(" Canberra", tokenizer))

Each hook copies its module's activation off the device as float32 the moment it fires (a later
layer may change the tensor in place). Forward calls of one generation are stitched along positions,
so the bundle holds what one teacher-forced pass over prompt + generated prefix computes.

By default the copies stay in memory until ``save``, so memory grows with the generation. With
``stream_dir`` (``streaming_enabled`` in the config) each copy is appended to a per-module spill file
in a fresh directory under ``stream_dir`` instead, and ``save`` memory-maps the files one module at a
time into the bundle; the directory is removed after ``save`` and when the recorded call raises.
"""

from __future__ import annotations

import copy
import inspect
import os
import shutil
import tempfile
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
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
from forensics.models.placement import input_device
from forensics.models.registry import weights_sha256
from forensics.record.manifest import build_manifest, external_call
from forensics.record.observation import Observation, environment
from forensics.record.spans import input_text
from forensics.vocab import BUNDLE_KINDS, BundleKind

__all__ = ["CallLog", "Recorder", "record"]

F = TypeVar("F", bound=Callable[..., Any])
SPILL_PREFIX = ".model-forensics-spill-"
HALF_PRECISION = (torch.bfloat16, torch.float16)  # where cached decoding and one pass round apart


class _MemoryStore:
    """Every chunk kept as a tensor; ``arrays`` concatenates one module at a time."""

    def __init__(self, names: Sequence[str]) -> None:
        self._chunks: dict[str, list[torch.Tensor]] = {m: [] for m in names}

    def append(self, name: str, chunk: torch.Tensor) -> None:
        self._chunks[name].append(chunk)

    def reset(self) -> None:
        for chunks in self._chunks.values():
            chunks.clear()

    def arrays(self) -> Iterator[tuple[str, np.ndarray]]:
        for name, chunks in self._chunks.items():
            if not chunks:
                raise ReplayError(f"module {name!r} never fired during the recorded call")
            yield name, torch.cat(chunks, dim=0).numpy()

    def close(self) -> None:
        self.reset()


class _SpillStore:
    """Every chunk appended, as raw little-endian float32 rows, to its module's file in a fresh directory
    under ``parent``; ``arrays`` memory-maps one file at a time. Each append opens and closes its file, so
    a model with many recorded modules never holds many descriptors. ``close`` removes the directory (a
    finalizer does too, should a recorder be dropped unsaved)."""

    def __init__(self, names: Sequence[str], parent: str | os.PathLike[str]) -> None:
        self.dir = tempfile.mkdtemp(prefix=SPILL_PREFIX, dir=parent)
        self._finalizer = weakref.finalize(self, shutil.rmtree, self.dir, ignore_errors=True)
        self._files = {m: os.path.join(self.dir, f"{i:05d}.f32") for i, m in enumerate(names)}
        self._rows = dict.fromkeys(names, 0)
        self._tail: dict[str, tuple[int, ...]] = {}  # shape after the position axis, from the first chunk

    def append(self, name: str, chunk: torch.Tensor) -> None:
        arr = np.ascontiguousarray(chunk.numpy(), dtype="<f4")
        tail = self._tail.setdefault(name, arr.shape[1:])
        if arr.shape[1:] != tail:
            raise ReplayError(f"module {name!r} changed shape mid-generation: {tail} then {arr.shape[1:]}")
        with open(self._files[name], "ab") as f:
            f.write(arr.tobytes())
        self._rows[name] += arr.shape[0]

    def reset(self) -> None:
        for name, path in self._files.items():
            open(path, "wb").close()
            self._rows[name] = 0
        self._tail.clear()

    def arrays(self) -> Iterator[tuple[str, np.ndarray]]:
        if not self._finalizer.alive:
            raise ReplayError("streamed recording was already saved or discarded; record the generation again")
        for name, path in self._files.items():
            if name not in self._tail:
                raise ReplayError(f"module {name!r} never fired during the recorded call")
            shape = (self._rows[name], *self._tail[name])
            if not self._rows[name]:
                yield name, np.zeros(shape, dtype="<f4")
                continue
            yield name, np.memmap(path, dtype="<f4", mode="r", shape=shape)

    def close(self) -> None:
        self._finalizer()


class CallLog:
    """External calls (tools, retrievers, APIs) and the input spans they became, for one incident.

        log = CallLog()
        doc = log.external("retriever", retrieve)("capital of France")
        record_greedy(loaded, f"Retrieved: {doc}\nThe capital of France is", out, spec, calls=log)

    A call's result (a string, or a list of strings) that appears verbatim in the model input is linked
    to its span when the bundle is saved; ``span`` names the text (or character range of the input) a
    transformed result became.
    """

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.spans: list[tuple[str, str | tuple[int, int]]] = []

    def external(self, name: str, fn: F | None = None) -> Any:
        """Wrap ``fn`` (or, without it, decorate) so its args, result and timing are recorded."""

        def wrap(func: F) -> F:
            def wrapped(*args: Any, **kwargs: Any) -> Any:
                start = time.time()
                try:
                    result = func(*args, **kwargs)
                except Exception as exc:
                    self.calls.append(external_call(name, args, kwargs, None, start, exc))
                    raise
                self.calls.append(external_call(name, args, kwargs, result, start, None))
                return result

            return wrapped  # type: ignore[return-value]

        return wrap(fn) if fn is not None else wrap

    def span(self, name: str, where: str | tuple[int, int]) -> None:
        """The latest call ``name``'s result reached the input as the text ``where`` (or the character
        range ``(start, end)`` of the input); checked against the input when the bundle is saved."""
        if not isinstance(where, str) and not (
            isinstance(where, tuple | list) and len(where) == 2 and all(isinstance(i, int) for i in where)
        ):
            raise ForensicsError(f"span {name!r}: expected a text or a (start, end) character range, got {where!r:.60}")
        self.spans.append((name, where if isinstance(where, str) else (int(where[0]), int(where[1]))))


class Recorder:
    """Records one generation (batch size 1) of ``model``; see the module docstring.

    ``stream_dir``: spill activations to a temporary directory created there (on the bundle's disk, not
    a RAM-backed ``/tmp``) instead of holding them in memory; a streamed recorder saves once.
    ``calls``: a ``CallLog`` of external calls made before the recorder existed (else a fresh one).
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any = None,
        modules: Literal["auto"] | Sequence[str] = "auto",
        *,
        top_k: int = 20,
        model_ref: str | None = None,
        model_sha256: str | None = None,
        stream_dir: str | os.PathLike[str] | None = None,
        calls: CallLog | None = None,
    ) -> None:
        self.model, self.tokenizer, self.top_k = model, tokenizer, top_k
        self.sites: dict[str, Site | str] = (
            dict(arch_for(model).sites(model)) if modules == "auto" else {m: "custom" for m in modules}
        )
        self.model_ref = model_ref or str(getattr(getattr(model, "config", None), "_name_or_path", "") or "unknown")
        self.model_sha256 = model_sha256
        self.calls = calls if calls is not None else CallLog()
        self._hooks = HookSet(model)
        self._stream_dir = stream_dir
        self._store: _MemoryStore | _SpillStore = _MemoryStore(list(self.sites))
        self._fed: list[int] = []
        self._steps: list[tuple[list[int], list[float]]] = []
        self._prompt_len = 0
        self._decision: dict[str, torch.Tensor] = {}  # the decision pass's activations (replay_decision_step)

    # -- hooks ---------------------------------------------------------------------------------
    def __enter__(self) -> Recorder:
        if self._stream_dir is not None:
            self._store = _SpillStore(list(self.sites), self._stream_dir)
        try:
            self._hooks.forward_pre(self.model, self._on_call)
            self._hooks.forward_on(self.model, self._on_logits)
            for name in self.sites:
                self._hooks.forward(name, self._capture(name))
        except BaseException:
            self._hooks.remove()
            self.discard()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._hooks.remove()
        if exc_type is not None and self.streaming:  # in memory, what was recorded stays saveable
            self.discard()

    @property
    def streaming(self) -> bool:
        """Whether activations spill to disk (``stream_dir`` given) rather than stay in memory."""
        return self._stream_dir is not None

    def discard(self) -> None:
        """Drop the recorded activations (a streamed recorder's spill directory too); idempotent."""
        self._store.close()

    def _on_call(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        if not isinstance(ids, torch.Tensor):
            raise ReplayError("recorder needs input_ids (inputs_embeds-only calls cannot be replayed)")
        if ids.shape[0] != 1:
            raise ReplayError(f"recorder records batch size 1, got {ids.shape[0]}; record incidents one at a time")
        new = ids[0].tolist()
        if self._fed and len(new) > 1 and new[: len(self._fed)] == self._fed:
            self._fed = []  # full recompute (use_cache=False): start the stitching again
            self._store.reset()
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
            self._store.append(name, primary(output)[0].detach().to("cpu", torch.float32, copy=True))

        return hook

    # -- external calls ------------------------------------------------------------------------
    @property
    def external_calls(self) -> list[dict[str, Any]]:
        """What every wrapped call received and returned, in call order (the log's own list)."""
        return self.calls.calls

    def external(self, name: str, fn: F | None = None) -> Any:
        """Wrap a tool / retriever / API callable so its args, result and timing are recorded."""
        return self.calls.external(name, fn)

    def span(self, name: str, where: str | tuple[int, int]) -> None:
        """Link call ``name``'s result to the input text it became (see ``CallLog.span``)."""
        self.calls.span(name, where)

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
        return [*self._fed[self._prompt_len :], self._steps[-1][0][0]]

    def observation(self) -> Observation:
        """A snapshot of what was recorded so far (everything but the activations), for ``build_manifest``.

        The model's weights are hashed here unless ``model_sha256`` was given; the input text is recovered
        from the prompt's token ids (``spans.input_text``), so a bundle gets its spans however the model
        was called."""
        generated = tuple(self.generated_ids)  # raises first when no forward call was seen
        prompt = tuple(self.prompt_ids)
        return Observation(
            model_ref=self.model_ref,
            model_sha256=self.model_sha256 or weights_sha256(self.model),
            family=arch_for(self.model).family,
            environment=environment(self.model),
            tokenizer=self.tokenizer,
            prompt_ids=prompt,
            generated_ids=generated,
            positions=len(self._fed),
            steps=tuple((tuple(ids), tuple(vals)) for ids, vals in self._steps),
            sites={name: str(site) for name, site in self.sites.items()},
            external_calls=tuple(copy.deepcopy(self.calls.calls)),
            explicit_spans=tuple(self.calls.spans),
            prompt_text=input_text(self.tokenizer, prompt) if self.tokenizer is not None else None,
        )

    def activations(self) -> Iterator[tuple[str, np.ndarray]]:
        """(module, [positions, d]) in forward order, one module at a time (memory-mapped when streamed); the
        positions a decision pass covered (``replay_decision_step``) hold that pass's values."""
        for name, arr in self._store.arrays():
            head = self._decision.get(name)
            if head is not None:
                if tuple(head.shape[1:]) != arr.shape[1:] or head.shape[0] > arr.shape[0]:
                    raise ReplayError(
                        f"module {name!r}: decision pass gave {tuple(head.shape)}, generation {arr.shape}"
                    )
                arr = np.array(arr)  # a copy: a streamed module's memory map is read-only
                arr[: head.shape[0]] = head.numpy()
            yield name, arr

    def _match_replay(self, failure: FailureSpec | None) -> None:
        """A half-precision incident's decision step, computed as replay computes it (``replay_decision_step``),
        unless the caller already did."""
        param = next(self.model.parameters(), None)
        if failure is None or param is None or param.dtype not in HALF_PRECISION or self._decision:
            return
        step = failure.decision_step(self.generated_ids, self.tokenizer)
        if step is not None:
            self.replay_decision_step(step)

    def replay_decision_step(self, step: int) -> None:
        """Compute generation step ``step`` once more exactly as a replay does (one teacher-forced pass over the
        prompt and the tokens generated before it, no cache, the last position's logits only) and keep that
        pass's activations for the positions it covers and its top-k logits for ``step``. Call it after the
        ``with`` block.

        Cached decoding (``generate``) and one teacher-forced pass multiply matrices of other shapes; in
        float32 they agree to about 1e-6 relative, in bfloat16 and float16 they round apart (1e-2 relative on
        SmolLM2's late layers). With this pass a recording in the model's own dtype replays bit-exact there."""
        if not 0 <= step < len(self._steps):
            raise ReplayError(f"decision step {step}: the recording has steps 0..{len(self._steps) - 1}")
        ids = torch.tensor([self._fed[: self._prompt_len + step]], device=input_device(self.model))
        kwargs: dict[str, Any] = {"use_cache": False}
        if "logits_to_keep" in inspect.signature(self.model.forward).parameters:
            kwargs["logits_to_keep"] = 1  # as Replayer._forward calls the model
        captured: dict[str, torch.Tensor] = {}
        with HookSet(self.model) as hooks, torch.inference_mode():
            for name in self.sites:
                hooks.forward(name, _keep_into(captured, name))
            out = self.model(input_ids=ids, **kwargs)
        logits = out.logits if hasattr(out, "logits") else out[0]
        values, top = logits[0, -1].detach().float().topk(self.top_k)
        self._steps[step] = (top.tolist(), values.tolist())
        self._decision = captured

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
        messages: Sequence[Mapping[str, str]] | None = None,
        failure_family: str | None = None,
    ) -> Bundle:
        """Write the bundle (``forensics.bundle`` v1, encrypted with ``encryption_key`` if given) and return
        it loaded. A streamed recorder's spill files are removed afterwards, whether the write worked or not.

        ``prompt`` is the model input as text (for a chat, the rendered ``messages``); without it the text
        recovered from the recorded token ids stands in. The manifest's ``inputs.spans`` then lists its
        sentences (or messages) and every external-call result found in it (``forensics.record.spans``).
        ``failure_family`` labels the incident's failure mode (``Bundle.failure_family``; ``batch`` groups by it)."""
        if kind not in BUNDLE_KINDS:
            raise ForensicsError(f"bundle kind {kind!r} not allowed; use incident or benign")
        try:
            self._match_replay(failure)
            manifest = build_manifest(
                self.observation(),
                failure=failure,
                kind=kind,
                prompt=prompt,
                generation=generation,
                messages=messages,
                failure_family=failure_family,
            )
            return write_bundle(path, manifest, self.activations(), bundle_id=bundle_id, encryption_key=encryption_key)
        finally:
            if self.streaming:
                self.discard()


def _keep_into(store: dict[str, torch.Tensor], name: str) -> Callable[[nn.Module, Any, Any], None]:
    def hook(module: nn.Module, args: Any, output: Any) -> None:
        store[name] = primary(output)[0].detach().to("cpu", torch.float32, copy=True)

    return hook


def record(
    model: nn.Module, tokenizer: Any = None, modules: Literal["auto"] | Sequence[str] = "auto", **kwargs: Any
) -> Recorder:
    """``with record(model, tokenizer) as rec:`` — see ``Recorder``."""
    return Recorder(model, tokenizer, modules, **kwargs)
