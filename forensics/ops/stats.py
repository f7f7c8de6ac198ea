"""An SQLite index of every analysis in ``output_dir`` (``index.sqlite``, WAL), and stats over it.

    index_result("results/", report, "results/incident_7.json")    # after each analysis
    query_stats("results/", timedelta(hours=24))["duration_seconds"]["p95"]
    rebuild_index("results/")       # from the *.json reports alone (rca@1 and rca@2, REPORT_SCHEMAS)

The report files are the truth; the index is derived from them and keyed by report path, so
indexing the same file twice (a re-run) replaces its row and a rebuild yields the same rows.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from forensics.errors import ConfigError
from forensics.ops.env import parse_duration

__all__ = [
    "INDEX_NAME",
    "index_result",
    "indexed_paths",
    "is_fixed",
    "parse_since",
    "percentile",
    "query_stats",
    "rebuild_index",
]

INDEX_NAME = "index.sqlite"
BUSY_TIMEOUT_S = 30.0
_SCHEMA = """
CREATE TABLE IF NOT EXISTS analyses (
    report_path TEXT PRIMARY KEY,
    bundle_id TEXT NOT NULL,
    bundle_sha256 TEXT,
    created REAL NOT NULL,           -- unix time the report was written
    duration REAL NOT NULL,          -- execution_time, seconds
    confidence REAL NOT NULL,
    fixed INTEGER NOT NULL,          -- 1 when a validated fix set corrects the failure (not a suppression)
    anomalous_count INTEGER NOT NULL,
    anomalous_layers TEXT NOT NULL,  -- JSON list: layer indices as text (module name if none)
    anomalous_modules TEXT NOT NULL  -- JSON list of module names
);
CREATE INDEX IF NOT EXISTS analyses_created ON analyses (created);
"""


def parse_since(text: str) -> timedelta:
    """``"90m"``, ``"24h"``, ``"7d"`` -> timedelta; ConfigError naming the value otherwise."""
    return parse_duration(text, "--since", "90m, 24h, 7d")


@contextmanager
def _connect(output_dir: str | Path) -> Iterator[sqlite3.Connection]:
    root = Path(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    with closing(sqlite3.connect(root / INDEX_NAME, timeout=BUSY_TIMEOUT_S, isolation_level=None)) as db:
        db.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        _prepare(db)
        yield db


def _prepare(db: sqlite3.Connection) -> None:
    """WAL mode and the schema. Switching the journal mode can answer "database is locked" at once,
    without waiting on the busy timeout, while another writer opens the same new index: retried."""
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        try:
            if str(db.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
                db.execute("PRAGMA journal_mode = WAL")
            db.executescript(_SCHEMA)
            return
        except sqlite3.OperationalError as exc:
            if ("locked" not in str(exc) and "busy" not in str(exc)) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _bundle_sha(report: dict[str, Any]) -> str | None:
    """The bundle's content id (sha256 of its manifest.json) when the report carries it or the
    bundle directory is still there."""
    if report.get("bundle_sha256"):
        return str(report["bundle_sha256"])
    path = report.get("bundle_path")
    manifest = Path(path) / "manifest.json" if path else None
    try:
        return hashlib.sha256(manifest.read_bytes()).hexdigest() if manifest else None
    except OSError:
        return None


def _row(report: dict[str, Any], report_path: str, created: float) -> tuple[Any, ...]:
    from forensics.cf.localise import layer_of

    modules = [str(m["module"]) for m in report.get("compression_metrics") or [] if m.get("is_anomalous")]
    # a decoder layer index as text, or the module name for modules outside the layer stack
    layers = sorted({str(layer) if (layer := layer_of(m)) is not None else m for m in modules}, key=_layer_order)
    return (
        report_path,
        str(report["bundle_id"]),
        _bundle_sha(report),
        created,
        float(report.get("execution_time") or 0.0),
        float(report.get("confidence") or 0.0),
        int(is_fixed(report)),
        len(modules),
        json.dumps(layers),
        json.dumps(modules),
    )


def is_fixed(report: dict[str, Any]) -> bool:
    """A validated fix set that corrects the failure. An rca@2 ``suppression`` (the forbidden token is
    gone but the model now says punctuation or nothing) is not a fix; rca@1 reports have no verdict."""
    fix = report.get("fix_set") or {}
    return bool(fix.get("validated")) and fix.get("verdict", "correction") != "suppression"


def _layer_order(key: str) -> tuple[bool, int, str]:
    """Layer indices numerically first, then named modules."""
    return (not key.isdigit(), int(key) if key.isdigit() else 0, key)


_INSERT = "INSERT OR REPLACE INTO analyses VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"


def index_result(output_dir: str | Path, report: dict[str, Any], report_path: str | Path) -> None:
    """Add (or replace) one analysis; its time is the report file's mtime, else now."""
    path = Path(report_path).resolve()
    created = path.stat().st_mtime if path.is_file() else time.time()
    with _connect(output_dir) as db:
        db.execute(_INSERT, _row(report, str(path), created))


