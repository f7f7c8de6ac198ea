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
the ``SINK_EXACT`` share that move it most (at most ``SINK_EXACT_MAX``) are replayed exactly, and every
position set reaching the first position is corrected by the same difference (``_correct_sink``).

The estimates are a first-order ranking, not a result: the exact batched replay evaluates the top N,
and the report keeps both side by side. Kramar et al.'s QK fix targets query and key nodes, which are
not candidates here (a head is patched at its output), so it is not applied; GradDrop is not either.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import torch

from forensics.cca.positions import membership, position_sets
from forensics.cca.sink import SINK_BATCH, SINK_EXACT, SINK_EXACT_MAX, first_position_moves
from forensics.errors import ReplayError
from forensics.hooks import HookSet, primary
from forensics.models.arch import Component, arch_for, component_of, get_module
from forensics.replay.heads import head_weights
from forensics.replay.interventions import Intervention, Positions
from forensics.replay.replayer import Replayer
from forensics.vocab import CANDIDATE_POSITIONS

__all__ = ["Attribution", "Node", "attribute"]


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
    tokens: list[str] = field(default_factory=list)  # the incident's fed tokens, one per position, decoded
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
        """Per site, layer x single position: the largest estimated gain of any candidate there; ``tokens``
        names the columns (empty when unknown)."""
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
        tokens = list(self.tokens) if len(self.tokens) == self.length else []  # the columns, by their text
        return {"layers": layers, "positions": self.length, "sites": sites, "tokens": tokens}

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


