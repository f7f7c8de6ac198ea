"""CCA: the search for the smallest set of interventions that fixes the failure, and its evidence.

    atp = attribute(rp, kinds=("zero", "mean", "patch"), sources=["france"])      # estimate every candidate
    result = find_fix_set(rp.evaluate, rp.bundle.modules, config, m_incident=-2.1, m_source=1.7)
    fix = judge_answer(rp, result.fix_set)                                         # regenerate the answer

Words, defined here once: *sources* are the runs patched from (``patch``): counterfactuals (from
``forensics.population``) and reference runs; a *reference run* is the incident's own tokens run on a
known-good version of the model (``forensics.rca.reference``), and ``reference_runs`` is the set of
their ids wherever a signature needs it; ``m_incident`` and ``m_source`` are the failure metric of the
incident and of the first source that answers right, between which recovery runs from 0 to 1.
Modules: ``fixset`` (the result
types and the predicates every part agrees on), ``candidates``, ``strategies`` (greedy, beam, random),
``search`` (prune and validate), ``positions`` (position sets), ``atp`` and ``sink`` (attribution patching and its first-position
correction), ``evidence`` (which sources can serve), ``judge`` (regenerated answer, side effects,
ranking), ``components`` (the components table), ``isc`` and ``dbc`` (the advanced modules).
"""

from forensics.cca.atp import Attribution, attribute
from forensics.cca.candidates import build_candidates
from forensics.cca.components import rank_components, summarize
from forensics.cca.dbc import boundary, dbc_for
from forensics.cca.fixset import CCAResult, FixSet
from forensics.cca.isc import interactions, isc_for
from forensics.cca.judge import check_side_effects, judge_answer, rank
from forensics.cca.search import find_fix_set

__all__ = [
    "Attribution",
    "CCAResult",
    "FixSet",
    "attribute",
    "boundary",
    "build_candidates",
    "check_side_effects",
    "dbc_for",
    "find_fix_set",
    "interactions",
    "isc_for",
    "judge_answer",
    "rank",
    "rank_components",
    "summarize",
]
