"""``Bundle``, the read-only view of a verified incident bundle, and ``load_bundle``.

Loading checks the manifest, every file's size (and sha256 with ``verify=True``) and the
Arrow file's schema and batches before a ``Bundle`` is returned; tensors are read one batch
at a time, memory-mapped when local. Encrypted bundles are decrypted (after the ciphertext's
checksum passed) into memory owned by the ``Bundle``: no plaintext is ever written to disk.
"""

from __future__ import annotations

import copy
import hashlib
import os
import weakref
from collections.abc import Iterator, Sequence
from typing import Any

import pyarrow as pa

from forensics.bundle._guard import Site
from forensics.bundle.crypto import associated_data, decrypt_stream, required_key
from forensics.bundle.integrity import check_files
from forensics.bundle.location import Location, resolve
from forensics.bundle.manifest import MANIFEST, MAX_MANIFEST_BYTES, data_file, parse_manifest
from forensics.bundle.seal import unseal
from forensics.bundle.store import Array, decode_batch, open_reader

__all__ = ["Bundle", "load_bundle", "read_manifest"]

_SHOWN_MODULES = 5


def load_bundle(
    path_or_uri: str | os.PathLike[str],
    *,
    verify: bool = True,
    filesystem: Any = None,
    max_archive_bytes: int | None = None,
    encryption_key: bytes | None = None,
) -> Bundle:
    """Open and check a bundle: a directory, a ``.tar``/``.tar.zst``, or a ``pyarrow.fs`` URI.

    ``filesystem`` (a ``pyarrow.fs.FileSystem``) makes ``path_or_uri`` a path on it.
    ``verify=False`` skips the sha256 pass and the scan of every batch (sizes, schema and
    batch count are still checked; each batch is still checked when read).
    ``max_archive_bytes`` caps what a ``.tar``/``.tar.zst`` may extract to (default: 16 times the
    archive's size, at least 4 MiB, see ``archive.extract_limit``).
    ``encryption_key`` (32 bytes; None: none, the library never reads the environment) reads
    encrypted bundles; plaintext bundles ignore it. The CLI and the Serve app pass the key of
    ``MODEL_FORENSICS_ENCRYPTION_KEY``.
    Every failure is a ``BundleError`` naming the bundle, the file and the problem.
    """
    key = encryption_key
    location = resolve(path_or_uri, filesystem, max_archive_bytes)
    try:
        return _load(location, verify, key)
    except BaseException:
        location.cleanup()
        raise


def read_manifest(
    path_or_uri: str | os.PathLike[str], *, filesystem: Any = None, encryption_key: bytes | None = None
) -> dict[str, Any]:
    """A bundle's checked manifest alone, no data file read (``batch`` groups incidents by it, so a bundle
    whose activations are damaged still names its ``failure_family`` and failure spec). A sealed manifest
    is opened when ``encryption_key`` is given, else returned sealed. ``BundleError`` when it is not valid.

    >>> read_manifest("bundles/au1").get("failure_family")      # doctest: +SKIP
    'australia-capital'
    """
    location = resolve(path_or_uri, filesystem, None)
    try:
        site = Site(location.name)
        manifest = parse_manifest(site, _read_manifest_bytes(site, location))
        if "sealed" in manifest and encryption_key is not None:
            manifest = unseal(site, manifest, encryption_key)
        return manifest
    finally:
        location.cleanup()


def _load(location: Location, verify: bool, key: bytes | None) -> Bundle:
    site = Site(location.name)
    raw = _read_manifest_bytes(site, location)
    manifest = parse_manifest(site, raw)
    check_files(site, manifest["files"], location.size_of, location.open_stream, verify)
    modules: list[str] = manifest["recorded"]["modules"]
    data = data_file(site, manifest)
    plain = _decrypt(site, location, manifest, data, key)
    if "sealed" in manifest:  # the content sections are ciphertext: the key opens them (and rechecks them)
        manifest = unseal(site, manifest, key)
    with site.guard(data, "cannot read"), _open_data(location, data, plain) as source:
        reader = open_reader(site, source, data)
        if reader.num_record_batches != len(modules):
            raise site.error(
                data,
                f"has {reader.num_record_batches} record batches, manifest.json"
                f" recorded.modules lists {len(modules)} modules",
            )
        if verify:
            for index, module in enumerate(modules):
                decode_batch(site, index, reader.get_batch(index), module, data)
    return Bundle(location, manifest, raw, plaintext=plain)


def _open_data(location: Location, data: str, plain: Any) -> Any:
    return location.open_random(data) if plain is None else pa.BufferReader(plain)


def _decrypt(site: Site, location: Location, manifest: dict[str, Any], data: str, key: bytes | None) -> Any:
    """The decrypted data file as an Arrow buffer, or None when the bundle is not encrypted."""
    section = manifest.get("encryption")
    if section is None or data not in section["files"]:
        return None
    key = required_key(site, data, key, section["key_id"])
    size = int(manifest["files"][data]["bytes"])
    aad = associated_data(str(manifest["bundle_id"]), data)
    with site.guard(data, "cannot read encrypted file"), location.open_stream(data) as stream:
        return pa.py_buffer(decrypt_stream(site, data, stream, size, key, aad))


def _read_manifest_bytes(site: Site, location: Location) -> bytes:
    with site.guard(MANIFEST, "cannot read"):
        size = location.size_of(MANIFEST)
        if size is None:
            raise site.error(MANIFEST, "missing (not a bundle directory?)")
        if size > MAX_MANIFEST_BYTES:
            raise site.error(MANIFEST, f"{size} bytes, more than the limit {MAX_MANIFEST_BYTES}")
        with location.open_stream(MANIFEST) as stream:
            data: bytes = stream.read(MAX_MANIFEST_BYTES + 1)
    return data


