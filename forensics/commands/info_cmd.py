"""`info`: version, devices, the resolved config (no secrets), the converted-models cache and health checks;
exit 1 unless health is ok (``model-cache clear`` removes cached models).

model-forensics info --format json | jq '.health'
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from forensics.commands.common import add_config_arg, print_json
from forensics.commands.model_cache_cmd import describe

NAME = "info"
HELP = "show version, devices, the resolved configuration and health checks"


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", choices=("table", "json"), default="table", help="output format (default table)")
    add_config_arg(p)


def run(args: argparse.Namespace) -> int:
    from forensics.ops.cache import default_results_dir
    from forensics.ops.env import config_from_env
    from forensics.ops.health import system_info

    config = config_from_env(args.config, os.environ)
    source = args.config or os.environ.get("MODEL_FORENSICS_CONFIG") or None
    info = system_info(config, results_dir=default_results_dir(config), config_source=source)
    info["model_cache"] = model_cache(config.cache_dir)
    if args.format == "json":
        print_json(info)
    else:
        print_table(info)
    return 0 if info["health"]["status"] == "ok" else 1


def print_table(info: dict[str, Any]) -> None:
    d = info["devices"]
    rows = [
        ("version", info["version"]),
        ("python", info["python"]),
        ("platform", info["platform"]),
        *((name, v or "not installed") for name, v in info["packages"].items()),
        ("device", f"{d['configured']} -> {d['resolved']}"),
        (
            "cuda",
            f"{d['cuda_count']} device(s) {', '.join(d['cuda_names'])}".strip()
            if d["cuda_available"]
            else "not available",
        ),
        ("config", info["config_source"] or "built-in defaults"),
        *((f"  {k}", v) for k, v in _flat(info["config"])),
        ("results cache", info["results_cache_dir"]),
        ("model cache", f"{info['model_cache']['dir']} ({len(info['model_cache']['models'])} model(s))"),
        *((f"  {e['name']}", describe(e)) for e in info["model_cache"]["models"]),
        ("health", info["health"]["status"].upper()),
    ]
    rows += [(f"  {c['name']}", f"{'ok' if c['ok'] else 'FAIL'}  {c['detail']}") for c in info["health"]["checks"]]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")


def model_cache(cache_dir: str | None) -> dict[str, Any]:
    """The converted-models cache under ``cache_dir`` (``Config.cache_dir``; None: the default): where, and
    each entry's name, source GGUF, size and age."""
    from pathlib import Path

    from forensics.models.cache import list_models, models_root
    from forensics.models.registry import default_cache_dir

    cache = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    return {"dir": str(models_root(cache)), "models": [e.to_dict() for e in list_models(cache)]}


def _flat(data: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for key, value in data.items():
        if isinstance(value, dict):
            out += _flat(value, f"{prefix}{key}.")
        else:
            out.append((f"{prefix}{key}", value))
    return out
