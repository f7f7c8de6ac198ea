"""Tokens (hashed), roles -> permissions, and OIDC JWTs checked offline against a local JWKS file."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import pytest

from forensics.cli import main
from forensics.errors import AuthError, ConfigError
from forensics.ops.auth import Authenticator, AuthFailure, OIDCConfig, TokenStore
from forensics.vocab import ACCESS_ROLES

jwt = pytest.importorskip("jwt")


def test_tokens_are_stored_hashed_and_revocable(tmp_path: Path) -> None:
    store = TokenStore(tmp_path / "tokens.json")
    token = store.add("bot", "analyst")
    assert token not in (tmp_path / "tokens.json").read_text()
    auth = Authenticator(store)
    assert auth.authenticate(f"Bearer {token}").role == "analyst"
    assert store.revoke("bot") and not store.revoke("bot")
    with pytest.raises(AuthError) as err:
        auth.authenticate(f"Bearer {token}")
    assert err.value.status == 401  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match="role 'root'"):
        store.add("x", "root")


@pytest.mark.parametrize("header", [None, "", "Basic abc", "Bearer ", "Bearer wrong-token"])
def test_missing_or_bad_credentials_are_401(tmp_path: Path, header: str | None) -> None:
    with pytest.raises(AuthError) as err:
        Authenticator(TokenStore(tmp_path / "t.json")).authenticate(header)
    assert err.value.status == 401  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "role, allowed",
    [
        ("viewer", {"view_results"}),
        ("analyst", {"read_bundles", "run_analysis", "view_results"}),
        ("admin", {"read_bundles", "run_analysis", "view_results", "admin"}),
    ],
)
def test_roles_map_to_the_guides_permissions(tmp_path: Path, role: str, allowed: set[str]) -> None:
    store = TokenStore(tmp_path / "t.json")
    principal = Authenticator(store).authenticate("Bearer " + store.add("p", role))
    for permission in ("read_bundles", "run_analysis", "view_results", "admin"):
        if permission in allowed:
            principal.require(permission)
        else:
            with pytest.raises(AuthError) as err:
                principal.require(permission)
            assert err.value.status == 403  # type: ignore[attr-defined]
    assert ACCESS_ROLES[role] == allowed


@pytest.fixture(scope="module")
def oidc(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update({"kid": "k1", "use": "sig", "alg": "RS256"})
    path = tmp_path_factory.mktemp("jwks") / "jwks.json"
    path.write_text(json.dumps({"keys": [jwk]}))
    config = OIDCConfig(str(path), issuer="https://idp.example", audience="model-forensics")
    return {"key": key, "config": config}


def _token(oidc: dict[str, Any], **overrides: Any) -> str:
    claims = {
        "sub": "alice",
        "iss": "https://idp.example",
        "aud": "model-forensics",
        "scope": "openid model_forensics:analyze",
        "exp": int(time.time()) + 60,
        "role": "analyst",
    }
    claims.update(overrides)
    claims = {k: v for k, v in claims.items() if v is not None}  # None: leave the claim out
    return str(jwt.encode(claims, oidc["key"], algorithm="RS256", headers={"kid": "k1"}))


def test_valid_jwt_gives_its_role(oidc: dict[str, Any]) -> None:
    principal = Authenticator(oidc=oidc["config"]).authenticate("Bearer " + _token(oidc))
    assert (principal.name, principal.role, principal.via) == ("alice", "analyst", "oidc")


@pytest.mark.parametrize(
    "overrides, status",
    [
        ({"iss": "https://evil.example"}, 401),
        ({"aud": "someone-else"}, 401),
        ({"exp": int(time.time()) - 10}, 401),
        ({"scope": "openid"}, 403),
        ({"role": "root"}, 403),
    ],
)
def test_bad_jwts_are_refused(oidc: dict[str, Any], overrides: dict[str, Any], status: int) -> None:
    with pytest.raises(AuthError) as err:
        Authenticator(oidc=oidc["config"]).authenticate("Bearer " + _token(oidc, **overrides))
    assert err.value.status == status  # type: ignore[attr-defined]


def test_tokens_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = str(tmp_path / "t.json")
    assert main(["tokens", "add", "ops", "--role", "admin", "--tokens-file", f]) == 0
    token = capsys.readouterr().out.splitlines()[0]
    assert token.startswith("mf_")
    assert main(["tokens", "list", "--tokens-file", f]) == 0
    assert "ops" in capsys.readouterr().out
    assert main(["tokens", "revoke", "ops", "--tokens-file", f]) == 0
    assert main(["tokens", "revoke", "ops", "--tokens-file", f]) == 1


def _config(oidc: dict[str, Any], **changes: Any) -> OIDCConfig:
    return dataclasses.replace(oidc["config"], **changes)


@pytest.mark.parametrize(
    "claims",
    [
        {"scope": None, "scp": ["openid", "model_forensics:analyze"]},  # Okta access tokens: a list in scp
        {"scope": "model_forensics:analyze"},
        {"scope": ["model_forensics:analyze"]},
    ],
)
def test_scope_claim_forms(oidc: dict[str, Any], claims: dict[str, Any]) -> None:
    assert Authenticator(oidc=oidc["config"]).authenticate("Bearer " + _token(oidc, **claims)).role == "analyst"


def test_every_configured_scope_is_required(oidc: dict[str, Any]) -> None:
    auth = Authenticator(oidc=_config(oidc, scopes=("model_forensics:analyze", "model_forensics:admin")))
    with pytest.raises(AuthFailure) as err:
        auth.authenticate("Bearer " + _token(oidc))
    assert (err.value.status, err.value.principal) == (403, "alice") and "model_forensics:admin" in str(err.value)


def test_role_claim_defaults(oidc: dict[str, Any]) -> None:
    no_role = "Bearer " + _token(oidc, role=None)
    assert Authenticator(oidc=oidc["config"]).authenticate(no_role).role == "analyst"  # the scope implies analyze
    with pytest.raises(AuthFailure, match="no 'role' claim") as err:
        Authenticator(oidc=_config(oidc, default_role=None)).authenticate(no_role)
    assert err.value.status == 403
    groups = "Bearer " + _token(oidc, role=None, groups="viewer")
    assert Authenticator(oidc=_config(oidc, role_claim="groups")).authenticate(groups).role == "viewer"


@pytest.mark.parametrize(
    "credential",
    [
        "a.b.c",
        "eyJhbGciOiJub25lIn0.e30.",
        "e30.e30.e30",
        "W10.W10.W10",
        "eyJraWQiOlsxXX0.e30.AAAA",
    ],
)
def test_garbage_jwts_are_401_not_crashes(oidc: dict[str, Any], credential: str) -> None:
    with pytest.raises(AuthFailure) as err:
        Authenticator(oidc=oidc["config"]).authenticate("Bearer " + credential)
    assert err.value.status == 401


def test_odd_claims_are_refused_cleanly(oidc: dict[str, Any]) -> None:
    auth = Authenticator(oidc=oidc["config"])
    with pytest.raises(AuthFailure) as err:  # a JWT must expire
        auth.authenticate("Bearer " + _token(oidc, exp=None))
    assert err.value.status == 401
    with pytest.raises(AuthFailure) as err:  # an unhashable role claim is an unknown role, not a TypeError
        auth.authenticate("Bearer " + _token(oidc, role=["admin"]))
    assert err.value.status == 403


def test_a_refusal_names_who_was_refused(tmp_path: Path) -> None:
    store = TokenStore(tmp_path / "t.json")
    principal = Authenticator(store).authenticate("Bearer " + store.add("vic", "viewer"))
    with pytest.raises(AuthFailure) as err:
        principal.require("run_analysis")
    assert (err.value.status, err.value.principal, err.value.role) == (403, "vic", "viewer")
