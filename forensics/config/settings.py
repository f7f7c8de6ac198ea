"""The settings: frozen dataclasses, each validated on construction (``ConfigError`` naming the key)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from forensics.errors import ConfigError
from forensics.vocab import (
    ACCESS_ROLES,
    CANDIDATE_POSITIONS,
    COMPONENTS,
    COMPRESSION_METHODS,
    INTERVENTION_KINDS,
    PERMISSIONS,
    PREFILTERS,
    STRATEGIES,
    CandidatePositions,
    ComponentName,
    CompressionMethod,
    InterventionKind,
    Prefilter,
    SearchStrategy,
)

__all__ = [
    "ALL_PERMISSIONS",
    "AUTH_ALIASES",
    "AUTH_TYPES",
    "CONFIG_VERSION",
    "ArchitectureConfig",
    "AuthenticationConfig",
    "CCAConfig",
    "CFConfig",
    "CacheConfig",
    "Config",
    "ModelConfig",
    "ModulesConfig",
    "RoleConfig",
    "RolesConfig",
    "ToggleConfig",
    "check_key",
]

CONFIG_VERSION = "1.1"  # a file without ``version`` is v1.0 (the guide's format) and still loads
AUTH_TYPES = ("none", "tokens", "oauth2")
AUTH_ALIASES = {"oidc": "oauth2"}
ALL_PERMISSIONS = "all"  # the guide's shorthand for every permission (the admin role)


def check_key(key: str, ok: bool, value: Any, allowed: str) -> None:
    """Raise ``ConfigError`` naming ``key``, its ``value`` and what is ``allowed`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"config key {key!r}: value {value!r} not allowed; expected {allowed}")


@dataclass(frozen=True)
class CFConfig:
    """Compression Forensics settings (``modules.cf``), used as they are by ``forensics.cf.scores``."""

    enabled: bool = True
    anomaly_threshold: float = 2.0
    compression_methods: tuple[CompressionMethod, ...] = ("zlib", "gzip", "arithmetic")
    entropy_window: int = 256  # values per compressed window
    population_samples: int = 50  # at most this many population bundles feed the CF statistics

    def __post_init__(self) -> None:
        methods = self.compression_methods
        check_key(
            "modules.cf.compression_methods",
            not isinstance(methods, str) and bool(methods) and all(m in COMPRESSION_METHODS for m in methods),
            methods,
            f"a non-empty list of {', '.join(COMPRESSION_METHODS)}",
        )
        check_key(
            "modules.cf.compression_methods", len(set(methods)) == len(methods), methods, "each method at most once"
        )
        check_key(
            "modules.cf.anomaly_threshold",
            _is_number(self.anomaly_threshold) and self.anomaly_threshold > 0,
            self.anomaly_threshold,
            "a number > 0",
        )
        check_key(
            "modules.cf.entropy_window",
            _is_int(self.entropy_window) and 8 <= self.entropy_window <= 1 << 20,
            self.entropy_window,
            "an integer from 8 to 1048576",
        )
        check_key(
            "modules.cf.population_samples",
            _is_int(self.population_samples) and self.population_samples >= 2,
            self.population_samples,
            "an integer >= 2",
        )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass(frozen=True)
class CCAConfig:
    enabled: bool = True
    search_strategy: SearchStrategy = "greedy"
    max_fix_set_size: int = 5
    early_stop_threshold: float = 0.8
    intervention_types: tuple[InterventionKind, ...] = ("zero", "mean", "patch")
    positions: tuple[CandidatePositions, ...] = ("last", "all", "each", "ranges", "spans")
    components: tuple[ComponentName, ...] = ("resid", "attn", "mlp", "head")
    prefilter: Prefilter = "atp"
    prefilter_top_k: int = 48
    prefilter_sink_exact: float = 0.1  # share of first-position candidates AtP replays exactly (atp.SINK_EXACT)
    prefilter_sink_exact_max: int = 64  # ... and at most this many (sink.SINK_EXACT_MAX): linear in model size
    beam_width: int = 3
    random_samples: int = 256
    seed: int = 0
    max_replays: int = 20000
    batch_size: int = 32
    counterfactuals: int = 3  # sources picked from the population (the most similar prompts that answer right)
    siblings: bool = True  # replay the fix sets on sibling incidents (same family key) in the population / next to it

    def __post_init__(self) -> None:
        check_key(
            "modules.cca.search_strategy",
            self.search_strategy in STRATEGIES,
            self.search_strategy,
            " | ".join(STRATEGIES),
        )
        check_key(
            "modules.cca.max_fix_set_size",
            1 <= self.max_fix_set_size <= 32,
            self.max_fix_set_size,
            "an integer from 1 to 32",
        )
        check_key(
            "modules.cca.early_stop_threshold",
            0 < self.early_stop_threshold <= 1,
            self.early_stop_threshold,
            "a number in (0, 1]",
        )
        bad = [t for t in self.intervention_types if t not in INTERVENTION_KINDS]
        check_key(
            "modules.cca.intervention_types",
            bool(self.intervention_types) and not bad,
            list(self.intervention_types),
            f"a non-empty list of {', '.join(INTERVENTION_KINDS)}",
        )
        check_key(
            "modules.cca.positions",
            bool(self.positions) and set(self.positions) <= set(CANDIDATE_POSITIONS),
            list(self.positions),
            f"a non-empty list of {', '.join(CANDIDATE_POSITIONS)}",
        )
        check_key(
            "modules.cca.components",
            bool(self.components) and set(self.components) <= set(COMPONENTS),
            list(self.components),
            f"a non-empty list of {', '.join(COMPONENTS)}",
        )
        check_key("modules.cca.prefilter", self.prefilter in PREFILTERS, self.prefilter, " | ".join(PREFILTERS))
        check_key(
            "modules.cca.prefilter_sink_exact",
            _is_number(self.prefilter_sink_exact) and 0 <= self.prefilter_sink_exact <= 1,
            self.prefilter_sink_exact,
            "a number in [0, 1]",
        )
        for key in (
            "prefilter_top_k",
            "prefilter_sink_exact_max",
            "beam_width",
            "random_samples",
            "max_replays",
            "batch_size",
            "counterfactuals",
        ):
            value = getattr(self, key)
            check_key(f"modules.cca.{key}", isinstance(value, int) and value >= 1, value, "an integer >= 1")
        check_key("modules.cca.siblings", isinstance(self.siblings, bool), self.siblings, "true or false")


@dataclass(frozen=True)
class ToggleConfig:
    enabled: bool = False


@dataclass(frozen=True)
class ModulesConfig:
    cf: CFConfig = field(default_factory=CFConfig)
    cca: CCAConfig = field(default_factory=CCAConfig)
    isc: ToggleConfig = field(default_factory=ToggleConfig)
    dbc: ToggleConfig = field(default_factory=ToggleConfig)
    provenance: ToggleConfig = field(default_factory=ToggleConfig)


@dataclass(frozen=True)
class CacheConfig:
    """Results cache (``forensics.ops.cache``); env ``MODEL_FORENSICS_CACHE_ENABLED`` / ``_CACHE_SIZE``."""

    enabled: bool = False
    max_bytes: int = 10 * 1000**3

    def __post_init__(self) -> None:
        check_key(
            "cache.max_bytes",
            isinstance(self.max_bytes, int) and self.max_bytes >= 1,
            self.max_bytes,
            "an integer number of bytes >= 1",
        )


_SIZE = re.compile(r"^\s*\d+(\.\d+)?\s*(KB|MB|GB|KIB|MIB|GIB)\s*$", re.IGNORECASE)
_DEVICE_KEY = re.compile(r"^(cpu|disk|mps|cuda|cuda:\d+)$")
_SIZE_ALLOWED = "bytes (an integer >= 0) or a size with its unit such as 200MiB or 8GB"


def _is_size(value: object) -> bool:
    if isinstance(value, str):
        return bool(_SIZE.match(value))
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


_MODULE_PATH = re.compile(r"^[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*$")


@dataclass(frozen=True)
class ArchitectureConfig:
    """``model.architecture``: where a model type keeps its decoder layers and their parts (the fields of
    ``forensics.models.arch.ArchSpec``), for what discovery gets wrong. ``family`` is the
    ``config.model_type`` it applies to; paths are relative to the causal-LM wrapper (``model.layers``),
    ``attn``/``mlp`` relative to a block, the out-projections relative to ``attn``/``mlp``."""

    family: str = ""  # required, like layers and embed: empty is refused naming the key
    layers: str = ""
    embed: str = ""
    attn: str | None = None
    mlp: str | None = None
    final_norm: str | None = None
    attn_out_proj: str | None = None
    mlp_out_proj: str | None = None

    def __post_init__(self) -> None:
        check_key("model.architecture.family", bool(self.family.strip()), self.family, "a model_type such as llama")
        for key in ("layers", "embed"):
            check_key(f"model.architecture.{key}", bool(getattr(self, key)), getattr(self, key), "a module path")
        for key in ("layers", "embed", "attn", "mlp", "final_norm", "attn_out_proj", "mlp_out_proj"):
            value = getattr(self, key)
            check_key(
                f"model.architecture.{key}",
                value is None or bool(_MODULE_PATH.match(value)),
                value,
                "a dotted module path such as model.layers" + ("" if key in ("layers", "embed") else ", or null"),
            )


@dataclass(frozen=True)
class ModelConfig:
    """How models load (``model:``). ``max_memory``: the weights' budget, one size for the execution device
    or one per device (``{cpu: 2GiB, cuda:0: 20GiB, disk: 100GiB}``; a device left out gets nothing);
    weights larger than the execution device's share are dispatched by accelerate (``device_map="auto"``):
    the rest in CPU memory, then on disk under ``offload_dir`` (null: ``CACHE_DIR/offload``). Null: the
    whole model on ``device``, as before."""

    max_memory: int | str | dict[str, int | str] | None = field(default=None, hash=False)
    offload_dir: str | None = None
    architecture: ArchitectureConfig | None = None  # module paths over the tables and discovery

    def __post_init__(self) -> None:
        budget = self.max_memory
        if isinstance(budget, dict):
            for key, size in budget.items():
                check_key("model.max_memory", bool(_DEVICE_KEY.match(str(key))), key, "cpu, disk, mps, cuda or cuda:N")
                check_key(f"model.max_memory.{key}", _is_size(size), size, _SIZE_ALLOWED)
        elif budget is not None:
            check_key("model.max_memory", _is_size(budget), budget, f"{_SIZE_ALLOWED}, or a mapping device -> size")
        check_key(
            "model.offload_dir",
            self.offload_dir is None or bool(self.offload_dir.strip()),
            self.offload_dir,
            "null or a directory path",
        )


@dataclass(frozen=True)
class RoleConfig:
    """One entry of the guide's ``roles:`` table: the permissions a role grants (``all``: every one)."""

    permissions: tuple[str, ...] = ()


@dataclass(frozen=True)
class RolesConfig:
    """The guide's RBAC table. Roles are built in (token files and JWTs name them, ``forensics.ops.auth``
    enforces them), so a config may restate a role but not change it: each role listed must grant exactly
    its built-in permissions, and a role name other than viewer, analyst or admin is an unknown key."""

    viewer: RoleConfig = field(default_factory=lambda: RoleConfig(tuple(sorted(ACCESS_ROLES["viewer"]))))
    analyst: RoleConfig = field(default_factory=lambda: RoleConfig(tuple(sorted(ACCESS_ROLES["analyst"]))))
    admin: RoleConfig = field(default_factory=lambda: RoleConfig((ALL_PERMISSIONS,)))

    def __post_init__(self) -> None:
        known = (*PERMISSIONS, ALL_PERMISSIONS)
        for name, builtin in ACCESS_ROLES.items():
            granted = getattr(self, name).permissions
            key = f"roles.{name}.permissions"
            check_key(key, all(p in known for p in granted), list(granted), f"permissions from {', '.join(known)}")
            expanded = frozenset(PERMISSIONS) if ALL_PERMISSIONS in granted else frozenset(granted)
            builtin_text = "[all]" if builtin == frozenset(PERMISSIONS) else f"[{', '.join(sorted(builtin))}]"
            check_key(
                key,
                expanded == builtin,
                list(granted),
                f"{builtin_text}, the built-in {name} role (roles are fixed; custom permissions are not supported)",
            )


@dataclass(frozen=True)
class AuthenticationConfig:
    """Who may call the HTTP API (``model-forensics serve``): the guide's ``authentication:`` section.

    ``type``: ``tokens`` (API tokens of ``model-forensics tokens``), ``oauth2`` (alias ``oidc``; bearer
    JWTs checked offline against ``jwks_file``, ``issuer``, ``audience`` and every one of ``scopes``, plus
    API tokens when a tokens file is set) or ``none`` (no authentication, only when said explicitly).
    Unset: ``tokens`` when a tokens file is known, else ``serve`` refuses to start.
    """

    type: str | None = None
    provider: str | None = None  # informational: okta, auth0, keycloak, ...
    scopes: tuple[str, ...] = ("model_forensics:analyze",)
    tokens_file: str | None = None
    jwks_file: str | None = None
    issuer: str | None = None
    audience: str | None = None
    role_claim: str = "role"
    default_role: str | None = "analyst"  # role of a JWT without ``role_claim``; null: such JWTs are refused

    def __post_init__(self) -> None:
        if self.type in AUTH_ALIASES:
            object.__setattr__(self, "type", AUTH_ALIASES[self.type])
        check_key(
            "authentication.type",
            self.type is None or self.type in AUTH_TYPES,
            self.type,
            "none, tokens or oauth2 (alias oidc), or null (tokens when a tokens file is configured)",
        )
        for key in ("provider", "tokens_file", "jwks_file", "issuer", "audience"):
            value = getattr(self, key)
            check_key(
                f"authentication.{key}", value is None or bool(value.strip()), value, "null or a non-empty string"
            )
        check_key(
            "authentication.scopes",
            all(s and not any(c.isspace() for c in s) for s in self.scopes),
            list(self.scopes),
            "a list of scope names without spaces, e.g. [model_forensics:analyze]",
        )
        check_key("authentication.role_claim", bool(self.role_claim.strip()), self.role_claim, "a JWT claim name")
        check_key(
            "authentication.default_role",
            self.default_role is None or self.default_role in ACCESS_ROLES,
            self.default_role,
            f"null or one of {', '.join(ACCESS_ROLES)}",
        )
        if self.type == "oauth2":
            for key in ("jwks_file", "issuer", "audience"):
                check_key(
                    f"authentication.{key}",
                    getattr(self, key) is not None,
                    None,
                    "a value when authentication.type is oauth2 (JWTs are checked offline against it)",
                )
            check_key(
                "authentication.scopes", bool(self.scopes), [], "at least one scope when authentication.type is oauth2"
            )


@dataclass(frozen=True)
class Config:
    version: str = CONFIG_VERSION
    bundle_dir: str = "./bundles"
    output_dir: str = "./analysis_results"
    device: str = "auto"
    timeout_minutes: int = 120
    fidelity_tolerance: float = 1e-4  # absolute part of the fidelity tolerance (logits and activations)
    fidelity_rtol: float = 1e-4  # relative part: |replayed - recorded| <= atol + rtol * max|recorded|, per module
    modules: ModulesConfig = field(default_factory=ModulesConfig)
    log_level: str = "INFO"
    log_file: str | None = "model_forensics.log"
    cache: CacheConfig = field(default_factory=CacheConfig)
    streaming_enabled: bool = False
    max_memory: int | None = None  # bytes
    audit_log: str | None = None
    encryption_key_set: bool = False  # only whether MODEL_FORENSICS_ENCRYPTION_KEY is set; never the key
    cache_dir: str | None = None  # converted models (and the results cache); None: ~/.cache/model-forensics
    model: ModelConfig = field(default_factory=ModelConfig)  # how models load: weights budget, offload
    # The bundle key itself: set only by the edge (``forensics.ops.env.config_from_env`` from
    # MODEL_FORENSICS_ENCRYPTION_KEY), never read from a file, never in ``to_dict``, ``repr`` or a report.
    encryption_key: bytes | None = field(default=None, repr=False, metadata={"secret": True})
    roles: RolesConfig = field(default_factory=RolesConfig)
    authentication: AuthenticationConfig = field(default_factory=AuthenticationConfig)

    def __post_init__(self) -> None:
        check_key(
            "version",
            self.version == CONFIG_VERSION,
            self.version,
            f"{CONFIG_VERSION!r} (or no version key for a v1.0 file; "
            "`model-forensics migrate-config --from v1.0 --to v1.1 FILE` adds it)",
        )
        check_key(
            "device",
            self.device in ("auto", "cpu", "cuda", "mps") or self.device.startswith("cuda:"),
            self.device,
            "auto, cpu, cuda, cuda:N or mps",
        )
        check_key("timeout_minutes", self.timeout_minutes >= 1, self.timeout_minutes, "an integer >= 1")
        check_key("fidelity_tolerance", self.fidelity_tolerance > 0, self.fidelity_tolerance, "a number > 0")
        check_key("fidelity_rtol", 0 <= self.fidelity_rtol < 1, self.fidelity_rtol, "a number in [0, 1)")
        check_key(
            "log_level",
            self.log_level.upper() in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"),
            self.log_level,
            "DEBUG, INFO, WARNING, ERROR or CRITICAL",
        )
        check_key(
            "max_memory",
            self.max_memory is None or self.max_memory >= 1,
            self.max_memory,
            "null or an integer number of bytes >= 1",
        )
