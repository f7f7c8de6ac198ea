"""API tokens, roles and permissions; optional OIDC bearer JWTs checked against a local JWKS file.

    store = TokenStore("tokens.json")
    token = store.add("ci-bot", "analyst")          # shown once; only its sha256 is stored
    principal = Authenticator(store).authenticate(f"Bearer {token}")
    principal.require("run_analysis")               # AuthError(status=403) when the role lacks it

Roles follow the deployment guide: viewer -> view_results; analyst -> read_bundles, run_analysis,
view_results; admin -> all. No credentials -> status 401; wrong role -> status 403.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from forensics.errors import AuthError, ConfigError

__all__ = ["PERMISSIONS", "ROLES", "Authenticator", "OIDCConfig", "Principal", "TokenStore", "hash_token"]

PERMISSIONS = ("read_bundles", "run_analysis", "view_results", "admin")
ROLES: dict[str, frozenset[str]] = {
    "viewer": frozenset({"view_results"}),
    "analyst": frozenset({"read_bundles", "run_analysis", "view_results"}),
    "admin": frozenset(PERMISSIONS),
}
TOKEN_SCHEMA = "model-forensics/tokens@1"


class AuthFailure(AuthError):
    """An AuthError carrying the HTTP status it maps to (401 unauthenticated, 403 forbidden)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Principal:
    name: str
    role: str
    via: str  # token | oidc | anonymous

    @property
    def permissions(self) -> frozenset[str]:
        return ROLES.get(self.role, frozenset())

    def require(self, permission: str) -> None:
        if permission not in self.permissions and "admin" not in self.permissions:
            raise AuthFailure(f"principal {self.name!r} (role {self.role}) lacks permission {permission!r}", 403)


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
        fd, tmp = tempfile.mkstemp(prefix=".tokens.", dir=self.path.parent)
        with os.fdopen(fd, "w") as fh:
            json.dump({"schema": TOKEN_SCHEMA, "tokens": tokens}, fh, indent=2)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.path)

    def add(self, name: str, role: str) -> str:
        if role not in ROLES:
            raise ConfigError(f"role {role!r} not allowed; use one of {', '.join(ROLES)}")
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
    """Bearer JWTs signed by a key in a local JWKS file (no network): issuer, audience, scope."""

    jwks_path: str
    issuer: str
    audience: str
    scope: str = "model_forensics:analyze"
    role_claim: str = "role"
    default_role: str = "analyst"
    algorithms: tuple[str, ...] = ("RS256", "ES256")


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
            claims: Mapping[str, Any] = jwt.decode(credential, key=key, algorithms=list(oidc.algorithms),
                                                   audience=oidc.audience, issuer=oidc.issuer)
        except jwt.PyJWTError as exc:
            raise AuthFailure(f"invalid bearer JWT: {exc}", 401) from exc
        scopes = str(claims.get("scope", "")).split()
        if oidc.scope not in scopes:
            raise AuthFailure(f"bearer JWT lacks scope {oidc.scope!r}", 403)
        role = str(claims.get(oidc.role_claim, oidc.default_role))
        if role not in ROLES:
            raise AuthFailure(f"bearer JWT names unknown role {role!r}", 403)
        return Principal(str(claims.get("sub", "unknown")), role, "oidc")

    def _signing_key(self, credential: str, oidc: OIDCConfig) -> Any:
        import jwt

        if self._jwks is None:
            try:
                self._jwks = jwt.PyJWKSet.from_json(Path(oidc.jwks_path).read_text())
            except (OSError, jwt.PyJWTError) as exc:
                raise AuthFailure(f"JWKS file {oidc.jwks_path} unusable: {exc}", 401) from exc
        kid = jwt.get_unverified_header(credential).get("kid")
        for key in self._jwks.keys:
            if kid is None or key.key_id == kid:
                return key.key
        raise AuthFailure(f"no JWKS key with kid {kid!r}", 401)
