"""Authentication, permissions and the audit log of the HTTP API, over real HTTP on 127.0.0.1.

The Serve app (session Ray cluster) is configured like the deployment guide's "Security" section:
built-in roles, ``authentication.type: oauth2`` (provider okta, scope ``model_forensics:analyze``)
checked against a local JWKS file, plus API tokens, plus an audit log. Every endpoint is called with
every kind of credential; each answer must be the expected 200/401/403 and each audited request must
have left its line in the audit log. Start-up refusals and ``type: none`` are checked without Ray.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from forensics.config import AuthenticationConfig, Config, load_config
from forensics.errors import ConfigError
from forensics.models import LoadedModel
from forensics.ops.auth import TokenStore
from forensics.record import record_greedy
from tests.test_serve import Server, _free_port, call, running_app

jwt = pytest.importorskip("jwt")

APP_NAME = "model-forensics-auth-test"
ISSUER, AUDIENCE, SCOPE = "https://idp.example", "model-forensics", "model_forensics:analyze"
GUIDE_SECURITY = """
roles:
  analyst:
    permissions: [read_bundles, run_analysis, view_results]
  admin:
    permissions: [all]
  viewer:
    permissions: [view_results]

authentication:
  type: "oauth2"
  provider: "okta"
  scopes: ["model_forensics:analyze"]
"""

# endpoint -> (method, path, JSON body, audited action or None)
ENDPOINTS: dict[str, tuple[str, str, Any, str | None]] = {
    "analyze": ("POST", "/v1/analyze", {"bundle": "incidents/inc0"}, "analyze"),
    "triage": ("POST", "/v1/triage", {"directory": "incidents"}, "triage"),
    "results": ("GET", "/v1/results/{result}", None, "view_result"),
    "metrics": ("GET", "/metrics", None, None),
}
# What each role may call, straight from the guide's table (analyze: run_analysis, triage: read_bundles,
# results and metrics: view_results).
GRANTS = {"viewer": {"results", "metrics"}, "analyst": set(ENDPOINTS), "admin": set(ENDPOINTS)}
# credential -> (principal the audit log names, role) for credentials that authenticate
KNOWN = {
    "viewer": ("viewer-1", "viewer"),
    "analyst": ("analyst-1", "analyst"),
    "admin": ("admin-1", "admin"),
    "jwt": ("alice", "analyst"),
    "jwt_viewer": ("victor", "viewer"),
}
UNAUTHENTICATED = ("none", "malformed", "revoked", "jwt_wrong_audience", "jwt_expired", "jwt_foreign_key")
CREDENTIALS = (*KNOWN, *UNAUTHENTICATED, "jwt_no_scope")


def expected(endpoint: str, credential: str) -> int:
    if credential in UNAUTHENTICATED:
        return 401
    if credential == "jwt_no_scope":
        return 403
    return 200 if endpoint in GRANTS[KNOWN[credential][1]] else 403


# -- fixtures ------------------------------------------------------------------------------------
def _rsa_key() -> Any:
    from cryptography.hazmat.primitives.asymmetric import rsa

    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _jwt(key: Any, **overrides: Any) -> str:
    claims = {
        "sub": "alice",
        "iss": ISSUER,
        "aud": AUDIENCE,
        "scope": f"openid {SCOPE}",
        "exp": int(time.time()) + 3600,
        "role": "analyst",
    }
    claims.update(overrides)
    return str(jwt.encode(claims, key, algorithm="RS256", headers={"kid": "k1"}))


@pytest.fixture(scope="module")
def secured(tiny_llama: LoadedModel, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Bundles, a JWKS file, a tokens file (one revoked), a stored result, and the guide-style config."""
    top = tmp_path_factory.mktemp("serve-auth")
    root = top / "bundles"
    record_greedy(
        tiny_llama, "The capital of Australia is", root / "incidents" / "inc0", kind="incident", max_new_tokens=3
    )
    for i, prompt in enumerate(["The capital of France is", "One plus one is", "The answer is"]):
        record_greedy(tiny_llama, prompt, root / "benign" / f"b{i}", "as-generated", kind="benign", max_new_tokens=2)
    key = _rsa_key()
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update({"kid": "k1", "use": "sig", "alg": "RS256"})
    (top / "jwks.json").write_text(json.dumps({"keys": [jwk]}))
    store = TokenStore(top / "tokens.json")
    tokens = {role: store.add(f"{role}-1", role) for role in ("viewer", "analyst", "admin")}
    revoked = store.add("leaver", "analyst")
    assert store.revoke("leaver")
    result = uuid.uuid4().hex
    (top / "results").mkdir()
    (top / "results" / f"{result}.json").write_text(json.dumps({"bundle_id": "incident-stored", "schema": "x"}))
    config = yaml.safe_load(GUIDE_SECURITY)
    config["authentication"].update(
        {
            "jwks_file": str(top / "jwks.json"),
            "issuer": ISSUER,
            "audience": AUDIENCE,
            "tokens_file": str(top / "tokens.json"),
        }
    )
    config["audit_log"] = str(top / "audit" / "model_forensics.log")
    (top / "config.yaml").write_text(yaml.safe_dump(config))
    headers: dict[str, str | None] = {
        **{role: f"Bearer {token}" for role, token in tokens.items()},
        "none": None,
        "malformed": "Basic YWxpY2U6c2VjcmV0",
        "revoked": f"Bearer {revoked}",
        "jwt": f"Bearer {_jwt(key)}",
        "jwt_viewer": f"Bearer {_jwt(key, sub='victor', role='viewer')}",
        "jwt_no_scope": f"Bearer {_jwt(key, scope='openid profile')}",
        "jwt_wrong_audience": f"Bearer {_jwt(key, aud='someone-else')}",
        "jwt_expired": f"Bearer {_jwt(key, exp=int(time.time()) - 60)}",
        "jwt_foreign_key": f"Bearer {_jwt(_rsa_key())}",
    }
    return {
        "top": top,
        "root": root,
        "result": result,
        "headers": headers,
        "store": store,
        "config": top / "config.yaml",
        "audit": top / "audit" / "model_forensics.log",
    }


