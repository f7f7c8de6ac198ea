"""Encryption at rest for bundle files: AES-256-GCM, one random nonce per file, streamed.

An encrypted file is ``MAGIC`` (8 bytes) + nonce (12) + ciphertext + GCM tag (16); the
associated data binds it to its bundle id and file name, so it cannot be moved to another
bundle or renamed unnoticed. Keys are never printed. ``load_bundle`` and ``write_bundle`` take an
explicit key and never read the environment: the CLI and the Serve app read
``MODEL_FORENSICS_ENCRYPTION_KEY`` at the edge (``environment_key(os.environ)``) and pass it down,
Ray workers get it with their task.

    >>> key = bytes(range(32)); kid = key_id(key)
    >>> parse_key(base64.b64encode(key).decode()) == key, len(kid)
    (True, 16)
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
from collections.abc import Mapping
from typing import Any

from forensics.bundle._guard import Site
from forensics.errors import ConfigError

__all__ = [
    "ALGORITHM",
    "ENCRYPTED_SUFFIX",
    "KEY_BYTES",
    "MAGIC",
    "OVERHEAD",
    "EncryptingSink",
    "check_key",
    "decrypt_stream",
    "encryption_section",
    "environment_key",
    "key_id",
    "parse_key",
    "required_key",
    "validate_encryption",
]

ALGORITHM = "AES-256-GCM"
ENCRYPTED_SUFFIX = ".enc"
KEY_BYTES = 32
MAGIC = b"MFGCMv1\n"
NONCE_BYTES = 12
TAG_BYTES = 16
OVERHEAD = len(MAGIC) + NONCE_BYTES + TAG_BYTES
_CHUNK = 8 * 1024 * 1024
_KEY_ID = re.compile(r"[0-9a-f]{16}")


def parse_key(text: str) -> bytes:
    """Decode a base64 (standard or URL-safe) key of exactly 32 bytes; the message never shows it.

    >>> parse_key("c2hvcnQ=")
    Traceback (most recent call last):
    forensics.errors.ConfigError: encryption key must be base64 of exactly 32 bytes (AES-256), got 5 bytes
    """
    compact = "".join(str(text).split())
    alphabet = b"-_" if ("-" in compact or "_" in compact) else b"+/"
    try:
        key = base64.b64decode(compact.encode("ascii"), altchars=alphabet, validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise ConfigError(
            f"encryption key is not valid base64 ({len(compact)} characters); expected base64 of 32 random bytes,"
            " e.g. from `openssl rand -base64 32`"
        ) from None
    if len(key) != KEY_BYTES:
        raise ConfigError(f"encryption key must be base64 of exactly {KEY_BYTES} bytes (AES-256), got {len(key)} bytes")
    return key


ENV_VAR = "MODEL_FORENSICS_ENCRYPTION_KEY"


def environment_key(environ: Mapping[str, str]) -> bytes | None:
    """The key in ``MODEL_FORENSICS_ENCRYPTION_KEY`` of ``environ`` (the edge passes ``os.environ``); None
    when unset or empty; a bad value is a ``ConfigError`` naming the variable, never showing its value."""
    raw = environ.get(ENV_VAR, "").strip()
    if not raw:
        return None
    try:
        return parse_key(raw)
    except ConfigError as exc:
        raise ConfigError(f"environment variable {ENV_VAR} (value hidden): {exc}") from None


def key_id(key: bytes) -> str:
    """Public fingerprint of a key: the first 16 hex digits of its sha256."""
    return hashlib.sha256(key).hexdigest()[:16]


def required_key(site: Site, file: str, key: object, wanted: str, what: str = "") -> bytes:
    """The key that opens ``file`` (key id ``wanted``): a ``BundleError`` when none was given, it is malformed,
    or it is another key. ``what`` adds to the description (e.g. ", content sealed")."""
    if key is None:
        raise site.error(
            file,
            f"encrypted ({ALGORITHM}, key id {wanted}{what}) and no key was given; set "
            "MODEL_FORENSICS_ENCRYPTION_KEY (library: load_bundle(..., encryption_key=...))",
        )
    checked = check_key(site, file, key)
    if key_id(checked) != wanted:
        raise site.error(
            file, f"wrong encryption key: bundle needs key id {wanted}, the key given has id {key_id(checked)}"
        )
    return checked


def check_key(site: Site, file: str, key: object) -> bytes:
    """``key`` as 32 bytes, or a ``BundleError`` saying what arrived (its length, never its value)."""
    if not isinstance(key, bytes | bytearray) or len(key) != KEY_BYTES:
        got = f"{len(key)} bytes" if isinstance(key, bytes | bytearray) else type(key).__name__
        raise site.error(file, f"encryption key must be {KEY_BYTES} bytes (AES-256), got {got}")
    return bytes(key)


def associated_data(bundle_id: str, file: str) -> bytes:
    """GCM associated data: binds the ciphertext to its bundle and file name."""
    return b"model-forensics/bundle@1\x00" + bundle_id.encode("utf-8") + b"\x00" + file.encode("utf-8")


def encryption_section(key: bytes, files: list[str]) -> dict[str, Any]:
    """The manifest's ``encryption`` object (no secret in it: the key id is a hash prefix)."""
    return {"algorithm": ALGORITHM, "key_id": key_id(key), "files": list(files)}


