"""Typed builder arguments of the Serve app, and what a replica derives from them at start.

    args = AppArgs(bundle_dir="/data/bundles", baseline="benign", max_queued_requests=8)
    settings = Settings.load(args)        # config (file + MODEL_FORENSICS_* env), dirs, baseline, key, auth, audit

``AppArgs`` is what ``serve_app.app:build_app`` takes (from Python, the Serve config's ``args:``, or
``model-forensics serve --app-args FILE``); unknown keys and out-of-range values are errors naming the field.
Paths the config defines (``bundle_dir``, ``output_dir``, ``log_file``, ``audit_log``, the tokens file)
are config keys here too (``CONFIG_KEYS``): an arg that names one overrides the config's value
(``AppArgs.configured``), and everything after reads the config.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from forensics.config import Config
from forensics.errors import ConfigError
from forensics.ops.auth import DEFAULT_TOKENS_FILE
from forensics.ops.env import env_var
from forensics.service import MAX_UPLOAD_BYTES
from serve_app.security import NONE_WARNING, AuthSetup

__all__ = ["CONFIG_KEYS", "AppArgs", "Settings", "audit_log_path", "default_tokens_path", "with_overrides"]

log = logging.getLogger("serve_app")

# Defaults, named: the k8s RayService config overrides these per deployment.
ANALYZER_MAX_ONGOING_REQUESTS = 4  # analyses admitted per replica (they run one at a time, the rest wait)
ANALYZER_MAX_QUEUED_REQUESTS = 16  # callers waiting for an analyzer beyond that get 503
INGRESS_MAX_ONGOING_REQUESTS = 32
INGRESS_MAX_QUEUED_REQUESTS = 64
TARGET_ONGOING_REQUESTS = 2.0
GPU_FRACTION = 0.5  # two analyzer replicas share one GPU when there is one

# App arg -> the config key it overrides: the config defines these paths, an arg only replaces one.
CONFIG_KEYS = {
    "bundle_dir": "bundle_dir",
    "output_dir": "output_dir",
    "log_file": "log_file",
    "audit_log": "audit_log",
    "tokens_file": "authentication.tokens_file",
}


def _overrides(key: str, what: str) -> str:
    """An arg's description: what it is, and the config key (and variable) it overrides."""
    try:
        variable = f" or {env_var(key)}"
    except KeyError:  # a key no variable sets
        variable = ""
    return f"{what}; default: config {key}{variable}"


