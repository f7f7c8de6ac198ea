"""The search for a fix of a failure *family*: position-free candidates scored on every member.

    search = search_family(replayers, family_candidates(model, population=True), m_incident)
    search.ranked()                 # set indices, best first: most members fixed, then smaller, then stronger
    search.held_out(s)              # members set s fixes when it is found without them (leave-one-out)

A family fix must not name raw positions of one prompt: every candidate acts on a component (an attention
output, an MLP output, one head) at every position (``all``) or at the decision position (``last``),
which means the same on every member whatever its wording or length. Every candidate is replayed on every
member (one batched pass per member per batch of sets); pairs and triples grow from the best singles. What
counts as evidence of generalisation is only leave-one-out: a set found on the other members, judged on
the one left out.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from torch import nn

from forensics.cca.atp import attribute
from forensics.cca.refusals import evaluate_halving
from forensics.errors import ReplayError
from forensics.models.arch import arch_for, component_of
from forensics.replay.interventions import Intervention, InterventionSet, Positions
from forensics.replay.replayer import Outcome, Replayer

__all__ = ["FAMILY_POSITIONS", "FamilySearch", "family_candidates", "search_family"]

FAMILY_POSITIONS: tuple[Positions, ...] = ("all", "last")  # position-free: the same on every member
TOP_SINGLES = 12  # singles that seed pairs and triples
POPULATION_CHECKED = 24  # best sets replayed on the population (the rest rank as they are)
KEEP = 3  # sets reported (and the rank a set must hold, without a member, to count as found without it)


def family_candidates(model: nn.Module, *, population: bool, heads: bool = True) -> list[Intervention]:
    """Every position-free single intervention: zero each attention output, MLP output and head at every
    position and at the decision position; with a population, also the mean of each attention and MLP
    output (the population's mean at each aligned position)."""
    spec = arch_for(model)
    n_heads = spec.head_slices(model)[0] if heads and spec.attn and spec.attn_out_proj else 0
    out: list[Intervention] = []
    for layer in spec.layer_names(model):
        modules = [f"{layer}.{name}" for name in (spec.attn, spec.mlp) if name]
        for pos in FAMILY_POSITIONS:
            out += [Intervention(m, "zero", pos) for m in modules]
            if population:
                out += [Intervention(m, "mean", pos) for m in modules]
            if n_heads:
                out += [Intervention(f"{layer}.{spec.attn}", "zero", pos, head=h) for h in range(n_heads)]
    return out


@dataclass
class FamilySearch:
    """Every set tried, with its outcome on every member: ``fixed[s, m]`` and ``metric[s, m]``."""

    sets: list[InterventionSet]
    fixed: np.ndarray  # [S, M] bool
    metric: np.ndarray  # [S, M] float
    m_incident: np.ndarray  # [M]
    refused: dict[InterventionSet, str] = field(default_factory=dict)
    broken: dict[int, int] = field(default_factory=dict)  # set -> population answers it changes (where checked)
    answers: dict[int, dict[str, bool]] = field(default_factory=dict)  # set -> population bundle -> changed?
    forward_passes: int = 0
    seconds: float = 0.0

    def ranked(self, members: Sequence[int] | None = None) -> list[int]:
        """Set indices, best first, judged on ``members`` only (default: all): most members fixed, then
        fewer population answers changed (``broken``, where checked), then fewer interventions, then
        narrower components, then the larger mean gain of the margin."""
        cols = list(range(self.fixed.shape[1])) if members is None else list(members)
        fixed = self.fixed[:, cols].sum(axis=1)
        gain = (self.metric[:, cols] - self.m_incident[cols]).mean(axis=1) if cols else np.zeros(len(self.sets))

        def key(s: int) -> tuple[int, int, int, int, float]:
            ivs = self.sets[s]
            breadth = sum(component_of(iv.module, iv.head).breadth for iv in ivs)
            return (-int(fixed[s]), self.broken.get(s, 0), len(ivs), breadth, -gain[s])

        return sorted(range(len(self.sets)), key=key)

    def held_out(self, s: int) -> int:
        """Members that set ``s`` fixes when the search runs without them: ``s`` ranks among the ``KEEP``
        best on the other members (and fixes one of them), and fixes the member left out."""
        n = self.fixed.shape[1]
        count = 0
        for i in range(n):
            others = [j for j in range(n) if j != i]
            if not others or not self.fixed[s, i] or not self.fixed[s, others].any():
                continue
            count += s in self.ranked(others)[:KEEP]
        return count

    def procedure_held_out(self) -> int:
        """Members the family's best set fixes when it is chosen without them (the search's own leave-one-out)."""
        n = self.fixed.shape[1]
        hits = 0
        for i in range(n):
            others = [j for j in range(n) if j != i]
            best = self.ranked(others)[0] if others else None
            hits += bool(best is not None and self.fixed[best, others].any() and self.fixed[best, i])
        return hits


def prefilter(
    replayers: Sequence[Replayer], candidates: Sequence[Intervention], m_incident: Sequence[float], top_k: int
) -> list[Intervention]:
    """The ``top_k`` candidates by their attribution estimate (one forward and one backward pass per
    member), each member's estimate taken relative to its own margin (``-m_incident``) and averaged over
    the members, so no one member's large margin decides; a candidate with no estimate ranks last."""
    if len(candidates) <= top_k:
        return list(candidates)
    kinds = sorted({iv.kind for iv in candidates})
    total = np.zeros(len(candidates))
    for rp, m in zip(replayers, m_incident, strict=True):
        atp = attribute(
            rp, kinds=kinds, sites=("attn", "mlp", "head"), include=("all", "last"), sink_exact=0.0, position_free=True
        )
        scale = max(abs(m), 1e-3)
        found = [atp.estimate(iv) for iv in candidates]
        total += np.array([-np.inf if e is None else e / scale for e in found])
    order = np.argsort(-total, kind="stable")[:top_k]
    return [candidates[i] for i in sorted(order)]


def search_family(
    replayers: Sequence[Replayer],
    candidates: Sequence[Intervention],
    m_incident: Sequence[float],
    *,
    max_size: int = 3,
    top_k: int | None = None,
    population: Sequence[Replayer] = (),
) -> FamilySearch:
    """Score the single candidates (the ``top_k`` by attribution when given, else all) on every member,
    then pairs and triples grown from the best singles; with ``population`` replayers, every set that
    fixes a member is replayed on the population too, and one that changes its answers ranks lower."""
    t0 = time.perf_counter()
    before = sum(rp.forward_passes for rp in replayers)
    search = FamilySearch(
        [], np.zeros((0, len(replayers)), bool), np.zeros((0, len(replayers))), np.asarray(m_incident)
    )
    kept = prefilter(replayers, candidates, m_incident, top_k) if top_k is not None else list(candidates)
    _score(search, replayers, [(iv,) for iv in kept])
    for size in range(2, max_size + 1):
        seeds = [search.sets[s] for s in search.ranked()[:TOP_SINGLES] if len(search.sets[s]) == 1]
        grown = _grow(search, seeds, size)
        if not grown:
            break
        _score(search, replayers, grown)
        if search.fixed.all(axis=1).any():  # a set fixes every member: larger sets add nothing to find
            break
    if population:
        check_population(search, population)
    search.forward_passes = sum(rp.forward_passes for rp in [*replayers, *population]) - before
    search.seconds = time.perf_counter() - t0
    return search


def check_population(search: FamilySearch, population: Sequence[Replayer]) -> None:
    """``search.broken``: for each of the ``POPULATION_CHECKED`` best sets that fix some member, how many
    population answers it changes (one batched pass per population bundle; a set its replay refuses
    there counts as unchanged). ``search.answers`` keeps, per set, whether each bundle that replayed it
    changed its answer: the report's side effects are read from it, not replayed again."""
    fixing = [s for s in search.ranked() if search.fixed[s].any()][:POPULATION_CHECKED]
    search.broken = dict.fromkeys(fixing, 0)
    search.answers = {s: {} for s in fixing}
    for rp in population:
        plain = rp.run(()).argmax_id
        for i, outcome in _outcomes(rp, [search.sets[s] for s in fixing], {}):
            search.broken[fixing[i]] += int(outcome.argmax_id != plain)
            search.answers[fixing[i]][rp.bundle.id] = outcome.argmax_id != plain


def _grow(search: FamilySearch, seeds: Sequence[InterventionSet], size: int) -> list[InterventionSet]:
    """New sets of ``size`` from the best sets of ``size - 1`` and the seed singles (one module once)."""
    tried = set(search.sets)
    base = [search.sets[s] for s in search.ranked() if len(search.sets[s]) == size - 1][:TOP_SINGLES]
    out: list[InterventionSet] = []
    for ivs, (single,) in itertools.product(base, seeds):
        if any((iv.module, iv.head) == (single.module, single.head) for iv in ivs):
            continue
        grown = tuple(sorted((*ivs, single), key=_order))
        if grown not in tried:
            tried.add(grown)
            out.append(grown)
    return out


def _score(search: FamilySearch, replayers: Sequence[Replayer], sets: list[InterventionSet]) -> None:
    """Replay ``sets`` on every member and append their outcomes; a set a member's replay refuses (a mean
    at positions no population bundle reaches) counts as not fixing it, and is noted."""
    fixed = np.zeros((len(sets), len(replayers)), bool)
    metric = np.tile(search.m_incident, (len(sets), 1)).astype(float)
    for m, rp in enumerate(replayers):
        for s, outcome in _outcomes(rp, sets, search.refused):
            fixed[s, m], metric[s, m] = outcome.fixed, outcome.metric
    search.sets += sets
    search.fixed = np.concatenate([search.fixed, fixed])
    search.metric = np.concatenate([search.metric, metric])


def _outcomes(
    rp: Replayer, sets: list[InterventionSet], refused: dict[InterventionSet, str]
) -> list[tuple[int, Outcome]]:
    """(index, outcome) of each set ``rp`` can replay, in batches; a batch the replay refuses (a ``mean``
    at positions no population bundle reaches) is halved until each refused set stands alone
    (``refusals.evaluate_halving``), which goes to ``refused`` with the bundle's id."""

    def refuse(ivs: InterventionSet, exc: ReplayError) -> None:
        refused.setdefault(ivs, f"{rp.bundle.id}: {exc}")

    return evaluate_halving(rp.evaluate, sets, refuse)


def _order(iv: Intervention) -> tuple[str, int, str, str]:
    """A set's members in one order (a head is None for a whole module, which tuples cannot compare)."""
    return (iv.module, -1 if iv.head is None else iv.head, iv.kind, str(iv.positions))
