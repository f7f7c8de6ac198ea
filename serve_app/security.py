"""Who is calling, and may they: one FastAPI dependency per endpoint, one place to plug auth and audit in.

    @api.post("/v1/analyze")
    async def analyze(principal: Annotated[Principal, requires("run_analysis")]): ...

Today ``AnonymousAccess`` lets every caller in as ``anonymous`` (role admin) and ``NoAudit`` writes
nothing. Auth (tokens, OIDC) replaces the ``Access`` object on ``app.state.access``; the audit log
replaces ``app.state.audit``; endpoints do not change.
"""

from __future__ import annotations

from typing import Any, Protocol

from fastapi import Depends, Request

from forensics.ops.auth import Principal

__all__ = ["ANONYMOUS", "Access", "AnonymousAccess", "Audit", "NoAudit", "requires"]

ANONYMOUS = Principal("anonymous", "admin", "anonymous")


class Access(Protocol):
    def authenticate(self, request: Request) -> Principal:
        """The caller behind ``request``; raise ``forensics.ops.auth.AuthFailure`` (401) when unknown."""
        ...


class AnonymousAccess:
    """No authentication configured: everyone is ``anonymous`` with every permission."""

    def authenticate(self, request: Request) -> Principal:
        return ANONYMOUS


class Audit(Protocol):
    def record(self, principal: Principal, action: str, bundle: str | None, outcome: str, **extra: Any) -> None: ...


class NoAudit:
    def record(self, principal: Principal, action: str, bundle: str | None, outcome: str, **extra: Any) -> None:
        return None


def requires(permission: str) -> Any:
    """A dependency resolving the caller and checking ``permission`` (AuthFailure -> 401/403)."""

    def dependency(request: Request) -> Principal:
        principal: Principal = request.app.state.access.authenticate(request)
        principal.require(permission)
        request.state.principal = principal
        return principal

    dependency.__name__ = f"requires_{permission}"
    return Depends(dependency)