class AppArgs(BaseModel):
    """Builder arguments of the model-forensics Serve app (all optional)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    log_file: str | None = Field(
        default=None, description=_overrides("log_file", "service log file; relative paths are under output_dir")
    )
    config_path: str | None = Field(
        default=None, description="YAML config; default MODEL_FORENSICS_CONFIG, else built-ins"
    )
    bundle_dir: str | None = Field(default=None, description=_overrides("bundle_dir", "root of every bundle name"))
    output_dir: str | None = Field(
        default=None, description=_overrides("output_dir", "where <result id>.json reports go")
    )
    baseline: str | None = Field(
        default=None, description="default baseline: a benign bundle dir under bundle_dir, or a .json"
    )
    analyzer_replicas: int = Field(default=1, ge=1, le=1024)
    max_ongoing_requests: int = Field(default=ANALYZER_MAX_ONGOING_REQUESTS, ge=1, le=10_000)
    max_queued_requests: int = Field(default=ANALYZER_MAX_QUEUED_REQUESTS, ge=0, le=100_000)
    autoscaling_min_replicas: int | None = Field(default=None, ge=0, le=1024)
    autoscaling_max_replicas: int | None = Field(default=None, ge=1, le=1024)
    target_ongoing_requests: float = Field(default=TARGET_ONGOING_REQUESTS, gt=0)
    num_gpus: float | None = Field(default=None, ge=0, description="per analyzer replica; None: decided at run time")
    analyzer_num_cpus: float = Field(default=1.0, ge=0)
    ingress_num_cpus: float = Field(default=0.5, ge=0)
    ingress_max_ongoing_requests: int = Field(default=INGRESS_MAX_ONGOING_REQUESTS, ge=1, le=10_000)
    ingress_max_queued_requests: int = Field(default=INGRESS_MAX_QUEUED_REQUESTS, ge=0, le=100_000)
    max_upload_bytes: int = Field(default=MAX_UPLOAD_BYTES, ge=1)
    allowed_models: tuple[str, ...] | None = Field(
        default=None, description="model references a bundle may name (uploads choose the model!); None: any"
    )
    tokens_file: str | None = Field(
        default=None,
        description=_overrides("authentication.tokens_file", "API tokens file") + f", else {DEFAULT_TOKENS_FILE}",
    )
    audit_log: str | None = Field(
        default=None, description=_overrides("audit_log", "audit log (JSON lines)") + "; None: no audit log"
    )

    @model_validator(mode="after")
    def _autoscaling_bounds(self) -> AppArgs:
        lo, hi = self.autoscaling_min_replicas, self.autoscaling_max_replicas
        if (lo is None) != (hi is None):
            raise ValueError("autoscaling_min_replicas and autoscaling_max_replicas must be set together")
        if lo is not None and hi is not None and lo > hi:
            raise ValueError(f"autoscaling_min_replicas ({lo}) > autoscaling_max_replicas ({hi})")
        return self

    @property
    def autoscaling(self) -> bool:
        return self.autoscaling_max_replicas is not None

    def configured(self, config: Config) -> Config:
        """``config`` with the paths these args name (non-empty) in place of its own (``CONFIG_KEYS``)."""
        given = {key: getattr(self, name) for name, key in CONFIG_KEYS.items() if getattr(self, name)}
        return with_overrides(config, given)


def with_overrides(config: Config, overrides: dict[str, Any]) -> Config:
    """``config`` with dotted keys replaced (``{"authentication.tokens_file": ...}``), validated again."""
    changed: Any = config
    for dotted, value in overrides.items():
        changed = _replaced(changed, dotted.split("."), value)
    result: Config = changed
    return result


def _replaced(node: Any, path: list[str], value: Any) -> Any:
    head, *rest = path
    return dataclasses.replace(node, **{head: _replaced(getattr(node, head), rest, value) if rest else value})


@dataclass(frozen=True)
class Settings:
    """What one replica works with, resolved once at start (this is an edge: it reads the environment)."""

    config: Config
    bundle_dir: Path
    output_dir: Path
    baseline: Path | None
    max_upload_bytes: int
    encryption_key: bytes | None
    allowed_models: frozenset[str] | None
    auth: AuthSetup
    audit_log: Path | None

    @classmethod
    def load(cls, args: AppArgs) -> Settings:
        from forensics.ops.env import config_from_env, encryption_key_from_env
        from forensics.ops.logs import configure_logging

        config = args.configured(config_from_env(args.config_path, os.environ))
        bundle_dir = Path(config.bundle_dir).resolve()
        output_dir = Path(config.output_dir).resolve()
        log_file = config.log_file
        configure_logging(config.log_level, None if log_file is None else output_dir / log_file)  # absolute stays
        if not bundle_dir.is_dir():
            raise ConfigError(f"bundle_dir {str(bundle_dir)!r}: not a directory")
        output_dir.mkdir(parents=True, exist_ok=True)
        auth = AuthSetup.resolve(config.authentication, tokens_file=None, default_tokens_file=default_tokens_path())
        if auth.kind == "none":
            log.warning(NONE_WARNING)
        return cls(
            config=config,
            bundle_dir=bundle_dir,
            output_dir=output_dir,
            baseline=_baseline(bundle_dir, args.baseline),
            max_upload_bytes=args.max_upload_bytes,
            encryption_key=encryption_key_from_env(os.environ),
            allowed_models=None if args.allowed_models is None else frozenset(args.allowed_models),
            auth=auth,
            audit_log=audit_log_path(config.audit_log),
        )

    def problems(self) -> list[str]:
        """Why this replica cannot serve (empty when healthy): directories gone or not writable."""
        found = []
        if not self.bundle_dir.is_dir():
            found.append(f"bundle_dir {self.bundle_dir} is not a directory")
        if not (self.output_dir.is_dir() and os.access(self.output_dir, os.W_OK)):
            found.append(f"output_dir {self.output_dir} is not a writable directory")
        if self.audit_log is not None and _audit_problem(self.audit_log):
            found.append(f"audit_log {self.audit_log}: {_audit_problem(self.audit_log)}")
        return found


def default_tokens_path() -> Path:
    """Where ``model-forensics tokens add`` writes unless told otherwise (the serving user's home)."""
    return Path(DEFAULT_TOKENS_FILE).expanduser()


def audit_log_path(path: str | None) -> Path | None:
    """The configured audit log, absolute, its directory created (0700, like the CLI's); ``ConfigError``
    when it cannot be appended to."""
    if not path:
        return None
    resolved = Path(path).expanduser().absolute()
    try:
        resolved.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"audit_log {path!r}: cannot create its directory ({exc.strerror})") from None
    problem = _audit_problem(resolved)
    if problem:
        raise ConfigError(f"audit_log {path!r}: {problem}")
    return resolved


def _audit_problem(path: Path) -> str | None:
    if path.exists():
        return None if path.is_file() and os.access(path, os.W_OK) else "exists but is not a writable file"
    if not (path.parent.is_dir() and os.access(path.parent, os.W_OK)):
        return f"its directory {path.parent} is not a writable directory"
    return None


def _baseline(bundle_dir: Path, baseline: str | None) -> Path | None:
    """The operator's default baseline: absolute as given, relative under ``bundle_dir``; must exist."""
    if baseline is None:
        return None
    path = Path(baseline) if os.path.isabs(baseline) else bundle_dir / baseline
    if not path.exists():
        raise ConfigError(f"baseline {baseline!r}: {path} does not exist")
    return path
