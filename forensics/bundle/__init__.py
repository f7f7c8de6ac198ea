"""Incident bundle format v1: a ``manifest.json`` plus an Arrow IPC ``activations.arrow``.

Writes stream one record batch per module and put the manifest last, atomically; loads verify
schema id, every size and sha256, and every batch before use. No pickle anywhere.

    >>> import numpy as np, tempfile; from forensics.bundle.manifest import example_manifest
    >>> b = write_bundle(tempfile.mkdtemp() + "/incident_7", example_manifest(), [("layer.0", np.ones((1, 4), "f4"))])
    >>> load_bundle(b.path).activation("layer.0").shape
    (1, 4)

Readable from a directory, a ``.tar`` / ``.tar.zst`` archive, or any ``pyarrow.fs`` URI
(``file://``, ``s3://``, ``gs://``, ``hdfs://``). Every problem is a ``BundleError``
(``forensics.errors``) reading ``bundle <name>: <file>: <problem>``.
"""

from __future__ import annotations

from forensics.bundle.bundle import Bundle, load_bundle, read_manifest
from forensics.bundle.manifest import ACTIVATIONS, MANIFEST, SCHEMA_ID, check_failure_family, family_key
from forensics.bundle.store import ACTIVATION_SCHEMA, ALLOWED_DTYPES
from forensics.bundle.writer import write_bundle

__all__ = [
    "ACTIVATIONS",
    "ACTIVATION_SCHEMA",
    "ALLOWED_DTYPES",
    "MANIFEST",
    "SCHEMA_ID",
    "Bundle",
    "check_failure_family",
    "family_key",
    "load_bundle",
    "read_manifest",
    "write_bundle",
]
