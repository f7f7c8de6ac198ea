"""A failure family over HTTP: several bundles under ``bundle_dir`` analysed as one (``RCAPipeline.run_family``).

    record = run_family_analysis(pipeline, bundle_dir="bundles/", output_dir="results/", bundles=["au/m0", "au/m1"])
    record["id"], record["report"]["schema"]        # a result id, 'model-forensics/family@1'

Every name is confined to ``bundle_dir`` and every bundle loaded with its checksums before the analysis
starts: over HTTP the caller named the members, so a bad one is the caller's 400 (naming it), not a
member quietly left out (``batch`` leaves such members out instead). The family report is stored as
``output_dir/<id>.json`` like any result and read back by ``GET /v1/results/{id}``.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, Any

from forensics.errors import ConfigError
from forensics.service.analyses import load_allowed, request_for
from forensics.service.results import check_result_id, new_result_id, store_family

if TYPE_CHECKING:
    from forensics.rca.pipeline import RCAPipeline

__all__ = ["MAX_FAMILY_MEMBERS", "MIN_FAMILY_MEMBERS", "check_members", "run_family_analysis"]

MIN_FAMILY_MEMBERS = 2
MAX_FAMILY_MEMBERS = 64  # one family analysis replays every member for every candidate: bounded per request


def check_members(bundles: Sequence[str]) -> list[str]:
    """The member names, when there are 2 to ``MAX_FAMILY_MEMBERS`` of them and none twice; ``ConfigError``."""
    names = list(bundles)
    if not MIN_FAMILY_MEMBERS <= len(names) <= MAX_FAMILY_MEMBERS:
        raise ConfigError(
            f"bundles: a family needs {MIN_FAMILY_MEMBERS} to {MAX_FAMILY_MEMBERS} bundles, got {len(names)}"
        )
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"bundles: {', '.join(repr(n[:200]) for n in twice[:3])} named more than once")
    return names


def run_family_analysis(
    pipeline: RCAPipeline,
    *,
    bundle_dir: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    bundles: Sequence[str],
    baseline: str | os.PathLike[str] | None = None,
    result_id: str | None = None,
    encryption_key: bytes | None = None,
    allowed_models: Collection[str] | None = None,
    timeout_s: float | None = None,
) -> dict[str, Any]:
    """Analyse ``bundles`` (names under ``bundle_dir``) as one failure family; store the family report as
    ``output_dir/<id>.json``. ``baseline`` is a path the caller already confined; ``allowed_models`` as in
    ``run_analysis``. Returns ``{"id", "bundles", "report"}``."""
    result_id = check_result_id(result_id or new_result_id())
    names = check_members(bundles)
    members = [load_allowed(bundle_dir, name, encryption_key, allowed_models) for name in names]
    result = pipeline.run_family(request_for(members, baseline, timeout_s))
    return {"id": result_id, "bundles": names, "report": store_family(result, output_dir, result_id)}
