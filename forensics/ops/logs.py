"""Service logging from the config: ``log_level`` for our loggers, ``log_file`` as an appended file.

    configure_logging("INFO", "/var/log/model-forensics/server.log")   # idempotent per path

The CLI logs to stderr only (``--debug`` for more); services (``serve`` replicas) call this once.
"""

from __future__ import annotations

import logging
import os

__all__ = ["LOGGERS", "configure_logging"]

LOGGERS = ("forensics", "serve_app")
_FORMAT = "%(asctime)s %(levelname)s %(process)d %(name)s: %(message)s"


def configure_logging(level: str, log_file: str | os.PathLike[str] | None) -> None:
    """Set our loggers to ``level``; with ``log_file`` also append to it (one handler per file)."""
    path = None if log_file is None else os.path.abspath(os.fspath(log_file))
    for name in LOGGERS:
        logger = logging.getLogger(name)
        logger.setLevel(level)
        if path is None or any(getattr(h, "baseFilename", None) == path for h in logger.handlers):
            continue
        os.makedirs(os.path.dirname(path), exist_ok=True)
        handler = logging.FileHandler(path, encoding="utf-8")
        handler.setFormatter(logging.Formatter(_FORMAT))
        logger.addHandler(handler)
