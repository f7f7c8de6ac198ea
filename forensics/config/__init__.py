"""Typed configuration: frozen dataclasses validated on construction, loaded from YAML at the edge.

    cfg = load_config("configs/default.yaml")     # or Config() for the defaults
    cfg.modules.cca.max_fix_set_size              # 5

Unknown keys, wrong types and out-of-range values raise ``ConfigError`` naming the key, the value
and what is allowed. Keys follow the deployment guide (``bundle_dir``, ``modules.cf.*``, ...); keys
renamed since (``RENAMED_KEYS``) still load, with a ``ConfigDeprecationWarning``. Modules: ``settings``
(the dataclasses), ``load`` (plain data and YAML into them).
"""

from forensics.config.load import RENAMED_KEYS, ConfigDeprecationWarning, from_dict, load_config, to_dict
from forensics.config.settings import (
    ALL_PERMISSIONS,
    AUTH_ALIASES,
    AUTH_TYPES,
    CONFIG_VERSION,
    ArchitectureConfig,
    AuthenticationConfig,
    CacheConfig,
    CCAConfig,
    CFConfig,
    Config,
    ModelConfig,
    ModulesConfig,
    RoleConfig,
    RolesConfig,
    ToggleConfig,
)

__all__ = [
    "ALL_PERMISSIONS",
    "AUTH_ALIASES",
    "AUTH_TYPES",
    "CONFIG_VERSION",
    "RENAMED_KEYS",
    "ArchitectureConfig",
    "AuthenticationConfig",
    "CCAConfig",
    "CFConfig",
    "CacheConfig",
    "Config",
    "ConfigDeprecationWarning",
    "ModelConfig",
    "ModulesConfig",
    "RoleConfig",
    "RolesConfig",
    "ToggleConfig",
    "from_dict",
    "load_config",
    "to_dict",
]