@pytest.fixture(scope="module")
def app(ray_cluster: Any, secured: dict[str, Any]) -> Iterator[Server]:
    args = {
        "config_path": str(secured["config"]),
        "bundle_dir": str(secured["root"]),
        "output_dir": str(secured["top"] / "results"),
        "baseline": "benign",
        "num_gpus": 0,
        "analyzer_num_cpus": 0.5,
        "ingress_num_cpus": 0.25,
    }
    with running_app(args, APP_NAME) as base:
        yield Server(base)


def audit_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


# -- the matrix ----------------------------------------------------------------------------------
@pytest.mark.ray
@pytest.mark.parametrize("credential", CREDENTIALS)
@pytest.mark.parametrize("endpoint", list(ENDPOINTS))
def test_every_endpoint_with_every_credential(
    app: Server, secured: dict[str, Any], endpoint: str, credential: str
) -> None:
    method, path, body, action = ENDPOINTS[endpoint]
    rid = f"auth-{endpoint}-{credential}"
    header = secured["headers"][credential]
    headers = {"X-Request-ID": rid, **({"Authorization": header} if header else {})}
    status, reply_headers, data = call(app, method, path.format(result=secured["result"]), body, headers=headers)

    want = expected(endpoint, credential)
    assert status == want, (status, data[:300])
    if status == 401:
        assert reply_headers["WWW-Authenticate"].startswith('Bearer realm="model-forensics"')
        assert json.loads(data)["error"]["type"] == "Unauthorized"
    if status == 403:
        error = json.loads(data)["error"]
        assert error["type"] == "Forbidden" and ("lacks" in error["message"]), error
    if status == 200 and endpoint == "metrics":
        assert b"model_forensics_http_requests_total" in data

    lines = [line for line in audit_lines(secured["audit"]) if line.get("request_id") == rid]
    if action is None:  # metrics scrapes are not audited
        assert lines == []
        return
    assert len(lines) == 1, lines
    (line,) = lines
    datetime.fromisoformat(line["time"])
    assert line["action"] == action
    if status == 200:
        assert line["outcome"] == "ok"
        assert (
            line["bundle"]
            == {"analyze": "incidents/inc0", "triage": "incidents", "results": "incident-stored"}[endpoint]
        )
        assert (line["principal"], line["role"]) == KNOWN[credential]
    else:
        assert line["outcome"] == "denied" and line["status"] == status and line["bundle"] is None
        name, role = KNOWN.get(credential, ("alice", None) if credential == "jwt_no_scope" else (None, None))
        assert (line["principal"], line["role"]) == (name, role)


