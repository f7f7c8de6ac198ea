"""The Replayer: deterministic teacher-forced replay of a bundle's decision step, with proof.

    rp = Replayer(load_bundle("bundles/australia"))
    rp.fidelity().faithful                              # replay matches the recording?
    rp.evaluate([(Intervention("model.layers.10", "zero"),), ()])   # K sets, one batched forward pass

One forward pass over prompt + generated[:step] gives the logits at the decision step. Every
intervention counts how often its hook fired; a requested intervention that never fired is an
error, not a result.

A batched pass does only the work its sets need: each row joins at the first decoder layer it changes
(prefix reuse, ``prefix.py``), and positions before the first one a chunk changes are not recomputed
(suffix reuse, ``suffix.py``). Sets that change only late positions get their own pass where the saved
work outweighs the cost of one more pass (``pass_cost``); on small models that never happens.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from forensics.bundle import Bundle
from forensics.errors import ModelError, ReplayError
from forensics.failure import FailureSpec
from forensics.hooks import HookSet, primary, with_primary
from forensics.models.arch import arch_for, get_module
from forensics.models.placement import input_device
from forensics.models.registry import LoadedModel, resolve_model
from forensics.replay.fidelity import Fidelity, measure_fidelity
from forensics.replay.heads import capture_heads, contributions
from forensics.replay.interventions import InterventionSet
from forensics.replay.options import DEFAULT_OPTIONS, ReplayOptions
from forensics.replay.plan import HeadSite, ModulePlan, Plan, compile_plan, plan_key
from forensics.replay.prefix import PrefixReuse
from forensics.replay.schedule import budget_batch_size, chunk_indices, pass_cost
from forensics.replay.sources import SourceBank
from forensics.replay.suffix import SuffixReuse

__all__ = ["Outcome", "Replayer", "is_reference_run"]


@dataclass(frozen=True)
class Outcome:
    """Result of one intervention set at the decision step."""

    interventions: InterventionSet
    metric: float  # logit(target) - logit(observed); > 0 once fixed (see FailureSpec.metric)
    fixed: bool
    argmax_id: int
    argmax_token: str
    hook_fires: tuple[int, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        return {
            "interventions": [iv.to_dict() for iv in self.interventions],
            "metric": self.metric,
            "fixed": self.fixed,
            "argmax_id": self.argmax_id,
            "argmax_token": self.argmax_token,
            "hook_fires": list(self.hook_fires),
        }


class Replayer:
    """Replays one bundle on its model (loaded once), with batched interventions."""

    def __init__(
        self,
        bundle: Bundle,
        *,
        loaded: LoadedModel | None = None,
        population: Sequence[Bundle] = (),
        sources: Sequence[Bundle] = (),
        options: ReplayOptions = DEFAULT_OPTIONS,
    ) -> None:
        self.bundle, self.options = bundle, options
        self.loaded = loaded or resolve_model(
            bundle.model["ref"],
            device=options.device,
            dtype=bundle.model.get("dtype", "float32"),
            cache_dir=options.cache_dir,
        )
        self.model, self.tokenizer = self.loaded.model, self.loaded.tokenizer
        _check_identity(
            bundle,
            self.loaded,
            [] if options.allow_source_mismatch else [*population, *_checked(sources, options)],
            options.allow_model_mismatch,
        )
        self.bank = SourceBank(population, sources)
        self.bank.capture = self._capture_heads
        self.batch_size = options.batch_size
        self.device = input_device(self.model)  # weights may sit elsewhere (offloaded: accelerate)
        self.spec = FailureSpec.from_dict(bundle.failure) if bundle.failure else None
        outputs = bundle.outputs
        self.step = int(outputs.get("decision_step") or 0)
        generated = list(outputs["generated_ids"])
        self.observed_id = int(generated[self.step])
        self.target_id = self.spec.target_id(self.step) if self.spec else None
        self.input_ids = torch.tensor([list(bundle.inputs["input_ids"]) + generated[: self.step]], device=self.device)
        self.forward_passes = 0
        self.layers_run = 0  # decoder layer x batch row executions (what prefix reuse saves)
        self.positions_run = 0  # ... x positions (what suffix reuse saves as well)
        self.prefix = PrefixReuse(self.model, bundle, length=self.length, enabled=options.prefix_reuse)
        self.prefix.detect(self.input_ids)
        self.suffix = SuffixReuse(self.model, self.input_ids, enabled=options.suffix_reuse)
        self.pass_cost = pass_cost(self.model, self.prefix.layers)
        self.max_memory = options.max_memory
        self._widths: dict[str, int | None] = {}
        self._keep_logits = "logits_to_keep" in inspect.signature(self.model.forward).parameters

    @property
    def length(self) -> int:
        return int(self.input_ids.shape[1])

    def run(self, interventions: InterventionSet = ()) -> Outcome:
        return self.evaluate([tuple(interventions)])[0]

    def evaluate(self, sets: Sequence[InterventionSet]) -> list[Outcome]:
        """Outcomes of K intervention sets, in order. Sets are grouped by the first position they change
        where that saves more than a pass costs (suffix reuse), ordered by the first decoder layer they
        need (prefix reuse), and cut into chunks that fit the batch size and the memory budget; each
        chunk is ONE forward pass. No sets, no pass."""
        outcomes: list[Outcome | None] = [None] * len(sets)
        for indices in self._chunks(sets):
            for i, outcome in zip(indices, self._evaluate_chunk([tuple(sets[i]) for i in indices]), strict=True):
                outcomes[i] = outcome
        return [o for o in outcomes if o is not None]

    def fidelity(self) -> Fidelity:
        """Replay without interventions and compare logits and every recorded activation."""
        captured: dict[str, np.ndarray] = {}
        with HookSet(self.model) as hooks:
            for name in self.bundle.modules:
                hooks.forward(name, _capture_into(captured, name))
            with self.prefix.skipping(0, 1, self.device, self._dtype):  # also learns the layer output type
                logits = self._forward(self.input_ids)
        return measure_fidelity(
            self.bundle,
            self.step,
            logits[0],
            captured,
            atol=self.options.fidelity_tolerance,
            rtol=self.options.fidelity_rtol,
            replayed_dtype=str(self._dtype).removeprefix("torch."),
        )

    def generate(self, interventions: InterventionSet = (), max_new_tokens: int = 4) -> list[int]:
        """Greedy continuation from the decision step with ``interventions`` in place at every step: they
        change the positions they name at the decision step (``last`` is the decision position), new
        positions run free. Plain full passes, no reuse; every hook must fire at every step."""
        base = self.plan([tuple(interventions)])
        ids = self.input_ids
        eos = getattr(self.tokenizer, "eos_token_id", None)
        out: list[int] = []
        for _ in range(max_new_tokens):
            plan = _grown(base, int(ids.shape[1]) - self.length)
            with self._installed(plan):
                logits = self._forward(ids)
            unfired = [name for name, mp in plan.modules.items() if mp.fires == 0]
            if unfired:
                raise ReplayError(f"interventions on {', '.join(unfired)} never fired while regenerating")
            token = int(logits[0].argmax())
            out.append(token)
            if token == eos:
                break
            ids = torch.cat([ids, torch.tensor([[token]], device=self.device)], dim=1)
        return out

    def logits(self, sets: Sequence[InterventionSet] = ((),)) -> torch.Tensor:
        """Decision-step logits [K, vocab] for K sets, in order (K = 0: an empty [0, vocab], no pass)."""
        if not sets:
            return torch.empty(0, self._vocab, device=self.device)
        out: list[torch.Tensor | None] = [None] * len(sets)
        for indices in self._chunks(sets):
            logits = self._run_plan([tuple(sets[i]) for i in indices])[0]
            for row, i in enumerate(indices):
                out[i] = logits[row]
        return torch.stack([t for t in out if t is not None])

    def _chunks(self, sets: Sequence[InterventionSet]) -> list[list[int]]:
        keys = [(self.suffix.position(tuple(s)), self.prefix.start(tuple(s))) for s in sets]
        size = budget_batch_size(self.max_memory, self.batch_size, self.length, self.model)
        return chunk_indices(keys, size, layers=len(self.prefix.layers), pass_cost=self.pass_cost)

    # -- internals -----------------------------------------------------------------------------
    def _evaluate_chunk(self, chunk: list[InterventionSet]) -> list[Outcome]:
        logits, plan = self._run_plan(chunk)
        if self.spec is not None:
            metric = self.spec.metric(logits, observed_id=self.observed_id, target_id=self.target_id)
            fixed = self.spec.fixed(logits, observed_id=self.observed_id, target_id=self.target_id)
        else:
            metric, fixed = torch.full((len(chunk),), float("nan")), torch.zeros(len(chunk), dtype=torch.bool)
        top = logits.argmax(dim=-1).tolist()
        return [
            Outcome(
                ivs,
                float(metric[k]),
                bool(fixed[k]),
                int(top[k]),
                self.tokenizer.decode([top[k]]),
                tuple(plan.modules[plan_key(iv)].fires for iv in ivs),
            )
            for k, ivs in enumerate(chunk)
        ]

    def plan(self, sets: Sequence[InterventionSet]) -> Plan:
        """``sets`` compiled for this replay (its length, width, decision step, sources and heads), one row each."""
        return compile_plan(
            list(sets),
            length=self.length,
            width=self._width,
            bank=self.bank,
            step=self.step,
            device=self.device,
            heads=self._heads,
        )

    def _run_plan(self, chunk: list[InterventionSet]) -> tuple[torch.Tensor, Plan]:
        """One forward pass for ``chunk``: rows join at their first layer (prefix reuse) and the pass
        covers only positions from the first one the chunk changes (suffix reuse)."""
        plan = self.plan(chunk)
        starts = [self.prefix.start(ivs) for ivs in chunk]
        grow = self.prefix.can_grow(chunk) and starts == sorted(starts)
        if not grow:  # every row runs from the chunk's earliest layer
            starts = [min(starts)] * len(chunk)
        rows = [max(1, sum(s <= layer for s in starts)) for layer in range(len(self.prefix.layers))]
        first = min(self.suffix.position(ivs) for ivs in chunk)
        learned = self.suffix.forward_passes
        extra = self.suffix.kwargs(first, rows if grow else len(chunk))  # the first call learns the cache
        self.forward_passes += self.suffix.forward_passes - learned
        first = first if extra else 0
        for mp in plan.modules.values():
            mp.scale, mp.add = mp.scale[:, first:], mp.add[:, first:]
            mp.post = None if mp.post is None else mp.post[:, first:]
        ids = self.input_ids[:, first:]
        try:
            with self._installed(plan):
                if grow:
                    with self.prefix.growing(starts, self.device, self._dtype, first):
                        logits = self._forward(ids, extra)
                else:
                    with self.prefix.skipping(starts[0], len(chunk), self.device, self._dtype, first):
                        logits = self._forward(ids.expand(len(chunk), -1), extra)
        except RuntimeError as exc:  # a model that reshapes to its input ids' batch (openai-gpt) cannot grow
            if not grow:
                raise
            self.prefix.refuse_growing(exc)  # hooks are off again: the pass reruns without growing
            return self._run_plan(chunk)
        self.layers_run += sum(len(self.prefix.layers) - start for start in starts)
        self.positions_run += sum(len(self.prefix.layers) - start for start in starts) * (self.length - first)
        unfired = [name for name, mp in plan.modules.items() if mp.fires == 0]
        if unfired:
            raise ReplayError(f"interventions on {', '.join(unfired)} never fired; nothing was changed there")
        return logits, plan

    @property
    def _vocab(self) -> int:
        """Width of the logits: the output embedding's rows, else the config's vocabulary size."""
        embeddings: Any = getattr(self.model, "get_output_embeddings", None)
        weight = getattr(embeddings() if callable(embeddings) else None, "weight", None)
        if isinstance(weight, torch.Tensor):
            return int(weight.shape[0])
        return int(getattr(getattr(self.model, "config", None), "vocab_size", 0))

    @property
    def _dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @contextmanager
    def _installed(self, plan: Plan) -> Iterator[None]:
        with HookSet(self.model) as hooks:
            for name, mp in plan.modules.items():
                if mp.hook is None:
                    hooks.forward(name, _patcher(mp))
                else:
                    hooks.forward_pre(get_module(self.model, mp.hook), _pre_patcher(mp))
                    if mp.post is not None:
                        hooks.forward(mp.hook, _post_adder(mp))
            yield

    @torch.inference_mode()
    def _forward(self, ids: torch.Tensor, extra: dict[str, Any] | None = None) -> torch.Tensor:
        kwargs: dict[str, Any] = {"use_cache": False, **(extra or {})}
        if self._keep_logits:
            kwargs["logits_to_keep"] = 1
        out = self.model(input_ids=ids, **kwargs)
        self.forward_passes += 1
        logits: torch.Tensor = out.logits[:, -1].float()
        return logits

    def _width(self, module: str) -> int | None:
        if module not in self._widths:
            if module in self.bundle.modules:
                self._widths[module] = int(self.bundle.activation(module).shape[-1])
            else:
                get_module(self.model, module)  # raises UnknownModuleError with suggestions
                self._widths[module] = None
        return self._widths[module]

    def _capture_heads(self, bundle: Bundle) -> dict[str, np.ndarray]:
        """Head values of a source bundle: its own tokens through this model (one pass). A source from
        another model's weights would get this model's heads, so it is refused (see ``SourceBank.set_heads``)."""
        if bundle.model.get("sha256") != self.loaded.info.sha256 and is_reference_run(bundle, self.options):
            return self._reference_heads(bundle)
        if bundle.model.get("sha256") != self.loaded.info.sha256:
            raise ReplayError(
                f"head values of {bundle.id}: it was recorded on other weights than {self.loaded.info.ref!r}, "
                "so its heads cannot be recomputed here; capture them on its own model (a reference run does)"
            )
        generated = list(bundle.outputs.get("generated_ids") or [])
        ids = list(bundle.inputs["input_ids"]) + generated[: max(0, len(generated) - 1)]
        self.forward_passes += 1
        return capture_heads(self.model, ids)

    def _reference_heads(self, bundle: Bundle) -> dict[str, np.ndarray]:
        """Head values of a reference run, captured on the reference model itself (``options.reference_model``),
        for a replayer whose bank was not given them (``SourceBank.set_heads``), e.g. on a Ray worker."""
        opts = self.options
        if opts.reference_model is None:
            raise ReplayError(
                f"head values of reference run {bundle.id}: recorded on the reference model, which this replay "
                "cannot load (ReplayOptions.reference_model is unset: a reference given as an in-memory model); "
                "run the analysis in process or name the reference model by path"
            )
        ref = resolve_model(
            opts.reference_model,
            device=opts.device,
            dtype=bundle.model.get("dtype", "float32"),
            cache_dir=opts.cache_dir,
        )
        if ref.info.sha256 != opts.reference_sha256:
            raise ReplayError(
                f"head values of reference run {bundle.id}: {opts.reference_model!r} now has weights sha256 "
                f"{ref.info.sha256[:12]}…, the reference run was recorded on {str(opts.reference_sha256)[:12]}…"
            )
        generated = list(bundle.outputs.get("generated_ids") or [])
        heads = capture_heads(ref.model, list(bundle.inputs["input_ids"]) + generated[: max(0, len(generated) - 1)])
        self.bank.set_heads(bundle.id, heads, contributions(ref.model, heads))
        return heads

    def _heads(self, module: str) -> HeadSite:
        try:
            spec = arch_for(self.model)
            return (spec.head_proj(module), *spec.head_slices(self.model, module))
        except ModelError as exc:
            raise ReplayError(f"head intervention on {module}: {exc}") from None


def _grown(plan: Plan, extra: int) -> Plan:
    """``plan`` over ``extra`` more positions at the end, which it leaves unchanged (fresh fire counts)."""
    grown = Plan()
    for name, mp in plan.modules.items():
        rows, _, width = mp.add.shape
        scale = torch.cat([mp.scale, mp.scale.new_ones(rows, extra, mp.scale.shape[-1])], dim=1)
        add = torch.cat([mp.add, mp.add.new_zeros(rows, extra, width)], dim=1)
        post = None if mp.post is None else torch.cat([mp.post, mp.post.new_zeros(rows, extra, mp.post.shape[-1])], 1)
        grown.modules[name] = ModulePlan(scale, add, hook=mp.hook, post=post)
    return grown


def _patcher(mp: Any) -> Any:
    def hook(module: torch.nn.Module, args: Any, output: Any) -> Any:
        out = primary(output)  # [rows, T, d]; rows < K while later-starting rows have not joined yet
        rows = out.shape[0]
        if out.shape[1] != mp.add.shape[1] or rows > mp.add.shape[0]:
            raise ReplayError(
                f"intervention expected [{mp.add.shape[0]}, {mp.add.shape[1]}, …], got {tuple(out.shape)}"
            )
        mp.fires += 1
        scale, add = mp.scale[:rows].to(out.device, out.dtype), mp.add[:rows].to(out.device, out.dtype)
        return with_primary(output, out * scale + add)

    return hook


def _pre_patcher(mp: ModulePlan) -> Any:
    """Forward pre-hook on an out-projection: rewrites the heads' columns of its input (head plans)."""

    def hook(module: torch.nn.Module, args: Any, kwargs: Any) -> Any:
        x = args[0]  # [rows, T, heads * head_dim]
        rows = x.shape[0]
        if x.shape[1:] != mp.add.shape[1:] or rows > mp.add.shape[0]:
            raise ReplayError(
                f"head intervention on {mp.hook} expected [{mp.add.shape[0]}, {mp.add.shape[1]}, "
                f"{mp.add.shape[2]}], got {tuple(x.shape)}"
            )
        mp.fires += 1
        scale, add = mp.scale[:rows].to(x.device, x.dtype), mp.add[:rows].to(x.device, x.dtype)
        return (x * scale + add, *args[1:]), kwargs

    return hook


