"""Attribution patching (AtP): every component x position candidate's effect, from one forward and one
backward pass.

    atp = attribute(rp, kinds=("zero", "mean", "patch"), sources=["france"], spans=rp.bundle.inputs.get("spans"))
    atp.top(48)          # [(Intervention, estimated change of the metric)], largest first
    atp.estimate(iv)     # the estimate of one candidate, or None when it was not a candidate

The metric is the failure's decision margin (``FailureSpec.metric``: > 0 once fixed). For a node with
activation ``a`` and gradient ``g = dM/da`` on the incident, replacing ``a`` by ``v`` at positions P
changes the metric by about ``sum_p (v_p - a_p) . g_p`` (Nanda 2022; Kramar et al. 2024). Nodes are,
per decoder layer: the residual stream, the attention output, the MLP output and every head's output
(its slice of the attention out-projection's input). ``v`` is 0 (``zero``), the benign population's
mean at the aligned position (``mean``) or a counterfactual's activation aligned from the end (``patch``; for heads captured
from the source's own tokens). A head patched from a reference model (other weights) replaces its
contribution ``c = W_O[:, h] z_h``, so its estimate is ``sum_p (c_ref_p - c_p) . g_p`` with ``g`` the
gradient at the out-projection's output. Position sets: the last position, every position, each
single position, contiguous ranges, and the bundle's named spans (chat messages, tool results).

The first position is where first order fails worst: it is the attention sink, and a patch there can
break it (its own residual stream leaves the state every later position attends to), moving the margin
by logits while its gradient is near zero. That position depends on nothing but itself, so one batched
pass over the first token alone measures how far each first-position candidate moves its own stream;
the ``SINK_EXACT`` share that move it most are replayed exactly, and every position set reaching the
first position is corrected by the same difference (``_correct_sink``).

The estimates are a first-order ranking, not a result: the exact batched replay evaluates the top N,
and the report keeps both side by side. Kramar et al.'s QK fix targets query and key nodes, which are
not candidates here (a head is patched at its output), so it is not applied; GradDrop is not either.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from forensics.errors import ReplayError
from forensics.hooks import HookSet, primary, with_primary
from forensics.models.arch import Component, arch_for, component_of, get_module
from forensics.replay.heads import head_weights
from forensics.replay.interventions import Intervention, Positions
from forensics.replay.replayer import Replayer
from forensics.vocab import CANDIDATE_POSITIONS

__all__ = ["MAX_RANGE", "Attribution", "Node", "attribute", "position_sets"]

MAX_RANGE = 8  # longest contiguous range of positions proposed (longer stretches come as named spans)
SINK_EXACT = 0.1  # share of first-position candidates whose estimate is replaced by an exact replay
SINK_BATCH = 16  # sets per exact replay of first-position candidates: each touches its own module at every
# position (no suffix to skip), so a full replay batch holds ~30 modules' plans; 16 keeps the peak at the search's
SINK_ROWS = 256  # rows per pass over the first token (memory: ~10 MB of activations per pass on smollm2)


@dataclass(frozen=True)
class Node:
    """One place an intervention can act: a module's output, or one head of an attention module."""

    module: str
    head: int | None = None

    def component(self, family: str | None = None) -> Component:
        return component_of(self.module, self.head, family)


