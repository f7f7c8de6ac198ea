"""API tokens, roles and permissions; optional OIDC bearer JWTs checked against a local JWKS file.

    store = TokenStore("tokens.json")
    token = store.add("ci-bot", "analyst")          # shown once; only its sha256 is stored
    principal = Authenticator(store).authenticate(f"Bearer {token}")
    principal.require("run_analysis")               # AuthError(status=403) when the role lacks it

Roles follow the deployment guide: viewer -> view_results; analyst -> read_bundles, run_analysis,
view_results; admin -> all. No or bad credentials -> status 401; wrong role or missing scope -> 403.
A token file is read on every lookup, so ``tokens revoke`` takes effect at once, without a restart.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from forensics.durable import write_atomic
from forensics.errors import AuthError, ConfigError
from forensics.vocab import ACCESS_ROLES

__all__ = [
    "DEFAULT_TOKENS_FILE",
    "AuthFailure",
    "Authenticator",
    "OIDCConfig",
    "Principal",
    "TokenStore",
    "hash_token",
    "read_jwks",
]

TOKEN_SCHEMA = "model-forensics/tokens@1"
DEFAULT_TOKENS_FILE = "~/.config/model-forensics/tokens.json"  # `tokens add` writes here unless told otherwise


class AuthFailure(AuthError):
    """An AuthError carrying the HTTP status it maps to (401 unauthenticated, 403 forbidden).

    ``principal``/``role``: who was refused, when known (a 403), for the audit log.
    """

    def __init__(self, message: str, status: int, *, principal: str | None = None, role: str | None = None) -> None:
        super().__init__(message)
        self.status, self.principal, self.role = status, principal, role


@dataclass(frozen=True)
class Principal:
    name: str
    role: str
    via: str  # token | oidc | anonymous

    @property
    def permissions(self) -> frozenset[str]:
        return ACCESS_ROLES.get(self.role, frozenset())

    def require(self, permission: str) -> None:
        if permission not in self.permissions and "admin" not in self.permissions:
            raise AuthFailure(
                f"principal {self.name!r} (role {self.role}) lacks permission {permission!r}",
                403,
                principal=self.name,
                role=self.role,
            )


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TokenStore:
    """A JSON file of {name, role, sha256, created_at}; tokens themselves are never stored."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def _load(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        try:
            data = json.loads(self.path.read_text())
            if data.get("schema") != TOKEN_SCHEMA or not isinstance(data.get("tokens"), list):
                raise ValueError("not a model-forensics tokens file")
            return list(data["tokens"])
        except (OSError, ValueError, AttributeError) as exc:
            raise ConfigError(f"tokens file {self.path}: unreadable ({exc})") from exc

    def _save(self, tokens: list[dict[str, Any]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps({"schema": TOKEN_SCHEMA, "tokens": tokens}, indent=2)
        write_atomic(self.path, text.encode("utf-8"), mode=0o600)

    def add(self, name: str, role: str) -> str:
        if not isinstance(role, str) or role not in ACCESS_ROLES:
            raise ConfigError(f"role {role!r} not allowed; use one of {', '.join(ACCESS_ROLES)}")
        tokens = self._load()
        if any(t["name"] == name for t in tokens):
            raise ConfigError(f"a token named {name!r} exists; revoke it first")
        token = "mf_" + secrets.token_urlsafe(32)
        tokens.append({"name": name, "role": role, "sha256": hash_token(token), "created_at": time.time()})
        self._save(tokens)
        return token

    def list(self) -> list[dict[str, Any]]:
        return [{k: t[k] for k in ("name", "role", "created_at")} for t in self._load()]

    def revoke(self, name: str) -> bool:
        tokens = self._load()
        kept = [t for t in tokens if t["name"] != name]
        if len(kept) != len(tokens):
            self._save(kept)
        return len(kept) != len(tokens)

    def lookup(self, token: str) -> Principal | None:
        digest = hash_token(token)
        for t in self._load():
            if hmac.compare_digest(str(t.get("sha256", "")), digest):
                return Principal(str(t["name"]), str(t["role"]), "token")
        return None


@dataclass(frozen=True)
class OIDCConfig:
    """Bearer JWTs signed by a key in a local JWKS file (no network): issuer, audience, every scope in ``scopes``.

    ``default_role``: the role of a JWT without ``role_claim`` (None: such a JWT is refused with 403).
    """

    jwks_path: str
    issuer: str
    audience: str
    scopes: tuple[str, ...] = ("model_forensics:analyze",)
    role_claim: str = "role"
    default_role: str | None = "analyst"
    algorithms: tuple[str, ...] = ("RS256", "ES256")


def read_jwks(path: str) -> Any:
    """The ``jwt.PyJWKSet`` in JWKS file ``path``; ``ConfigError`` naming the file when it is unusable."""
    import jwt

    try:
        return jwt.PyJWKSet.from_json(Path(path).read_text())
    except (OSError, ValueError, jwt.PyJWTError) as exc:
        raise ConfigError(f"JWKS file {path}: unusable ({exc})") from None


def _scopes(claims: Mapping[str, Any]) -> set[str]:
    """Granted scopes: OAuth2 ``scope`` (space-separated) and Okta's ``scp`` (a list), either form."""
    granted: set[str] = set()
    for claim in ("scope", "scp"):
        value = claims.get(claim)
        if isinstance(value, str):
            granted.update(value.split())
        elif isinstance(value, list):
            granted.update(v for v in value if isinstance(v, str))
    return granted


@dataclass
class Authenticator:
    tokens: TokenStore | None = None
    oidc: OIDCConfig | None = None
    allow_anonymous: bool = False
    _jwks: Any = field(default=None, repr=False)

    def authenticate(self, authorization: str | None) -> Principal:
        """The principal behind an ``Authorization`` header value; AuthFailure(401) otherwise."""
        if not authorization:
            if self.allow_anonymous:
                return Principal("anonymous", "admin", "anonymous")
            raise AuthFailure("missing credentials: send 'Authorization: Bearer <token>'", 401)
        scheme, _, credential = authorization.partition(" ")
        if scheme.lower() != "bearer" or not credential.strip():
            raise AuthFailure("malformed Authorization header: expected 'Bearer <token>'", 401)
        credential = credential.strip()
        if self.tokens is not None and (found := self.tokens.lookup(credential)) is not None:
            return found
        if self.oidc is not None and credential.count(".") == 2:
            return self._jwt(credential, self.oidc)
        raise AuthFailure("invalid or revoked token", 401)

    def _jwt(self, credential: str, oidc: OIDCConfig) -> Principal:
        import jwt

        try:
            key = self._signing_key(credential, oidc)
            claims: Mapping[str, Any] = jwt.decode(
                credential,
                key=key,
                algorithms=list(oidc.algorithms),
                audience=oidc.audience,
                issuer=oidc.issuer,
                options={"require": ["exp"]},
            )
        except (jwt.PyJWTError, ValueError, TypeError) as exc:  # a hostile token may trip the parsers anywhere
            raise AuthFailure(f"invalid bearer JWT: {exc}", 401) from None
        subject = str(claims.get("sub", "unknown"))
        missing = [s for s in oidc.scopes if s not in _scopes(claims)]
        if missing:
            raise AuthFailure(f"bearer JWT lacks scope {' '.join(missing)!r}", 403, principal=subject)
        role = claims.get(oidc.role_claim, oidc.default_role)
        if role is None:
            raise AuthFailure(f"bearer JWT has no {oidc.role_claim!r} claim", 403, principal=subject)
        if not isinstance(role, str) or role not in ACCESS_ROLES:
            raise AuthFailure(f"bearer JWT names unknown role {str(role)[:40]!r}", 403, principal=subject)
        return Principal(subject, str(role), "oidc")

    def _signing_key(self, credential: str, oidc: OIDCConfig) -> Any:
        import jwt

        if self._jwks is None:
            try:
                self._jwks = read_jwks(oidc.jwks_path)
            except ConfigError as exc:
                raise AuthFailure(str(exc), 401) from None
        kid = jwt.get_unverified_header(credential).get("kid")
        for key in self._jwks.keys:
            if kid is None or key.key_id == kid:
                return key.key
        raise AuthFailure(f"no JWKS key with kid {str(kid)[:40]!r}", 401)
