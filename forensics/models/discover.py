"""Architectures found, not listed: the decoder layers of a Hugging Face causal LM and their parts,
read from the module tree and the config, then proven by one forward pass with a hook on each.

    spec = discover_arch(model)      # ArchSpec(family=config.model_type, layers="model.layers", ...)
    verify_arch(model, spec)         # raises ModelError unless the pieces really compose the layers

Finding: the decoder layers are the ``ModuleList`` of ``num_hidden_layers`` blocks holding the most
weights; attention and MLP are the children of every block whose class says so; the out-projections are
the last linear maps that fire inside them (input ``num_attention_heads x head_dim`` wide for attention);
the final norm is the norm that runs after the last layer; the embedding is ``get_input_embeddings()``.
Proving: each layer, attention and MLP fires once per pass, in layer order, with [batch, pos, d_model]
outputs; the out-projection once per layer; the embedding before the first layer, the final norm after
the last. What discovery cannot find or prove is a ``ModelError`` naming ``model.architecture``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from forensics.errors import ModelError, UnknownModuleError
from forensics.models.spec import HEAD_KEYS, ArchSpec, get_module, linear_dims

__all__ = ["ATTN_NAMES", "CONFIG_HINT", "MLP_NAMES", "discover_arch", "verify_arch"]

CONFIG_HINT = (
    "give its module paths in the config under model.architecture "
    "(fields: family, layers, attn, mlp, final_norm, embed, attn_out_proj, mlp_out_proj)"
)
# Child names that hold attention / the MLP in the blocks of the architectures this version of
# transformers ships; names alone (reports, bundles) are read with them when no model is at hand.
ATTN_NAMES = ("self_attn", "attn", "attention", "self_attention", "attn_layer")
MLP_NAMES = ("mlp", "feed_forward", "ffn", "block_sparse_moe", "moe", "mlp_block", "ff", "channel_mix")
_ATTN_CLASS = re.compile(r"attention|attn", re.IGNORECASE)
_MLP_CLASS = re.compile(r"mlp|feedforward|ffn|moe|experts|sparse|glu", re.IGNORECASE)
_MOE_CLASS = re.compile(r"moe|expert|sparse", re.IGNORECASE)
_NORM_CLASS = re.compile(r"norm", re.IGNORECASE)
_PROBE_LENGTH = 4


def discover_arch(model: nn.Module, family: str | None = None) -> ArchSpec:
    """The ``ArchSpec`` of ``model`` found from its module tree and config, proven by a forward pass."""
    config = getattr(model, "config", None)
    family = family or str(getattr(config, "model_type", None) or type(model).__name__)
    layers = _find_layers(model, config, family)
    blocks = list(get_module(model, layers).children())
    attn = _common_child(blocks, _ATTN_CLASS, ATTN_NAMES)
    mlp = _common_child(blocks, _MLP_CLASS, MLP_NAMES)
    if attn is None and mlp is None:
        raise ModelError(f"{family}: no attention or MLP module in the blocks of {layers}; {CONFIG_HINT}")
    getter = getattr(model, "get_input_embeddings", None)
    embed = _path_of(model, getter()) if callable(getter) else None
    if embed is None:
        raise ModelError(f"{family}: no input embedding module found; {CONFIG_HINT}")
    draft = ArchSpec(family, layers, attn, mlp, None, embed)
    trace = _probe(model, draft, _norms_outside(model, layers))
    spec = replace(
        draft,
        final_norm=trace.final_norm(),
        attn_out_proj=_out_proj(model, draft, trace, attention=True),
        mlp_out_proj=_every_layer(trace, mlp, _out_proj(model, draft, trace, attention=False)),
    )
    _check(model, spec, trace)
    return spec


def verify_arch(model: nn.Module, spec: ArchSpec) -> ArchSpec:
    """``spec`` if one forward pass shows its pieces compose ``model``'s layers; a ``ModelError`` otherwise."""
    try:
        trace = _probe(model, spec, [spec.final_norm] if spec.final_norm else [])
    except UnknownModuleError as exc:
        raise ModelError(f"{spec.family}: {exc}") from None
    _check(model, spec, trace)
    return spec


def _find_layers(model: nn.Module, config: Any, family: str) -> str:
    """The ``ModuleList`` of ``num_hidden_layers`` blocks holding the most parameters."""
    want = getattr(config, "num_hidden_layers", None)
    found = [
        (sum(p.numel() for p in m.parameters()), -name.count("."), name)
        for name, m in model.named_modules()
        if isinstance(m, nn.ModuleList) and len(m) > 0 and (not isinstance(want, int) or len(m) == want)
    ]
    if not found:
        raise ModelError(f"{family}: no ModuleList of {want} decoder layers in {type(model).__name__}; {CONFIG_HINT}")
    return str(max(found)[2])


