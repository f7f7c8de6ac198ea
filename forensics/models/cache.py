"""The converted-models cache: each GGUF (the embedded demo's, a user's) converted once to safetensors.

    entry = gguf_entry(cache_dir, Path("my.gguf"))        # cache_dir/models/gguf-<sha256[:16]>
    list_models(cache_dir)                                # [CachedModel(name, source, size, age_s, ...)]
    clear_models(cache_dir, older_than=30 * 86400)        # removes entries under cache_dir/models only

An entry is a Hugging Face directory (``model.safetensors``, config, tokenizer) plus
``weights.sha256.json`` (the fp32 weights digest and the source GGUF) and, for a user's file,
``source.json`` (its path, size, mtime and sha256). A user's GGUF is keyed by the sha256 of its bytes
(about 1 s for 250 MB), so a moved or renamed file hits the same entry and an edited one gets a new
entry. Entries are written in a temporary directory beside the destination and renamed into place, so
a crashed conversion leaves no half entry; an entry with a missing or unreadable file is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from forensics.errors import ModelError

__all__ = [
    "ENTRY_FILES",
    "CachedModel",
    "build_entry",
    "clear_models",
    "entry_ready",
    "file_sha256",
    "gguf_entry",
    "gguf_source",
    "list_models",
    "models_root",
]

ENTRY_FILES = ("config.json", "weights.sha256.json")  # besides the weights: model.safetensors or its shards
GGUF_PREFIX = "gguf-"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class CachedModel:
    """One entry of the converted-models cache, as ``list_models`` reports it."""

    name: str  # directory name under cache_dir/models: an embedded name or gguf-<sha256[:16]>
    source: str  # the GGUF it was converted from (its path when converted)
    path: str
    size_bytes: int
    age_s: float  # since the entry was written
    complete: bool  # False: a half entry (rebuilt on next use)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def models_root(cache: Path) -> Path:
    return cache / "models"


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def gguf_entry(cache: Path, sha256: str) -> Path:
    """Where the conversion of the GGUF whose bytes hash to ``sha256`` lives."""
    return models_root(cache) / f"{GGUF_PREFIX}{sha256[:16]}"


def gguf_source(path: Path, sha256: str) -> dict[str, Any]:
    """``source.json`` of a user's GGUF: what it was converted from, so ``list_models`` can name it."""
    stat = path.stat()
    return {"path": str(path.resolve()), "size": stat.st_size, "mtime": stat.st_mtime, "sha256": sha256}


def entry_ready(dest: Path) -> bool:
    """Whether ``dest`` holds a complete entry: every file present, the digest file readable, and each
    safetensors file as long as its header says (a truncated copy is not an entry)."""
    if not all((dest / name).is_file() for name in ENTRY_FILES):
        return False
    try:
        if not json.loads((dest / "weights.sha256.json").read_text())["sha256"]:
            return False
        index = dest / "model.safetensors.index.json"
        shards = set(json.loads(index.read_text())["weight_map"].values()) if index.is_file() else {"model.safetensors"}
        return all(_safetensors_whole(dest / name) for name in shards)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def _safetensors_whole(path: Path) -> bool:
    """The file's size is the 8-byte header length + the header + the end of its last tensor."""
    with open(path, "rb") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
    ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
    return path.stat().st_size == 8 + size + max(ends, default=0)


def build_entry(dest: Path, write: Callable[[Path], None]) -> Path:
    """Run ``write(tmp)`` in a fresh directory beside ``dest`` and rename it to ``dest`` (replacing a broken
    entry). A concurrent builder that finished first wins; ours is then discarded."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    try:
        write(tmp)
        if entry_ready(dest):
            return dest
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    except OSError as exc:
        if entry_ready(dest):
            return dest
        raise ModelError(f"model cache {dest}: cannot write the converted model ({exc})") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def list_models(cache: Path) -> list[CachedModel]:
    """Every entry under ``cache/models`` (half-written temporary directories excluded), oldest first."""
    root = models_root(cache)
    if not root.is_dir():
        return []
    now = time.time()
    entries = [_describe(p, now) for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".")]
    return sorted(entries, key=lambda e: -e.age_s)


def clear_models(cache: Path, *, older_than: float | None = None, dry_run: bool = False) -> list[CachedModel]:
    """Remove the entries (and stale temporary directories) under ``cache/models`` older than ``older_than``
    seconds (all without it); return what was (or, with ``dry_run``, would be) removed. Nothing outside
    ``cache/models`` is touched, and a symlink there is unlinked, never followed."""
    root = models_root(cache)
    now = time.time()
    doomed = [e for e in list_models(cache) if older_than is None or e.age_s >= older_than]
    if dry_run:
        return doomed
    for entry in doomed:
        _remove(root, Path(entry.path))
    if root.is_dir():  # temporary directories of crashed conversions, once they are an hour old
        for tmp in root.glob(".*"):
            if tmp.is_dir() and now - tmp.stat().st_mtime > 3600:
                _remove(root, tmp)
    return doomed


def _remove(root: Path, path: Path) -> None:
    if path.parent.resolve() != root.resolve():
        raise ModelError(f"model cache: refusing to remove {path}, which is not directly under {root}")
    if path.is_symlink():
        path.unlink()
    else:
        shutil.rmtree(path)


def _describe(path: Path, now: float) -> CachedModel:
    source = _read_json(path / "source.json").get("path") or _read_json(path / "weights.sha256.json").get("source")
    files = [p for p in path.rglob("*") if p.is_file() and not p.is_symlink()]
    marker = path / "weights.sha256.json"
    written = marker.stat().st_mtime if marker.is_file() else path.stat().st_mtime
    return CachedModel(
        name=path.name,
        source=str(source or "unknown"),
        path=str(path),
        size_bytes=sum(p.stat().st_size for p in files),
        age_s=max(0.0, now - written),
        complete=entry_ready(path),
    )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
