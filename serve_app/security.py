"""Who is calling, and may they: one FastAPI dependency per endpoint, one place to plug auth and audit in.

    @api.post("/v1/analyze")
    async def analyze(principal: Annotated[Principal, requires("run_analysis", "analyze")]): ...

    setup = AuthSetup.resolve(config.authentication, tokens_file=None, default_tokens_file=home_tokens)
    api.state.access = setup.access()      # BearerAccess (tokens, OIDC JWTs) or, only when asked, AnonymousAccess

``requires`` reads ``Authorization: Bearer <token>`` through ``app.state.access`` and checks one
permission: no or bad credentials -> ``AuthFailure`` 401, a role or scope that does not allow it -> 403.
Refusals of audited actions are written to ``app.state.audit`` (an ``AuditLog``) as outcome ``denied``;
an audited route wraps its work in ``audited(...)``, which writes ``ok`` or ``error`` when it ends.
Secure by default: ``AuthSetup.resolve`` refuses to build an app without an auth source unless
``authentication.type: none`` is set explicitly.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from fastapi import Depends, Request

from forensics.config import AuthenticationConfig
from forensics.errors import ConfigError
from forensics.ops.auth import Authenticator, AuthFailure, OIDCConfig, Principal, TokenStore, read_jwks
from forensics.ops.env import env_var
from serve_app.errors import CLIENT_CLOSED, AccessUnavailable, APIError, AuditFailure, status_of

__all__ = [
    "ANONYMOUS",
    "Access",
    "AnonymousAccess",
    "Audit",
    "AuthSetup",
    "BearerAccess",
    "audited",
    "record",
    "requires",
]

log = logging.getLogger("serve_app")

ANONYMOUS = Principal("anonymous", "admin", "anonymous")
NO_AUTH_MESSAGE = (
    "no authentication configured for the HTTP API; refusing to serve bundles to anyone who can reach the port. "
    "Choose one: API tokens (`model-forensics tokens add NAME --role analyst` writes {default}; or point "
    f"authentication.tokens_file / {env_var('authentication.tokens_file')} / --tokens-file at a tokens file), "
    "OAuth2/OIDC JWTs (authentication.type: oauth2 with jwks_file, issuer and audience), "
    "or, for a trusted network only, authentication.type: none"
)
NONE_WARNING = (
    "authentication.type is none: EVERY caller is treated as admin and may read bundles, run analyses "
    "and read results; use this only on a trusted network"
)


class Access(Protocol):
    def authenticate(self, request: Request) -> Principal:
        """The caller behind ``request``; raise ``forensics.ops.auth.AuthFailure`` (401/403) when refused."""
        ...


class Audit(Protocol):
    """Where audited actions go: ``forensics.ops.audit.AuditLog`` (a no-op one when no path is configured)."""

    def append(
        self, principal: str | None, role: str | None, action: str, bundle: str | None, outcome: str, **extra: Any
    ) -> None: ...


class AnonymousAccess:
    """``authentication.type: none``: everyone is ``anonymous`` with every permission."""

    def authenticate(self, request: Request) -> Principal:
        return ANONYMOUS


class BearerAccess:
    """``Authorization: Bearer <API token or JWT>`` checked by ``forensics.ops.auth.Authenticator``."""

    def __init__(self, authenticator: Authenticator) -> None:
        self.authenticator = authenticator

    def authenticate(self, request: Request) -> Principal:
        try:
            return self.authenticator.authenticate(request.headers.get("authorization"))
        except ConfigError as exc:  # tokens file gone or corrupt since start
            log.error("cannot authenticate: %s", exc)
            raise AccessUnavailable(
                "authentication is unavailable (credential store unreadable); retry later"
            ) from None


@dataclass(frozen=True)
class AuthSetup:
    """How a replica authenticates callers, resolved once at start from config, app args and defaults."""

    kind: Literal["none", "tokens", "oauth2"]
    tokens_file: Path | None = None
    oidc: OIDCConfig | None = None
    provider: str | None = None

    @classmethod
    def resolve(cls, auth: AuthenticationConfig, *, tokens_file: str | None, default_tokens_file: Path) -> AuthSetup:
        """Check every source now (files exist and parse) so a bad setup stops the start, not a request.

        ``tokens_file`` (given explicitly) wins over ``auth.tokens_file`` (config, app args or the environment);
        ``default_tokens_file`` is used when ``type`` is tokens or unset and nothing else names a file.
        """
        explicit = tokens_file or auth.tokens_file
        if auth.type == "none":
            return cls("none", provider=auth.provider)
        if auth.type == "oauth2":
            if not (auth.jwks_file and auth.issuer and auth.audience):  # AuthenticationConfig refuses this too
                raise ConfigError("authentication.type oauth2 needs jwks_file, issuer and audience")
            jwks = str(Path(auth.jwks_file).expanduser().resolve())
            read_jwks(jwks)
            oidc = OIDCConfig(
                jwks,
                auth.issuer,
                auth.audience,
                scopes=auth.scopes,
                role_claim=auth.role_claim,
                default_role=auth.default_role,
            )
            return cls("oauth2", _tokens_file(explicit) if explicit else None, oidc, auth.provider)
        if explicit is None and auth.type is None and not default_tokens_file.is_file():
            raise ConfigError(NO_AUTH_MESSAGE.format(default=default_tokens_file))
        return cls("tokens", _tokens_file(explicit or default_tokens_file), provider=auth.provider)

    def access(self) -> Access:
        if self.kind == "none":
            return AnonymousAccess()
        store = None if self.tokens_file is None else TokenStore(self.tokens_file)
        return BearerAccess(Authenticator(tokens=store, oidc=self.oidc))

    def describe(self) -> str:
        """One line for the start-up message, e.g. ``API tokens from /etc/mf/tokens.json``."""
        parts = []
        if self.oidc is not None:
            parts.append(
                f"OAuth2 JWTs ({self.provider or 'issuer'} {self.oidc.issuer}, audience {self.oidc.audience}, "
                f"scopes {' '.join(self.oidc.scopes)})"
            )
        if self.tokens_file is not None:
            parts.append(f"API tokens from {self.tokens_file}")
        return " + ".join(parts) or "NONE (every caller is admin)"


def _tokens_file(path: str | Path) -> Path:
    """An existing, readable tokens file (absolute); ``ConfigError`` saying how to create one otherwise."""
    resolved = Path(path).expanduser().resolve()
    if not resolved.is_file():
        raise ConfigError(
            f"tokens file {str(path)!r}: not found; create it with "
            f"`model-forensics tokens add NAME --role analyst --tokens-file {resolved}`"
        )
    count = len(TokenStore(resolved).list())  # ConfigError when it is not a tokens file
    if count == 0:
        log.warning("tokens file %s has no tokens: every request will be refused", resolved)
    return resolved


def requires(permission: str, action: str | None = None) -> Any:
    """A dependency resolving the caller and checking ``permission`` (AuthFailure -> 401/403).

    With ``action`` (an audited endpoint) a refusal is audited as outcome ``denied``. It runs before the
    request body is read, so an unauthenticated caller cannot make the server parse anything.
    """

    def dependency(request: Request) -> Principal:
        access: Access = request.app.state.access
        principal: Principal | None = None
        try:
            principal = access.authenticate(request)
            principal.require(permission)
        except AuthFailure as exc:
            if action is not None:
                name = principal.name if principal else exc.principal
                role = principal.role if principal else exc.role
                record(
                    request,
                    name,
                    role,
                    action,
                    None,
                    "denied",
                    via=principal.via if principal else None,
                    status=exc.status,
                    reason=str(exc)[:300],
                )
            raise
        request.state.principal = principal
        return principal

    dependency.__name__ = f"requires_{permission}"
    return Depends(dependency)


def record(
    request: Request,
    principal: str | None,
    role: str | None,
    action: str,
    bundle: str | None,
    outcome: str,
    **extra: Any,
) -> None:
    """Append one audit line for ``request`` (blocking: fsync); ``AuditFailure`` when it cannot be written."""
    client = request.client.host if request.client else None
    try:
        request.app.state.audit.append(
            principal,
            role,
            action,
            bundle,
            outcome,
            request_id=getattr(request.state, "request_id", None),
            client=client,
            **extra,
        )
    except ConfigError as exc:
        log.error("audit log: %s", exc)
        raise AuditFailure(str(exc)) from None


@asynccontextmanager
async def audited(request: Request, principal: Principal, action: str, **fields: Any) -> AsyncIterator[dict[str, Any]]:
    """One audit line when the block ends: ``ok``, or ``error`` with the error's type (then re-raised).

    The block fills the yielded dict: ``bundle`` (the bundle or directory it touched) and more fields.
    """
    entry: dict[str, Any] = {"bundle": None, **fields}
    try:
        yield entry
    except asyncio.CancelledError:  # behind Serve's proxy a client that hangs up cancels its request
        await _audit(request, principal, action, "error", entry, error="ClientDisconnect", status=CLIENT_CLOSED)
        raise
    except Exception as exc:
        kind = exc.kind if isinstance(exc, APIError) else type(exc).__name__
        await _audit(request, principal, action, "error", entry, error=kind, status=status_of(exc))
        raise
    await _audit(request, principal, action, "ok", entry)


async def _audit(
    request: Request, principal: Principal, action: str, outcome: str, entry: dict[str, Any], **more: Any
) -> None:
    extra = {k: v for k, v in entry.items() if k != "bundle"}
    await asyncio.to_thread(
        record,
        request,
        principal.name,
        principal.role,
        action,
        entry["bundle"],
        outcome,
        via=principal.via,
        **extra,
        **more,
    )
