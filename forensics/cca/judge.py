"""Judging a fix set beyond its decision token: the regenerated answer, suppression, side effects, rank.

    fixes = [judge_answer(rp, fix) for fix in cca.fix_sets]         # verdict + regenerated text
    fixes = check_side_effects(fixes, benign_replayers)               # benign answers it changes
    ranked = rank(fixes)                                              # corrections without side effects first

A fix for ``forbidden`` counts only if the forbidden text is gone from the whole regenerated
continuation; a fix whose new answer is punctuation, whitespace or an end token removes the answer
instead of correcting it (a *suppression*) and ranks below every correction; one that makes the target
token the argmax but whose regenerated answer is not the expected text is *partial* (" 22" for " 21"). A fix that changes the
answers of benign prompts the model got right ranks below one that changes none.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Collection, Sequence
from dataclasses import replace
from typing import Any

from forensics.cca.fixset import FixSet, is_reference_patch, judged, strength
from forensics.errors import ReplayError
from forensics.models.arch import component_of
from forensics.replay.interventions import Intervention
from forensics.replay.replayer import Outcome, Replayer

__all__ = ["REGENERATE_TOKENS", "check_side_effects", "is_empty_answer", "judge_answer", "rank"]

REGENERATE_TOKENS = 4


def is_empty_answer(text: str, token_id: int, tokenizer: Any) -> bool:
    """Whether a token says nothing: an end / special token, whitespace or punctuation only."""
    if token_id in (getattr(tokenizer, "all_special_ids", None) or []):
        return True
    stripped = text.strip()
    return not stripped or all(unicodedata.category(c).startswith(("P", "S")) for c in stripped)


def judge_answer(rp: Replayer, fix: FixSet) -> FixSet:
    """Regenerate the continuation with ``fix`` applied at every step; set its verdict."""
    tok = rp.tokenizer
    generated = list(rp.bundle.outputs["generated_ids"])
    new = rp.generate(fix.interventions, REGENERATE_TOKENS)
    text = tok.decode(generated[: rp.step] + new)
    spec = rp.spec
    contains_expected = contains_forbidden = None
    still_forbidden = False
    if spec is not None and spec.kind == "forbidden":
        pattern = re.compile(spec.text if spec.regex else re.escape(spec.text))
        contains_forbidden = pattern.search(text) is not None
        still_forbidden = contains_forbidden
    elif spec is not None and spec.text:
        contains_expected = text.startswith(spec.text) or spec.text.startswith(text)
    suppression = bool(new) and is_empty_answer(tok.decode([new[0]]), new[0], tok)
    verdict = "suppression" if suppression else "partial" if contains_expected is False else "correction"
    regenerated = {"text": text, "contains_expected": contains_expected, "contains_forbidden": contains_forbidden}
    return judged(
        fix,
        validated=fix.validated and not still_forbidden,
        fixed=fix.fixed and not still_forbidden,
        verdict=verdict,
        regenerated=regenerated,
    )


def check_side_effects(
    fixes: Sequence[FixSet],
    benign: Sequence[Replayer],
    *,
    length: int | None = None,
    reference_runs: Collection[str] = (),
) -> list[FixSet]:
    """Replay every fix on every benign bundle (one batched pass per bundle): how many answers change.

    Explicit positions are the incident's (a pass of ``length`` tokens); on a benign prompt they are
    aligned from the end, as patch sources are (the incident's last three positions are the benign
    prompt's last three). A fix with no counterpart on a benign prompt is *skipped* there, neither
    checked nor changed: one reaching before the prompt's start (its positions name tokens that prompt
    does not have, so replaying it would test nothing), a patch from a reference run (``reference_runs``: it
    carries the reference model's values on the incident's input, which have no counterpart on another
    prompt), a patch of every position, or one whose replay there is refused (a source too short).
    ``side_effects`` = {checked, changed, changed_bundles, skipped}; checked + skipped = len(benign)."""
    if not benign:
        return list(fixes)
    changed: list[list[str]] = [[] for _ in fixes]
    checked = [0] * len(fixes)
    for rp in benign:
        for i, out, plain in _replayed(fixes, rp, length, reference_runs):
            checked[i] += 1
            if out.argmax_id != plain:
                changed[i].append(rp.bundle.id)
    return [
        judged(
            fix,
            side_effects={
                "checked": checked[i],
                "changed": len(changed[i]),
                "changed_bundles": changed[i],
                "skipped": len(benign) - checked[i],
            },
        )
        for i, fix in enumerate(fixes)
    ]


def _replayed(
    fixes: Sequence[FixSet], rp: Replayer, length: int | None, reference_runs: Collection[str]
) -> list[tuple[int, Outcome, int]]:
    """(fix index, its outcome on ``rp``, ``rp``'s own answer) for every fix that applies there."""
    moved = {
        i: ivs
        for i, fix in enumerate(fixes)
        if not any(is_reference_patch(iv, reference_runs) for iv in fix.interventions)
        and (ivs := _aligned(fix, rp, length)) is not None
    }
    if not moved:  # no fix reaches this prompt: nothing to replay, nothing changed or checked
        return []
    plain = rp.run(()).argmax_id
    try:
        outcomes = dict(zip(moved, rp.evaluate(list(moved.values())), strict=True))
    except ReplayError:  # one set has no counterpart there (a patch source too short): the others still count
        outcomes = {i: out for i, ivs in moved.items() if (out := _try(rp, ivs)) is not None}
    return [(i, out, plain) for i, out in outcomes.items()]


def _try(rp: Replayer, ivs: tuple[Intervention, ...]) -> Outcome | None:
    try:
        return rp.run(ivs)
    except ReplayError:
        return None


def _aligned(fix: FixSet, rp: Replayer, length: int | None) -> tuple[Intervention, ...] | None:
    """``fix`` on ``rp``'s prompt, or None where it does not apply: a patch of every position (from a
    reference run of the incident's own input) would substitute that prompt's input, and explicit
    positions need the incident's length to be aligned from the end."""
    out = []
    for iv in fix.interventions:
        if iv.positions == "all" and iv.kind == "patch":
            return None
        if isinstance(iv.positions, tuple):
            if length is None:
                return None
            shifted = tuple(p - length + rp.length for p in iv.positions)
            if min(shifted) < 0:
                return None
            iv = replace(iv, positions=shifted)
        out.append(iv)
    return tuple(out)


def rank(fixes: Sequence[FixSet], reference_runs: Collection[str] = (), contexts: Collection[str] = ()) -> list[FixSet]:
    """Validated corrections first, then fewer benign answers changed, then those whose regenerated answer
    is the expected text, then sets that name components (heads, attention, MLPs) before those that
    overwrite the residual stream, then sets that fix without the first position (``FixSet.sink``),
    then (``reference_runs``: reference runs of the incident's input) sets made only of patches from a
    reference — where the two versions differ — then (``contexts``: patch
    sources whose prompt holds more than the incident's tokens, such as the question with its answer
    stated first) sets that patch nothing from them: such a patch carries that context into the
    incident, so it shows where the stated answer can travel, while an ablation that fixes names a
    component of the incident's own run that pushes the wrong answer; then fewer members, the stronger
    fix (``strength``), fewer positions, the narrower components (a head before its whole attention,
    ``FixSet.breadth``), the larger margin."""

    def key(f: FixSet) -> tuple[bool, bool, int, bool, bool, bool, bool, bool, int, float, int, int, float]:
        broken = f.side_effects["changed"] if f.side_effects else 0
        return (
            not f.validated,
            f.verdict == "suppression",
            broken,
            f.verdict == "partial",
            any(iv.head is None and component_of(iv.module).site == "resid" for iv in f.interventions),
            f.sink,
            not all(is_reference_patch(iv, reference_runs) for iv in f.interventions),
            any(iv.kind == "patch" and iv.source in contexts for iv in f.interventions),
            len(f.interventions),
            -strength(f),
            f.positions,
            f.breadth,
            -f.metric,
        )

    return sorted(fixes, key=key)
