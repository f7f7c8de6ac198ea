"""Env overrides (MODEL_FORENSICS_*) and config-file migration v1.0 -> v1.1."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from forensics.config import Config, load_config, to_dict
from forensics.errors import ConfigError
from forensics.ops.env import config_from_env, encryption_key_from_env, parse_size
from forensics.ops.migrate import migrate_file, migrate_text

ROOT = Path(__file__).resolve().parents[1]
KEY = base64.b64encode(bytes(range(32))).decode()


@pytest.mark.parametrize(
    "var, value, attr, expected",
    [
        ("DEVICE", "cpu", "device", "cpu"),
        ("LOG_LEVEL", "debug", "log_level", "DEBUG"),
        ("OUTPUT_DIR", "/data/analysis_results", "output_dir", "/data/analysis_results"),
        ("BUNDLE_DIR", "/data/bundles", "bundle_dir", "/data/bundles"),
        ("CACHE_ENABLED", "true", "cache.enabled", True),
        ("CACHE_ENABLED", "0", "cache.enabled", False),
        ("CACHE_SIZE", "10GB", "cache.max_bytes", 10 * 1000**3),
        ("CACHE_SIZE", "512MB", "cache.max_bytes", 512 * 1000**2),
        ("CACHE_SIZE", "2GiB", "cache.max_bytes", 2 * 1024**3),
        ("STREAMING_ENABLED", "yes", "streaming_enabled", True),
        ("MAX_MEMORY", "16GB", "max_memory", 16 * 1000**3),
        ("AUDIT_LOG", "/var/log/audit/model_forensics.log", "audit_log", "/var/log/audit/model_forensics.log"),
        ("ENCRYPTION_KEY", KEY, "encryption_key_set", True),
    ],
)
def test_each_variable_overrides(var: str, value: str, attr: str, expected: object) -> None:
    config = config_from_env(None, {f"MODEL_FORENSICS_{var}": value})
    obj: object = config
    for part in attr.split("."):
        obj = getattr(obj, part)
    assert obj == expected


@pytest.mark.parametrize(
    "var, value, allowed",
    [
        ("DEVICE", "tpu", "auto, cpu, cuda, cuda:N or mps"),
        ("LOG_LEVEL", "LOUD", "DEBUG, INFO, WARNING, ERROR or CRITICAL"),
        ("CACHE_ENABLED", "maybe", "true/false"),
        ("CACHE_SIZE", "lots", "a size such as 512MB"),
        ("CACHE_SIZE", "0GB", "a size such as 512MB"),
        ("STREAMING_ENABLED", "2", "true/false"),
        ("MAX_MEMORY", "16 parsecs", "a size such as 512MB"),
    ],
)
def test_bad_values_name_variable_value_and_allowed(var: str, value: str, allowed: str) -> None:
    with pytest.raises(ConfigError) as err:
        config_from_env(None, {f"MODEL_FORENSICS_{var}": value})
    message = str(err.value)
    assert f"MODEL_FORENSICS_{var}={value!r}" in message and allowed in message


@pytest.mark.parametrize(
    "value, fragment",
    [
        ("not base64 at all!", "is not valid base64"),
        (base64.b64encode(b"short").decode(), "exactly 32 bytes (AES-256), got 5 bytes"),
    ],
)
def test_bad_encryption_key_is_never_echoed(value: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        config_from_env(None, {"MODEL_FORENSICS_ENCRYPTION_KEY": value})
    assert fragment in str(err.value) and value not in str(err.value)
    assert "MODEL_FORENSICS_ENCRYPTION_KEY" in str(err.value)


def test_key_decodes_and_stays_out_of_config() -> None:
    assert encryption_key_from_env({"MODEL_FORENSICS_ENCRYPTION_KEY": KEY}) == bytes(range(32))
    url_safe = base64.urlsafe_b64encode(bytes(range(200, 232))).decode()
    assert encryption_key_from_env({"MODEL_FORENSICS_ENCRYPTION_KEY": url_safe}) == bytes(range(200, 232))
    config = config_from_env(None, {"MODEL_FORENSICS_ENCRYPTION_KEY": KEY})
    assert KEY not in repr(to_dict(config)) and KEY not in repr(config)


def test_config_file_from_variable_then_env_wins(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text('device: "cuda"\nmodules:\n  cca:\n    max_fix_set_size: 3\n')
    env = {"MODEL_FORENSICS_CONFIG": str(path), "MODEL_FORENSICS_DEVICE": "cpu", "MODEL_FORENSICS_LOG_LEVEL": ""}
    config = config_from_env(None, env)
    assert config.modules.cca.max_fix_set_size == 3 and config.device == "cpu" and config.log_level == "INFO"
    assert config_from_env(ROOT / "configs" / "default.yaml", env).modules.cca.max_fix_set_size == 5  # --config wins
    with pytest.raises(ConfigError, match="MODEL_FORENSICS_CONFIG='/no/such.yaml'"):
        config_from_env(None, {"MODEL_FORENSICS_CONFIG": "/no/such.yaml"})


def test_no_environment_is_defaults() -> None:
    assert config_from_env(None, {}) == Config()
    assert config_from_env(None, {"UNRELATED": "x"}) == Config()


def test_parse_size() -> None:
    assert parse_size("1024") == 1024 and parse_size("1.5KB") == 1500 and parse_size("1 kib") == 1024
    with pytest.raises(ValueError):
        parse_size("-3GB")


def test_version_key_is_checked() -> None:
    assert load_config(overrides={"version": "1.1"}) == Config()
    with pytest.raises(ConfigError, match="'version': value '2.0' not allowed; expected '1.1'"):
        load_config(overrides={"version": "2.0"})


@pytest.mark.parametrize("name", ["default", "high_performance", "batch"])
def test_migrate_round_trip_keeps_values_and_comments(tmp_path: Path, name: str) -> None:
    src = ROOT / "configs" / f"{name}.yaml"
    before = load_config(src)
    target = migrate_file(src, "v1.0", "v1.1", out=tmp_path / "new.yaml")
    text = target.read_text()
    assert text.count('version: "1.1"') == 1
    assert text.replace('version: "1.1"   # added by migrate-config --from v1.0 --to v1.1\n', "").replace(
        "\n\n", "\n"
    ) == src.read_text().replace("\n\n", "\n")
    assert load_config(target) == before
    with pytest.raises(ConfigError, match="is a v1.1 config, not v1.0"):
        migrate_file(target, "v1.0", "v1.1")


def test_migrate_in_place_keeps_backup(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    original = "# mine\nbundle_dir: /data/bundles\ntimeout_minutes: 30\n"
    path.write_text(original)
    migrate_file(path, "1.0", "1.1")
    assert (tmp_path / "config.yaml.v1.0.bak").read_text() == original
    assert path.read_text().startswith('# mine\nversion: "1.1"')
    assert load_config(path).timeout_minutes == 30


@pytest.mark.parametrize(
    "src, dst, fragment",
    [
        ("v0.9", "v1.1", "config version 'v0.9' is unknown; known versions: v1.0, v1.1"),
        ("v1.0", "v2.0", "config version 'v2.0' is unknown"),
        ("v1.1", "v1.0", "no migration from v1.1 to v1.0"),
    ],
)
def test_migrate_refuses_unknown_versions(src: str, dst: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        migrate_text("device: cpu\n", src, dst)


def test_migrate_refuses_a_file_that_would_not_validate() -> None:
    with pytest.raises(ConfigError, match="migrated file does not validate: .*'device': value 'tpu'"):
        migrate_text("device: tpu\n", "v1.0", "v1.1")
