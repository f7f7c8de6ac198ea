"""Names a caller sends, confined to ``bundle_dir``: a bundle, a baseline, a directory of bundles.

    path = resolve_bundle("bundles/", "incidents/incident_7")    # BundleError for ../, /abs, symlinks out
    resolve_baseline("bundles/", "benign")                         # a benign directory or a .json under it

A name is refused before it touches the disk when it could leave ``bundle_dir`` (absolute, ``..``,
backslashes, control characters), and again after every symlink is followed.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from forensics.errors import BundleError, BundleNotFoundError, ConfigError

__all__ = ["MAX_NAME_CHARS", "bundle_root", "check_entries", "resolve_baseline", "resolve_bundle"]

MAX_NAME_CHARS = 1024
_CONTROL = re.compile(r"[\x00-\x1f\x7f\\]")


def resolve_bundle(bundle_dir: str | os.PathLike[str], name: str, *, allow_root: bool = False) -> Path:
    """The real path of ``name`` inside ``bundle_dir``; refuses anything that could leave it.

    Refused (``BundleError``): absolute paths, ``..`` parts, backslashes and control characters,
    and names whose real path (after following every symlink) is not inside ``bundle_dir``.
    A safe name that names nothing raises ``BundleNotFoundError``.

    >>> import tempfile; root = tempfile.mkdtemp()
    >>> resolve_bundle(root, "../etc")
    Traceback (most recent call last):
    forensics.errors.BundleError: bundle name '../etc': '..' is not allowed; name a bundle under bundle_dir
    """
    root = bundle_root(bundle_dir)
    _check_name(name, allow_root)
    candidate = root / name
    try:
        real = candidate.resolve(strict=False)
    except (OSError, RuntimeError) as exc:  # symlink loop
        raise BundleError(f"bundle name {name!r}: cannot be resolved ({exc.__class__.__name__})") from None
    if real != root and not real.is_relative_to(root):
        raise BundleError(f"bundle name {name!r}: resolves outside bundle_dir (symlink?); refused")
    if real == root and not allow_root:
        raise BundleError(f"bundle name {name!r}: names bundle_dir itself, expected a bundle inside it")
    if not real.exists():
        raise BundleNotFoundError(f"bundle name {name!r}: no such bundle under bundle_dir")
    return real


def resolve_baseline(bundle_dir: str | os.PathLike[str], baseline: str | None) -> Path | None:
    """A baseline named by a caller: a benign bundle directory or a build-baseline ``.json`` under ``bundle_dir``."""
    if baseline is None:
        return None
    path = resolve_bundle(bundle_dir, baseline)
    if not (path.is_dir() or (path.is_file() and path.name.endswith(".json"))):
        raise BundleError(f"baseline {baseline!r}: expected a directory of benign bundles or a .json file")
    if path.is_dir():
        check_entries(bundle_root(bundle_dir), path, f"baseline {baseline!r}")
    return path


def check_entries(root: Path, folder: Path, what: str) -> None:
    """Refuse a directory whose entries lead out of ``root`` (symlinks): its bundles get loaded in bulk."""
    for entry in sorted(folder.iterdir()):
        try:
            real = entry.resolve(strict=False)
        except (OSError, RuntimeError) as exc:  # symlink loop
            raise BundleError(f"{what}: entry {entry.name!r} cannot be resolved ({exc.__class__.__name__})") from None
        if not real.is_relative_to(root):
            raise BundleError(f"{what}: entry {entry.name!r} resolves outside bundle_dir (symlink?); refused")


def bundle_root(bundle_dir: str | os.PathLike[str]) -> Path:
    """``bundle_dir`` resolved; ``ConfigError`` when it is not a directory."""
    root = Path(bundle_dir).resolve()
    if not root.is_dir():
        raise ConfigError(f"config key 'bundle_dir': {os.fspath(bundle_dir)!r} is not a directory")
    return root


def _check_name(name: Any, allow_root: bool) -> None:
    if not isinstance(name, str) or not name or len(name) > MAX_NAME_CHARS:
        raise BundleError(f"bundle name {name!r}: expected a relative path of 1 to {MAX_NAME_CHARS} characters")
    if _CONTROL.search(name):
        raise BundleError(f"bundle name {name!r}: control characters and backslashes are not allowed")
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        raise BundleError(f"bundle name {name!r}: absolute paths are not allowed; name a bundle under bundle_dir")
    parts = name.split("/")
    if ".." in parts:
        raise BundleError(f"bundle name {name!r}: '..' is not allowed; name a bundle under bundle_dir")
    if not allow_root and all(p in ("", ".") for p in parts):
        raise BundleError(f"bundle name {name!r}: names bundle_dir itself, expected a bundle inside it")