@pytest.mark.ray
def test_failed_actions_are_audited_as_errors(app: Server, secured: dict[str, Any]) -> None:
    analyst = {"Authorization": secured["headers"]["analyst"]}
    status, _, _ = call(
        app, "POST", "/v1/analyze", {"bundle": "incidents/nope"}, headers={**analyst, "X-Request-ID": "audit-missing"}
    )
    assert status == 404
    status, _, _ = call(
        app, "POST", "/v1/analyze", {"bundle": "../outside"}, headers={**analyst, "X-Request-ID": "audit-escape"}
    )
    assert status == 400
    lines = {line["request_id"]: line for line in audit_lines(secured["audit"])}
    assert lines["audit-missing"]["outcome"] == "error"
    assert (lines["audit-missing"]["bundle"], lines["audit-missing"]["error"]) == (
        "incidents/nope",
        "BundleNotFoundError",
    )
    assert (lines["audit-escape"]["bundle"], lines["audit-escape"]["error"]) == ("../outside", "BundleError")


@pytest.mark.ray
def test_revoking_a_token_takes_effect_without_a_restart(app: Server, secured: dict[str, Any]) -> None:
    token = secured["store"].add("short-lived", "viewer")
    assert call(app, "GET", "/metrics", headers={"Authorization": f"Bearer {token}"})[0] == 200
    assert secured["store"].revoke("short-lived")
    assert call(app, "GET", "/metrics", headers={"Authorization": f"Bearer {token}"})[0] == 401


@pytest.mark.ray
def test_open_endpoints_need_no_token(app: Server) -> None:
    for path in ("/healthz", "/docs", "/openapi.json"):
        assert call(app, "GET", path)[0] == 200, path


@pytest.mark.ray
def test_an_unauthenticated_caller_cannot_make_the_server_parse_a_body(app: Server) -> None:
    """Auth runs before the body is read: junk bodies from strangers get 401, not 413/415/422."""
    for raw, kind in [
        (b"{not json", "application/json"),
        (b"x" * 200_000, "application/json"),
        (b"<xml/>", "text/xml"),
        (b"--b\r\n", "multipart/form-data; boundary=b"),
    ]:
        for path in ("/v1/analyze", "/v1/triage"):
            assert call(app, "POST", path, raw=raw, content_type=kind)[0] == 401, (path, kind)


# -- configuration and start-up, without Ray ----------------------------------------------------
def test_the_guides_security_section_loads() -> None:
    config = load_config(
        overrides={
            "authentication": {
                "type": "oauth2",
                "provider": "okta",
                "scopes": [SCOPE],
                "jwks_file": "/etc/jwks.json",
                "issuer": ISSUER,
                "audience": AUDIENCE,
            },
            "roles": yaml.safe_load(GUIDE_SECURITY)["roles"],
        }
    )
    assert config.authentication.type == "oauth2" and config.authentication.scopes == (SCOPE,)
    assert config.roles == Config().roles
    assert (
        load_config(
            overrides={
                "authentication.type": "oidc",
                "authentication.jwks_file": "j",
                "authentication.issuer": "i",
                "authentication.audience": "a",
            }
        ).authentication.type
        == "oauth2"
    )


