"""Structure-aware hostile bundles: a seeded few hundred of ``bench/fuzz_bundles.py``'s campaign.

Every case (wrong JSON types and ranges, cross-field lies, lying files tables, lying Arrow IPC,
symlinks and special files, hostile archives, tampered encrypted bundles) goes through
``load_bundle``, every ``Bundle`` accessor and what the replayer reads; the only outcomes allowed
are a loaded bundle or a ``BundleError`` naming the bundle, none may hang, no temp dir may remain.
The full campaign (12,000 cases) is ``.venv/bin/python bench/fuzz_bundles.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.fuzz_bundles import FAMILIES, run

CASES = 800


@pytest.mark.parametrize("seed", [0, 1])
def test_hostile_bundles_load_or_raise_bundle_error(tmp_path: Path, seed: int) -> None:
    families, outcomes = run(CASES // 2, seed, timeout=10.0, work=tmp_path)
    assert sum(families.values()) == CASES // 2
    found = {outcome for counter in outcomes.values() for outcome in counter}
    assert found <= {"loaded", "BundleError"}, {f: dict(c) for f, c in outcomes.items()}
    assert "temp-dirs-left" not in outcomes
    assert set(families) == {name for name, _weight, _mutate in FAMILIES}  # every family ran
    refused = sum(counter["BundleError"] for counter in outcomes.values())
    assert refused > 0.7 * sum(families.values())  # the cases are hostile, not accidentally valid
    for family in ("arrow", "special-files", "manifest-cross-field", "encrypted"):
        assert outcomes[family]["loaded"] == 0, (family, dict(outcomes[family]))
