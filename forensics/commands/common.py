"""Shared bits of the CLI commands: config loading, progress bars, JSON output."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from forensics.config import Config

__all__ = ["add_config_arg", "config_from_args", "print_json", "progress_bar"]


def add_config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config file (default: built-in defaults)")


def config_from_args(args: argparse.Namespace) -> Config:
    """``--config`` (else ``MODEL_FORENSICS_CONFIG``, else defaults) with ``MODEL_FORENSICS_*`` overrides;
    a ``device`` this machine lacks is a one-line ``ConfigError`` naming the setting."""
    import os

    from forensics.ops.env import config_from_env
    from forensics.ops.health import require_device

    path = getattr(args, "config", None)
    config = config_from_env(path, os.environ)
    require_device(config, path, os.environ)
    return config


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


@contextmanager
def progress_bar(desc: str, total: int | None = None, unit: str = "it") -> Iterator[Callable[..., None]]:
    """A tqdm bar on stderr (hidden when stderr is not a terminal); yields ``advance(n, total=None)``.

    ``advance(0, total=k)`` announces k more items of work (the bar's total and ETA grow with it); off a
    terminal each announcement is one line on stderr instead, so logs show every phase."""
    from tqdm import tqdm

    tty = sys.stderr.isatty()
    bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=not tty, dynamic_ncols=True, leave=False)

    def advance(n: int, total: int | None = None) -> None:
        if total is not None:
            bar.total = bar.n + total
            bar.refresh()
            if not tty:
                print(f"{desc}: {total} {unit} to go ({bar.n} done)", file=sys.stderr, flush=True)
        if n:
            bar.update(n)

    try:
        yield advance
    finally:
        bar.close()