@pytest.mark.parametrize(
    "override, fragment",
    [
        (
            {"authentication.type": "basic"},
            "'authentication.type': value 'basic' not allowed; expected none, tokens or oauth2",
        ),
        ({"authentication.type": "oauth2"}, "'authentication.jwks_file': value None not allowed"),
        ({"authentication.tenant": "x"}, "unknown config key 'authentication.tenant'"),
        ({"authentication.scopes": "model_forensics:analyze"}, "'authentication.scopes'"),
        ({"authentication.scopes": ["two words"]}, "scope names without spaces"),
        ({"authentication.default_role": "root"}, "'authentication.default_role': value 'root'"),
        ({"roles.analyst.permissions": ["run_analysis"]}, "the built-in analyst role"),
        ({"roles.viewer.permissions": ["view_results", "delete_bundles"]}, "permissions from read_bundles"),
        ({"roles.auditor": {"permissions": ["view_results"]}}, "unknown config key 'roles.auditor'"),
    ],
)
def test_bad_security_config_names_key_value_and_allowed(override: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(overrides=override)
    assert fragment in str(err.value)


def test_no_auth_source_refuses_to_start_and_says_how_to_fix_it(tmp_path: Path) -> None:
    from serve_app.security import AuthSetup

    with pytest.raises(ConfigError) as err:
        AuthSetup.resolve(AuthenticationConfig(), tokens_file=None, default_tokens_file=tmp_path / "none.json")
    message = str(err.value)
    assert "no authentication configured" in message and "model-forensics tokens add" in message
    assert "authentication.type: none" in message and "MODEL_FORENSICS_TOKENS_FILE" in message
    with pytest.raises(ConfigError, match="tokens file .*not found; create it with `model-forensics tokens add"):
        AuthSetup.resolve(AuthenticationConfig(type="tokens"), tokens_file=None, default_tokens_file=tmp_path / "x")
    (tmp_path / "jwks.json").write_text("{not json")
    with pytest.raises(ConfigError, match="JWKS file .*unusable"):
        AuthSetup.resolve(
            AuthenticationConfig(type="oauth2", jwks_file=str(tmp_path / "jwks.json"), issuer="i", audience="a"),
            tokens_file=None,
            default_tokens_file=tmp_path / "x",
        )


def test_auth_sources_in_order(tmp_path: Path) -> None:
    from forensics.ops.env import config_from_env
    from serve_app.security import AnonymousAccess, AuthSetup, BearerAccess

    home = tmp_path / "home-tokens.json"
    TokenStore(home).add("me", "admin")
    env_file = tmp_path / "env-tokens.json"
    TokenStore(env_file).add("ci", "analyst")
    unset = AuthenticationConfig()
    setup = AuthSetup.resolve(unset, tokens_file=None, default_tokens_file=home)  # `tokens add` default file
    assert (setup.kind, setup.tokens_file) == ("tokens", home)
    from_env = config_from_env(None, {"MODEL_FORENSICS_TOKENS_FILE": str(env_file)}).authentication
    setup = AuthSetup.resolve(from_env, tokens_file=None, default_tokens_file=home)
    assert setup.tokens_file == env_file and isinstance(setup.access(), BearerAccess)
    none = AuthSetup.resolve(
        AuthenticationConfig(type="none", tokens_file=str(env_file)), tokens_file=None, default_tokens_file=home
    )
    assert none.kind == "none" and isinstance(none.access(), AnonymousAccess)


def _serve_args(*argv: str) -> argparse.Namespace:
    from forensics.commands import serve_cmd

    parser = argparse.ArgumentParser()
    serve_cmd.configure(parser)
    return parser.parse_args(list(argv))


def test_the_cli_refuses_to_serve_without_auth_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from forensics.cli import main

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("MODEL_FORENSICS_TOKENS_FILE", raising=False)
    monkeypatch.delenv("MODEL_FORENSICS_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    assert main(["serve", "--bundle-dir", "b", "--output-dir", "r"]) == 2  # before Ray starts
    err = capsys.readouterr().err
    assert "no authentication configured" in err and len(err.strip().splitlines()) == 1


def test_type_none_must_be_explicit_and_is_warned_about(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from forensics.commands import serve_cmd

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("MODEL_FORENSICS_TOKENS_FILE", raising=False)
    monkeypatch.chdir(tmp_path)
    Path("open.yaml").write_text("authentication:\n  type: none\naudit_log: logs/audit.log\n")
    args = serve_cmd.app_args_from(_serve_args("--bundle-dir", "b", "--config", "open.yaml"))
    assert args["tokens_file"] is None and args["audit_log"] == str(tmp_path / "logs" / "audit.log")
    assert "WARNING: authentication.type is none: EVERY caller is treated as admin" in capsys.readouterr().err


# -- type none over a real uvicorn server (no Ray): anonymous, but still audited -----------------
class LocalBackend:
    """The Backend protocol run in-process with the real library (what the Analyzer deployment wraps)."""

    def __init__(self, settings: Any) -> None:
        self.settings = settings

    async def analyze(self, **kwargs: Any) -> dict[str, Any]:
        raise NotImplementedError("not used here")

    async def triage(self, *, directory: str, baseline: str | None, request_id: str) -> list[dict[str, Any]]:
        from forensics import service

        s = self.settings
        return service.run_triage(s.bundle_dir, directory, baseline=s.baseline, config=s.config)


@pytest.fixture
def open_api(secured: dict[str, Any], tmp_path: Path) -> Iterator[tuple[Server, Path]]:
    import uvicorn

    from forensics.ops.metrics import Metrics
    from serve_app.api import build_api
    from serve_app.settings import AppArgs, Settings

    (tmp_path / "open.yaml").write_text(f"authentication: {{type: none}}\naudit_log: {tmp_path / 'audit.log'}\n")
    settings = Settings.load(
        AppArgs(
            config_path=str(tmp_path / "open.yaml"),
            bundle_dir=str(secured["root"]),
            output_dir=str(tmp_path / "results"),
            baseline="benign",
        )
    )
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            build_api(LocalBackend(settings), settings, Metrics()),
            host="127.0.0.1",
            port=port,
            log_level="warning",
            lifespan="off",
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        yield Server(f"http://127.0.0.1:{port}"), tmp_path / "audit.log"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def test_type_none_lets_anyone_in_as_anonymous_admin_and_audits_it(open_api: tuple[Server, Path]) -> None:
    server, audit = open_api
    status, _, data = call(
        server, "POST", "/v1/triage", {"directory": "incidents"}, headers={"X-Request-ID": "open-triage"}
    )
    assert status == 200 and json.loads(data)["bundles"][0]["path"] == "incidents/inc0"
    assert call(server, "GET", "/metrics")[0] == 200
    (line,) = [line for line in audit_lines(audit) if line["request_id"] == "open-triage"]
    assert (line["principal"], line["role"], line["via"], line["outcome"]) == ("anonymous", "admin", "anonymous", "ok")


def test_an_audit_line_that_cannot_be_written_fails_the_request(open_api: tuple[Server, Path]) -> None:
    """The audit trail must not skip silently: the action answers 500 and /healthz reports the log."""
    server, audit = open_api
    audit.unlink(missing_ok=True)
    audit.mkdir()  # appending to a directory fails
    status, _, data = call(server, "POST", "/v1/triage", {"directory": "incidents"})
    assert status == 500 and json.loads(data)["error"]["type"] == "InternalError"
    status, _, data = call(server, "GET", "/healthz")
    assert status == 503 and "audit_log" in json.loads(data)["problems"][0]