@dataclass
class Attribution:
    """AtP estimates: ``values[n, k, s]`` for node n, intervention k (kind/source), position set s; NaN
    where the candidate does not exist (no source value there, or it would substitute the input)."""

    nodes: list[Node]
    kinds: list[tuple[str, str | None]]  # (kind, source)
    positions: list[Positions]
    labels: list[str]  # of each position set: "last", "all", "4 ' is'", "2-4", "message 1 (user)"
    values: np.ndarray
    length: int
    family: str | None = None
    seconds: float = 0.0
    forward_passes: int = 1
    backward_passes: int = 1
    kept: int | None = None  # how many the pre-filter passed on to the exact replay
    sink_exact: int = 0  # first-position candidates whose estimate is an exact replay (``_correct_sink``)
    _index: dict[Intervention, float] = field(default_factory=dict, repr=False)

    @property
    def candidates(self) -> int:
        return int(np.isfinite(self.values).sum())

    def intervention(self, n: int, k: int, s: int) -> Intervention:
        kind, source = self.kinds[k]
        node = self.nodes[n]
        return Intervention(node.module, kind, self.positions[s], source, None, head=node.head)  # type: ignore[arg-type]

    def top(self, limit: int, sites: Collection[str] | None = None) -> list[tuple[Intervention, float]]:
        """The ``limit`` candidates with the largest estimated gain, largest first; ``sites``: only those
        acting on these (``resid``, ``attn``, ``mlp``, ``head``)."""
        values = self.values
        if sites is not None:
            keep = np.array([n.component(self.family).site in sites for n in self.nodes], dtype=bool)
            values = np.where(keep[:, None, None], values, np.nan)
        flat = np.where(np.isfinite(values), values, -np.inf).ravel()
        limit = min(limit, int(np.isfinite(values).sum()))
        if limit <= 0:
            return []
        picked = np.argpartition(-flat, limit - 1)[:limit]
        picked = picked[np.argsort(-flat[picked], kind="stable")]
        out = []
        for i in picked:
            n, k, s = np.unravel_index(int(i), self.values.shape)
            out.append((self.intervention(int(n), int(k), int(s)), float(flat[i])))
        self._index.update(out)
        return out

    def estimate(self, iv: Intervention) -> float | None:
        """The estimate for ``iv`` (a candidate of this table), else None."""
        if iv in self._index:
            return self._index[iv]
        try:
            n = self.nodes.index(Node(iv.module, iv.head))
            k = self.kinds.index((iv.kind, iv.source if iv.kind == "patch" else None))
            s = self.positions.index(iv.positions)
        except ValueError:
            return None
        value = float(self.values[n, k, s])
        return value if np.isfinite(value) else None

    def grid(self) -> dict[str, Any]:
        """Per site, layer x single position: the largest estimated gain of any candidate there."""
        single = {s: self.positions[s] for s in range(len(self.positions))}
        at: dict[int, int] = {}
        for s, pos in single.items():
            if pos == "last":
                at[s] = self.length - 1
            elif isinstance(pos, tuple) and len(pos) == 1:
                at[s] = pos[0]
        layers = 1 + max((c.layer or 0 for c in (n.component(self.family) for n in self.nodes)), default=0)
        sites: dict[str, list[list[float | None]]] = {}
        for n, node in enumerate(self.nodes):
            comp = node.component(self.family)
            rows = sites.setdefault(comp.site, [[None] * self.length for _ in range(layers)])
            for s, p in at.items():
                value = np.nanmax(self.values[n, :, s]) if np.isfinite(self.values[n, :, s]).any() else None
                if value is not None and comp.layer is not None:
                    old = rows[comp.layer][p]
                    rows[comp.layer][p] = float(value) if old is None else max(old, float(value))
        return {"layers": layers, "positions": self.length, "sites": sites}

    def to_dict(self, top: int = 20) -> dict[str, Any]:
        return {
            "method": "atp",
            "candidates": self.candidates,
            "kept": self.kept,
            "forward_passes": self.forward_passes,
            "backward_passes": self.backward_passes,
            "sink_exact": self.sink_exact,
            "seconds": round(self.seconds, 3),
            "top": [
                {**iv.to_dict(), "component": component_of(iv.module, iv.head, self.family).label(), "atp": value}
                for iv, value in self.top(top)
            ],
            "grid": self.grid(),
        }


def position_sets(
    length: int,
    tokens: Sequence[str] = (),
    spans: Sequence[Mapping[str, Any]] = (),
    include: Sequence[str] = CANDIDATE_POSITIONS,
) -> tuple[list[Positions], list[str]]:
    """(position sets, their labels), of the kinds in ``include``: ``last``, ``all``, ``each`` other
    single position, contiguous ``ranges`` of 2 to ``MAX_RANGE`` positions short of all of them, and the
    named ``spans`` inside the pass; a set is proposed once, under its first kind."""
    out: list[Positions] = []
    labels: list[str] = []
    seen: set[tuple[int, ...]] = set()

    def add(pos: Positions, key: tuple[int, ...], label: str) -> None:
        if key and key not in seen:
            seen.add(key)
            out.append(pos)
            labels.append(label)

    def tok(p: int) -> str:
        return f"{p} {tokens[p]!r}" if p < len(tokens) else str(p)

    if "last" in include:
        add("last", (length - 1,), f"last ({tok(length - 1)})")
    if "all" in include:
        add("all", tuple(range(length)), "all")
    if "each" in include:
        for p in range(length - 1):
            add((p,), (p,), tok(p))
    if "ranges" in include:
        for width in range(2, min(MAX_RANGE, length - 1) + 1):
            for start in range(0, length - width + 1):
                add(
                    tuple(range(start, start + width)),
                    tuple(range(start, start + width)),
                    f"{start}-{start + width - 1}",
                )
    if "spans" in include:
        for span in spans:
            lo, hi = (int(x) for x in span.get("tokens", (0, 0)))
            hi = min(hi, length)
            name = span.get("name") or span.get("role") or ""
            label = f"{span.get('kind', 'span')} {span.get('index', '')} ({name})"
            if hi - lo == length:
                continue  # the whole pass is 'all'
            add(tuple(range(lo, hi)), tuple(range(lo, hi)), label)
    return out, labels


