"""The one exception tree of model-forensics.

    ForensicsError
     +-- BundleError        a bundle is missing, corrupt, hostile or of another version (ValueError)
     |    +-- BundleNotFoundError  a safe bundle name that names nothing under bundle_dir (LookupError)
     |    +-- UploadTooLargeError  an uploaded archive over the configured limit
     +-- ConfigError        a config key, type or value is not allowed (ValueError)
     +-- ModelError         a model reference cannot be resolved or loaded (LookupError)
     +-- ReplayError        a replay cannot be done or proved (RuntimeError)
     |    +-- UnknownModuleError   a named module is not in the model or bundle (LookupError)
     +-- AuthError          a caller lacks a valid token or the role for an action (PermissionError)
     +-- AnalysisTimeoutError  an analysis ran past timeout_minutes (TimeoutError)
     +-- ResultNotFoundError   no stored result has this id (LookupError)
     +-- StorageError       a result, report or index cannot be written: disk full, I/O error (OSError)
     +-- TraceError         a trace file is not OTLP JSON, is hostile, or holds no usable GenAI span (ValueError)

Messages name the thing, what was expected and what arrived, e.g.
``bundle incident_7: activations.arrow sha256 mismatch (manifest 3fa2…, file 91c0…)``.

Across a process or network boundary an error travels as plain data, ``error_data(exc)`` (type and
message; the traceback stays in the log where it happened): Ray workers wrap it as
``forensics.exec.TaskError``, the HTTP layer adds a status and a request id (``serve_app.errors``).
"""

from __future__ import annotations

__all__ = [
    "AnalysisTimeoutError",
    "AuthError",
    "BundleError",
    "BundleNotFoundError",
    "ConfigError",
    "ForensicsError",
    "ModelError",
    "ReplayError",
    "ResultNotFoundError",
    "StorageError",
    "TraceError",
    "UnknownModuleError",
    "UploadTooLargeError",
    "error_data",
]


class ForensicsError(Exception):
    """Base of every error model-forensics raises on purpose."""


class BundleError(ForensicsError, ValueError):
    """A bundle is missing, corrupt, hostile, or of an unsupported version."""


class ConfigError(ForensicsError, ValueError):
    """A configuration key, type, or value is not allowed."""


class ModelError(ForensicsError, LookupError):
    """A model reference cannot be resolved or loaded."""


class ReplayError(ForensicsError, RuntimeError):
    """A replay cannot be performed, or cannot prove what it did."""


class UnknownModuleError(ReplayError, LookupError):
    """A module named by an intervention or request does not exist."""


class AuthError(ForensicsError, PermissionError):
    """A caller has no valid credentials, or lacks the role for an action."""


class BundleNotFoundError(BundleError, LookupError):
    """A bundle (or bundle directory) name that is safe but names nothing under ``bundle_dir``."""


class UploadTooLargeError(BundleError):
    """An uploaded archive is larger than the configured limit."""


class AnalysisTimeoutError(ForensicsError, TimeoutError):
    """An analysis ran past ``timeout_minutes``."""


class ResultNotFoundError(ForensicsError, LookupError):
    """No stored result has this id."""


class TraceError(ForensicsError, ValueError):
    """A trace file (OTLP JSON) is unreadable, too large or deep, of the wrong shape, or has no usable span."""


class StorageError(ForensicsError, OSError):
    """A file or the stats index cannot be written (disk full, read-only, I/O error); names the path.

    ``errno`` and ``filename`` are set as on an ``OSError``; the message is the one line shown."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def error_data(exc: BaseException) -> dict[str, str]:
    """``exc`` as plain data that can cross a Ray or HTTP boundary: ``{"type", "message"}``.

    The type is the exception's class name, the message its text (the class name when it has none).

    >>> error_data(BundleError("bundle incident_7: no manifest.json"))
    {'type': 'BundleError', 'message': 'bundle incident_7: no manifest.json'}
    """
    return {"type": type(exc).__name__, "message": str(exc) or type(exc).__name__}
