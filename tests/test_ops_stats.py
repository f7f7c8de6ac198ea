"""The SQLite index of analyses: real tiny analyses, time windows, percentiles, rebuild, concurrency."""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from forensics.errors import ConfigError
from forensics.models import LoadedModel
from forensics.ops.stats import INDEX_NAME, index_result, parse_since, percentile, query_stats, rebuild_index
from forensics.rca import RCAPipeline
from forensics.record import record_greedy

BENIGN = ["The capital of France is", "One plus one is", "The answer is", "Berlin is the capital of"]
INCIDENTS = ["The capital of Australia is", "Two plus two is", "The model answers"]


@pytest.fixture(scope="module")
def analysed(tiny_llama: LoadedModel, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Three real analyses written to an output dir and indexed as the CLI would."""
    root = tmp_path_factory.mktemp("stats")
    for i, prompt in enumerate(BENIGN):
        record_greedy(tiny_llama, prompt, root / "benign" / f"b{i}", "as-generated", kind="benign", max_new_tokens=2)
    out = root / "results"
    pipeline = RCAPipeline()
    reports = []
    for i, prompt in enumerate(INCIDENTS):
        bundle = record_greedy(
            tiny_llama, prompt, root / "incidents" / f"inc{i}", kind="incident", max_new_tokens=3
        ).bundle
        path = out / f"inc{i}.json"
        report = pipeline.analyze_incident(
            bundle, baseline=str(root / "benign"), model=tiny_llama, output=path
        ).to_dict()
        index_result(out, report, path)
        reports.append(report)
    return {"out": out, "reports": reports}


def _corrects(report: dict[str, Any]) -> bool:
    """What the index counts as fixed: a validated fix set that is not a suppression."""
    fix = report["fix_set"]
    return bool(fix and fix["validated"] and fix.get("verdict", "correction") == "correction")


def test_index_counts_percentiles_fix_rate(analysed: dict[str, Any]) -> None:
    reports = analysed["reports"]
    stats = query_stats(analysed["out"], timedelta(hours=24))
    durations = [r["execution_time"] for r in reports]
    fixed = sum(_corrects(r) for r in reports)
    assert stats["count"] == 3 and stats["fixed"] == fixed and stats["fix_rate"] == pytest.approx(fixed / 3)
    assert stats["duration_seconds"]["p50"] == pytest.approx(np.percentile(durations, 50))
    assert stats["duration_seconds"]["p95"] == pytest.approx(np.percentile(durations, 95))
    expected: dict[str, int] = {}
    for r in reports:
        layers = {m["module"].split(".")[2] for m in r["compression_metrics"] if m["is_anomalous"]}
        for layer in layers:
            expected[layer] = expected.get(layer, 0) + 1
    assert stats["anomalous_layers"] == expected and expected  # CF flags layers on these incidents


def test_index_is_wal_and_keyed_by_report(analysed: dict[str, Any]) -> None:
    with sqlite3.connect(analysed["out"] / INDEX_NAME) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        rows = db.execute("SELECT bundle_id, bundle_sha256, report_path FROM analyses ORDER BY bundle_id").fetchall()
    assert [r[0] for r in rows] == ["inc0", "inc1", "inc2"]
    assert all(len(r[1]) == 64 for r in rows)  # sha256 of each bundle's manifest
    index_result(analysed["out"], analysed["reports"][0], analysed["out"] / "inc0.json")  # a re-index replaces
    assert query_stats(analysed["out"], timedelta(days=1))["count"] == 3


def test_since_window_and_rebuild_from_files(analysed: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "copy"
    out.mkdir()
    now = time.time()
    ages_h = [1, 30, 24 * 10]
    for i, (age, report) in enumerate(zip(ages_h, analysed["reports"], strict=True)):
        path = out / "nested" / f"r{i}.json" if i == 2 else out / f"r{i}.json"
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(report))
        os.utime(path, (now - age * 3600, now - age * 3600))
    (out / "summary.json").write_text(json.dumps({"done": 3}))  # not a report: ignored
    (out / "broken.json").write_text("{")
    assert rebuild_index(out) == 3
    assert query_stats(out, timedelta(hours=24), now=now)["count"] == 1
    assert query_stats(out, parse_since("2d"), now=now)["count"] == 2
    assert query_stats(out, parse_since("30d"), now=now)["count"] == 3
    (out / "r0.json").unlink()
    assert rebuild_index(out) == 2 and query_stats(out, parse_since("2d"), now=now)["count"] == 1


def test_missing_index_is_built_on_first_query(analysed: dict[str, Any], tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text(json.dumps(analysed["reports"][0]))
    assert query_stats(tmp_path, timedelta(hours=1))["count"] == 1
    empty = query_stats(tmp_path, timedelta(hours=1), now=time.time() - 86400)
    assert empty["count"] == 0 and empty["fix_rate"] is None and empty["duration_seconds"]["p50"] is None


def test_concurrent_writers(analysed: dict[str, Any], tmp_path: Path) -> None:
    report = analysed["reports"][0]
    errors: list[BaseException] = []

    def writer(w: int) -> None:
        try:
            for i in range(15):
                index_result(tmp_path, report, tmp_path / f"w{w}_{i}.json")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert query_stats(tmp_path, timedelta(hours=1))["count"] == 60


@pytest.mark.parametrize(
    "text, seconds", [("24h", 86400), ("7d", 604800), ("90m", 5400), ("1.5h", 5400), ("2w", 1209600), ("30s", 30)]
)
def test_parse_since(text: str, seconds: float) -> None:
    assert parse_since(text).total_seconds() == seconds


@pytest.mark.parametrize("text", ["24", "yesterday", "-1h", "0h", "3y"])
def test_parse_since_refuses(text: str) -> None:
    with pytest.raises(ConfigError, match=f"--since {text!r} not allowed; expected a number > 0 followed by"):
        parse_since(text)


def test_percentile_matches_numpy() -> None:
    values = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0]
    for q in (0.0, 0.5, 0.95, 1.0):
        assert percentile(values, q) == pytest.approx(np.percentile(values, q * 100))
    assert percentile([], 0.5) is None


# -- rca@1 and rca@2 reports side by side ---------------------------------------------------------
GOLDEN = Path(__file__).resolve().parent / "golden" / "report_rca2.json"


def _rca2(**fix: Any) -> dict[str, Any]:
    report = json.loads(GOLDEN.read_text())
    report["bundle_path"] = None  # the golden's bundle is not on this machine
    report["fix_set"].update(fix)
    return dict(report)


def test_rca1_and_rca2_reports_are_indexed(analysed: dict[str, Any], tmp_path: Path) -> None:
    """A results dir holding reports of both schemas: rebuild and query read both; recovery may be null."""
    rca1 = analysed["reports"][0]
    assert rca1["schema"] in ("model-forensics/rca@1", "model-forensics/rca@2")
    (tmp_path / "old.json").write_text(json.dumps({**rca1, "schema": "model-forensics/rca@1"}))
    (tmp_path / "new.json").write_text(json.dumps(_rca2(recovery=None)))
    (tmp_path / "future.json").write_text(json.dumps({**_rca2(), "schema": "model-forensics/rca@9"}))  # unknown id
    assert rebuild_index(tmp_path) == 2
    stats = query_stats(tmp_path, timedelta(hours=1))
    golden = _rca2()
    fixed = int(_corrects(rca1)) + 1
    assert stats["count"] == 2 and stats["fixed"] == fixed
    assert stats["confidence_mean"] == pytest.approx((rca1["confidence"] + golden["confidence"]) / 2)
    assert stats["anomalous_layers"]["14"] >= 1 and stats["anomalous_layers"]["15"] >= 1  # the golden's CF layers


def test_a_suppression_is_not_counted_as_fixed(tmp_path: Path) -> None:
    """rca@2: a validated set whose verdict is suppression does not count towards the fix rate."""
    index_result(tmp_path, _rca2(verdict="suppression", recovery=None), tmp_path / "s.json")
    index_result(tmp_path, _rca2(), tmp_path / "c.json")
    index_result(tmp_path, {**_rca2(), "fix_set": None, "fix_sets": [], "confidence": 0.0}, tmp_path / "n.json")
    stats = query_stats(tmp_path, timedelta(hours=1))
    assert stats["count"] == 3 and stats["fixed"] == 1 and stats["fix_rate"] == pytest.approx(1 / 3)