def _post_adder(mp: ModulePlan) -> Any:
    """Forward hook on an out-projection: adds the contributions of heads patched from other weights."""

    def hook(module: torch.nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
        post = mp.post
        assert post is not None
        if output.shape[1:] != post.shape[1:] or output.shape[0] > post.shape[0]:
            raise ReplayError(
                f"head contribution on {mp.hook} expected [{post.shape[0]}, {post.shape[1]}, "
                f"{post.shape[2]}], got {tuple(output.shape)}"
            )
        return output + post[: output.shape[0]].to(output.device, output.dtype)

    return hook


def _capture_into(store: dict[str, np.ndarray], name: str) -> Any:
    def hook(module: torch.nn.Module, args: Any, output: Any) -> None:
        store[name] = primary(output)[0].detach().to("cpu", torch.float32).numpy()

    return hook


def is_reference_run(bundle: Any, options: ReplayOptions) -> bool:
    """Whether ``bundle`` is a reference run on the weights ``options.reference_sha256`` names (its manifest
    ``reference`` and its model agree): the one kind of bundle from other weights a replay accepts unasked."""
    sha = options.reference_sha256
    mark = bundle.manifest.get("reference") or {}
    return sha is not None and bundle.model.get("sha256") == sha and mark.get("sha256") == sha


def _checked(sources: Sequence[Any], options: ReplayOptions) -> list[Any]:
    """The sources the weights check applies to: all but the reference run."""
    return [b for b in sources if not is_reference_run(b, options)]


def _check_identity(bundle: Any, loaded: LoadedModel, others: Sequence[Any], allow: bool) -> None:
    if allow:
        return
    for b in (bundle, *others):
        want = b.model.get("sha256")
        if want != loaded.info.sha256:
            raise ReplayError(
                f"bundle {b.id}: recorded with weights sha256 {str(want)[:12]}…, model {loaded.info.ref!r} has "
                f"{loaded.info.sha256[:12]}…; set allow_model_mismatch to replay anyway (or, for baselines "
                f"from a known-good reference model, allow_source_mismatch)"
            )