def attribute(
    rp: Replayer,
    *,
    kinds: Sequence[str],
    sources: Sequence[str] = (),
    same_input: frozenset[str] = frozenset(),
    sites: Sequence[str] = ("resid", "attn", "mlp", "head"),
    spans: Sequence[Mapping[str, Any]] = (),
    include: Sequence[str] = CANDIDATE_POSITIONS,
    output_module: str | None = None,
    sink_exact: float = SINK_EXACT,
) -> Attribution:
    """AtP estimates of every candidate; one forward and one backward pass over the incident, then the
    first-position correction (``sink_exact``, the share of first-position candidates replayed exactly;
    0 turns it off; see ``_correct_sink``).

    The residual stream takes ``patch`` only: zeroing (or averaging away) everything the model has
    computed up to a layer names no component, and its first-order estimate means nothing."""
    if rp.spec is None:
        raise ReplayError("attribution needs the bundle's failure spec (the metric to explain)")
    t0 = time.perf_counter()
    spec = arch_for(rp.model)
    nodes = _nodes(rp, spec, sites)
    acts, grads, proj_grads = _forward_backward(rp, nodes)
    length = rp.length
    tokens = [rp.tokenizer.decode([int(t)]) for t in rp.input_ids[0].tolist()]
    positions, labels = position_sets(length, tokens, spans, include)
    columns = _head_columns(rp, spec) if any(n.head is not None for n in nodes) else {}
    kind_list: list[tuple[str, str | None]] = []
    for kind in kinds:
        if kind == "patch":
            kind_list += [("patch", s) for s in sources]
        elif kind in ("zero", "mean"):
            kind_list.append((kind, None))
    mask = _membership(positions, length)  # [S, T]
    weights: dict[str, np.ndarray] = {}  # attention module -> [heads, head_dim, hidden], on first use
    sizes = mask.sum(axis=1)
    values = np.full((len(nodes), len(kind_list), len(positions)), np.nan, dtype=np.float64)
    for n, node in enumerate(nodes):
        a, g = acts[n], grads[n]
        for k, (kind, source) in enumerate(kind_list):
            if node.component(spec.family).site == "resid" and kind != "patch":
                continue
            try:
                contrib = _contribution(rp, node, kind, source, length)
                if contrib is None:
                    delta = ((_values(rp, node, kind, source, columns, length) - a) * g).sum(axis=-1)
                else:  # the head's contribution from other weights replaces this model's
                    delta = ((contrib - a @ _head_weight(rp, node, weights)) * proj_grads[node.module]).sum(axis=-1)
            except ReplayError:
                continue  # no value for this node (not recorded in the source, other weights): no candidate
            # delta: [T]; NaN where the source has no counterpart
            est = np.where(mask, np.nan_to_num(delta)[None, :], 0.0).sum(axis=1)
            est[(mask & ~np.isfinite(delta)[None, :]).any(axis=1)] = np.nan
            if kind == "patch" and (node.module == output_module and node.head is None):
                est[:] = np.nan  # the last residual IS the source's prediction: output substitution
            if kind in ("patch", "mean") and source not in same_input:  # cca.is_input_substitution
                resid = node.component(spec.family).site == "resid"
                est[(sizes == length) | ((sizes > 1) & resid)] = np.nan
            values[n, k] = est
    atp = Attribution(nodes, kind_list, positions, labels, values, length, spec.family)
    if sink_exact > 0:
        _correct_sink(rp, atp, columns, sink_exact)
    atp.seconds = time.perf_counter() - t0
    return atp


