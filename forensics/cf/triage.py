"""Triage: CF scores for every bundle in a directory, no replay and no search.

rows = triage("incidents/", baseline="benign/", config=Config())
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from forensics.config import Config
from forensics.errors import ConfigError, ForensicsError
from forensics.population import bundle_name, list_bundle_paths, load_population

__all__ = ["load_stats", "sort_rows", "triage"]

log = logging.getLogger(__name__)
SortBy = Literal["anomaly", "time", "size"]


def load_stats(baseline: str | Path | None, directory: str | Path, config: Config) -> Any:
    """CF statistics from a .json file, a benign bundle directory, or the benign bundles of ``directory``."""
    from forensics.cf.scores import CFStats, build_cf_stats

    if baseline is not None and str(baseline).endswith(".json"):
        return CFStats.from_json(baseline)
    population = load_population(
        baseline if baseline is not None else directory,
        limit=config.modules.cf.population_samples,
        encryption_key=config.encryption_key,
    )
    if len(population) < 2:
        raise ConfigError(
            f"CF needs ≥ 2 benign baseline bundles; found {len(population)} in "
            f"{baseline or directory} (record some benign bundles, or give a baseline)"
        )
    return build_cf_stats(population, config.modules.cf)


def triage(
    directory: str | Path, *, baseline: str | Path | None, config: Config, progress: Callable[[int], None] | None = None
) -> list[dict[str, Any]]:
    """One row per bundle: its CF scores, or ``{"bundle", "path", "error"}`` when it cannot be scored
    (a bad bundle never stops the others)."""
    from forensics.bundle import load_bundle
    from forensics.cf.scores import analyze_cf

    stats = load_stats(baseline, directory, config)
    rows: list[dict[str, Any]] = []
    for path in list_bundle_paths(directory):
        try:
            bundle = load_bundle(path, encryption_key=config.encryption_key)
            metrics = analyze_cf(bundle, stats, config.modules.cf)
        except ForensicsError as exc:
            rows.append({"bundle": bundle_name(path), "path": str(path), "error": str(exc)})
            continue
        except Exception as exc:  # a bug of ours on this bundle: its row says so, the others still get scored
            log.error("triage of %s failed unexpectedly", path, exc_info=exc)
            rows.append({"bundle": bundle_name(path), "path": str(path), "error": f"{type(exc).__name__}: {exc}"})
            continue
        finally:
            if progress:
                progress(1)
        top = max(metrics, key=lambda m: m.score, default=None)
        rows.append(
            {
                "bundle": bundle.id,
                "path": str(path),
                "kind": bundle.kind,
                "created_at": bundle.manifest["created_at"],
                "bytes": bundle.nbytes,
                "max_score": float(top.score) if top else 0.0,
                "top_module": top.module if top else None,
                "anomalous": sum(m.is_anomalous for m in metrics),
            }
        )
    return rows


def sort_rows(rows: list[dict[str, Any]], by: SortBy = "anomaly") -> list[dict[str, Any]]:
    """Scored rows by ``by`` (anomaly: highest first; time: oldest first; size: largest first), then the
    error rows by bundle name."""
    keys: dict[str, Callable[[dict[str, Any]], Any]] = {
        "anomaly": lambda r: -float(r["max_score"]),
        "time": lambda r: str(r["created_at"]),
        "size": lambda r: -int(r["bytes"]),
    }
    scored = sorted((r for r in rows if not r.get("error")), key=keys[by])
    return scored + sorted((r for r in rows if r.get("error")), key=lambda r: str(r["bundle"]))
