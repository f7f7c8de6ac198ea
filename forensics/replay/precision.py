"""The tolerance of a replay in another dtype than the recording's, one row per (recorded, replayed) pair.

    >>> cross_dtype("float32", "bfloat16").module_rtol
    0.35
    >>> cross_dtype("bfloat16", "bfloat16") is None     # same dtype: the configured tolerance applies
    True

A replay in the recording's own dtype is judged against the configured ``fidelity_tolerance`` /
``fidelity_rtol`` (a half-precision recording replays bit-exact on CPU: ``Recorder.replay_decision_step``).
A replay in another dtype computes every layer with other rounding, and the departures add up along the
depth: the pair's row below replaces ``fidelity_rtol`` when it is looser. The values are about twice the
largest departure measured (``docs/fidelity.md``: SmolLM2-135M, 30 layers, and a 2-layer tiny llama; four
prompts, decision step 3, each dtype recorded and replayed in each other): relative to each module's
max |recorded|, and for the decision-step logits relative to the largest recorded top-k logit.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CROSS_DTYPE", "DtypePair", "cross_dtype", "rounding_rtol"]


@dataclass(frozen=True)
class DtypePair:
    """How far a replay in one of ``dtypes`` may depart from a recording in the other."""

    dtypes: frozenset[str]
    module_rtol: float  # of max |recorded| per module
    logit_rtol: float  # of the largest recorded top-k logit
    measured_module: float  # the largest departure measured (SmolLM2-135M), for the docs and tests
    measured_logit: float


CROSS_DTYPE: tuple[DtypePair, ...] = (
    DtypePair(frozenset({"float32", "float16"}), 3e-2, 6e-3, 1.53e-2, 2.95e-3),
    DtypePair(frozenset({"float32", "bfloat16"}), 0.35, 3e-2, 1.70e-1, 1.37e-2),
    DtypePair(frozenset({"bfloat16", "float16"}), 0.35, 3e-2, 1.77e-1, 1.53e-2),
)


def cross_dtype(recorded: str, replayed: str) -> DtypePair | None:
    """The row for a replay in ``replayed`` of a recording in ``recorded``; None for the same dtype or a pair
    the table does not know (judged against the configured tolerance then)."""
    if recorded == replayed:
        return None
    return next((row for row in CROSS_DTYPE if row.dtypes == {recorded, replayed}), None)


def rounding_rtol(dtype: str) -> float:
    """A departure this size (relative) is rounding in ``dtype``: its row against float32, 0 for float32.
    Used by the advice of an unfaithful same-dtype replay (e.g. bfloat16 kernels on another device)."""
    row = cross_dtype("float32", dtype)
    return 0.0 if row is None else row.module_rtol