def _nodes(rp: Replayer, spec: Any, sites: Sequence[str]) -> list[Node]:
    out: list[Node] = []
    heads = 0
    if "head" in sites and spec.attn is not None and spec.attn_out_proj is not None:
        heads = spec.head_slices(rp.model)[0]
    for layer in spec.layer_names(rp.model):
        attn = f"{layer}.{spec.attn}" if spec.attn else None
        mlp = f"{layer}.{spec.mlp}" if spec.mlp else None
        if attn and "attn" in sites:
            out.append(Node(attn))
        out += [Node(attn, h) for h in range(heads)] if attn else []
        if mlp and "mlp" in sites:
            out.append(Node(mlp))
        if "resid" in sites:
            out.append(Node(layer))
    return out


def _forward_backward(
    rp: Replayer, nodes: Sequence[Node]
) -> tuple[list[np.ndarray], list[np.ndarray], dict[str, np.ndarray]]:
    """Each node's activation and the metric's gradient there, [T, width] float64, on the incident; and
    for each attention module with head nodes, the gradient at its out-projection's output [T, hidden]."""
    spec = arch_for(rp.model)
    modules = sorted({n.module for n in nodes if n.head is None})
    attns = sorted({n.module for n in nodes if n.head is not None})
    seen: dict[str, torch.Tensor] = {}

    def keep(name: str) -> Any:
        def hook(module: torch.nn.Module, args: Any, output: Any) -> None:
            seen[name] = primary(output)

        return hook

    def keep_input(name: str) -> Any:
        def hook(module: torch.nn.Module, args: Any, kwargs: Any) -> None:
            seen[name + "[heads]"] = args[0]

        return hook

    def keep_output(name: str) -> Any:
        def hook(module: torch.nn.Module, args: Any, output: Any) -> None:
            seen[name + "[out]"] = output

        return hook

    with torch.enable_grad(), HookSet(rp.model) as hooks:
        for m in modules:
            hooks.forward(m, keep(m))
        for attn in attns:
            proj = get_module(rp.model, spec.head_proj(attn))
            hooks.forward_pre(proj, keep_input(attn))
            hooks.forward_on(proj, keep_output(attn))
        logits = rp.model(input_ids=rp.input_ids, use_cache=False).logits[:, -1].float()
        metric = rp.spec.metric(logits, observed_id=rp.observed_id, target_id=rp.target_id)  # type: ignore[union-attr]
        keys = [*modules, *(a + "[heads]" for a in attns), *(a + "[out]" for a in attns)]
        grads = torch.autograd.grad(metric.sum(), [seen[k] for k in keys], allow_unused=True)
    rp.forward_passes += 1
    by_key = {
        k: (
            seen[k][0].detach().to("cpu", torch.float64).numpy(),
            np.zeros(tuple(seen[k][0].shape)) if g is None else g[0].detach().to("cpu", torch.float64).numpy(),
        )
        for k, g in zip(keys, grads, strict=True)
    }
    columns = _head_columns(rp, spec) if attns else {}
    acts, out = [], []
    for node in nodes:
        a, g = by_key[node.module if node.head is None else node.module + "[heads]"]
        cols = slice(None) if node.head is None else columns[node.head]
        acts.append(a[:, cols])
        out.append(g[:, cols])
    return acts, out, {attn: by_key[attn + "[out]"][1] for attn in attns}


def _contribution(rp: Replayer, node: Node, kind: str, source: str | None, length: int) -> np.ndarray | None:
    """[T, hidden]: a head's contribution in a source from other weights (NaN rows where the source has no
    counterpart), or None where the head's own output is what a patch writes."""
    if node.head is None or kind != "patch":
        return None
    contrib = rp.bank.contribution(node.module, source, step=rp.step)
    if contrib is None:
        return None
    return _from_the_end(contrib[:, int(node.head)], length)


def _head_weight(rp: Replayer, node: Node, cache: dict[str, np.ndarray]) -> np.ndarray:
    """[head_dim, hidden]: the head's block of this model's out-projection."""
    if node.module not in cache:
        cache[node.module] = head_weights(rp.model, node.module).to("cpu", torch.float64).numpy()
    block: np.ndarray = cache[node.module][int(node.head or 0)]
    return block


