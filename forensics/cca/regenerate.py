"""The regenerated answers of a family's members under one fix set: every member in one padded pass per token.

    new = regenerate_members([rp_a, rp_b, rp_c], fix, max_new_tokens=4)    # [[ids of a], [ids of b], [ids of c]]
    new == [rp.generate(fix, 4) for rp in (rp_a, rp_b, rp_c)]     # the same tokens, 4 passes instead of 12

Members differ in length and decision step, so rows are right-padded: row m holds member m's tokens and
then pads. Attention is causal, so a pad (after a row's last token) never changes that row's positions,
and each row's next token is read at its own last position. Each member's interventions are compiled
for its own replay (``last`` is its decision position) and laid into its row; pads and new positions
run free, as in ``Replayer.generate``. Batch-one generation passes are mostly overhead on a CPU, which
is what this saves; members on different models, or a fix with a reference model's head contributions,
are regenerated one member at a time.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from forensics.errors import ReplayError
from forensics.replay.interventions import InterventionSet
from forensics.replay.plan import ModulePlan, Plan
from forensics.replay.replayer import Replayer

__all__ = ["regenerate_members"]


def regenerate_members(
    replayers: Sequence[Replayer], interventions: InterventionSet, max_new_tokens: int
) -> list[list[int]]:
    """Each replayer's greedy continuation from its decision step with ``interventions`` in place (what
    ``Replayer.generate`` gives it), for all of them together: one right-padded pass per new token."""
    if not replayers:
        return []
    plans = [rp.plan([tuple(interventions)]) for rp in replayers]
    if any(rp.model is not replayers[0].model for rp in replayers) or any(
        mp.post is not None for plan in plans for mp in plan.modules.values()
    ):
        return [rp.generate(interventions, max_new_tokens) for rp in replayers]
    rows = [rp.input_ids[0].tolist() for rp in replayers]
    out: list[list[int]] = [[] for _ in replayers]
    done = [False] * len(replayers)
    eos = getattr(replayers[0].tokenizer, "eos_token_id", None)
    for _ in range(max_new_tokens):
        width = max(len(r) for r in rows)
        logits = _pass(replayers[0], rows, _padded(plans, [len(r) for r in rows], width))  # [M, width, vocab]
        for m, row in enumerate(rows):
            if done[m]:
                continue
            token = int(logits[m, len(row) - 1].argmax())
            out[m].append(token)
            done[m] = token == eos
            if not done[m]:
                row.append(token)
        if all(done):
            break
    return out


def _padded(plans: Sequence[Plan], lengths: Sequence[int], width: int) -> Plan:
    """One plan of ``len(plans)`` rows over ``width`` positions: row m is member m's plan over its own
    positions; its later positions (new tokens, pads) are left as they are (scale 1, add 0)."""
    out = Plan()
    for name in plans[0].modules:
        parts = [plan.modules[name] for plan in plans]
        cols = max(mp.scale.shape[-1] for mp in parts)
        d = max(mp.add.shape[-1] for mp in parts)
        first = parts[0]
        scale = first.scale.new_ones(len(parts), width, cols)
        add = first.add.new_zeros(len(parts), width, d)
        for m, mp in enumerate(parts):
            n = min(mp.add.shape[1], lengths[m])
            scale[m, :n] = mp.scale[0, :n]
            add[m, :n] = mp.add[0, :n]
        out.modules[name] = ModulePlan(scale, add, hook=first.hook)
    return out


def _pass(rp: Replayer, rows: Sequence[Sequence[int]], plan: Plan) -> torch.Tensor:
    """Logits [M, width, vocab] of the right-padded ``rows`` with ``plan``'s hooks in place."""
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    for m, row in enumerate(rows):
        ids[m, : len(row)] = torch.tensor(row)
    with rp._installed(plan), torch.inference_mode():
        logits: torch.Tensor = rp.model(input_ids=ids.to(rp.device), use_cache=False).logits.float()
    unfired = [name for name, mp in plan.modules.items() if mp.fires == 0]
    if unfired:
        raise ReplayError(f"interventions on {', '.join(unfired)} never fired while regenerating")
    return logits
