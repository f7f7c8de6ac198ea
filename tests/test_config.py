from __future__ import annotations

from pathlib import Path

import pytest

from forensics.config import Config, load_config, to_dict
from forensics.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["default", "high_performance", "batch"])
def test_shipped_configs_load(name: str) -> None:
    cfg = load_config(ROOT / "configs" / f"{name}.yaml")
    assert isinstance(cfg, Config)


def test_default_yaml_equals_built_in_defaults() -> None:
    assert load_config(ROOT / "configs" / "default.yaml") == Config()


def test_guide_keys_present() -> None:
    data = to_dict(Config())
    assert {"bundle_dir", "output_dir", "device", "timeout_minutes", "log_level", "log_file"} <= set(data)
    assert data["modules"]["cf"]["compression_methods"] == ["zlib", "gzip", "arithmetic"]
    assert data["modules"]["cca"]["search_strategy"] == "greedy"
    assert not data["modules"]["isc"]["enabled"] and not data["modules"]["provenance"]["enabled"]


@pytest.mark.parametrize(
    "override, fragment",
    [
        ({"modules.cca.search_strategy": "dfs"}, "'modules.cca.search_strategy': value 'dfs'"),
        ({"modules.cf.bogus": 1}, "unknown config key 'modules.cf.bogus'"),
        ({"modules.cf.anomaly_threshold": "high"}, "'modules.cf.anomaly_threshold': value 'high'"),
        ({"modules.cf.anomaly_threshold": -1}, "a number > 0"),
        ({"modules.cca.intervention_types": ["zero", "melt"]}, "'modules.cca.intervention_types'"),
        ({"modules.cca.max_fix_set_size": 0}, "an integer from 1 to 32"),
        ({"device": "tpu"}, "'device': value 'tpu'"),
        ({"timeout_minutes": True}, "'timeout_minutes'"),
        ({"modules": []}, "'modules': expected a mapping"),
    ],
)
def test_bad_values_name_key_value_and_allowed(override: dict[str, object], fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(overrides=override)
    assert fragment in str(err.value)


def test_unreadable_yaml(tmp_path: Path) -> None:
    bad = tmp_path / "c.yaml"
    bad.write_text("modules: [unclosed")
    with pytest.raises(ConfigError, match="cannot be read as YAML"):
        load_config(bad)
    bad.write_text("- a list")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(bad)