def indexed_paths(output_dir: str | Path) -> set[str]:
    """The (resolved) report paths the index of ``output_dir`` holds; empty when it has no index yet.
    Runs after a crash compare it with the reports on disk and index what is missing."""
    if not (Path(output_dir) / INDEX_NAME).is_file():
        return set()
    with _connect(output_dir) as db:
        return {str(row[0]) for row in db.execute("SELECT report_path FROM analyses")}


def _reports(root: Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    from forensics.rca.result import REPORT_SCHEMAS  # lazily: forensics.rca pulls in torch

    for path in sorted(root.rglob("*.json")):
        if path.name.startswith("."):  # write_json_atomic's temporary files
            continue
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("schema") in REPORT_SCHEMAS and "bundle_id" in data:
            yield path, data


def rebuild_index(output_dir: str | Path) -> int:
    """Re-derive the index from the report files under ``output_dir`` (recursively); returns the count."""
    root = Path(output_dir)
    if not root.is_dir():
        raise ConfigError(f"output_dir {str(root)!r} is not a directory")
    rows = [_row(data, str(path.resolve()), path.stat().st_mtime) for path, data in _reports(root)]
    with _connect(root) as db:
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("DELETE FROM analyses")
            db.executemany(_INSERT, rows)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
    return len(rows)


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default); None for no values."""
    xs = sorted(values)
    if not xs:
        return None
    pos = (len(xs) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def query_stats(output_dir: str | Path, since: timedelta, *, now: float | None = None) -> dict[str, Any]:
    """Counts, duration p50/p95, fix rate and anomalous-layer counts of analyses in the window.

    A missing index is first rebuilt from the report files."""
    root = Path(output_dir)
    if not root.is_dir():
        raise ConfigError(f"output_dir {str(root)!r} is not a directory")
    if not (root / INDEX_NAME).is_file():
        rebuild_index(root)
    end = time.time() if now is None else now
    start = end - since.total_seconds()
    with _connect(root) as db:
        rows = db.execute(
            "SELECT duration, confidence, fixed, anomalous_layers, anomalous_count FROM analyses "
            "WHERE created >= ? AND created <= ? ORDER BY created",
            (start, end),
        ).fetchall()
    return _summarise(rows, start, end, root)


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds")


def _summarise(rows: list[tuple[Any, ...]], start: float, end: float, root: Path) -> dict[str, Any]:
    durations = [float(r[0]) for r in rows]
    fixed = sum(int(r[2]) for r in rows)
    layers: Counter[str] = Counter()
    for r in rows:
        layers.update(json.loads(r[3]))
    return {
        "output_dir": str(root),
        "window": {"from": _iso(start), "to": _iso(end), "seconds": round(end - start, 3)},
        "count": len(rows),
        "fixed": fixed,
        "fix_rate": fixed / len(rows) if rows else None,
        "duration_seconds": {
            "p50": percentile(durations, 0.5),
            "p95": percentile(durations, 0.95),
            "max": max(durations) if durations else None,
        },
        "confidence_mean": sum(float(r[1]) for r in rows) / len(rows) if rows else None,
        "with_anomalies": sum(1 for r in rows if int(r[4])),
        "anomalous_layers": {k: layers[k] for k in sorted(layers, key=_layer_order)},
    }
