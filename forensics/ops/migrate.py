"""Config file versions and their migration.

    text = migrate_text(Path("config.yaml").read_text(), "v1.0", "v1.1")

v1.0 is the deployment guide's format: no ``version`` key, and neither ``fidelity_tolerance`` nor
``modules.cca.positions`` (nor the cache/streaming/memory/audit keys) existed. v1.1 adds
``version: "1.1"``; every v1.0 key keeps its name and meaning (a file without ``version`` that already
uses v1.1 keys, like configs shipped before the key existed, migrates the same way). The migration inserts that one line
after the file's leading comments, so values and comments survive byte for byte, then loads the
result to prove it valid.

Keys renamed since (``forensics.config.RENAMED_KEYS``: ``modules.cf.baseline_samples`` is
``population_samples``, ``modules.cca.patch_sources`` is ``counterfactuals``) still load with a
deprecation warning; every migration rewrites them in place, line by line, and ``--from v1.1 --to v1.1``
does only that.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

from forensics.config import CONFIG_VERSION, RENAMED_KEYS, Config, ConfigDeprecationWarning, from_dict
from forensics.errors import ConfigError

__all__ = ["VERSIONS", "detect_version", "migrate_file", "migrate_text", "validate_text"]

VERSIONS = ("v1.0", "v1.1")


def _norm(version: str) -> str:
    v = version if version.startswith("v") else f"v{version}"
    if v not in VERSIONS:
        raise ConfigError(f"config version {version!r} is unknown; known versions: {', '.join(VERSIONS)}")
    return v


def detect_version(data: dict[str, Any]) -> str:
    """``v1.1`` when the file says ``version: "1.1"``, ``v1.0`` when it has no version key."""
    if "version" not in data:
        return "v1.0"
    return _norm(str(data["version"]))


def migrate_text(text: str, from_version: str, to_version: str, where: str = "config") -> str:
    """Rewrite a config file's text from one version to the next; the result is validated."""
    import yaml

    src, dst = _norm(from_version), _norm(to_version)
    if (src, dst) not in (("v1.0", "v1.1"), ("v1.1", "v1.1")):
        raise ConfigError(
            f"no migration from {src} to {dst}; supported: --from v1.0 --to v1.1, and --from v1.1 --to v1.1 "
            "(renamed keys only)"
        )
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: cannot be read as YAML ({exc})") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: top level must be a mapping, got {type(data).__name__}")
    found = detect_version(data)
    if found != src:
        raise ConfigError(f"{where}: is a {found} config, not {src}")
    out = _rename_keys(_insert_version(text) if src != dst else text, data)
    validate_text(out, where)
    return out


def _rename_keys(text: str, data: dict[str, Any]) -> str:
    """``text`` with each deprecated key that ``data`` holds renamed on its own line (values, comments and
    layout kept); a key nested under its parents is found by its indentation under them."""
    lines = text.splitlines(keepends=True)
    for old, new in RENAMED_KEYS.items():
        *parents, leaf = old.split(".")
        node: Any = data
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or leaf not in node:
            continue
        pattern = re.compile(rf"^(\s+){re.escape(leaf)}(\s*:)")
        hits = [i for i, line in enumerate(lines) if pattern.match(line)]
        if len(hits) != 1:
            raise ConfigError(
                f"cannot rewrite {old!r} in place ({len(hits)} lines name {leaf!r}); rename it to {new!r}"
            )
        i = hits[0]
        lines[i] = pattern.sub(rf"\g<1>{new.rsplit('.', 1)[-1]}\g<2>", lines[i], count=1)
    return "".join(lines)


def _insert_version(text: str) -> str:
    lines = text.splitlines(keepends=True)
    head = 0
    while head < len(lines) and (not lines[head].strip() or lines[head].lstrip().startswith("#")):
        head += 1
    line = f'version: "{CONFIG_VERSION}"   # added by migrate-config --from v1.0 --to v1.1\n'
    body = "".join(lines[head:])
    return "".join(lines[:head]) + line + ("\n" if body and not body.startswith("\n") else "") + body


def validate_text(text: str, where: str) -> Config:
    import yaml

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", ConfigDeprecationWarning)  # a key left under its old name
            config: Config = from_dict(Config, yaml.safe_load(text) or {})
    except (ConfigError, ConfigDeprecationWarning) as exc:
        raise ConfigError(f"{where}: migrated file does not validate: {exc}") from None
    return config


def migrate_file(path: str | Path, from_version: str, to_version: str, out: str | Path | None = None) -> Path:
    """Migrate ``path`` into ``out`` (default: in place, keeping ``<path>.<from>.bak``); atomic."""
    import os

    src = Path(path)
    try:
        text = src.read_text()
    except OSError as exc:
        raise ConfigError(f"config file {src}: cannot be read ({exc})") from exc
    migrated = migrate_text(text, from_version, to_version, where=f"config file {src}")
    target = Path(out) if out is not None else src
    if out is None:
        src.with_name(f"{src.name}.{_norm(from_version)}.bak").write_text(text)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(migrated)
    os.replace(tmp, target)
    return target
