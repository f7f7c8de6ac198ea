"""Sealed manifests: with a key, the prompt, outputs, failure text and tool payloads are ciphertext on disk."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from forensics.bundle import load_bundle, write_bundle
from forensics.bundle.seal import SEALED_KEYS
from forensics.cli import main
from forensics.errors import BundleError
from tests.test_bundle import make_manifest, sample_activations
from tests.test_ops_cli import KEY as KEY_B64
from tests.test_ops_cli import PROMPT

KEY = bytes(range(100, 132))
SECRETS = ("What is the secret launch code?", "the code is 0000", "launch_db", "row 42: alpha-bravo")


def _secret_manifest() -> dict[str, object]:
    return make_manifest(
        inputs={"prompt": SECRETS[0], "input_ids": [1, 17, 5]},
        outputs={"generated_ids": [9], "text": SECRETS[1]},
        failure={"type": "forbidden", "text": SECRETS[1], "regex": False},
        external_calls=[
            {
                "name": "lookup",
                "args": [SECRETS[2]],
                "kwargs": {},
                "result": SECRETS[3],
                "error": None,
                "started_at": 0.0,
                "duration_s": 0.1,
            }
        ],
    )


def _all_bytes(path: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file())


def test_sealed_bundle_holds_no_content_in_plaintext_and_reads_back(tmp_path: Path) -> None:
    manifest = _secret_manifest()
    write_bundle(tmp_path / "b", manifest, sample_activations(), encryption_key=KEY)
    blob = _all_bytes(tmp_path / "b")
    for secret in SECRETS:
        assert secret.encode() not in blob
    on_disk = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert not set(SEALED_KEYS) & set(on_disk) and on_disk["sealed"]["keys"] == sorted(SEALED_KEYS)
    assert on_disk["model"]["sha256"] == "ab" * 32 and on_disk["kind"] == "incident"  # identity stays readable
    bundle = load_bundle(tmp_path / "b", encryption_key=KEY)
    for key in SEALED_KEYS:
        assert bundle.manifest[key] == manifest[key]
    assert "sealed" not in bundle.manifest and bundle.inputs["prompt"] == SECRETS[0]


def test_plain_bundle_manifest_is_unchanged(tmp_path: Path) -> None:
    write_bundle(tmp_path / "b", make_manifest(), sample_activations())
    on_disk = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert "sealed" not in on_disk and on_disk["inputs"]["prompt"] == "2+2="


def test_tampered_or_moved_sealed_block_is_refused(tmp_path: Path) -> None:
    write_bundle(tmp_path / "a", _secret_manifest(), sample_activations(), encryption_key=KEY)
    write_bundle(tmp_path / "b", _secret_manifest(), sample_activations(), encryption_key=KEY)
    a = json.loads((tmp_path / "a" / "manifest.json").read_text())
    b_path = tmp_path / "b" / "manifest.json"
    b = json.loads(b_path.read_text())
    b["sealed"] = a["sealed"]  # copied from another bundle: the associated data names bundle "a"
    b_path.write_text(json.dumps(b))
    with pytest.raises(BundleError, match=r"manifest.json: sealed: AES-256-GCM authentication failed"):
        load_bundle(tmp_path / "b", encryption_key=KEY)
    b["sealed"] = {**a["sealed"], "ciphertext": "A" * len(a["sealed"]["ciphertext"])}
    b_path.write_text(json.dumps(b))
    with pytest.raises(BundleError, match="authentication failed"):
        load_bundle(tmp_path / "b", encryption_key=KEY)


def test_sealed_manifest_with_plaintext_sections_beside_it_is_refused(tmp_path: Path) -> None:
    write_bundle(tmp_path / "b", _secret_manifest(), sample_activations(), encryption_key=KEY)
    path = tmp_path / "b" / "manifest.json"
    data = json.loads(path.read_text())
    data["inputs"] = {"input_ids": [1]}
    path.write_text(json.dumps(data))
    with pytest.raises(BundleError, match="beside sealed"):
        load_bundle(tmp_path / "b", encryption_key=KEY)


def test_cli_recording_with_the_key_leaves_no_prompt_anywhere(
    tiny_dirs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The issue's check: grep every file of an encrypted bundle for the prompt text."""
    monkeypatch.setenv("MODEL_FORENSICS_ENCRYPTION_KEY", KEY_B64)
    out = tmp_path / "inc"
    assert (
        main(
            [
                "record",
                "--model",
                str(tiny_dirs["llama"]),
                "--prompt",
                PROMPT,
                "--expected",
                " Canberra",
                "--out",
                str(out),
                "--max-new-tokens",
                "3",
            ]
        )
        == 0
    )
    blob = _all_bytes(out)
    for needle in (PROMPT, "Australia", "Canberra"):
        assert needle.encode() not in blob
    capsys.readouterr()
    assert main(["replay", str(out), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["fidelity"]["faithful"] is True


def test_results_cache_is_encrypted_with_the_key(tmp_path: Path) -> None:
    from forensics.ops.cache import ResultCache

    report = {"bundle_id": "b", "incident": {"prompt": SECRETS[0]}, "pad": "x" * 100}
    cache = ResultCache(tmp_path, 10**6, encryption_key=KEY)
    cache.put("k", report)
    assert [p.name for p in tmp_path.iterdir()] == ["k.json.enc"]
    assert SECRETS[0].encode() not in _all_bytes(tmp_path)
    assert cache.get("k") == report and [key for _, _, key in cache.entries()] == ["k"]
    other = ResultCache(tmp_path, 10**6, encryption_key=bytes(32))
    assert other.get("k") is None and not (tmp_path / "k.json.enc").exists()  # another key: a miss, dropped
    plain = ResultCache(tmp_path, 10**6)
    plain.put("p", report)
    assert plain.get("p") == report and (tmp_path / "p.json").is_file()


def test_cli_cache_entries_are_ciphertext_and_the_report_stays_readable(
    tiny_dirs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODEL_FORENSICS_ENCRYPTION_KEY", KEY_B64)
    monkeypatch.setenv("MODEL_FORENSICS_CACHE_ENABLED", "true")
    monkeypatch.setenv("MODEL_FORENSICS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("MODEL_FORENSICS_OUTPUT_DIR", str(tmp_path / "results"))
    inc = tmp_path / "inc"
    assert (
        main(
            [
                "record",
                "--model",
                str(tiny_dirs["llama"]),
                "--prompt",
                PROMPT,
                "--expected",
                " Canberra",
                "--out",
                str(inc),
                "--max-new-tokens",
                "3",
            ]
        )
        == 0
    )
    assert main(["analyze", str(inc), "--output", str(tmp_path / "rca.json")]) == 0
    entries = list((tmp_path / "cache" / "results").iterdir())
    assert entries and all(p.name.endswith(".json.enc") for p in entries)
    assert b"Australia" not in _all_bytes(tmp_path / "cache")
    assert "Australia" in (tmp_path / "rca.json").read_text()  # what the user asked for is plain JSON
