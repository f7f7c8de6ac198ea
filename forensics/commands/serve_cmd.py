"""`serve`: the HTTP API as a Ray Serve app on a local Ray (or a cluster at --address); blocks until Ctrl-C or SIGTERM.

On SIGTERM (what Kubernetes and systemd send) or Ctrl-C the app is deleted first, so in-flight
requests finish (or get 503) within the replicas' grace period, then Serve and Ray stop, and any
process of the local Ray this command started that is still alive is terminated.

Refuses to start without an authentication source (API tokens or OAuth2 JWTs, see docs/config.md)
unless the config says ``authentication.type: none``, which it then warns about on every start.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from forensics.commands.common import add_config_arg
from forensics.config import Config
from forensics.errors import ConfigError

if TYPE_CHECKING:
    from serve_app.security import AuthSetup
    from serve_app.settings import AppArgs

NAME = "serve"
HELP = "serve the HTTP API (Ray Serve + FastAPI; OpenAPI docs at /docs)"
APP_NAME = "model-forensics"
DEFAULT_HOST = "127.0.0.1"  # loopback unless the operator opens it up on purpose
DEFAULT_PORT = 8000
STOP_WAIT_S = 10.0  # after ray.shutdown, how long Ray's processes get before SIGKILL
# Serve app arg (serve_app.settings.AppArgs) -> the flag that sets it; the paths override the config's keys.
_FLAGS = {
    "config_path": "config",
    "bundle_dir": "bundle_dir",
    "output_dir": "output_dir",
    "baseline": "baseline",
    "tokens_file": "tokens_file",
}


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on (default {DEFAULT_HOST})")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    p.add_argument(
        "--address",
        help="join this Ray cluster (e.g. auto, ray://head:10001); default: $RAY_ADDRESS, "
        "else a local Ray started (and stopped) by this command",
    )
    from forensics.ops.auth import DEFAULT_TOKENS_FILE
    from forensics.ops.env import env_var

    p.add_argument("--bundle-dir", help="root of the bundle names clients send (default: config bundle_dir)")
    p.add_argument("--output-dir", help="where <result id>.json reports go (default: config output_dir)")
    p.add_argument("--baseline", help="default baseline: benign bundle dir under bundle_dir, or a .json")
    p.add_argument("--app-args", help="YAML/JSON file of Serve app args (replicas, queue limits, autoscaling, ...)")
    p.add_argument(
        "--tokens-file",
        help="API tokens file (default: config authentication.tokens_file, "
        f"${env_var('authentication.tokens_file')}, else {DEFAULT_TOKENS_FILE} if it exists)",
    )
    add_config_arg(p)


class Shutdown(BaseException):
    """SIGTERM arrived (Kubernetes, systemd): leave the serving loop the way Ctrl-C does."""


def run(args: argparse.Namespace) -> int:
    app_args = app_args_from(args)
    import ray
    from ray import serve

    from forensics.service import repair_index
    from serve_app.app import build_app

    repaired = repair_index(app_args["output_dir"])  # results a killed server wrote but never indexed
    if repaired:
        print(f"indexed {repaired} stored result(s) missing from {app_args['output_dir']}/index.sqlite", flush=True)
    address = args.address or os.environ.get("RAY_ADDRESS") or "local"  # never join a stranger's cluster by accident
    previous = signal.getsignal(signal.SIGTERM)
    started: list[Any] = []
    try:
        ray.init(address=address, ignore_reinit_error=True, include_dashboard=False)
        signal.signal(signal.SIGTERM, _on_sigterm)  # after ray.init, which installs its own (sys.exit, abort)
        started = _descendants() if address == "local" else []  # the Ray processes this command started
        serve.start(http_options={"host": args.host, "port": args.port})
        print(
            f"model-forensics API starting on http://{args.host}:{args.port}/ (docs: /docs; Ctrl-C stops)", flush=True
        )
        print(_describe_security(app_args), flush=True)
        serve.run(build_app(app_args), name=APP_NAME, route_prefix="/", blocking=True)
    except (KeyboardInterrupt, Shutdown, SystemExit):  # SystemExit: Ray's handler, for a SIGTERM during ray.init
        print("model-forensics API stopping: finishing in-flight requests", flush=True)
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the drain short
        try:
            if ray.is_initialized():
                _drain(serve)
        finally:
            ray.shutdown()
            _stop(started + _descendants())
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
    return 0


def _on_sigterm(signum: int, frame: object) -> None:
    raise Shutdown()


def _drain(serve: Any) -> None:
    """Delete the app first: replicas stop taking requests and finish the ones they hold (each within its
    ``graceful_shutdown_timeout_s``; an analysis cut off answers 503), then stop Serve itself."""
    try:
        serve.delete(APP_NAME, _blocking=True)
    except Exception as exc:  # Serve never came up (a port in use, a failed replica): nothing to drain
        print(f"model-forensics API: no app to drain ({type(exc).__name__}: {exc})", file=sys.stderr, flush=True)
    serve.shutdown()


def _descendants() -> list[Any]:
    import psutil

    return list(psutil.Process().children(recursive=True))


def _stop(processes: list[Any], wait_s: float = STOP_WAIT_S) -> None:
    """Stop what ``ray.shutdown`` left of the processes this command started (its agents outlive the raylet
    otherwise): SIGTERM, then SIGKILL after ``wait_s``."""
    import psutil

    alive = [p for p in {p.pid: p for p in processes}.values() if p.is_running()]
    for proc in alive:
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            continue
    _gone, left = psutil.wait_procs(alive, timeout=wait_s)
    for proc in left:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            continue
    psutil.wait_procs(left, timeout=wait_s)


def app_args_from(args: argparse.Namespace) -> dict[str, Any]:
    """Builder args with every path absolute (replicas may not share our working directory).

    The flags override the ``--app-args`` file; both override the config's paths (``AppArgs.configured``),
    and the paths sent to the replicas are the config's after that. Config errors surface here, before
    Ray starts, as one CLI line, and so does a missing auth source.
    """
    from forensics.ops.env import config_from_env
    from forensics.ops.health import require_device
    from serve_app.settings import audit_log_path

    if not 1 <= args.port <= 65535:
        raise ConfigError(f"--port {args.port}: expected 1 to 65535")
    values: dict[str, Any] = _load_app_args(args.app_args) if args.app_args else {}
    flags = {name: getattr(args, dest) for name, dest in _FLAGS.items()}
    values.update({name: value for name, value in flags.items() if value})
    if values.get("baseline") is not None:
        values["baseline"] = str(values["baseline"])
    config_path = values.get("config_path")
    config = _validated(values).configured(config_from_env(config_path, os.environ))
    require_device(config, config_path, os.environ)
    audit_log = audit_log_path(config.audit_log)
    setup = _auth_setup(config)
    values |= {
        "config_path": _abs(config_path),
        "bundle_dir": _abs(config.bundle_dir),
        "output_dir": _abs(config.output_dir),
        "log_file": _abs(config.log_file),  # replicas run in Ray's directories
        "audit_log": None if audit_log is None else str(audit_log),
        "tokens_file": None if setup.tokens_file is None else str(setup.tokens_file),
    }
    if setup.kind == "none":
        from serve_app.security import NONE_WARNING

        print(f"WARNING: {NONE_WARNING}", file=sys.stderr, flush=True)
    parsed = _validated(values).model_dump()
    for key in ("bundle_dir", "output_dir"):
        try:
            Path(parsed[key]).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"{key} {parsed[key]!r}: cannot create the directory ({exc.strerror})") from None
    return parsed


def _describe_security(app_args: dict[str, Any]) -> str:
    from forensics.ops.env import config_from_env
    from serve_app.settings import AppArgs

    config = AppArgs.model_validate(app_args).configured(config_from_env(app_args["config_path"], os.environ))
    return f"authentication: {_auth_setup(config).describe()}; audit log: {app_args['audit_log'] or 'off'}"


def _auth_setup(config: Config) -> AuthSetup:
    """How the replicas will authenticate: the CLI's HOME and environment decide, not theirs."""
    from serve_app.security import AuthSetup
    from serve_app.settings import default_tokens_path

    return AuthSetup.resolve(config.authentication, tokens_file=None, default_tokens_file=default_tokens_path())


def _load_app_args(path: str) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"--app-args {path}: cannot be read as YAML/JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--app-args {path}: expected a mapping of Serve app args, got {type(data).__name__}")
    return data


def _validated(values: dict[str, Any]) -> AppArgs:
    from pydantic import ValidationError

    from serve_app.settings import AppArgs

    try:
        return AppArgs.model_validate(values)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "args"
        raise ConfigError(f"serve app arg {where!r}: {first['msg']} (got {first.get('input')!r})") from None


def _abs(path: str | None) -> str | None:
    return None if path is None else os.path.abspath(path)
