"""Sealed manifest fields: what the incident *says* is AES-256-GCM ciphertext in an encrypted bundle.

With an encryption key, ``manifest.json`` keeps only what identifies and verifies the bundle (schema,
id, kind, model reference and weights digest, generation settings, recorded modules, environment,
the files table, the ``encryption`` section); the sections holding user content — ``inputs`` (prompt,
token ids, spans), ``outputs`` (generated text and ids, top-k), ``failure`` (expected or forbidden
text) and ``external_calls`` (tool arguments and results) — move into one ``sealed`` object:

    sealed = seal(manifest, key)["sealed"]   # {"algorithm", "keys", "nonce", "ciphertext"}
    unseal(Site("incident_7"), on_disk, key) == manifest   # checked against the schema again

The associated data binds the ciphertext to the bundle id (``manifest.json#sealed``), so a sealed
block copied from another bundle fails authentication.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Mapping
from typing import Any

from forensics.bundle._guard import Site
from forensics.bundle.crypto import ALGORITHM, associated_data, required_key
from forensics.bundle.schema import SEALED_KEYS
from forensics.bundle.strictjson import loads_strict

__all__ = ["SEALED_FILE", "SEALED_KEYS", "seal", "unseal"]

#: The name the associated data binds the sealed block to.
SEALED_FILE = "manifest.json#sealed"
_MANIFEST = "manifest.json"
_NONCE_BYTES = 12


def seal(manifest: Mapping[str, Any], key: bytes) -> dict[str, Any]:
    """A copy of ``manifest`` whose ``SEALED_KEYS`` sections are encrypted into ``sealed``."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    out = dict(manifest)
    payload = {name: out.pop(name) for name in SEALED_KEYS if name in out}
    plain = json.dumps(payload, sort_keys=True, allow_nan=False, ensure_ascii=False).encode("utf-8")
    nonce = os.urandom(_NONCE_BYTES)
    cipher = AESGCM(key).encrypt(nonce, plain, associated_data(str(manifest["bundle_id"]), SEALED_FILE))
    out["sealed"] = {"algorithm": ALGORITHM, "keys": sorted(payload), "nonce": _b64(nonce), "ciphertext": _b64(cipher)}
    return out


def unseal(site: Site, manifest: Mapping[str, Any], key: bytes | None) -> dict[str, Any]:
    """The full manifest of a sealed one (``sealed`` gone, its sections back), validated again.

    No key, a wrong key or a modified/moved block is a ``BundleError`` naming manifest.json."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from forensics.bundle.manifest import validate_manifest

    key = required_key(site, _MANIFEST, key, manifest["encryption"]["key_id"], ", content sealed")
    sealed = manifest["sealed"]
    nonce, cipher = _unb64(site, sealed, "nonce"), _unb64(site, sealed, "ciphertext")
    try:
        plain = AESGCM(key).decrypt(nonce, cipher, associated_data(str(manifest["bundle_id"]), SEALED_FILE))
    except (InvalidTag, ValueError):
        raise site.error(
            _MANIFEST,
            f"sealed: {ALGORITHM} authentication failed (tag mismatch): the block was "
            "modified or copied from another bundle",
        ) from None
    with site.guard(_MANIFEST, "sealed: not valid UTF-8 JSON"):
        payload = loads_strict(plain)
    if not isinstance(payload, dict) or sorted(payload) != list(sealed["keys"]) or set(payload) - set(SEALED_KEYS):
        raise site.error(
            _MANIFEST,
            f"sealed: expected the sections {list(sealed['keys'])}, got "
            f"{sorted(payload) if isinstance(payload, dict) else type(payload).__name__}",
        )
    out = {k: v for k, v in manifest.items() if k != "sealed"}
    out.update(payload)
    validate_manifest(site, out)
    return out


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(site: Site, sealed: Mapping[str, Any], field: str) -> bytes:
    try:
        return base64.b64decode(sealed[field].encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise site.error(
            _MANIFEST, f"sealed.{field}: expected base64, got a string of {len(sealed[field])} characters that is not"
        ) from None