def attribute(
    rp: Replayer,
    *,
    kinds: Sequence[str],
    sources: Sequence[str] = (),
    reference_runs: frozenset[str] = frozenset(),
    sites: Sequence[str] = ("resid", "attn", "mlp", "head"),
    spans: Sequence[Mapping[str, Any]] = (),
    include: Sequence[str] = CANDIDATE_POSITIONS,
    output_module: str | None = None,
    sink_exact: float = SINK_EXACT,
    position_free: bool = False,
    sink_exact_max: int = SINK_EXACT_MAX,
) -> Attribution:
    """AtP estimates of every candidate; one forward and one backward pass over the incident, then the
    first-position correction (``sink_exact``, the share of first-position candidates replayed exactly,
    at most ``sink_exact_max`` of them; 0 turns it off; see ``_correct_sink``). ``position_free`` (a family's search): a component's mean at
    every position is estimated too, as the ablation it is there, not an input substitution.

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
    grid = _Grid(membership(positions, length), length, spec.family, reference_runs, output_module, position_free)
    values = np.full((len(nodes), len(kind_list), len(positions)), np.nan, dtype=np.float64)
    weights: dict[str, np.ndarray] = {}  # attention module -> [heads, head_dim, hidden], on first use
    for n, node in enumerate(nodes):
        values[n] = _estimates(rp, node, (acts[n], grads[n]), proj_grads, kind_list, columns, grid, weights)
    atp = Attribution(nodes, kind_list, positions, labels, values, length, spec.family, tokens=tokens)
    if sink_exact > 0:
        _correct_sink(rp, atp, columns, sink_exact, sink_exact_max)
    atp.seconds = time.perf_counter() - t0
    return atp


@dataclass(frozen=True)
class _Grid:
    """What every node's estimates are laid on: the position sets ([S, T] membership) and the rules that
    leave a candidate out (NaN)."""

    mask: np.ndarray
    length: int
    family: str
    reference_runs: frozenset[str]
    output_module: str | None
    position_free: bool = False  # a family's search: a component's mean at every position is an ablation

    @cached_property
    def runs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Each set's size, first position, end (exclusive) and the sets that are not one run of positions."""
        sizes, first = self.mask.sum(axis=1), self.mask.argmax(axis=1)
        end = self.length - self.mask[:, ::-1].argmax(axis=1)  # one past the last position
        return sizes, first, first + sizes, np.flatnonzero(end - first != sizes)

    def sums(self, delta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """[S] sums of ``delta`` [T] over each position set (prefix sums: O(S + T), not O(S x T)), and [S]
        whether a position of the set has no value (NaN)."""
        _, first, ends, scattered = self.runs
        finite = np.isfinite(delta)
        cum = np.concatenate([[0.0], np.cumsum(np.where(finite, delta, 0.0))])
        missing = np.concatenate([[0], np.cumsum(~finite)])
        est, bad = cum[ends] - cum[first], missing[ends] - missing[first] > 0
        if scattered.size:
            rows = self.mask[scattered]
            est[scattered] = np.where(rows, np.nan_to_num(delta)[None, :], 0.0).sum(axis=1)
            bad[scattered] = (rows & ~finite[None, :]).any(axis=1)
        return est, bad


def _estimates(
    rp: Replayer,
    node: Node,
    act_grad: tuple[np.ndarray, np.ndarray],
    proj_grads: Mapping[str, np.ndarray],
    kinds: Sequence[tuple[str, str | None]],
    columns: Mapping[int, slice],
    grid: _Grid,
    weights: dict[str, np.ndarray],
) -> np.ndarray:
    """[K, S]: the node's estimate for each kind at each position set; NaN where it is no candidate."""
    a, g = act_grad
    out = np.full((len(kinds), grid.mask.shape[0]), np.nan)
    resid = node.component(grid.family).site == "resid"
    sizes = grid.runs[0]
    for k, (kind, source) in enumerate(kinds):
        if resid and kind != "patch":
            continue
        try:
            contrib = _contribution(rp, node, kind, source, grid.length)
            if contrib is None:
                delta = ((_values(rp, node, kind, source, columns, grid.length) - a) * g).sum(axis=-1)
            else:  # the head's contribution from other weights replaces this model's
                delta = ((contrib - a @ _head_weight(rp, node, weights)) * proj_grads[node.module]).sum(axis=-1)
        except ReplayError:
            continue  # no value for this node (not recorded in the source, other weights): no candidate
        # delta: [T]; NaN where the source has no counterpart
        est, bad = grid.sums(delta)
        est[bad] = np.nan
        if kind == "patch" and (node.module == grid.output_module and node.head is None):
            est[:] = np.nan  # the last residual IS the source's prediction: output substitution
        if kind in ("patch", "mean") and source not in grid.reference_runs:  # fixset.is_input_substitution
            whole = (sizes == grid.length) & (resid or kind == "patch" or not grid.position_free)
            est[whole | ((sizes > 1) & resid)] = np.nan
        out[k] = est
    return out


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


def _correct_sink(
    rp: Replayer, atp: Attribution, columns: Mapping[int, slice], share: float, most: int = SINK_EXACT_MAX
) -> None:
    """Exact effects for the first-position candidates that move the first position's own stream most.

    Position 0 reads only itself, so a pass over the first token alone, one row per candidate patched at
    position 0, shows how far each moves that position's state (the largest relative change of any
    decoder layer's output there). The top ``share`` of them, at most ``most``, are replayed exactly; each of those
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
    picked = min(int(np.ceil(share * len(rows))), most)
    if not rows or picked == 0:
        return
    candidates = [(atp.intervention(n, k, s0),) for n, k, _ in rows]
    starts = [rp.prefix.start(ivs) for ivs in candidates] if rp.prefix.can_grow(candidates) else None
    moved = first_position_moves(rp, [(atp.nodes[n].module, atp.nodes[n].head, v) for n, k, v in rows], columns, starts)
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
    reach = membership(atp.positions, atp.length)[:, 0]  # position sets that include position 0
    for (n, k, _), value in zip(chosen, exact, strict=True):
        atp.values[n, k, reach] += value - atp.values[n, k, s0]
    atp.sink_exact = len(chosen)
    atp.forward_passes += 2 + -(-len(sets) // max(1, min(SINK_BATCH, rp.batch_size)))
