"""Encryption at rest (AES-256-GCM) of bundle data files: round trip, missing/wrong key, tampering."""

from __future__ import annotations

import base64
import gc
import hashlib
import json
import os
import tarfile
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from forensics.bundle import load_bundle, write_bundle
from forensics.bundle.crypto import MAGIC, OVERHEAD, associated_data, key_id, parse_key
from forensics.errors import BundleError, ConfigError
from tests.test_bundle import assert_bit_exact, make_manifest, sample_activations

KEY = bytes(range(100, 132))
OTHER = bytes(range(1, 33))
ENC = "activations.arrow.enc"


def _secrets(key: bytes) -> list[str]:
    """Every spelling of a key that must never show up in messages or files."""
    return [base64.b64encode(key).decode(), base64.urlsafe_b64encode(key).decode(), key.hex(), repr(key)]


def _assert_no_key(text: str, key: bytes = KEY) -> None:
    for secret in _secrets(key):
        assert secret not in text


@pytest.fixture
def encrypted(tmp_path: Path) -> Path:
    write_bundle(tmp_path / "secret_7", make_manifest(), sample_activations(), encryption_key=KEY)
    return tmp_path / "secret_7"


def _files(path: Path) -> set[str]:
    return {p.name for p in path.iterdir()}


@pytest.mark.parametrize("zstd", [False, True])
def test_round_trip_is_bit_exact(tmp_path: Path, zstd: bool) -> None:
    written = write_bundle(
        tmp_path / "b", make_manifest(), sample_activations(), encryption_key=KEY, compression="zstd" if zstd else None
    )
    assert written.encrypted
    bundle = load_bundle(tmp_path / "b", encryption_key=KEY)
    assert bundle.encrypted and bundle.modules == [name for name, _ in sample_activations()]
    for (name, want), (got_name, got) in zip(sample_activations(), bundle.iter_activations(), strict=True):
        assert got_name == name
        assert_bit_exact(got, want)
        assert_bit_exact(bundle.activation(name), want)
    assert _files(tmp_path / "b") == {"manifest.json", ENC}  # no plaintext data file on disk, ever


def test_manifest_records_encryption_and_ciphertext_digest(encrypted: Path) -> None:
    manifest = json.loads((encrypted / "manifest.json").read_bytes())
    data = (encrypted / ENC).read_bytes()
    assert manifest["encryption"] == {"algorithm": "AES-256-GCM", "key_id": key_id(KEY), "files": [ENC]}
    assert manifest["activations_file"] == ENC
    assert manifest["files"] == {ENC: {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}}
    assert key_id(KEY) == hashlib.sha256(KEY).hexdigest()[:16]
    _assert_no_key((encrypted / "manifest.json").read_text())


def test_file_format_is_standard_aes_gcm(encrypted: Path) -> None:
    """MAGIC + 12-byte nonce + ciphertext||tag: the one-shot AESGCM API decrypts it too."""
    data = (encrypted / ENC).read_bytes()
    assert data.startswith(MAGIC) and len(data) > OVERHEAD
    nonce, body = data[len(MAGIC) : len(MAGIC) + 12], data[len(MAGIC) + 12 :]
    plain = AESGCM(KEY).decrypt(nonce, body, associated_data("secret_7", ENC))
    assert plain[:6] == b"ARROW1"  # an ordinary Arrow IPC file inside
    assert b"ARROW1" not in data


def test_nonce_is_fresh_per_file(tmp_path: Path) -> None:
    for name in ("a", "b"):
        write_bundle(tmp_path / name, make_manifest(), sample_activations(), encryption_key=KEY, bundle_id="same")
    one, two = ((tmp_path / n / ENC).read_bytes() for n in ("a", "b"))
    assert one[len(MAGIC) : len(MAGIC) + 12] != two[len(MAGIC) : len(MAGIC) + 12]
    assert one != two