def _common_child(blocks: list[nn.Module], by_class: re.Pattern[str], names: tuple[str, ...]) -> str | None:
    """The child name that every block has and whose class (else whose name) marks it as wanted."""
    shared = set.intersection(*({n for n, _ in b.named_children()} for b in blocks))
    children = [(n, m) for n, m in blocks[0].named_children() if n in shared]
    by_type = [n for n, m in children if by_class.search(type(m).__name__) and not _NORM_CLASS.search(type(m).__name__)]
    by_name = [n for n, _ in children if n in names]
    picks = [n for n in by_type if n in names] or by_type or by_name
    return picks[0] if picks else None


def _norms_outside(model: nn.Module, layers: str) -> list[str]:
    return [
        name
        for name, m in model.named_modules()
        if name and _NORM_CLASS.search(type(m).__name__) and not name.startswith(layers + ".")
    ]


def _path_of(model: nn.Module, target: Any) -> str | None:
    return next((name for name, m in model.named_modules() if m is target and name), None)


@dataclass
class _Trace:
    """What fired during the probe pass, in order: (path, input width, output shape)."""

    layers: list[str]
    calls: list[tuple[str, int | None, tuple[int, ...] | None]] = field(default_factory=list)

    def order(self, name: str) -> list[int]:
        return [i for i, (n, _, _) in enumerate(self.calls) if n == name]

    def final_norm(self) -> str | None:
        last = self.order(self.layers[-1])
        after = [n for n, _, _ in self.calls[last[-1] + 1 :]] if last else []
        norms = [n for n in after if n.endswith("!norm")]
        return norms[0].removesuffix("!norm") if norms else None


def _probe(model: nn.Module, spec: ArchSpec, norms: list[str]) -> _Trace:
    """One short forward pass with a hook on each piece of ``spec`` (and, while its projections are
    unknown, each linear map inside attention and MLP; and each candidate final norm); hooks gone after."""
    layers = spec.layer_names(model)
    trace = _Trace(layers)
    watched: dict[str, str] = {spec.embed: spec.embed, **{n: n + "!norm" for n in norms}}
    for layer in layers:
        watched[layer] = layer
        for part in (spec.attn, spec.mlp):
            if part is not None:
                watched[f"{layer}.{part}"] = f"{layer}.{part}"
        for part, proj in ((spec.attn, spec.attn_out_proj), (spec.mlp, spec.mlp_out_proj)):
            if part is not None and proj is not None:
                watched[f"{layer}.{part}.{proj}"] = f"{layer}.{part}.{proj}"
        if spec.attn_out_proj is None and spec.mlp_out_proj is None:
            watched.update(_linears(model, layer, spec))
    with _hooks(model, watched, trace.calls.append):
        _forward(model)
    return trace


def _linears(model: nn.Module, layer: str, spec: ArchSpec) -> dict[str, str]:
    """Every linear map inside ``layer``'s attention and MLP: where the out-projections are found."""
    found: dict[str, str] = {}
    for part in (spec.attn, spec.mlp):
        for name, m in get_module(model, f"{layer}.{part}").named_modules() if part is not None else ():
            if name and linear_dims(m) is not None:
                found[f"{layer}.{part}.{name}"] = f"{layer}.{part}.{name}"
    return found


@contextmanager
def _hooks(model: nn.Module, watched: dict[str, str], sink: Callable[[Any], None]) -> Iterator[None]:
    handles = []
    try:
        for path, label in watched.items():
            handles.append(get_module(model, path).register_forward_hook(_recorder(label, sink)))
        yield
    finally:
        for handle in reversed(handles):
            handle.remove()


def _recorder(label: str, sink: Callable[[Any], None]) -> Callable[[nn.Module, Any, Any], None]:
    def hook(module: nn.Module, args: Any, output: Any) -> None:
        first = args[0] if isinstance(args, tuple) and args and isinstance(args[0], torch.Tensor) else None
        out = output[0] if isinstance(output, tuple | list) and output else output
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else None
        sink((label, int(first.shape[-1]) if first is not None else None, shape))

    return hook


def _forward(model: nn.Module) -> None:
    param = next(model.parameters(), None)
    device = param.device if param is not None and param.device.type != "meta" else torch.device("cpu")
    vocab = int(getattr(getattr(model, "config", None), "vocab_size", None) or 2)
    ids = (torch.arange(1, _PROBE_LENGTH + 1, device=device) % vocab)[None]
    try:
        with torch.no_grad():
            model(input_ids=ids, use_cache=False)
    except Exception as exc:  # any failure of a foreign forward means "cannot prove the pieces"
        raise ModelError(f"probe forward pass of {type(model).__name__} failed ({type(exc).__name__}: {exc})") from exc