class Bundle:
    """A read-only view of a loaded bundle; build it with ``load_bundle``.

    >>> b = load_bundle("incidents/incident_7")      # doctest: +SKIP
    >>> b.kind, b.modules[:1]                         # doctest: +SKIP
    ('incident', ['model.layers.0'])
    >>> b.activation("model.layers.0").shape          # doctest: +SKIP
    (1, 12, 64)
    """

    def __init__(
        self, location: Location, manifest: dict[str, Any], manifest_bytes: bytes, *, plaintext: Any = None
    ) -> None:
        self._location = location
        self._plaintext = plaintext  # decrypted data file (an Arrow buffer) of an encrypted bundle
        self._data = data_file(Site(location.name), manifest)
        self._site = Site(location.name)
        self._manifest = manifest
        self._manifest_sha256 = hashlib.sha256(manifest_bytes).hexdigest()
        self._manifest_size = len(manifest_bytes)
        self._modules: list[str] = list(manifest["recorded"]["modules"])
        self._index = {module: i for i, module in enumerate(self._modules)}
        if location.tmpdir is not None:  # extracted archive: delete it with the view
            weakref.finalize(self, location.cleanup)

    def __repr__(self) -> str:
        return f"Bundle(id={self.id!r}, kind={self.kind!r}, modules={len(self._modules)}, path={self.path!r})"

    @property
    def path(self) -> str:
        """Where the bundle was loaded from (absolute for local paths, else as given)."""
        return self._location.display

    @property
    def encrypted(self) -> bool:
        """Whether the data file was encrypted at rest (and decrypted into memory on load)."""
        return self._plaintext is not None

    @property
    def manifest(self) -> dict[str, Any]:
        """A deep copy of the manifest (edits do not affect the bundle)."""
        return copy.deepcopy(self._manifest)

    @property
    def id(self) -> str:
        return str(self._manifest["bundle_id"])

    @property
    def kind(self) -> str:
        return str(self._manifest["kind"])

    @property
    def failure_family(self) -> str | None:
        """The failure-family label it was recorded with (``record --family NAME``), or None: incidents of one
        failure mode share it, and ``batch`` analyses each label's incidents as one family."""
        label = self._manifest.get("failure_family")
        return None if label is None else str(label)

    def with_failure(self, failure: dict[str, Any], decision_step: int | None) -> Bundle:
        """This bundle judged against another failure spec: a view whose manifest holds ``failure`` and the
        decision step that spec gives (``None``: the run does not fail it); the files are the same."""
        view = copy.copy(self)
        manifest = copy.deepcopy(self._manifest)
        manifest["failure"] = copy.deepcopy(failure)
        manifest["outputs"]["decision_step"] = decision_step
        manifest["outputs"]["is_failure"] = decision_step is not None
        view._manifest = manifest
        return view

    @property
    def failure(self) -> dict[str, Any] | None:
        failure: dict[str, Any] | None = self._manifest["failure"]
        return copy.deepcopy(failure)

    @property
    def model(self) -> dict[str, Any]:
        return self._section("model")

    @property
    def inputs(self) -> dict[str, Any]:
        return self._section("inputs")

    @property
    def outputs(self) -> dict[str, Any]:
        return self._section("outputs")

    def _section(self, key: str) -> dict[str, Any]:
        section: dict[str, Any] = self._manifest[key]
        return copy.deepcopy(section)

    @property
    def modules(self) -> list[str]:
        """Recorded module names in batch order."""
        return list(self._modules)

    @property
    def nbytes(self) -> int:
        """Total bytes of the bundle's files, manifest.json included."""
        files = self._manifest["files"].values()
        return self._manifest_size + sum(int(entry["bytes"]) for entry in files)

    def file_sha256(self) -> str:
        """sha256 of manifest.json's bytes; it pins every file's digest, so it ids the content."""
        return self._manifest_sha256

    def activation(self, module: str) -> Array:
        """One module's recorded tensor (read-only; zero-copy from a memory map when local)."""
        index = self._lookup(module)
        with self._open() as source:
            reader = open_reader(self._site, source, self._data)
            return self._decode(reader, index)

    def iter_activations(self, modules: Sequence[str] | None = None) -> Iterator[tuple[str, Array]]:
        """Yield ``(module, tensor)`` one batch at a time, in batch order or the order given."""
        names = self._modules if modules is None else list(modules)
        indices = [self._lookup(name) for name in names]
        with self._open() as source:
            reader = open_reader(self._site, source, self._data)
            for name, index in zip(names, indices, strict=True):
                yield name, self._decode(reader, index)

    def _lookup(self, module: str) -> int:
        if module in self._index:
            return self._index[module]
        shown = ", ".join(repr(m) for m in self._modules[:_SHOWN_MODULES])
        more = f", … ({len(self._modules)} in all)" if len(self._modules) > _SHOWN_MODULES else ""
        raise self._site.error(self._data, f"unknown module {module!r}; known: {shown}{more}")

    def _open(self) -> Any:
        if self._plaintext is not None:
            return pa.BufferReader(self._plaintext)
        with self._site.guard(self._data, "cannot open"):
            return self._location.open_random(self._data)

    def _decode(self, reader: Any, index: int) -> Array:
        with self._site.guard(self._data, f"cannot read batch {index}"):
            batch = reader.get_batch(index)
        return decode_batch(self._site, index, batch, self._modules[index], self._data)[1]