def test_missing_key_is_a_clear_error(encrypted: Path) -> None:
    with pytest.raises(BundleError) as info:
        load_bundle(encrypted)
    message = str(info.value)
    assert message.startswith(f"bundle secret_7: {ENC}: encrypted (AES-256-GCM, key id {key_id(KEY)})")
    assert "MODEL_FORENSICS_ENCRYPTION_KEY" in message


def test_wrong_key_is_a_key_id_mismatch(encrypted: Path) -> None:
    with pytest.raises(BundleError, match=f"bundle secret_7: {ENC}: wrong encryption key") as info:
        load_bundle(encrypted, encryption_key=OTHER)
    assert key_id(KEY) in str(info.value) and key_id(OTHER) in str(info.value)
    _assert_no_key(str(info.value), KEY)
    _assert_no_key(str(info.value), OTHER)


def _rehash(bundle: Path, edit: Any) -> None:
    """Apply ``edit`` to the ciphertext and fix the manifest's checksum so only GCM can notice."""
    path = bundle / ENC
    data = bytearray(path.read_bytes())
    edit(data)
    path.write_bytes(bytes(data))
    manifest = json.loads((bundle / "manifest.json").read_bytes())
    manifest["files"][ENC] = {"bytes": len(data), "sha256": hashlib.sha256(bytes(data)).hexdigest()}
    (bundle / "manifest.json").write_text(json.dumps(manifest))


def _flip(offset: int) -> Any:
    def edit(data: bytearray) -> None:
        data[offset] ^= 0x01

    return edit


@pytest.mark.parametrize(
    "edit",
    [_flip(len(MAGIC) + 12 + 40), _flip(-1), _flip(len(MAGIC) + 3)],
    ids=["ciphertext", "tag", "nonce"],
)
def test_tampered_ciphertext_fails_the_gcm_tag(encrypted: Path, edit: Any) -> None:
    _rehash(encrypted, edit)
    with pytest.raises(BundleError, match=f"bundle secret_7: {ENC}: AES-256-GCM authentication failed") as info:
        load_bundle(encrypted, encryption_key=KEY)
    _assert_no_key(str(info.value))


def test_tampering_without_rehash_is_caught_by_the_checksum_first(encrypted: Path) -> None:
    data = bytearray((encrypted / ENC).read_bytes())
    data[len(MAGIC) + 20] ^= 0xFF
    (encrypted / ENC).write_bytes(bytes(data))
    with pytest.raises(BundleError, match=f"{ENC}: sha256 mismatch"):
        load_bundle(encrypted, encryption_key=KEY)


def test_ciphertext_is_bound_to_its_bundle_id(tmp_path: Path, encrypted: Path) -> None:
    """Moving a ciphertext into another bundle (checksums fixed up) fails authentication."""
    write_bundle(tmp_path / "other", make_manifest(), [("m", np.ones(3, "f4"))], encryption_key=KEY)
    stolen = (encrypted / ENC).read_bytes()
    _rehash(tmp_path / "other", lambda data: data.__setitem__(slice(None), stolen))
    manifest = json.loads((tmp_path / "other" / "manifest.json").read_bytes())
    manifest["recorded"]["modules"] = [name for name, _ in sample_activations()]
    (tmp_path / "other" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="authentication failed"):
        load_bundle(tmp_path / "other", encryption_key=KEY)


def test_plaintext_bundles_are_unaffected(tmp_path: Path) -> None:
    plain = write_bundle(tmp_path / "plain", make_manifest(), sample_activations())
    assert not plain.encrypted
    assert _files(tmp_path / "plain") == {"manifest.json", "activations.arrow"}
    manifest = json.loads((tmp_path / "plain" / "manifest.json").read_bytes())
    assert "encryption" not in manifest and "activations_file" not in manifest
    again = load_bundle(tmp_path / "plain", encryption_key=KEY)  # a key is harmless for plaintext bundles
    for (_, want), (_, got) in zip(sample_activations(), again.iter_activations(), strict=True):
        assert_bit_exact(got, want)


