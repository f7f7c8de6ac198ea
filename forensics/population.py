"""The *population*: benign runs of the same model (bundles of kind ``benign``), and the
*counterfactuals* picked from it (runs that answer right a prompt much like the incident's, the
default sources of ``patch``). Both words are defined here and used as these in every signature.

    pop = load_population("bundles/benign/")            # list of benign bundles
    pick_counterfactuals(incident, pop, k=3)            # most similar by token overlap
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from forensics.bundle import Bundle, load_bundle
from forensics.errors import BundleError, ConfigError

__all__ = [
    "bundle_name",
    "coverage",
    "is_benign",
    "list_bundle_paths",
    "load_population",
    "pick_counterfactuals",
    "token_overlap",
]

log = logging.getLogger(__name__)


def bundle_name(path: str | Path) -> str:
    """A bundle's name: its directory or archive name without ``.tar`` / ``.tar.zst``."""
    name = Path(str(path).rstrip("/")).name
    for suffix in (".tar.zst", ".tar"):
        name = name.removesuffix(suffix)
    return name


def list_bundle_paths(directory: str | Path) -> list[Path]:
    """Bundles directly under ``directory`` (dirs with a manifest, .tar, .tar.zst), sorted by name."""
    root = Path(directory)
    if not root.is_dir():
        raise ConfigError(f"baseline/bundle directory {directory}: not a directory")
    found = [
        p
        for p in sorted(root.iterdir())
        if (p.is_dir() and (p / "manifest.json").is_file()) or p.name.endswith((".tar", ".tar.zst"))
    ]
    return found


def load_population(
    source: str | Path | Sequence[Any], *, limit: int | None = None, encryption_key: bytes | None = None
) -> list[Bundle]:
    """Benign bundles from a directory, a single bundle path, or a list of bundles/paths.

    Bundles that fail to load are skipped with a warning naming them; incidents are left out."""

    if isinstance(source, str | Path):
        path = Path(source)
        items: list[Any] = [path] if (path / "manifest.json").is_file() else list_bundle_paths(path)
    else:
        items = list(source)
    out: list[Bundle] = []
    for item in items:
        try:
            bundle = item if isinstance(item, Bundle) else load_bundle(item, encryption_key=encryption_key)
        except BundleError as exc:
            log.warning("skipping baseline: %s", exc)
            continue
        if bundle.kind == "benign":
            out.append(bundle)
    return out[:limit] if limit else out


def token_overlap(a: Sequence[int], b: Sequence[int]) -> float:
    """Jaccard overlap of token id sets."""
    sa, sb = set(a), set(b)
    return len(sa & sb) / max(1, len(sa | sb))


def coverage(a: Sequence[int], b: Sequence[int]) -> float:
    """Share of ``a``'s distinct tokens that also occur in ``b``."""
    sa = set(a)
    return len(sa & set(b)) / max(1, len(sa))


def _answers_same(incident: Any, baseline: Any) -> bool:
    """Does the baseline run produce the answer the incident should have produced?"""
    target = incident.outputs.get("target_id")
    return target is not None and target in (baseline.outputs.get("generated_ids") or [])


def pick_counterfactuals(incident: Any, population: Sequence[Any], *, k: int = 3) -> list[Any]:
    """The ``k`` baselines most like a counterfactual of the incident: runs that produce its expected
    answer first, then by how much of the incident's prompt they contain, then by Jaccard overlap.
    Ties keep directory order."""
    ids = incident.inputs["input_ids"]

    def key(b: Any) -> tuple[bool, float, float]:
        other = b.inputs["input_ids"]
        return (_answers_same(incident, b), coverage(ids, other), token_overlap(ids, other))

    return sorted(population, key=key, reverse=True)[:k]


def is_benign(path: str | Path) -> bool:
    """Whether the bundle directory at ``path`` says it is a benign run (population, not work); an
    unreadable manifest is not benign (it is work: the analysis reports it)."""
    import json

    try:
        return bool(json.loads((Path(path) / "manifest.json").read_text()).get("kind") == "benign")
    except (OSError, ValueError, AttributeError):
        return False
