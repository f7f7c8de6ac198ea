"""The audit log: one intact JSON line per action, even with many threads and processes writing."""

from __future__ import annotations

import json
import multiprocessing
import os
import stat
import threading
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from forensics.errors import BundleError, ConfigError
from forensics.ops.audit import CORE_FIELDS, AuditLog

PROCESSES, LINES = 4, 200


def _payload(writer: int, index: int) -> str:
    """Lines of varied length, many longer than a page, so a torn write would show."""
    return f"w{writer}-{index}:" + "x" * ((writer * 7919 + index * 104_729) % 12_000)


def _write_lines(path: str, writer: int) -> None:
    log = AuditLog(path)
    for index in range(LINES):
        log.append(
            f"user{writer}",
            "analyst",
            "analyze",
            f"incident_{index}",
            "ok",
            writer=writer,
            index=index,
            payload=_payload(writer, index),
        )


def _read(path: Path) -> list[dict[str, object]]:
    raw = path.read_bytes()
    assert raw.endswith(b"\n")
    return [json.loads(line) for line in raw.split(b"\n")[:-1]]  # json.loads fails on any torn line


def _assert_all_intact(path: Path, writers: int) -> None:
    records = _read(path)
    assert len(records) == writers * LINES
    seen = {(r["writer"], r["index"]) for r in records}
    assert seen == {(w, i) for w in range(writers) for i in range(LINES)}
    for record in records:
        assert record["payload"] == _payload(record["writer"], record["index"])  # type: ignore[arg-type]
        assert record["principal"] == f"user{record['writer']}"
    for writer in range(writers):  # each writer's own lines stay in its order
        mine = [r["index"] for r in records if r["writer"] == writer]
        assert mine == list(range(LINES))


def test_processes_never_interleave_or_lose_lines(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_write_lines, args=(str(path), w)) for w in range(PROCESSES)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
        assert worker.exitcode == 0
    _assert_all_intact(path, PROCESSES)


def test_threads_never_interleave_or_lose_lines(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    threads = [threading.Thread(target=_write_lines, args=(str(path), w)) for w in range(PROCESSES)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    _assert_all_intact(path, PROCESSES)


def test_line_fields_and_time(tmp_path: Path) -> None:
    log = AuditLog.from_path(tmp_path / "audit.jsonl")
    before = datetime.now().astimezone()
    log.append("alice", "viewer", "read_bundle", "incident_7", "denied", request_id="r1", status=403)
    (record,) = _read(tmp_path / "audit.jsonl")
    assert list(record)[: len(CORE_FIELDS)] == list(CORE_FIELDS)
    assert record | {"time": None} == {
        "time": None,
        "principal": "alice",
        "role": "viewer",
        "action": "read_bundle",
        "bundle": "incident_7",
        "outcome": "denied",
        "request_id": "r1",
        "status": 403,
    }
    when = datetime.fromisoformat(str(record["time"]))
    assert when.utcoffset() == timedelta(0)
    assert abs(when - before) < timedelta(minutes=5)


def test_newlines_and_odd_values_stay_on_one_line(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl")
    log.append('eve\n{"outcome": "ok"}', None, "analyze", "a\nb", "error", path=tmp_path, note="ü\r\n")
    records = _read(tmp_path / "audit.jsonl")
    assert len(records) == 1
    assert records[0]["principal"] == 'eve\n{"outcome": "ok"}' and records[0]["path"] == str(tmp_path)
    assert records[0]["role"] is None and records[0]["note"] == "ü\r\n"


def test_log_file_is_private(tmp_path: Path) -> None:
    AuditLog(tmp_path / "audit.jsonl").append("a", "admin", "x", None, "ok")
    assert stat.S_IMODE(os.stat(tmp_path / "audit.jsonl").st_mode) == 0o600


def test_no_path_is_a_no_op_logger(tmp_path: Path) -> None:
    for log in (AuditLog.from_path(None), AuditLog.from_path("")):
        assert not log.enabled and log.path is None
        log.append("a", "admin", "analyze", "b", "ok")
        with log.action("a", "admin", "analyze", "b"):
            pass
    assert list(tmp_path.iterdir()) == []


def test_action_logs_ok_and_error_outcomes(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl")
    with log.action("bob", "analyst", "analyze", "incident_7") as fields:
        fields["result"] = "r-1"
    with pytest.raises(BundleError), log.action("bob", "analyst", "load_bundle", "broken"):
        raise BundleError("bundle broken: manifest.json: missing")
    ok, failed = _read(tmp_path / "audit.jsonl")
    assert (ok["outcome"], ok["result"], ok["bundle"]) == ("ok", "r-1", "incident_7")
    assert (failed["outcome"], failed["action"]) == ("error", "load_bundle")
    assert failed["error"] == "BundleError: bundle broken: manifest.json: missing"


def test_extra_fields_cannot_forge_core_fields(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\['time'\]"):
        AuditLog(tmp_path / "a.jsonl").append("a", "viewer", "x", None, "denied", time="2000-01-01")


def test_unwritable_log_is_an_error_naming_the_path(tmp_path: Path) -> None:
    target = tmp_path / "missing_dir" / "audit.jsonl"
    with pytest.raises(ConfigError, match=f"audit log {target}: cannot append"):
        AuditLog(target).append("a", "viewer", "x", None, "ok")


def test_rotated_log_is_recreated(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl")
    log.append("a", "viewer", "x", None, "ok")
    os.replace(tmp_path / "audit.jsonl", tmp_path / "audit.jsonl.1")
    log.append("a", "viewer", "y", None, "ok")
    assert [r["action"] for r in _read(tmp_path / "audit.jsonl")] == ["y"]
    assert [r["action"] for r in _read(tmp_path / "audit.jsonl.1")] == ["x"]
