"""Logging from the config: ``log_level`` for our loggers, ``log_file`` as an appended file.

    configure_logging("INFO", "/var/log/model-forensics/server.log")   # idempotent per path
    log_analysis(report)       # one ``execution_time`` and one ``memory_usage`` line per analysis

Every CLI command (``forensics.commands.common.config_from_args``) and the ``serve`` replicas call
``configure_logging`` once their config is known. A file line reads
``2025-01-01 12:00:00,123 INFO execution_time 1.234 bundle=incident_7 (forensics.ops.logs, pid 42)``:
the fifth field is the value, so the deployment guide's
``grep "execution_time" model_forensics.log | awk '{print $5}' | sort -n`` lists the durations.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from typing import Any

__all__ = ["LOGGERS", "configure_logging", "log_analysis", "peak_rss_bytes"]

LOGGERS = ("forensics", "serve_app")
_FORMAT = "%(asctime)s %(levelname)s %(message)s (%(name)s, pid %(process)d)"
_MARK = "_model_forensics_file"
log = logging.getLogger(__name__)


def configure_logging(level: str, log_file: str | os.PathLike[str] | None, *, exclusive: bool = False) -> None:
    """Set our loggers to ``level``; with ``log_file`` also append to it (one handler per file, the file
    created on the first line). ``exclusive`` drops the file handlers an earlier call added (the CLI:
    one command, one log file)."""
    path = None if log_file is None else os.path.abspath(os.fspath(log_file))
    for name in LOGGERS:
        logger = logging.getLogger(name)
        logger.setLevel(level.upper())
        if exclusive:
            for handler in [h for h in logger.handlers if getattr(h, _MARK, False)]:
                if getattr(handler, "baseFilename", None) != path:
                    logger.removeHandler(handler)
                    handler.close()
        if path is None or any(getattr(h, "baseFilename", None) == path for h in logger.handlers):
            continue
        os.makedirs(os.path.dirname(path), exist_ok=True)
        handler = logging.FileHandler(path, encoding="utf-8", delay=True)
        handler.setFormatter(logging.Formatter(_FORMAT))
        setattr(handler, _MARK, True)
        logger.addHandler(handler)


def peak_rss_bytes() -> int | None:
    """Peak resident set size of this process in bytes (None where ``resource`` is missing)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # macOS reports bytes, Linux KiB


def log_analysis(report: Mapping[str, Any], *, cached: bool = False) -> None:
    """The two INFO lines the deployment guide greps for, after each analysis."""
    bundle = report.get("bundle_id")
    seconds = float(report.get("execution_time") or 0.0)
    log.info(
        "execution_time %.3f bundle=%s confidence=%s cached=%s",
        seconds,
        bundle,
        report.get("confidence"),
        str(cached).lower(),
    )
    log.info("memory_usage %s bundle=%s (peak RSS of the process, bytes)", peak_rss_bytes(), bundle)
