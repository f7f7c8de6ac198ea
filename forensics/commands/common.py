"""Shared bits of the CLI commands: config loading (with its log settings and ``bundle_dir``), progress
bars, JSON output."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from forensics.config import Config

__all__ = [
    "BUNDLE_ARGS",
    "add_config_arg",
    "apply_log_settings",
    "config_from_args",
    "default_baseline_arg",
    "print_json",
    "progress_bar",
    "resolve_bundle_args",
]


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
    apply_log_settings(config, debug=bool(getattr(args, "debug", False)))
    resolve_bundle_args(args, config)
    default_baseline_arg(args)
    return config


def default_baseline_arg(args: argparse.Namespace) -> None:
    """``triage DIR`` / ``batch DIR`` without ``--baseline``: when DIR itself holds fewer than two benign
    bundles, a subdirectory holding at least two (the README layout: ``bundles/benign/``) is the baseline;
    a note on stderr names it. ``benign/`` wins when several qualify."""
    directory = getattr(args, "directory", None)
    if not isinstance(directory, str) or getattr(args, "baseline", "absent") is not None:
        return
    root = Path(directory)
    if not root.is_dir() or _benign_count(root) >= 2:
        return
    found = [
        d for d in sorted(root.iterdir()) if d.is_dir() and not (d / "manifest.json").exists() and _benign_count(d) >= 2
    ]
    if found:
        chosen = next((d for d in found if d.name == "benign"), found[0])
        args.baseline = str(chosen)
        print(
            f"{args.command}: no --baseline; using the {_benign_count(chosen)} benign bundles in {chosen}/",
            file=sys.stderr,
        )


def _benign_count(directory: Path) -> int:
    """Benign bundles directly in ``directory`` (read from their manifests' ``kind``, which is never sealed)."""
    count = 0
    for path in directory.iterdir():
        try:
            count += json.loads((path / "manifest.json").read_text()).get("kind") == "benign"
        except (OSError, ValueError, AttributeError):
            continue
    return count


# Arguments naming bundles or directories of bundles that a relative name finds under ``bundle_dir``.
BUNDLE_ARGS = ("bundle", "directory", "baseline", "patch_source")


def resolve_bundle_args(args: argparse.Namespace, config: Config) -> None:
    """``bundle_dir`` (``MODEL_FORENSICS_BUNDLE_DIR``) for the CLI: a relative bundle argument that does not
    exist as given but does under ``bundle_dir`` means that one (``analyze incident_001`` with
    ``MODEL_FORENSICS_BUNDLE_DIR=/data/bundles`` reads ``/data/bundles/incident_001``)."""
    import os

    def under(value: str) -> str:
        if "://" in value or os.path.isabs(value) or os.path.exists(value):
            return value
        candidate = os.path.join(os.path.expanduser(config.bundle_dir), value)
        return candidate if os.path.exists(candidate) else value

    for name in BUNDLE_ARGS:
        value = getattr(args, name, None)
        if isinstance(value, str):
            setattr(args, name, under(value))
        elif isinstance(value, list):
            setattr(args, name, [under(v) if isinstance(v, str) else v for v in value])


def apply_log_settings(config: Config, *, debug: bool = False) -> None:
    """``log_level`` and ``log_file`` for a CLI command: our loggers at ``log_level``, lines at that level
    appended to ``log_file`` (relative to the working directory, as for ``serve``; null: none); stderr
    shows warnings and errors (everything with ``--debug`` or ``log_level: DEBUG``)."""
    import logging

    from forensics.ops.logs import configure_logging

    level = "DEBUG" if debug else config.log_level.upper()
    configure_logging(level, config.log_file, exclusive=True)
    number = logging.getLevelName(level)
    shown = logging.DEBUG if number == logging.DEBUG else max(number, logging.WARNING)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            handler.setLevel(shown)


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
