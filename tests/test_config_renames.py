"""Config keys renamed to the project's words still load (with a warning) and `migrate-config` rewrites them."""

from __future__ import annotations

from pathlib import Path

import pytest

from forensics.config import RENAMED_KEYS, ConfigDeprecationWarning, load_config
from forensics.errors import ConfigError
from forensics.ops.migrate import migrate_file, migrate_text

OLD = """# mine
version: "1.1"
modules:
  cf:
    baseline_samples: 7     # few
  cca:
    patch_sources: 2        # two sources
"""


def test_an_old_key_loads_under_its_new_name_with_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(OLD)
    with pytest.warns(ConfigDeprecationWarning, match="'modules.cca.patch_sources' is deprecated.*counterfactuals"):
        config = load_config(path)
    assert (config.modules.cf.population_samples, config.modules.cca.counterfactuals) == (7, 2)


def test_old_and_new_name_together_is_an_error() -> None:
    with pytest.raises(ConfigError, match="both given"):
        load_config(overrides={"modules.cca.patch_sources": 2, "modules.cca.counterfactuals": 3})


def test_migrate_config_rewrites_renamed_keys_in_place_keeping_comments(tmp_path: Path) -> None:
    text = migrate_text(OLD, "v1.1", "v1.1")
    assert "population_samples: 7     # few" in text and "counterfactuals: 2        # two sources" in text
    assert "baseline_samples" not in text and "patch_sources" not in text
    assert text.replace("population_samples", "baseline_samples").replace("counterfactuals", "patch_sources") == OLD
    v10 = OLD.replace('version: "1.1"\n', "")
    path = tmp_path / "old.yaml"
    path.write_text(v10)
    target = migrate_file(path, "v1.0", "v1.1", out=tmp_path / "new.yaml")
    migrated = target.read_text()
    assert 'version: "1.1"' in migrated and "counterfactuals: 2" in migrated
    load_config(target)  # no warning left to give: pytest runs with warnings as errors below


@pytest.mark.filterwarnings("error::forensics.config.ConfigDeprecationWarning")
def test_shipped_configs_use_no_renamed_key() -> None:
    root = Path(__file__).resolve().parent.parent
    for path in sorted((root / "configs").glob("*.yaml")):
        load_config(path)
    shipped = (root / "configs" / "default.yaml").read_text()
    assert not any(f" {old.rsplit('.', 1)[-1]}:" in shipped for old in RENAMED_KEYS)
