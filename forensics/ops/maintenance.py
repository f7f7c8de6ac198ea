"""Bundle maintenance: recompress old bundles' activations losslessly with Arrow IPC zstd.

Every step leaves a loadable bundle behind, so a crash at any instant loses nothing and a
re-run finishes the job (see ``compress_bundle`` for the order of steps).

    report = compress_bundles("incidents/", timedelta(days=90))
    print(report.format_table())        # per-bundle before/after sizes and a total
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from forensics.bundle import Bundle, load_bundle
from forensics.bundle._guard import Site
from forensics.bundle.integrity import sha256_file
from forensics.bundle.manifest import (
    ACTIVATIONS,
    MANIFEST,
    MAX_MANIFEST_BYTES,
    data_file,
    encode_manifest,
    parse_manifest,
    validate_manifest,
)
from forensics.bundle.store import decode_batch, open_reader, write_activations
from forensics.durable import fsync_path, write_atomic
from forensics.errors import BundleError, ConfigError
from forensics.ops.env import parse_duration

__all__ = ["COMPRESSED_NAME", "BundleResult", "CompressReport", "compress_bundle", "compress_bundles", "parse_age"]

COMPRESSED_NAME = "activations.zstd.arrow"
Status = Literal["compressed", "would-compress", "skipped", "error"]
_TEMP = re.compile(
    r"^\.(compress-[0-9a-f]+\.arrow|manifest-.*|manifest\.json\..*)\.tmp$"
)  # write_atomic temp names, old and new
_DATA_NAMES = (ACTIVATIONS, COMPRESSED_NAME)


@dataclass(frozen=True)
class BundleResult:
    """What happened to one bundle; sizes are data file + manifest bytes (``after`` None if unknown)."""

    bundle: str
    status: Status
    reason: str
    before: int = 0
    after: int | None = None


@dataclass(frozen=True)
class CompressReport:
    results: tuple[BundleResult, ...]
    dry_run: bool

    @property
    def errors(self) -> list[BundleResult]:
        return [r for r in self.results if r.status == "error"]

    @property
    def before(self) -> int:
        return sum(r.before for r in self.results if r.status in ("compressed", "would-compress"))

    @property
    def after(self) -> int:
        return sum(r.after or 0 for r in self.results if r.status == "compressed")

    def format_table(self) -> str:
        """One line per bundle, then a total of what was (or would be) compressed."""
        lines = [f"{'bundle':<32} {'status':<15} {'before':>12} {'after':>12}  note"]
        for r in self.results:
            after = "-" if r.after is None else _size(r.after)
            before = _size(r.before) if r.before else "-"
            lines.append(f"{r.bundle:<32} {r.status:<15} {before:>12} {after:>12}  {r.reason}")
        done = [r for r in self.results if r.status in ("compressed", "would-compress")]
        if self.dry_run:
            lines.append(f"total: {len(done)} bundle(s) would be compressed, {_size(self.before)} now (dry run)")
        else:
            saved = self.before - self.after
            lines.append(
                f"total: {len(done)} bundle(s) compressed, {_size(self.before)} -> {_size(self.after)}"
                f" (saved {_size(saved)})"
            )
        if self.errors:
            lines.append(f"{len(self.errors)} bundle(s) failed; they were left as they were")
        return "\n".join(lines)


def parse_age(text: str) -> timedelta:
    """``"90d"``, ``"12h"``, ``"2w"`` -> timedelta; ``ConfigError`` naming the value otherwise.

    >>> parse_age("90d").days
    90
    """
    return parse_duration(text, "--older-than", "90d")


def compress_bundles(
    directory: str | os.PathLike[str],
    older_than: timedelta,
    *,
    now: datetime | None = None,
    dry_run: bool = False,
) -> CompressReport:
    """Recompress every bundle directly under ``directory`` whose ``created_at`` is older than ``older_than``.

    Symlinks and archives are not touched. A bundle that fails is reported and left as it was;
    the others go on.
    """
    root = os.path.abspath(os.fspath(directory))
    if not os.path.isdir(root):
        raise ConfigError(f"compress-bundles: {root} is not a directory")
    cutoff = (now or datetime.now(UTC)) - older_than
    results = [compress_bundle(path, cutoff, dry_run=dry_run) for path in _bundle_dirs(root)]
    return CompressReport(tuple(results), dry_run)


def _bundle_dirs(root: str) -> Iterator[str]:
    with os.scandir(root) as entries:
        names = sorted(e.name for e in entries if e.is_dir(follow_symlinks=False))
    for name in names:
        if os.path.isfile(os.path.join(root, name, MANIFEST)):
            yield os.path.join(root, name)


def compress_bundle(path: str, cutoff: datetime, *, dry_run: bool = False) -> BundleResult:
    """Recompress one bundle created before ``cutoff``; never raises for a bundle problem.

    Steps, each leaving a loadable bundle whose manifest matches the data file it names:

    1. clear leftovers of an interrupted run; skip young, encrypted and zstd bundles (manifest
       only); verify the rest (every checksum and batch);
    2. write ``.compress-<rand>.arrow.tmp`` with zstd, fsync; check every module decodes
       bit-equal to the original, and take its size + sha256;
    3. rename it to ``activations.zstd.arrow`` (a name the current manifest does not use), fsync
       the directory, and re-check its sha256;
    4. replace ``manifest.json`` atomically (temp + fsync + ``os.replace``) with one naming the
       new file; this single rename is the switch from old to new;
    5. reload the bundle and verify it (on failure the old manifest is put back), then delete
       the old data file and fsync the directory.

    Readers that loaded the bundle before step 5 keep working only if they already hold its
    data open (memory maps survive the unlink); reload bundles after maintenance runs.

    A crash before step 4 leaves the old bundle plus stray files; after it, the new bundle plus
    the old data file. Either way a re-run removes the strays (step 1) and finishes.
    """
    name = os.path.basename(path)
    try:
        return _compress(path, name, cutoff, dry_run)
    except BundleError as exc:
        return BundleResult(name, "error", str(exc))
    except OSError as exc:  # full disk, permissions: this bundle stays as it was (or is already switched)
        return BundleResult(name, "error", f"bundle {name}: {type(exc).__name__}: {exc}")


def _compress(path: str, name: str, cutoff: datetime, dry_run: bool) -> BundleResult:
    site = Site(name)
    with site.guard(MANIFEST, "cannot read"), open(os.path.join(path, MANIFEST), "rb") as handle:
        manifest = parse_manifest(site, handle.read(MAX_MANIFEST_BYTES + 1))
    old = data_file(site, manifest)
    if not dry_run:
        _clear_leftovers(path, manifest)
    before = _bundle_bytes(path, manifest, old)
    skip = _skip_reason(manifest, old, cutoff)
    if skip:
        return BundleResult(name, "skipped", skip, before)
    bundle = load_bundle(path, verify=True)  # every checksum and batch, before we read to rewrite
    manifest = bundle.manifest
    if dry_run:
        return BundleResult(name, "would-compress", f"created {manifest['created_at']}", before)
    new = COMPRESSED_NAME if old != COMPRESSED_NAME else ACTIVATIONS
    if new in manifest["files"]:
        return BundleResult(name, "error", f"{new} is already listed in the files table; not touching it", before)
    return _rewrite(path, name, bundle, manifest, old, new, before)


def _skip_reason(manifest: Mapping[str, Any], old: str, cutoff: datetime) -> str | None:
    created = datetime.fromisoformat(manifest["created_at"])
    created = created if created.tzinfo else created.replace(tzinfo=UTC)  # naive stamps are UTC
    if created >= cutoff:
        return f"newer than the cutoff (created {manifest['created_at']})"
    if "encryption" in manifest:
        return "encrypted: ciphertext does not compress (write encrypted bundles with compression='zstd')"
    if manifest["files"][old].get("compression") == "zstd":
        return "already zstd"
    return None


def _rewrite(
    path: str, name: str, bundle: Bundle, manifest: dict[str, Any], old: str, new: str, before: int
) -> BundleResult:
    site = Site(name)
    temp = os.path.join(path, f".compress-{secrets.token_hex(8)}.arrow.tmp")
    new_path = os.path.join(path, new)
    switched = False
    try:
        with site.guard(new, "cannot write compressed copy", (OSError, pa.ArrowException)):
            write_activations(site, temp, bundle.iter_activations(), "zstd")
            fsync_path(temp)
        size, digest = sha256_file(temp)
        _check_same_content(site, bundle, temp, new)
        if size >= manifest["files"][old]["bytes"]:
            return BundleResult(
                name, "skipped", f"zstd would not shrink it ({size} bytes vs {manifest['files'][old]['bytes']})", before
            )
        os.replace(temp, new_path)
        fsync_path(path)
        if sha256_file(new_path) != (size, digest):
            raise site.error(new, "changed on disk after it was verified; not switching to it")
        updated = _new_manifest(site, manifest, old, new, size, digest)
        old_manifest = _read_unchanged(site, path, bundle)
        write_atomic(os.path.join(path, MANIFEST), encode_manifest(updated))
        switched = True
        fsync_path(path)
        try:
            load_bundle(path, verify=True)
        except BundleError:  # cannot happen short of disk corruption: switch back, old data is still there
            write_atomic(os.path.join(path, MANIFEST), old_manifest)
            switched = False
            raise
        os.unlink(os.path.join(path, old))
        fsync_path(path)
    finally:
        _discard(temp)
        if not switched:
            _discard(new_path)
    after = _bundle_bytes(path, updated, new)
    return BundleResult(name, "compressed", f"{old} -> {new}", before, after)


def _check_same_content(site: Site, bundle: Bundle, temp: str, new: str) -> None:
    """Every module of the new file decodes to the same dtype, shape and bytes as the original."""
    with site.guard(new, "cannot read back compressed copy"), pa.memory_map(temp, "r") as source:
        reader = open_reader(site, source, new)
        if reader.num_record_batches != len(bundle.modules):
            raise site.error(new, f"has {reader.num_record_batches} batches, expected {len(bundle.modules)}")
        for index, (module, want) in enumerate(bundle.iter_activations()):
            got = decode_batch(site, index, reader.get_batch(index), module, new)[1]
            if not _bit_equal(got, want):
                raise site.error(new, f"module {module!r} differs from the original after recompression")


def _bit_equal(a: np.ndarray[Any, Any], b: np.ndarray[Any, Any]) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return bool(np.array_equal(a.reshape(-1).view(np.uint8), b.reshape(-1).view(np.uint8)))


def _new_manifest(site: Site, manifest: dict[str, Any], old: str, new: str, size: int, digest: str) -> dict[str, Any]:
    updated = dict(manifest)
    files = {k: v for k, v in manifest["files"].items() if k != old}
    files[new] = {"bytes": size, "sha256": digest, "compression": "zstd"}
    updated["files"] = files
    updated.pop("activations_file", None)
    if new != ACTIVATIONS:
        updated["activations_file"] = new
    validate_manifest(site, updated)
    return updated


def _clear_leftovers(path: str, manifest: Mapping[str, Any]) -> None:
    """Remove what an interrupted run left: our temp files and data files the manifest does not name."""
    listed = set(manifest["files"])
    for entry in os.listdir(path):
        if _TEMP.match(entry) or (entry in _DATA_NAMES and entry not in listed):
            _discard(os.path.join(path, entry))


def _bundle_bytes(path: str, manifest: Mapping[str, Any], data: str) -> int:
    return int(manifest["files"][data]["bytes"]) + os.path.getsize(os.path.join(path, MANIFEST))


def _read_unchanged(site: Site, path: str, bundle: Bundle) -> bytes:
    """The manifest's bytes, provided nobody replaced it since ``bundle`` was loaded."""
    with open(os.path.join(path, MANIFEST), "rb") as handle:
        data = handle.read()
    if hashlib.sha256(data).hexdigest() != bundle.file_sha256():
        raise site.error(MANIFEST, "changed while compressing; not switching to the compressed copy")
    return data


def _discard(path: str) -> None:
    """Best-effort removal of a file of ours; a file already gone is fine."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"
