"""Plain data -> settings: keys and types checked, renamed keys read under their new names, YAML loaded.

config = load_config("configs/default.yaml", overrides={"modules.cca.max_fix_set_size": 3})
"""

from __future__ import annotations

import dataclasses
import types
import typing
import warnings
from pathlib import Path
from typing import Any

from forensics.config.settings import Config, check_key
from forensics.errors import ConfigError

__all__ = [
    "RENAMED_KEYS",
    "ConfigDeprecationWarning",
    "from_dict",
    "load_config",
    "to_dict",
    "use_configured_architecture",
]


class ConfigDeprecationWarning(UserWarning):
    """A config key was renamed; the old name still loads (``migrate-config`` rewrites the file)."""


# Old config keys -> their names now (one word per concept: the *population*, *sources*, *counterfactuals*).
RENAMED_KEYS: dict[str, str] = {
    "modules.cf.baseline_samples": "modules.cf.population_samples",
    "modules.cca.patch_sources": "modules.cca.counterfactuals",
}


def _renamed(data: dict[str, Any], prefix: str) -> dict[str, Any]:
    """``data`` with deprecated keys under their new names (a warning each); both names at once is an error."""
    out = dict(data)
    for key in list(data):
        new = RENAMED_KEYS.get(prefix + str(key))
        if new is None:
            continue
        leaf = new.rsplit(".", 1)[-1]
        if leaf in data:
            raise ConfigError(f"config keys {prefix + str(key)!r} and {new!r} both given; {new!r} is its name now")
        warnings.warn(
            f"config key {prefix + str(key)!r} is deprecated: it is {new!r} now "
            "(`model-forensics migrate-config --from v1.1 --to v1.1 FILE` rewrites the file)",
            ConfigDeprecationWarning,
            stacklevel=4,
        )
        out[leaf] = out.pop(key)
    return out


def from_dict(cls: type[Any], data: Any, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from plain data, checking keys and types; errors name the key. Deprecated
    keys (``RENAMED_KEYS``) load under their new names with a ``ConfigDeprecationWarning``."""
    if not isinstance(data, dict):
        where = prefix.rstrip(".") or "<root>"
        raise ConfigError(f"config key {where!r}: expected a mapping, got {type(data).__name__}")
    data = _renamed(data, prefix)
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls) if not f.metadata.get("secret")}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise ConfigError(f"unknown config key {prefix + unknown[0]!r}; allowed here: {', '.join(sorted(fields))}")
    kwargs = {k: _coerce(f"{prefix}{k}", hints[k], v) for k, v in data.items()}
    return cls(**kwargs)


def _coerce(key: str, hint: Any, value: Any) -> Any:
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return from_dict(hint, value, key + ".")
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in typing.get_args(hint):
            return None
        arms = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(arms) > 1:
            return _coerce_any(key, arms, value)
        hint = arms[0]
        origin = typing.get_origin(hint)
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            return from_dict(hint, value, key + ".")
    if origin is dict:
        check_key(key, isinstance(value, dict), value, "a mapping")
        key_hint, value_hint = typing.get_args(hint)
        return {_coerce(key, key_hint, k): _coerce(f"{key}.{k}", value_hint, v) for k, v in value.items()}
    if origin is typing.Literal:
        allowed = typing.get_args(hint)
        check_key(
            key.removesuffix("[]"),
            isinstance(value, str) and value in allowed,
            value,
            f"one of {', '.join(map(str, allowed))}",
        )
        return value
    if origin is tuple:
        check_key(key, isinstance(value, list | tuple), value, "a list")
        return tuple(_coerce(f"{key}[]", typing.get_args(hint)[0], v) for v in value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    check_key(
        key,
        isinstance(value, hint) and not (hint is int and isinstance(value, bool)),
        value,
        f"a value of type {hint.__name__}",
    )
    return value


def _coerce_any(key: str, arms: list[Any], value: Any) -> Any:
    """``value`` as the one of several plain types it is (``int | str | dict[str, ...]``)."""
    for arm in arms:
        base = typing.get_origin(arm) or arm
        if isinstance(base, type) and isinstance(value, base):
            return _coerce(key, arm, value)
    names = " or ".join(getattr(typing.get_origin(a) or a, "__name__", str(a)) for a in arms)
    raise ConfigError(f"config key {key!r}: value {value!r} not allowed; expected a value of type {names}")


def to_dict(obj: Any) -> Any:
    """Plain-data form of a config (tuples become lists), for reports and ``info``; secrets are left out."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj) if not f.metadata.get("secret")}
    if isinstance(obj, tuple):
        return [to_dict(v) for v in obj]
    return obj


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Read YAML ``path`` (or the defaults), apply ``overrides`` (dotted keys), validate."""
    import yaml

    data: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"config file {path}: cannot be read as YAML ({exc})") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {path}: top level must be a mapping, got {type(loaded).__name__}")
        data = loaded or {}
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    config: Config = from_dict(Config, data)
    use_configured_architecture(config)
    return config


def use_configured_architecture(config: Config) -> None:
    """Make ``model.architecture`` the spec of its model type in this process (over the tables and
    discovery; ``forensics.models.arch.use_architecture``). ``load_config`` calls it; a ``Config`` built in
    Python needs this call to take effect."""
    given = config.model.architecture
    if given is None:
        return
    from forensics.models.arch import ArchSpec, use_architecture

    use_architecture(ArchSpec(**dataclasses.asdict(given)))