def validate_encryption(site: Site, manifest_file: str, section: object, files: Mapping[str, Any]) -> None:
    """Check the manifest's ``encryption`` object: algorithm, key id, files that exist in the table."""
    if not isinstance(section, dict):
        raise site.error(manifest_file, "encryption must be an object")
    if section.get("algorithm") != ALGORITHM:
        raise site.error(
            manifest_file, f"encryption.algorithm {section.get('algorithm')!r} not supported; expected {ALGORITHM!r}"
        )
    if not isinstance(section.get("key_id"), str) or not _KEY_ID.fullmatch(section["key_id"]):
        raise site.error(manifest_file, "encryption.key_id must be 16 lowercase hex digits")
    listed = section.get("files")
    if not isinstance(listed, list) or not all(isinstance(name, str) and name in files for name in listed):
        raise site.error(manifest_file, "encryption.files must list names from the files table")


class EncryptingSink:
    """A write-only file object that encrypts what pyarrow writes into it (wrap in ``pa.PythonFile``).

    Writes ``MAGIC`` + nonce up front, ciphertext as data arrives, and the tag on ``close``.
    """

    def __init__(self, path: str, key: bytes, aad: bytes) -> None:

        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

        nonce = os.urandom(NONCE_BYTES)
        self._encryptor = Cipher(algorithms.AES(key), modes.GCM(nonce)).encryptor()
        self._encryptor.authenticate_additional_data(aad)
        self._handle = open(path, "wb")  # noqa: SIM115 - closed in close()
        self._handle.write(MAGIC + nonce)
        self._position = 0
        self.closed = False

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self._handle.write(self._encryptor.update(view))
        self._position += len(view)
        return len(view)

    def tell(self) -> int:
        """Plaintext bytes written so far (what the Arrow writer expects)."""
        return self._position

    def flush(self) -> None:
        self._handle.flush()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self._handle.write(self._encryptor.finalize() + self._encryptor.tag)
        finally:
            self._handle.close()


def decrypt_stream(site: Site, file: str, stream: Any, size: int, key: bytes, aad: bytes) -> bytearray:
    """Decrypt a whole encrypted file read from ``stream`` (``size`` bytes) into memory.

    Plaintext is returned only after the GCM tag verified; a tampered file, a wrong key or a
    file moved from another bundle all fail here with a ``BundleError`` naming ``file``.
    """
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    if size < OVERHEAD:
        raise site.error(file, f"encrypted file is {size} bytes, shorter than its {OVERHEAD}-byte header and tag")
    header = _read_exact(site, file, stream, len(MAGIC) + NONCE_BYTES)
    if header[: len(MAGIC)] != MAGIC:
        raise site.error(file, f"not an encrypted bundle file (magic {header[: len(MAGIC)]!r}, expected {MAGIC!r})")
    decryptor = Cipher(algorithms.AES(key), modes.GCM(header[len(MAGIC) :])).decryptor()
    decryptor.authenticate_additional_data(aad)
    plain = bytearray(size - OVERHEAD)
    done = 0
    while done < len(plain):
        chunk = _read_exact(site, file, stream, min(_CHUNK, len(plain) - done))
        plain[done : done + len(chunk)] = decryptor.update(chunk)
        done += len(chunk)
    tag = _read_exact(site, file, stream, TAG_BYTES)
    try:
        decryptor.finalize_with_tag(tag)
    except InvalidTag:
        raise site.error(
            file,
            f"{ALGORITHM} authentication failed (tag mismatch): the ciphertext was modified,"
            " moved from another bundle, or the key is wrong",
        ) from None
    return plain


def _read_exact(site: Site, file: str, stream: Any, count: int) -> bytes:
    data: bytes = stream.read(count)
    if len(data) != count:
        raise site.error(file, f"encrypted file ended early (wanted {count} more bytes, got {len(data)})")
    return data