def _head_columns(rp: Replayer, spec: Any) -> dict[int, slice]:
    heads, head_dim = spec.head_slices(rp.model)
    return {h: slice(h * head_dim, (h + 1) * head_dim) for h in range(heads)}


def _values(
    rp: Replayer, node: Node, kind: str, source: str | None, columns: Mapping[int, slice], length: int
) -> np.ndarray:
    """What the intervention writes, [T, width] ([T, 1] for zero; NaN rows where a patch source has no
    counterpart); for a head, its columns only."""
    heads = node.head is not None
    cols = columns[int(node.head or 0)] if heads else slice(None)
    if kind == "zero":
        return np.zeros((length, 1))
    if kind == "mean":
        return rp.bank.mean(node.module, length=length, heads=heads).astype(np.float64)[:, cols]
    return _from_the_end(rp.bank.patch(node.module, source, step=rp.step, heads=heads)[:, cols], length)


def _from_the_end(src: np.ndarray, length: int) -> np.ndarray:
    """[length, width] float64: a source's rows aligned from the end, NaN where it has no counterpart."""
    v = np.full((length, src.shape[-1]), np.nan)
    n = min(length, src.shape[0])
    v[length - n :] = src[src.shape[0] - n :]
    return v


def _membership(positions: Sequence[Positions], length: int) -> np.ndarray:
    mask = np.zeros((len(positions), length), dtype=bool)
    for s, pos in enumerate(positions):
        if pos == "last":
            mask[s, length - 1] = True
        elif pos == "all":
            mask[s, :] = True
        else:
            mask[s, list(pos)] = True
    return mask


class _Stop(Exception):
    """Raised by the last decoder layer's hook: the sink pass needs no logits."""


