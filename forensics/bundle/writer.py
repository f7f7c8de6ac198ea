"""``write_bundle``: stream activations into ``activations.arrow``, then write the manifest last.

The manifest is written atomically after everything else, so a directory with a
``manifest.json`` is a complete bundle; a failed write leaves the destination as it was.
With ``encryption_key`` the Arrow stream is encrypted as it is written (``activations.arrow.enc``,
AES-256-GCM, see ``forensics.bundle.crypto``) and the manifest's content sections are sealed
(``forensics.bundle.seal``): plaintext never touches the disk.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import pyarrow as pa

from forensics.bundle._guard import Site
from forensics.bundle.bundle import Bundle, load_bundle
from forensics.bundle.crypto import (
    ENCRYPTED_SUFFIX,
    EncryptingSink,
    associated_data,
    check_key,
    encryption_section,
)
from forensics.bundle.crypto import key_id as fingerprint
from forensics.bundle.integrity import sha256_file
from forensics.bundle.manifest import (
    ACTIVATIONS,
    MANIFEST,
    check_bundle_id,
    encode_manifest,
    prepare_manifest,
    validate_manifest,
)
from forensics.bundle.seal import seal
from forensics.bundle.store import Array, write_activations
from forensics.durable import fsync_path, write_atomic

__all__ = ["write_bundle"]

_WRITE_ERRORS = (OSError, pa.ArrowException, TypeError, ValueError, RecursionError)


def write_bundle(
    dest: str | os.PathLike[str],
    manifest: Mapping[str, Any],
    activations: Iterable[tuple[str, Array]],
    *,
    compression: Literal["zstd"] | None = None,
    bundle_id: str | None = None,
    encryption_key: bytes | None = None,
    key_id: str | None = None,
) -> Bundle:
    """Write a bundle directory at ``dest`` (missing or empty) and return it loaded and verified.

        >>> b = write_bundle(tmp / "incident_7", manifest, recorder.items())   # doctest: +SKIP
        >>> b.modules                                                          # doctest: +SKIP
        ['model.layers.0', 'model.layers.1']

    ``bundle_id`` defaults to the manifest's ``bundle_id``, else to ``dest``'s name.
    ``encryption_key`` (32 bytes; None: plaintext) encrypts the data file; ``key_id``, if given, must be the key's
    fingerprint (``crypto.key_id``), a guard against writing with another key than intended.
    """
    path = os.path.abspath(os.fspath(dest))
    chosen = bundle_id if bundle_id is not None else manifest.get("bundle_id")
    chosen = os.path.basename(path) if chosen is None else chosen
    site = Site(os.path.basename(path))
    if not isinstance(chosen, str):
        raise site.error(MANIFEST, f"bundle_id must be a string, got {chosen!r}")
    check_bundle_id(site, chosen)
    key = None if encryption_key is None else _checked_key(site, encryption_key, key_id)
    data = ACTIVATIONS if key is None else ACTIVATIONS + ENCRYPTED_SUFFIX
    placeholder = {data: {"bytes": 0, "sha256": "0" * 64}}
    enc = None if key is None else encryption_section(key, [data])
    with site.guard(MANIFEST, "manifest is not strict JSON", _WRITE_ERRORS):
        encode_manifest(manifest)  # fail fast on values JSON cannot hold
    validate_manifest(site, prepare_manifest(manifest, chosen, [], placeholder, activations_file=data, encryption=enc))
    created = _claim(site, path)
    try:
        _write(site, path, manifest, activations, compression, chosen, key)
    except BaseException:
        _release(path, created)
        raise
    return load_bundle(path, encryption_key=key)


def _checked_key(site: Site, key: bytes, expected_id: str | None) -> bytes:
    key = check_key(site, ACTIVATIONS + ENCRYPTED_SUFFIX, key)
    if expected_id is not None and expected_id != fingerprint(key):
        raise site.error(
            ACTIVATIONS + ENCRYPTED_SUFFIX,
            f"key_id {expected_id!r} does not match the encryption key (its key id is {fingerprint(key)})",
        )
    return key


def _write(
    site: Site,
    path: str,
    manifest: Mapping[str, Any],
    activations: Iterable[tuple[str, Array]],
    compression: Literal["zstd"] | None,
    bundle_id: str,
    key: bytes | None,
) -> None:
    data = ACTIVATIONS if key is None else ACTIVATIONS + ENCRYPTED_SUFFIX
    target = os.path.join(path, data)
    with site.guard(data, "cannot write", _WRITE_ERRORS):
        if key is None:
            modules = write_activations(site, target, activations, compression)
        else:
            sink = pa.PythonFile(EncryptingSink(target, key, associated_data(bundle_id, data)), mode="w")
            modules = write_activations(site, sink, activations, compression)
        fsync_path(target)
        size, digest = sha256_file(target)
    entry: dict[str, Any] = {"bytes": size, "sha256": digest}
    if compression is not None:
        entry["compression"] = compression
    enc = None if key is None else encryption_section(key, [data])
    final = prepare_manifest(manifest, bundle_id, modules, {data: entry}, activations_file=data, encryption=enc)
    validate_manifest(site, final)
    if key is not None:  # prompt, outputs, failure text and tool payloads: ciphertext on disk too
        final = seal(final, key)
        validate_manifest(site, final)
    with site.guard(MANIFEST, "cannot write", _WRITE_ERRORS):
        write_atomic(os.path.join(path, MANIFEST), encode_manifest(final))


def _claim(site: Site, path: str) -> bool:
    """Make sure ``path`` is an empty directory; return whether we created it."""
    if os.path.lexists(path) and not os.path.isdir(path):
        raise site.error(path, "exists and is not a directory")
    if os.path.isdir(path):
        if os.listdir(path):
            raise site.error(path, "refusing to overwrite: destination directory is not empty")
        return False
    with site.guard(path, "cannot create bundle directory", _WRITE_ERRORS):
        os.makedirs(path)
    return True


def _release(path: str, created: bool) -> None:
    """Undo a failed write: remove what we wrote (and the directory if we made it)."""
    for name in (ACTIVATIONS, ACTIVATIONS + ENCRYPTED_SUFFIX, MANIFEST):
        target = os.path.join(path, name)
        if os.path.lexists(target):
            os.unlink(target)
    if created and not os.listdir(path):
        os.rmdir(path)
