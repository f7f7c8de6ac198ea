"""The environment edge: ``MODEL_FORENSICS_*`` variables -> a validated ``Config``.

    config = config_from_env(args.config, os.environ)    # --config, else MODEL_FORENSICS_CONFIG
    parse_size("10GB")                                    # 10_000_000_000
    env_var("audit_log")                                  # 'MODEL_FORENSICS_AUDIT_LOG': ENV_VARS names each one

Only the CLI and the Serve app call this with ``os.environ``; the library gets the ``Config``.
Errors name the variable, the value it had and what is allowed (the encryption key is never shown).
Empty variables count as unset.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

from forensics.bundle.crypto import environment_key
from forensics.config import Config, load_config
from forensics.errors import ConfigError

__all__ = [
    "ENV_VARS",
    "MIN_MEMORY",
    "PREFIX",
    "config_from_env",
    "encryption_key_from_env",
    "env_overrides",
    "env_value",
    "env_var",
    "parse_bool",
    "parse_duration",
    "parse_memory",
    "parse_size",
]

PREFIX = "MODEL_FORENSICS_"
_UNITS = {
    "": 1,
    "k": 1000,
    "m": 1000**2,
    "g": 1000**3,
    "t": 1000**4,
    "ki": 1024,
    "mi": 1024**2,
    "gi": 1024**3,
    "ti": 1024**4,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?)?b?\s*$", re.IGNORECASE)
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
SIZE_ALLOWED = "a size such as 512MB, 10GB, 16GiB or a number of bytes (KB/MB/GB/TB = 1000^n, KiB/MiB/GiB = 1024^n)"
BOOL_ALLOWED = "true/false, 1/0, yes/no or on/off"


def parse_size(text: str) -> int:
    """``"10GB"`` -> 10_000_000_000, ``"16GiB"`` -> 17_179_869_184; ValueError when not a size > 0."""
    match = _SIZE.match(text)
    if not match:
        raise ValueError(text)
    value = int(float(match.group(1)) * _UNITS[(match.group(2) or "").lower()])
    if value < 1:
        raise ValueError(text)
    return value


#: Below this a memory budget cannot hold even the embedded 135M-parameter model (~540 MB of float32
#: weights) plus one replay batch, so a smaller MODEL_FORENSICS_MAX_MEMORY is a typo (16 for 16GB), not a plan.
MIN_MEMORY = 256 * 1024**2
MEMORY_ALLOWED = (
    "a size such as 512MB, 16GB or 16GiB, with its unit and at least 256MiB (KB/MB/GB/TB = 1000^n, "
    "KiB/MiB/GiB = 1024^n; a bare number is refused: 16 is not 16GB)"
)
_HAS_UNIT = re.compile(r"[kmgt]i?b?\s*$|b\s*$", re.IGNORECASE)


def parse_memory(text: str) -> int:
    """``MODEL_FORENSICS_MAX_MEMORY``: like ``parse_size`` but the unit is required and the value is at
    least ``MIN_MEMORY``; ValueError otherwise.

    >>> parse_memory("16GB")
    16000000000
    """
    value = parse_size(text)
    if not _HAS_UNIT.search(text.strip()) or value < MIN_MEMORY:
        raise ValueError(text)
    return value


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str, option: str, example: str) -> timedelta:
    """``"90m"``, ``"24h"``, ``"7d"``, ``"2w"`` -> timedelta; ``ConfigError`` naming ``option`` and the value.

    >>> parse_duration("90d", "--older-than", "90d").days
    90
    """
    match = _DURATION.match(text)
    if not match or float(match.group(1)) <= 0:
        raise ConfigError(
            f"{option} {text!r} not allowed; expected a number > 0 followed by s, m, h, d or w (e.g. {example})"
        )
    return timedelta(seconds=float(match.group(1)) * _SECONDS[match.group(2)])


def parse_bool(text: str) -> bool:
    low = text.strip().lower()
    if low in _TRUE or low in _FALSE:
        return low in _TRUE
    raise ValueError(text)


def _text(value: str) -> str:
    return value.strip()


# variable suffix -> (config key, parser, what is allowed)
ENV_VARS: dict[str, tuple[str, Callable[[str], Any], str]] = {
    "DEVICE": ("device", _text, "auto, cpu, cuda, cuda:N or mps"),
    "LOG_LEVEL": ("log_level", lambda v: v.strip().upper(), "DEBUG, INFO, WARNING, ERROR or CRITICAL"),
    "OUTPUT_DIR": ("output_dir", _text, "a directory path"),
    "BUNDLE_DIR": ("bundle_dir", _text, "a directory path"),
    "CACHE_ENABLED": ("cache.enabled", parse_bool, BOOL_ALLOWED),
    "CACHE_SIZE": ("cache.max_bytes", parse_size, SIZE_ALLOWED),
    "STREAMING_ENABLED": ("streaming_enabled", parse_bool, BOOL_ALLOWED),
    "MAX_MEMORY": ("max_memory", parse_memory, MEMORY_ALLOWED),
    "AUDIT_LOG": ("audit_log", _text, "a file path"),
    "TOKENS_FILE": ("authentication.tokens_file", _text, "a file path"),  # also where `tokens add` writes
    "CACHE_DIR": ("cache_dir", _text, "a directory path"),  # converted models; results cache in CACHE_DIR/results
}


def env_var(key: str) -> str:
    """The variable that sets config key ``key``.

    >>> env_var("authentication.tokens_file")
    'MODEL_FORENSICS_TOKENS_FILE'
    """
    for suffix, (name, _parse, _allowed) in ENV_VARS.items():
        if name == key:
            return PREFIX + suffix
    raise KeyError(f"config key {key!r} has no environment variable (see ENV_VARS)")


def env_value(environ: Mapping[str, str], key: str) -> Any:
    """What the environment sets config key ``key`` to (parsed and checked), or None when its variable is unset.

    >>> env_value({"MODEL_FORENSICS_AUDIT_LOG": " /var/log/mf.log "}, "audit_log")
    '/var/log/mf.log'
    """
    var = env_var(key)
    return _parsed(var, environ.get(var, ""))


def env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """Dotted config overrides from the environment, each parsed and checked on its own."""
    overrides: dict[str, Any] = {}
    for suffix, (key, _parse, _allowed) in ENV_VARS.items():
        value = _parsed(PREFIX + suffix, environ.get(PREFIX + suffix, ""))
        if value is not None:
            overrides[key] = value
    if encryption_key_from_env(environ) is not None:
        overrides["encryption_key_set"] = True
    return overrides


def _parsed(var: str, raw: str) -> Any:
    """The value of variable ``var`` (``raw`` its text) for its config key; None when empty."""
    if not raw.strip():
        return None
    key, parse, allowed = ENV_VARS[var.removeprefix(PREFIX)]
    try:
        value = parse(raw)
    except ValueError:
        raise ConfigError(f"environment variable {var}={raw!r} not allowed; expected {allowed}") from None
    try:
        load_config(overrides={key: value})
    except ConfigError as exc:
        raise ConfigError(f"environment variable {var}={raw!r}: {exc}") from None
    return value


def encryption_key_from_env(environ: Mapping[str, str]) -> bytes | None:
    """The 32-byte key of ``MODEL_FORENSICS_ENCRYPTION_KEY`` (standard or URL-safe base64), or None.
    The error never repeats the value: it is a secret."""
    return environment_key(environ)


def config_from_env(path: str | Path | None, environ: Mapping[str, str]) -> Config:
    """Config from ``path`` (else ``MODEL_FORENSICS_CONFIG``, else defaults) with env overrides applied."""
    source = "--config"
    if path is None and environ.get(PREFIX + "CONFIG", "").strip():
        path, source = environ[PREFIX + "CONFIG"].strip(), PREFIX + "CONFIG"
    overrides = env_overrides(environ)
    try:
        config = load_config(path, overrides)
    except ConfigError as exc:
        if source == PREFIX + "CONFIG":
            raise ConfigError(f"environment variable {source}={str(path)!r}: {exc}") from None
        raise
    key = encryption_key_from_env(environ)
    return config if key is None else dataclasses.replace(config, encryption_key=key)
