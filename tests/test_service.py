"""forensics.service, the Serve app's library side: time limit and stats indexing of analyses."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from forensics import service
from forensics.config import Config
from forensics.errors import AnalysisTimeoutError
from forensics.models.registry import LoadedModel
from forensics.ops.stats import query_stats, rebuild_index
from forensics.rca.pipeline import RCAPipeline
from forensics.record import record_greedy
from serve_app.errors import http_status


@pytest.fixture(scope="module")
def served(tiny_llama: LoadedModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("served")
    record_greedy(
        tiny_llama, "The capital of Australia is", root / "bundles" / "incident", kind="incident", max_new_tokens=3
    )
    for i, prompt in enumerate(("One plus one is", "The sky is", "Paris is in")):
        record_greedy(
            tiny_llama, prompt, root / "bundles" / "benign" / f"b{i}", "as-generated", kind="benign", max_new_tokens=2
        )
    return root


def test_analysis_past_its_time_limit_is_a_504(served: Path) -> None:
    pipeline = RCAPipeline(Config())
    with pytest.raises(AnalysisTimeoutError, match="exceeded the time limit of 0 s") as info:
        service.run_analysis(
            pipeline,
            bundle_dir=served / "bundles",
            output_dir=served / "out-timeout",
            bundle="incident",
            baseline=served / "bundles" / "benign",
            timeout_s=0.0,
        )
    assert http_status(info.value) == 504
    assert pipeline.progress is None  # the deadline is gone: the next analysis is not cut short
    assert not list((served / "out-timeout").rglob("*.json"))


def test_every_served_analysis_is_indexed_for_stats(served: Path) -> None:
    out = served / "out"
    record = service.run_analysis(
        RCAPipeline(Config()),
        bundle_dir=served / "bundles",
        output_dir=out,
        bundle="incident",
        baseline=served / "bundles" / "benign",
        timeout_s=600.0,
    )
    stats = query_stats(out, timedelta(hours=1))
    assert stats["count"] == 1 and record["report"]["bundle_id"] == "incident"
    assert rebuild_index(out) == 1  # the index can be re-derived from the stored report


def test_service_log_file_from_config(tmp_path: Path) -> None:
    import logging

    from forensics.ops.logs import configure_logging

    path = tmp_path / "logs" / "server.log"
    logger = logging.getLogger("forensics")
    before = list(logger.handlers)
    try:
        configure_logging("WARNING", path)
        configure_logging("WARNING", path)  # idempotent: one handler per file
        assert len(logger.handlers) == len(before) + 1
        logging.getLogger("forensics.service").info("not at WARNING")
        logging.getLogger("forensics.service").warning("disk almost full")
        for handler in logger.handlers:
            handler.flush()
        text = path.read_text()
        assert "disk almost full" in text and "not at WARNING" not in text
    finally:
        for handler in set(logger.handlers) - set(before):
            logger.removeHandler(handler)
            handler.close()
        logger.setLevel(logging.NOTSET)
