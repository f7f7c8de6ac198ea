"""The one exception tree of model-forensics.

    ForensicsError
     +-- BundleError        a bundle is missing, corrupt, hostile or of another version (ValueError)
     +-- ConfigError        a config key, type or value is not allowed (ValueError)
     +-- ModelError         a model reference cannot be resolved or loaded (LookupError)
     +-- ReplayError        a replay cannot be done or proved (RuntimeError)
     |    +-- UnknownModuleError   a named module is not in the model or bundle (LookupError)
     +-- AuthError          a caller lacks a valid token or the role for an action (PermissionError)

Messages name the thing, what was expected and what arrived, e.g.
``bundle incident_7: activations.arrow sha256 mismatch (manifest 3fa2…, file 91c0…)``.
"""

from __future__ import annotations

__all__ = [
    "AuthError",
    "BundleError",
    "ConfigError",
    "ForensicsError",
    "ModelError",
    "ReplayError",
    "UnknownModuleError",
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
