"""The audit log: one JSON line per action that reads a bundle or runs an analysis.

Each line is appended with one ``os.write`` on a file opened ``O_APPEND``, then fsynced, so
concurrent writers (threads or processes) never interleave or lose lines. The path comes from
the edge (``MODEL_FORENSICS_AUDIT_LOG`` / config ``audit_log``); ``AuditLog.from_path(None)``
is a logger that does nothing.

    log = AuditLog.from_path(config.audit_log)
    with log.action("alice", "analyst", "analyze", bundle="incident_7"):
        run_analysis(...)                  # appends outcome "ok", or "error" (and re-raises)
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from forensics.durable import fsync_path
from forensics.errors import ConfigError

__all__ = ["CORE_FIELDS", "AuditLog"]

CORE_FIELDS = ("time", "principal", "role", "action", "bundle", "outcome")
_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
_MODE = 0o600  # who did what to which bundle is itself sensitive
_MAX_ERROR = 300


class AuditLog:
    """Append-only JSON-lines audit log at ``path``; ``path=None`` makes a no-op logger.

    >>> AuditLog.from_path(None).append("alice", "viewer", "read_bundle", "incident_7", "ok")
    >>> AuditLog.from_path(None).enabled
    False
    """

    def __init__(self, path: str | os.PathLike[str] | None) -> None:
        self._path = None if path is None else os.path.abspath(os.fspath(path))

    @classmethod
    def from_path(cls, path: str | os.PathLike[str] | None) -> AuditLog:
        """The logger for a configured path, or a no-op logger when none is configured."""
        return cls(path if path else None)

    @property
    def path(self) -> str | None:
        return self._path

    @property
    def enabled(self) -> bool:
        return self._path is not None

    def append(
        self,
        principal: str | None,
        role: str | None,
        action: str,
        bundle: str | None,
        outcome: str,
        **extra: Any,
    ) -> None:
        """Append one line ``{time, principal, role, action, bundle, outcome, **extra}``, durably.

        Extra values that JSON cannot hold are written as ``str(value)``. A line that cannot be
        written is an error (``ConfigError`` naming the path): an audit trail must not skip silently.
        """
        if self._path is None:
            return
        clash = sorted(set(extra) & set(CORE_FIELDS))
        if clash:
            raise ConfigError(f"audit log: extra fields {clash} would overwrite the core fields {CORE_FIELDS}")
        record = {
            "time": datetime.now(UTC).isoformat(timespec="microseconds"),
            "principal": principal,
            "role": role,
            "action": action,
            "bundle": bundle,
            "outcome": outcome,
            **extra,
        }
        line = json.dumps(record, ensure_ascii=True, separators=(",", ":"), default=str) + "\n"
        _append_line(self._path, line.encode("ascii"))

    @contextmanager
    def action(
        self, principal: str | None, role: str | None, action: str, bundle: str | None = None, **extra: Any
    ) -> Iterator[dict[str, Any]]:
        """Log ``action`` when the block ends: outcome ``ok``, or ``error`` with the error's type.

        The yielded dict takes more fields from inside the block (e.g. a result id).
        """
        fields: dict[str, Any] = dict(extra)
        try:
            yield fields
        except BaseException as exc:
            error = f"{type(exc).__name__}: {exc}"
            fields["error"] = error if len(error) <= _MAX_ERROR else error[: _MAX_ERROR - 1] + "…"
            self.append(principal, role, action, bundle, "error", **fields)
            raise
        self.append(principal, role, action, bundle, "ok", **fields)


def _append_line(path: str, data: bytes) -> None:
    """One ``os.write`` of the whole line on an ``O_APPEND`` descriptor, then ``fsync``.

    With ``O_APPEND`` the kernel moves to the end and writes in one step, so lines from other
    threads and processes land before or after ours, never inside it. The file is opened per
    line: a rotated log (renamed away) is simply recreated.
    """
    created = not os.path.exists(path)
    try:
        fd = os.open(path, _FLAGS, _MODE)
        try:
            written = os.write(fd, data)
            if written != len(data):  # only on a full disk or a signal: finish the line, do not tear it
                _write_rest(fd, memoryview(data)[written:])
            os.fsync(fd)
        finally:
            os.close(fd)
        if created:
            fsync_path(os.path.dirname(path))  # the new entry too: a crash cannot lose the log
    except OSError as exc:
        raise ConfigError(f"audit log {path}: cannot append ({exc.strerror or exc})") from exc


def _write_rest(fd: int, rest: memoryview) -> None:
    while rest:
        written = os.write(fd, rest)
        if written <= 0:
            raise OSError(f"write made no progress with {len(rest)} bytes left")
        rest = rest[written:]