def test_rewriting_a_loaded_manifest_drops_the_old_encryption_keys(tmp_path: Path, encrypted: Path) -> None:
    old = load_bundle(encrypted, encryption_key=KEY)
    copy = write_bundle(tmp_path / "copy", old.manifest, old.iter_activations(), bundle_id="copy")
    assert not copy.encrypted and "encryption" not in copy.manifest and "activations_file" not in copy.manifest


def test_encrypted_archive_round_trip(tmp_path: Path, encrypted: Path) -> None:
    archive = tmp_path / "secret_7.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(encrypted, arcname="secret_7")
    bundle = load_bundle(archive, encryption_key=KEY)
    assert_bit_exact(bundle.activation("scalar"), np.array(7, dtype=np.int32))
    with pytest.raises(BundleError, match="key id"):
        load_bundle(archive)


def test_bad_key_arguments_never_echo_the_key(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="must be 32 bytes \\(AES-256\\), got 16 bytes") as info:
        write_bundle(tmp_path / "b", make_manifest(), sample_activations(), encryption_key=KEY[:16])
    _assert_no_key(str(info.value), KEY[:16])
    assert not (tmp_path / "b").exists()
    with pytest.raises(BundleError, match="key_id 'feedfacefeedface' does not match") as info:
        write_bundle(
            tmp_path / "b", make_manifest(), sample_activations(), encryption_key=KEY, key_id="feedfacefeedface"
        )
    _assert_no_key(str(info.value))
    good = write_bundle(tmp_path / "b", make_manifest(), sample_activations(), encryption_key=KEY, key_id=key_id(KEY))
    assert good.manifest["encryption"]["key_id"] == key_id(KEY)


def test_parse_key_accepts_base64_of_32_bytes_only() -> None:
    assert parse_key(base64.b64encode(KEY).decode()) == KEY
    assert parse_key(" " + base64.urlsafe_b64encode(KEY).decode() + "\n") == KEY
    for text, why in [
        (base64.b64encode(KEY[:31]).decode(), "got 31 bytes"),
        (base64.b64encode(KEY + b"x").decode(), "got 33 bytes"),
        ("not base64 at all!!", "not valid base64"),
        (KEY.hex(), "got 48 bytes"),  # hex is valid base64 text, of the wrong length
        ("", "got 0 bytes"),
    ]:
        with pytest.raises(ConfigError, match=why) as info:
            parse_key(text)
        if text:
            assert text not in str(info.value)
        assert info.value.__cause__ is None  # no chained decoder error that could quote the input
        assert info.value.__context__ is None or info.value.__suppress_context__


def test_plaintext_is_freed_with_the_bundle(encrypted: Path) -> None:
    bundle = load_bundle(encrypted, encryption_key=KEY)
    buffer = weakref.ref(bundle._plaintext)
    before = set(os.listdir(encrypted))
    del bundle
    gc.collect()
    assert buffer() is None
    assert set(os.listdir(encrypted)) == before == {"manifest.json", ENC}


def test_the_library_never_reads_the_key_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The edge passes the key; ``write_bundle``/``load_bundle`` without one write and read plaintext even
    when MODEL_FORENSICS_ENCRYPTION_KEY is set, and the edge's config carries it (never shown)."""
    from forensics.config import to_dict
    from forensics.ops.env import config_from_env

    monkeypatch.setenv("MODEL_FORENSICS_ENCRYPTION_KEY", base64.b64encode(KEY).decode())
    plain = write_bundle(tmp_path / "plain", make_manifest(), sample_activations())
    assert not plain.encrypted and (tmp_path / "plain" / "activations.arrow").is_file()
    config = config_from_env(None, os.environ)
    assert config.encryption_key == KEY and config.encryption_key_set
    assert "encryption_key" not in to_dict(config) and repr(KEY) not in repr(config)
    sealed = write_bundle(
        tmp_path / "sealed", make_manifest(), sample_activations(), encryption_key=config.encryption_key
    )
    assert sealed.encrypted
    with pytest.raises(BundleError, match="no\\s+key was given"):
        load_bundle(tmp_path / "sealed")
