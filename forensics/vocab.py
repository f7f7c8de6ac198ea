"""The shared vocabulary: the allowed values of every small choice, each written once as a ``Literal``.

    >>> STRATEGIES
    ('greedy', 'beam', 'random')
    >>> sorted(ACCESS_ROLES["analyst"])
    ['read_bundles', 'run_analysis', 'view_results']

Config validation, the interventions, the search, the coders and auth all take their allowed values
from here, so mypy checks every use and a new value is added in one place.
"""

from __future__ import annotations

from typing import Literal, get_args

__all__ = [
    "ACCESS_ROLES",
    "BUNDLE_KINDS",
    "CANDIDATE_POSITIONS",
    "COMPONENTS",
    "COMPRESSION_METHODS",
    "INTERVENTION_KINDS",
    "PERMISSIONS",
    "POSITION_NAMES",
    "PREFILTERS",
    "STRATEGIES",
    "BundleKind",
    "CandidatePositions",
    "ComponentName",
    "CompressionMethod",
    "InterventionKind",
    "Permission",
    "PositionName",
    "Prefilter",
    "Role",
    "SearchStrategy",
]

BundleKind = Literal["incident", "benign"]
CompressionMethod = Literal["zlib", "gzip", "lzma", "arithmetic"]
SearchStrategy = Literal["greedy", "beam", "random"]
InterventionKind = Literal["zero", "mean", "patch", "scale"]
PositionName = Literal["last", "all"]
CandidatePositions = Literal["last", "all", "each", "ranges", "spans"]  # what the CCA search proposes
ComponentName = Literal["resid", "attn", "mlp", "head"]
Prefilter = Literal["atp", "none"]
Permission = Literal["read_bundles", "run_analysis", "view_results", "admin"]
Role = Literal["viewer", "analyst", "admin"]

BUNDLE_KINDS: tuple[BundleKind, ...] = get_args(BundleKind)
COMPRESSION_METHODS: tuple[CompressionMethod, ...] = get_args(CompressionMethod)
STRATEGIES: tuple[SearchStrategy, ...] = get_args(SearchStrategy)
INTERVENTION_KINDS: tuple[InterventionKind, ...] = get_args(InterventionKind)
POSITION_NAMES: tuple[PositionName, ...] = get_args(PositionName)
CANDIDATE_POSITIONS: tuple[CandidatePositions, ...] = get_args(CandidatePositions)
COMPONENTS: tuple[ComponentName, ...] = get_args(ComponentName)
PREFILTERS: tuple[Prefilter, ...] = get_args(Prefilter)
PERMISSIONS: tuple[Permission, ...] = get_args(Permission)
# Who may do what over HTTP (API tokens, JWTs): the deployment guide's roles (keys: every Role). Not the
# roles of a chat message (system, user, ...), which ``forensics.record.spans`` names.
ACCESS_ROLES: dict[str, frozenset[Permission]] = {
    "viewer": frozenset({"view_results"}),
    "analyst": frozenset({"read_bundles", "run_analysis", "view_results"}),
    "admin": frozenset(PERMISSIONS),
}