def _correct_sink(rp: Replayer, atp: Attribution, columns: Mapping[int, slice], share: float) -> None:
    """Exact effects for the first-position candidates that move the first position's own stream most.

    Position 0 reads only itself, so a pass over the first token alone, one row per candidate patched at
    position 0, shows how far each moves that position's state (the largest relative change of any
    decoder layer's output there). The top ``share`` of them are replayed exactly; each of those
    candidates' other position sets that include position 0 move by the same correction."""
    if atp.length < 2 or (0,) not in atp.positions:
        return
    s0 = atp.positions.index((0,))
    rows: list[tuple[int, int, np.ndarray]] = []  # (node, kind, the value written at position 0)
    for n, node in enumerate(atp.nodes):
        for k, (kind, source) in enumerate(atp.kinds):
            if not np.isfinite(atp.values[n, k, s0]):
                continue
            if (
                node.head is not None
                and kind == "patch"
                and rp.bank.contribution(node.module, source, step=rp.step) is not None
            ):
                continue  # a contribution from other weights: not written at the head's input
            value = _values(rp, node, kind, source, columns, atp.length)[0]
            if np.isfinite(value).all():
                rows.append((n, k, value))
    picked = int(np.ceil(share * len(rows)))
    if not rows or picked == 0:
        return
    candidates = [(atp.intervention(n, k, s0),) for n, k, _ in rows]
    starts = [rp.prefix.start(ivs) for ivs in candidates] if rp.prefix.can_grow(candidates) else None
    moved = _first_position_moves(rp, [(atp.nodes[n], v) for n, k, v in rows], columns, starts)
    order = np.argsort(-moved, kind="stable")[:picked]
    chosen = [rows[i] for i in order]
    sets = [(atp.intervention(n, k, s0),) for n, k, _ in chosen]
    try:
        base = rp.run(()).metric
        exact = [
            o.metric - base for i in range(0, len(sets), SINK_BATCH) for o in rp.evaluate(sets[i : i + SINK_BATCH])
        ]
    except ReplayError:
        return  # a candidate the replay refuses: keep the first-order estimates
    reach = _membership(atp.positions, atp.length)[:, 0]  # position sets that include position 0
    for (n, k, _), value in zip(chosen, exact, strict=True):
        atp.values[n, k, reach] += value - atp.values[n, k, s0]
    atp.sink_exact = len(chosen)
    atp.forward_passes += 2 + -(-len(sets) // max(1, min(SINK_BATCH, rp.batch_size)))


@torch.inference_mode()
def _first_position_moves(
    rp: Replayer,
    rows: Sequence[tuple[Node, np.ndarray]],
    columns: Mapping[int, slice],
    starts: Sequence[int] | None = None,
) -> np.ndarray:
    """[R]: for each (node, value at position 0), the largest relative change of a decoder layer's output
    at position 0 when the node's output there is replaced by the value; one pass over the first token,
    R + 1 rows (the first unchanged), stopped before the LM head. ``starts``: each row's first layer that
    must run; the row then joins the batch there, from the recording (``PrefixReuse.growing``). Rows go
    in passes of up to ``SINK_ROWS`` (by first layer), which bounds the memory a pass takes."""
    if len(rows) > SINK_ROWS:
        order = sorted(range(len(rows)), key=lambda r: starts[r]) if starts is not None else list(range(len(rows)))
        out = np.empty(len(rows))
        for i in range(0, len(order), SINK_ROWS):
            part = order[i : i + SINK_ROWS]
            joins = None if starts is None else [starts[r] for r in part]
            out[part] = _first_position_moves(rp, [rows[r] for r in part], columns, joins)
        return out
    spec = arch_for(rp.model)
    layers = spec.layer_names(rp.model)
    device = next(rp.model.parameters()).device
    dtype = next(rp.model.parameters()).dtype
    order = sorted(range(len(rows)), key=lambda r: starts[r]) if starts is not None else list(range(len(rows)))
    slot = np.empty(len(rows), dtype=np.int64)  # batch row of each row (the unchanged row is 0)
    slot[order] = np.arange(1, len(rows) + 1)
    outputs: dict[str, list[int]] = {}
    inputs: dict[tuple[str, int], list[int]] = {}
    for r, (node, _) in enumerate(rows):
        if node.head is None:
            outputs.setdefault(node.module, []).append(r)
        else:
            inputs.setdefault((spec.head_proj(node.module), node.head), []).append(r)

    def stacked(members: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(rows[r][1].shape[-1] for r in members)  # zero writes one column, broadcast
        values = np.stack([np.broadcast_to(rows[r][1], (width,)) for r in members])
        return torch.as_tensor(slot[members], device=device), torch.as_tensor(values, dtype=dtype, device=device)

    def write_out(idx: torch.Tensor, values: torch.Tensor) -> Any:
        def hook(module: torch.nn.Module, args: Any, output: Any) -> Any:
            out = primary(output).clone()
            out[idx, 0] = values
            return with_primary(output, out)

        return hook

    def write_in(entries: list[tuple[slice, torch.Tensor, torch.Tensor]]) -> Any:
        def hook(module: torch.nn.Module, args: Any, kwargs: Any) -> Any:
            x = args[0].clone()
            for cols, idx, values in entries:
                x[idx, 0, cols] = values
            return (x, *args[1:]), kwargs

        return hook

    moved = torch.zeros(len(rows) + 1, device=device)

    def keep(last: bool) -> Any:
        def hook(module: torch.nn.Module, args: Any, output: Any) -> None:
            state = primary(output)[:, 0].float()  # the rows that have joined so far
            base = state[:1]
            change = (state - base).norm(dim=-1) / base.norm(dim=-1).clamp_min(1e-6)
            moved[: state.shape[0]] = torch.maximum(moved[: state.shape[0]], change)
            if last:
                raise _Stop

        return hook

    by_proj: dict[str, list[tuple[slice, torch.Tensor, torch.Tensor]]] = {}
    for (proj, head), members in inputs.items():
        by_proj.setdefault(proj, []).append((columns[head], *stacked(members)))
    grow = starts is not None
    first = rp.input_ids[:, :1].to(device)
    with HookSet(rp.model) as hooks:
        for name, members in outputs.items():
            hooks.forward(name, write_out(*stacked(members)))
        for proj, entries in by_proj.items():
            hooks.forward_pre(get_module(rp.model, proj), write_in(entries))
        for i, layer in enumerate(layers):
            hooks.forward(layer, keep(i == len(layers) - 1))
        joined = [0] + [starts[r] for r in order] if starts is not None else []
        with (
            contextlib.suppress(_Stop),
            rp.prefix.growing(joined, device, dtype, end=1) if grow else contextlib.nullcontext(),
        ):
            rp.model(input_ids=first if grow else first.expand(len(rows) + 1, 1), use_cache=False)
    rp.forward_passes += 1
    result: np.ndarray = moved[torch.as_tensor(slot, device=device)].cpu().numpy()
    return result
