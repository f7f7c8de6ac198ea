"""`model-cache list|clear`: the converted-models cache (GGUF files converted once to safetensors).

model-forensics model-cache list
model-forensics model-cache clear --older-than 30d --dry-run

Only entries under ``CACHE_DIR/models`` are listed or removed (``forensics.models.cache``); the results
cache beside them (``CACHE_DIR/results``) is not this command's.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from forensics.commands.common import add_config_arg

NAME = "model-cache"
HELP = "list or clear the converted-models cache (each GGUF converted once to safetensors)"


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=("list", "clear"), help="list the cached models, or remove them")
    p.add_argument(
        "--older-than",
        metavar="AGE",
        help="with clear: only entries converted longer ago than this, e.g. 30d, 12h, 2w (default: all)",
    )
    p.add_argument("--dry-run", action="store_true", help="with clear: list what would be removed; remove nothing")
    p.add_argument("--format", choices=("table", "json"), default="table", help="output format (default table)")
    add_config_arg(p)


def run(args: argparse.Namespace) -> int:
    import os

    from forensics.commands.common import print_json
    from forensics.errors import ConfigError
    from forensics.models.cache import clear_models, list_models, models_root
    from forensics.models.registry import default_cache_dir
    from forensics.ops.env import config_from_env
    from forensics.ops.maintenance import parse_age

    if args.action == "list" and (args.older_than or args.dry_run):
        raise ConfigError("--older-than and --dry-run go with `model-cache clear`")
    config = config_from_env(args.config, os.environ)  # no device check: nothing runs a model
    cache = Path(config.cache_dir).expanduser() if config.cache_dir else default_cache_dir()
    if args.action == "list":
        entries = list_models(cache)
    else:
        age = parse_age(args.older_than).total_seconds() if args.older_than else None
        entries = clear_models(cache, older_than=age, dry_run=args.dry_run)
    if args.format == "json":
        print_json(
            {
                "dir": str(models_root(cache)),
                "action": args.action,
                "dry_run": args.dry_run,
                "models": [e.to_dict() for e in entries],
            }
        )
        return 0
    verb = {"list": "cached", "clear": "to remove (dry run)" if args.dry_run else "removed"}[args.action]
    print(f"{models_root(cache)}: {len(entries)} model(s) {verb}, {human_bytes(sum(e.size_bytes for e in entries))}")
    for row in table_rows([e.to_dict() for e in entries]):
        print(f"  {row}")
    return 0


def table_rows(entries: list[dict[str, Any]]) -> list[str]:
    """One line per cache entry: name, then ``describe``."""
    return [f"{e['name']:<24} {describe(e)}" for e in entries]


def describe(entry: dict[str, Any]) -> str:
    """An entry's size, age and source GGUF (and ``incomplete`` for a half entry)."""
    tail = "" if entry["complete"] else "  (incomplete: rebuilt on next use)"
    return f"{human_bytes(entry['size_bytes']):>9}  {human_age(entry['age_s']):>6}  {entry['source']}{tail}"


def human_bytes(n: int) -> str:
    """``n`` bytes for people.

    >>> human_bytes(3_500_000)
    '3.3 MiB'
    """
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def human_age(seconds: float) -> str:
    """``seconds`` for people.

    >>> human_age(90_000)
    '1.0d'
    """
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    if seconds < 86400:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"