def _out_proj(model: nn.Module, spec: ArchSpec, trace: _Trace, *, attention: bool) -> str | None:
    """The last linear map inside layer 0's attention (MLP) to fire that writes d_model; for attention its
    input must split into ``num_attention_heads`` heads of the config's ``head_dim`` (or evenly)."""
    part = spec.attn if attention else spec.mlp
    if part is None or (
        not attention and _MOE_CLASS.search(type(get_module(model, f"{trace.layers[0]}.{part}")).__name__)
    ):
        return None  # a mixture of experts has no single out-projection
    prefix = f"{trace.layers[0]}.{part}."
    hidden = _hidden_size(trace)
    heads = _num_heads(model)
    fired = [n for n, _, _ in trace.calls if n.startswith(prefix)]
    for name in reversed(fired):
        dims = linear_dims(get_module(model, name))
        if dims is None or dims[1] != hidden:
            continue
        if not attention and dims[0] == hidden:
            continue  # an MLP's out-projection widens back from the inner width
        if attention and (not heads or dims[0] % heads):
            continue
        return name[len(prefix) :]
    return None


def _every_layer(trace: _Trace, part: str | None, proj: str | None) -> str | None:
    """``proj`` when it runs once in every layer's ``part``; None otherwise (layer 0's dense MLP before
    mixture-of-experts layers has an out-projection the others lack)."""
    if part is None or proj is None:
        return None
    return proj if all(len(trace.order(f"{layer}.{part}.{proj}")) == 1 for layer in trace.layers) else None


def _hidden_size(trace: _Trace) -> int | None:
    shape = next((s for n, _, s in trace.calls if n == trace.layers[0]), None)
    return shape[-1] if shape else None


def _num_heads(model: nn.Module) -> int | None:
    config = getattr(model, "config", None)
    return next((getattr(config, k) for k in HEAD_KEYS if isinstance(getattr(config, k, None), int)), None)


def _check(model: nn.Module, spec: ArchSpec, trace: _Trace) -> None:
    """Each piece fired once per layer, in layer order, with [batch, pos, d_model] outputs."""
    hidden = _hidden_size(trace)
    want = (1, _PROBE_LENGTH, hidden)
    problems: list[str] = []
    starts = [trace.order(layer) for layer in trace.layers]
    for i, layer in enumerate(trace.layers):
        if len(starts[i]) != 1:
            problems.append(f"{layer} ran {len(starts[i])} times, expected once")
        for part in (spec.attn, spec.mlp):
            if part is not None:
                problems += _once_shaped(trace, f"{layer}.{part}", want)
        for part, proj in ((spec.attn, spec.attn_out_proj), (spec.mlp, spec.mlp_out_proj)):
            if part is not None and proj is not None:
                problems += _once_shaped(trace, f"{layer}.{part}.{proj}", None)
    if [s[0] for s in starts if s] != sorted(s[0] for s in starts if s):
        problems.append(f"the blocks of {spec.layers} did not run in order")
    embed = trace.order(spec.embed)
    if not embed or (starts[0] and embed[0] > starts[0][0]):
        problems.append(f"embedding {spec.embed} did not run before the first layer")
    if spec.final_norm is not None and trace.final_norm() != spec.final_norm:
        problems.append(f"final norm {spec.final_norm} did not run after the last layer")
    if spec.attn is not None and spec.attn_out_proj is not None:
        problems += _head_split(model, spec)
    if problems:
        raise ModelError(f"{spec.family}: the architecture does not compose the model: {'; '.join(problems)}")


def _once_shaped(trace: _Trace, name: str, want: tuple[int | None, ...] | None) -> list[str]:
    calls = [s for n, _, s in trace.calls if n == name]
    if len(calls) != 1:
        return [f"{name} ran {len(calls)} times, expected once"]
    if want is not None and calls[0] != want:
        return [f"{name} output has shape {calls[0]}, expected {want}"]
    return []


def _head_split(model: nn.Module, spec: ArchSpec) -> list[str]:
    """``num_attention_heads x head_dim`` (config; ``v_head_dim`` for latent attention, whose ``head_dim``
    is the rotary part) against the out-projection's input width."""
    proj = get_module(model, spec.head_proj(f"{spec.layers}.0.{spec.attn}"))
    width = (linear_dims(proj) or (0, 0))[0]
    heads = _num_heads(model)
    config = getattr(model, "config", None)
    head_dim = next(
        (getattr(config, k) for k in ("v_head_dim", "head_dim") if isinstance(getattr(config, k, None), int)), None
    )
    if not heads or width % heads:
        return [f"out-projection input width {width} does not split into {heads} heads"]
    if head_dim is not None and heads * head_dim != width:
        return [f"out-projection input width {width} != num_attention_heads {heads} x head_dim {head_dim}"]
    return []
